"""Properties of text whose truth is computed from the text itself, for the cell atlas (`lmdemo.atlas`).

Each property gives one value per token: a position (a count, scored by correlation) or yes/no (scored
by AUC). The truth is read from the text the model sees, the tokenizer's `pieces` (so a word model's
lower-cased, quote-free text is what counts), at the token's last character: the state after reading
a token is compared with what is true once that token has been read.

Review sentiment has its own rule (`rating_label`): a review's rating, as the reviewer wrote it, is its
label, and every sentence holding a rating is removed before the model reads the review
(`without_ratings`), so a unit cannot win by reading "7/10" or "seven out of ten".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy

POSITION, BINARY = "position", "binary"
CHARACTER_LEVELS, WORD_LEVELS = ("char",), ("word", "bpe")
SENTENCE_END = ".!?"
PUNCTUATION = set(".,;:!?()\"")
NEGATION = re.compile(r"\b(?:not|never|no)\b|n't\b", re.IGNORECASE)
OPENING, CLOSING = "([{", ")]}"
SPEAKER_LINE = re.compile(r"[A-Z][A-Za-z' ]*:")  # "First Citizen:", "KING RICHARD III:"

# The rating rule. A rating out of 10 labels a review; a rating on any scale removes its sentence. Ratings are written
# in digits ("7/10", "8.5 out of 10") or words ("seven out of ten", "8 out of ten", "two stars out of 10", "seven and
# a half out of ten"); "nine out of ten times" is no rating. A rating is found by its scale ("/10", "out of ten",
# "stars"), a search that skips ahead to the few characters a scale can start with, and then its score, read
# backwards from there (at most SCORE_REACH characters); the patterns read lower-cased text.
SCORE_WORDS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
               "nine": 9, "ten": 10}
_WORD = rf"\b(?:{'|'.join(SCORE_WORDS)})\b"
OUT_OF_TEN = re.compile(r"(?:/|out\s+of(?![a-z]))\s*(?:10(?![\d.]?\d|/)|ten\b)(?!\s+times\b)")
ANY_SCALE = re.compile(rf"(?:/|out\s+of(?![a-z]))\s*(?:\d|{_WORD})|stars?\b")  # "/5", "out of five", "stars"
# a score ending where its scale starts: "7", "8.5", "seven", "seven and a half", "2 stars", "one point", "0-"; not
# the end of a number ("5" of "7.5", "12" of "112") or of a date ("10" of "10/10/10")
SCORE = re.compile(rf"(?:(?<![\d/])(?<!\d\.)(\d+(?:\.\d+)?)|({_WORD}))(\s+and\s+(?:a\s+)?half)?"
                   rf"(?:[\s-]*(?:stars?|points?|marks?))?[\s-]*$")
SCORE_REACH = 40  # characters before a scale that its score may take ("seven and a half stars " is 23)
POSITIVE_FROM, NEGATIVE_TO = 7.0, 4.0  # IMDB's own rule: >= 7 of 10 positive, <= 4 negative
SENTENCE_BREAK = re.compile(r"<br\s*/?>|(?<=[.!?])\s+", re.IGNORECASE)


@dataclass(frozen=True)
class Property:
    """A property of text: its name, how it is scored, the levels it is read at and, where a unit tracking
    it could be held to steer the model, the names of its two ends (true or high end first)."""

    name: str
    kind: str  # POSITION (correlation) or BINARY (AUC)
    levels: tuple[str, ...]
    description: str  # what a unit tracking it follows, for a sentence: "the position in the line"
    truth: Callable[[Sequence[str]], numpy.ndarray] | None  # one value per token, from the tokens' pieces
    ends: tuple[str, str] | None = None


def _characters(pieces: Sequence[str]) -> tuple[str, numpy.ndarray]:
    """The text and, per token, the index of its last character (an empty piece: the character before)."""
    text = "".join(pieces)
    ends = numpy.cumsum([len(piece) for piece in pieces]) - 1
    return text, numpy.clip(ends, 0, max(len(text) - 1, 0))


def _per_token(per_character: Callable[[str], numpy.ndarray]) -> Callable[[Sequence[str]], numpy.ndarray]:
    """A property of each character, read at each token's last character."""
    def truth(pieces: Sequence[str]) -> numpy.ndarray:
        text, ends = _characters(pieces)
        if not text:
            return numpy.zeros(len(pieces))
        return per_character(text).astype(float)[ends]
    return truth


def line_position(text: str) -> numpy.ndarray:
    """Characters of the line read so far, this one included (0 once a line break is read)."""
    column, positions = 0, numpy.zeros(len(text))
    for index, char in enumerate(text):
        column = 0 if char == "\n" else column + 1
        positions[index] = column
    return positions


def inside(text: str, quotes: str = "", brackets: bool = False) -> numpy.ndarray:
    """Whether, after each character, an open quote (any of `quotes`) or bracket is unclosed on its line."""
    flags = numpy.zeros(len(text), dtype=bool)
    quoted, depth = False, 0
    for index, char in enumerate(text):
        if char == "\n":
            quoted, depth = False, 0
        elif char in quotes:
            quoted = not quoted
        elif brackets and char in OPENING:
            depth += 1
        elif brackets and char in CLOSING:
            depth = max(0, depth - 1)
        flags[index] = quoted or depth > 0
    return flags


def word_start(text: str) -> numpy.ndarray:
    return numpy.array([char.isalpha() and (index == 0 or not text[index - 1].isalpha())
                        for index, char in enumerate(text)], dtype=bool)


def speaker_line(text: str) -> numpy.ndarray:
    """The characters of a line that is only a name and a colon, after a blank line or at the start: a play's
    speaker (a verse line ending in a colon does not follow a blank line)."""
    flags = numpy.zeros(len(text), dtype=bool)
    start = 0
    for line in text.split("\n"):
        follows_blank = start == 0 or text[max(0, start - 2):start] == "\n\n"
        if follows_blank and SPEAKER_LINE.fullmatch(line):
            flags[start:start + len(line)] = True
        start += len(line) + 1
    return flags


def after_negation(text: str) -> numpy.ndarray:
    """From the end of "not", "n't", "never" or "no" up to the next punctuation mark or line end."""
    flags = numpy.zeros(len(text), dtype=bool)
    for match in NEGATION.finditer(text):
        index = match.end()
        while index < len(text) and text[index] not in PUNCTUATION and text[index] != "\n":
            flags[index] = True
            index += 1
    return flags


def sentence_end_next(pieces: Sequence[str]) -> numpy.ndarray:
    """Whether the next token ends a sentence (its text, spaces aside, starts with . ! or ?)."""
    following = [piece.strip()[:1] for piece in pieces[1:]] + [""]
    return numpy.array([bool(first) and first in SENTENCE_END for first in following], dtype=float)


def sentence_position(pieces: Sequence[str]) -> numpy.ndarray:
    """Tokens of the sentence read so far, this one included (0 once a token ending in . ! ? or a line break
    ends it)."""
    count, positions = 0, numpy.zeros(len(pieces))
    for index, piece in enumerate(pieces):
        ended = piece.endswith("\n") or piece.rstrip()[-1:] in tuple(SENTENCE_END)
        count = 0 if ended else count + 1
        positions[index] = count
    return positions


def number(pieces: Sequence[str]) -> numpy.ndarray:
    return numpy.array([any(char.isdigit() for char in piece) for piece in pieces], dtype=float)


PROPERTIES = (
    Property("position_in_line", POSITION, CHARACTER_LEVELS, "the position in the line", _per_token(line_position),
             ("line end", "line start")),
    Property("inside_quotes", BINARY, CHARACTER_LEVELS, "being inside quotes",
             _per_token(lambda text: inside(text, quotes='"')), ("inside", "outside")),
    Property("inside_brackets", BINARY, CHARACTER_LEVELS, "being inside brackets",
             _per_token(lambda text: inside(text, brackets=True)), ("inside", "outside")),
    Property("word_start", BINARY, CHARACTER_LEVELS, "the first letter of a word", _per_token(word_start)),
    Property("upper_case", BINARY, CHARACTER_LEVELS, "upper-case letters",
             _per_token(lambda text: numpy.array([char.isupper() for char in text]))),
    Property("vowel", BINARY, CHARACTER_LEVELS, "vowels",
             _per_token(lambda text: numpy.array([char in "aeiouAEIOU" for char in text]))),
    Property("speaker_name", BINARY, CHARACTER_LEVELS, "a speaker's name line (NAME:)", _per_token(speaker_line),
             ("name", "speech")),
    Property("sentence_end_next", BINARY, CHARACTER_LEVELS + WORD_LEVELS,
             "the last token before a sentence ends (. ! ?)", sentence_end_next),
    Property("position_in_sentence", POSITION, WORD_LEVELS, "the position in the sentence", sentence_position,
             ("sentence end", "sentence start")),
    Property("inside_quotes_or_brackets", BINARY, WORD_LEVELS, "being inside quotes or brackets",
             _per_token(lambda text: inside(text, quotes='"', brackets=True)), ("inside", "outside")),
    Property("after_negation", BINARY, WORD_LEVELS, "the words after a negation (not, n't, never, no)",
             _per_token(after_negation), ("negated", "plain")),
    Property("number", BINARY, WORD_LEVELS, "numbers", number),
)
# Scored per review, by the unit's value at its end; its truth is `rating_label`.
SENTIMENT = Property("sentiment", BINARY, CHARACTER_LEVELS + WORD_LEVELS, "the review's sentiment", None,
                     ("positive", "negative"))


def properties_for(level: str) -> list[Property]:
    """The structural properties read at a token level (sentiment is scored per review, not per token)."""
    return [prop for prop in PROPERTIES if level in prop.levels]


def truth(pieces: Sequence[str], properties: Sequence[Property]) -> numpy.ndarray:
    """The properties' values [tokens, properties] for one passage of tokens."""
    return numpy.stack([prop.truth(pieces) for prop in properties], 1) if properties else numpy.zeros((len(pieces), 0))


def rating_label(review: str) -> bool | None:
    """A review's sentiment by its own ratings out of 10, in digits or words ("7/10", "3 out of 10", "8.5 / 10",
    "seven out of ten", "8 out of ten"): True (positive) when every one is >= 7, False (negative) when every one is
    <= 4, None when it has none, one between 4 and 7, or ratings on both sides."""
    ratings = ratings_out_of_ten(review)
    if not ratings:
        return None
    if all(rating >= POSITIVE_FROM for rating in ratings):
        return True
    if all(rating <= NEGATIVE_TO for rating in ratings):
        return False
    return None


def ratings_out_of_ten(review: str) -> list[float]:
    """Every rating out of 10 in a review, in digits or words, in order."""
    lowered = review.lower()
    if "10" not in lowered and "ten" not in lowered:  # most reviews: no rating out of 10, and the search is the
        return []  # slow part
    return [score for score in _scores(lowered, OUT_OF_TEN) if score <= 10]


def _scores(lowered: str, scale: re.Pattern[str]) -> list[float]:
    """The score before each match of `scale` in lower-cased text that has one."""
    scores = []
    for found in scale.finditer(lowered):
        score = SCORE.search(lowered, max(0, found.start() - SCORE_REACH), found.start())
        if score is not None:
            digits, word, half = score.groups()
            scores.append((float(digits) if digits else float(SCORE_WORDS[word])) + (0.5 if half else 0.0))
    return scores


def without_ratings(review: str) -> str:
    """The review less every sentence that holds a rating on any scale, in digits or words ("7/10", "4 out of 5",
    "3 stars", "seven out of ten", "three stars"); sentences end at . ! ? before a space, and at <br /> tags."""
    kept = [sentence.strip() for sentence in SENTENCE_BREAK.split(review)]
    return " ".join(sentence for sentence in kept if sentence and not _scores(sentence.lower(), ANY_SCALE))
