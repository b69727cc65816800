"""Rules a visitor writes over text, turned into properties the cell atlas scores like its own (`lmdemo.atlas`).

One syntax, `[NAME=]RULE`, where RULE is one of:

- a regular expression (Python's `re`; `^` and `$` match at every line's start and end): `\\d+`, `"[^"]*"`;
- `words: a, b, c`: any of these words or phrases, whole, in any case;
- `inside X…Y` (or `inside X...Y`): from an X to the next Y on the same line, both included;
- `since REGEX`: a position, the tokens read since the last one a match of REGEX touches (0 there; from the start of
  the text before the first).

A token holds a yes/no rule when any of its characters lies in a match (an empty match covers no character). The text
matched is what the model reads, the tokenizer's `pieces`: a word model's text is lower-cased.

A regular expression can take exponential time (`(a+)+$` over "aaa…b"), and `re` has no time limit, so matching runs
in a child process that is killed after `MATCH_SECONDS`: one process for all the texts a rule is asked about at once,
never on the caller's thread (the server's event loop least of all), and the rule is refused with one line.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy

from lmdemo.atlas import Readings, property_atlas
from lmdemo.checkpoint import TrainedModel
from lmdemo.properties import BINARY, CHARACTER_LEVELS, POSITION, WORD_LEVELS, Property
from lmdemo.sampling import SettingsError

RULE_SYNTAX = ("[NAME=]RULE, RULE being a regular expression (\\d+), words: a, b, c, inside X…Y or since REGEX "
               "(NAME: letters, digits and _, starting with a letter)")
DEFAULT_NAME = "rule"
MAX_RULE_CHARACTERS = 200
MATCH_SECONDS = 2.0  # the most a rule's matching may take, over every text it is asked about at once
RULE_TOKENS = 8_000  # tokens of each part (choosing, scoring) a rule is scored on: see docs/atlas.md
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,39}")
INSIDE_SEPARATORS = ("…", "...")

# The child process: reads {"pattern", "flags", "texts"} as JSON on stdin and writes, per text, one byte per character
# (1: inside a match). Only the standard library, in isolated mode without `site`, so it starts in a few milliseconds.
MATCHER = """
import json, re, sys
job = json.loads(sys.stdin.buffer.read())
pattern = re.compile(job["pattern"], job["flags"])
for text in job["texts"]:
    covered = bytearray(len(text))
    for found in pattern.finditer(text):
        covered[found.start():found.end()] = b"\\x01" * (found.end() - found.start())
    sys.stdout.buffer.write(covered)
"""


class RuleError(SettingsError):
    """A rule that cannot be read, run or scored; the message says why and what is allowed."""


@dataclass(frozen=True)
class Rule:
    """A visitor's rule: its name, the regular expression it comes down to, and what it marks."""

    name: str
    written: str  # the rule as written, after NAME=
    kind: str  # BINARY (where it holds) or POSITION (tokens since a match)
    pattern: str
    flags: int
    description: str  # what a unit following it follows, for a sentence: "text matching \d+"

    def character_marks(self, texts: Sequence[str]) -> list[numpy.ndarray]:
        """Per text, which characters a match covers (bool per character), all found in one child process."""
        if not texts:
            return []
        job = json.dumps({"pattern": self.pattern, "flags": self.flags, "texts": list(texts)})
        try:
            done = subprocess.run([sys.executable, "-I", "-S", "-c", MATCHER], input=job.encode(),
                                  capture_output=True, timeout=MATCH_SECONDS, check=False)
        except subprocess.TimeoutExpired:
            characters = sum(len(text) for text in texts)
            raise RuleError(f"the rule took over {MATCH_SECONDS:g} s to match {characters:,} characters and was "
                            f"stopped: simplify it (a group repeated inside a repeat, as (a+)+, can take exponential "
                            f"time)") from None
        if done.returncode != 0:
            last = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
            raise RuleError(f"the rule could not be matched: {last[0]}")
        covered = numpy.frombuffer(done.stdout, dtype=numpy.uint8).astype(bool)
        cuts = numpy.cumsum([len(text) for text in texts])[:-1]
        return numpy.split(covered, cuts)

    def truths(self, passages: Sequence[Sequence[str]]) -> list[numpy.ndarray]:
        """The rule's value per token of each passage of pieces: 1/0 where it holds (a token's characters touch a
        match), or the tokens since the last token a match touched."""
        marks = self.character_marks(["".join(pieces) for pieces in passages])
        return [_per_token(pieces, covered, self.kind) for pieces, covered in zip(passages, marks)]

    def as_property(self, passages: Sequence[Sequence[str]] = ()) -> Property:
        """The rule as a property of the atlas, at every level. Its values over `passages` are found at once (one
        child process); any other passage it is asked about is matched then, alone."""
        known = {tuple(pieces): truth for pieces, truth in zip(passages, self.truths(passages))}

        def truth(pieces: Sequence[str]) -> numpy.ndarray:
            found = known.get(tuple(pieces))
            return found if found is not None else self.truths([pieces])[0]

        return Property(self.name, self.kind, CHARACTER_LEVELS + WORD_LEVELS, self.description, truth)


def _per_token(pieces: Sequence[str], covered: numpy.ndarray, kind: str) -> numpy.ndarray:
    """Per token, whether any of its characters is `covered`; for a position, the tokens since the last such one."""
    lengths = numpy.array([len(piece) for piece in pieces], dtype=int)
    ends = numpy.cumsum(lengths)
    covered_before = numpy.concatenate([[0], numpy.cumsum(covered)])
    touched = covered_before[ends] - covered_before[ends - lengths] > 0
    if kind == BINARY:
        return touched.astype(float)
    since, count = numpy.zeros(len(pieces)), 0
    for index, hit in enumerate(touched):
        count = 0 if hit else count + 1
        since[index] = count
    return since


def parse_rule(written: str) -> Rule:
    """A rule from its text (`RULE_SYNTAX`); a rule that cannot be read raises `RuleError` with one line saying why."""
    if not isinstance(written, str):
        raise RuleError(f"a rule must be text (got {type(written).__name__})")
    written = written.strip()
    if not written:
        raise RuleError(f"write a rule: {RULE_SYNTAX}")
    if len(written) > MAX_RULE_CHARACTERS:
        raise RuleError(f"a rule may be at most {MAX_RULE_CHARACTERS} characters (got {len(written)})")
    name, body = DEFAULT_NAME, written
    head, equals, tail = written.partition("=")
    if equals and NAME.fullmatch(head.strip()):
        name, body = head.strip(), tail.strip()
        if not body:
            raise RuleError(f"the rule {name!r} is empty after '=': {RULE_SYNTAX}")
    keyword, _, rest = body.partition(" ")
    if body.startswith("words:"):
        return _words(name, body, body.removeprefix("words:"))
    if keyword == "inside":
        return _inside(name, body, rest)
    if keyword == "since":
        if not rest.strip():
            raise RuleError("since needs a regular expression after it: since \\n")
        pattern = _compiled(rest.strip())
        return Rule(name, body, POSITION, pattern, re.MULTILINE, f"the tokens since a match of {pattern}")
    pattern = _compiled(body)
    return Rule(name, body, BINARY, pattern, re.MULTILINE, f"text matching {pattern}")


def _words(name: str, body: str, listed: str) -> Rule:
    words = [word.strip() for word in listed.split(",") if word.strip()]
    if not words:
        raise RuleError("words: needs at least one word, the words separated by commas (words: not, never, no)")
    longest_first = sorted(words, key=len, reverse=True)  # so that "not at all" wins over "not"
    pattern = "|".join(rf"{_edge(word[0])}{re.escape(word)}{_edge(word[-1])}" for word in longest_first)
    return Rule(name, body, BINARY, pattern, re.MULTILINE | re.IGNORECASE, f"the words {', '.join(words)}")


def _edge(character: str) -> str:
    """A word edge where a word starts or ends with a word character ("n't" has none before it)."""
    return r"\b" if re.match(r"\w", character) else ""


def _inside(name: str, body: str, marks: str) -> Rule:
    for separator in INSIDE_SEPARATORS:
        opening, found, closing = marks.partition(separator)
        if found:
            break
    opening, closing = opening.strip(), closing.strip()
    if not found or not opening or not closing:
        raise RuleError("inside needs an opening and a closing mark around … or ...: inside ( … ) or "
                        "inside \" ... \"")
    pattern = f"{re.escape(opening)}[^\\n]*?{re.escape(closing)}"
    return Rule(name, body, BINARY, pattern, re.MULTILINE, f"text inside {opening}…{closing}")


def _compiled(pattern: str) -> str:
    """`pattern` when `re` reads it (compiling takes time in proportion to the pattern, which is short: matching is
    what can run away, and it runs in a child process)."""
    try:
        re.compile(pattern, re.MULTILINE)
    except re.error as error:
        raise RuleError(f"not a regular expression Python reads: {error} (in {pattern!r})") from None
    except (OverflowError, RecursionError, ValueError) as error:
        raise RuleError(f"not a regular expression Python can run: {error}") from None
    return pattern


def rule_atlas(trained: TrainedModel, rules: Sequence[Rule], readings: Readings) -> dict:
    """The rules' rows, chosen and scored over `readings` (`lmdemo.atlas.read_parts`) as the atlas's own: atlas.json's
    schema with just these rows. A rule that a part holds too little of raises a `SettingsError` saying so."""
    names = [rule.name for rule in rules]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise RuleError(f"two rules are named {', '.join(twice)}: give each its own NAME= (name=\\d+)")
    return property_atlas(trained, readings, [rule.as_property(readings.passages) for rule in rules])

