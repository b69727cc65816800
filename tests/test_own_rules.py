"""A unit for your own rule: the rule syntax and its refusals, a runaway regular expression stopped in bounded time,
a rule chosen and scored by the atlas's own code on a shipped model, the CLI's `--rule`, the web's readings kept per
model, and the Inside tab finding a rule's unit in a real browser."""

from __future__ import annotations

import gc
import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import chromium_page
from conftest import DATA, ROOT
from servers import app_serving

import lmdemo.rules
from lmdemo.atlas import ATLAS_FILE, build_atlas, read_atlas, read_parts, texts_from
from lmdemo.checkpoint import load_model
from lmdemo.cli import main
from lmdemo.generation import SettingsError
from lmdemo.properties import BINARY, POSITION
from lmdemo.rules import (
    MAX_RULE_CHARACTERS,
    RULE_TOKENS,
    RuleError,
    parse_rule,
    rule_atlas,
)
from lmdemo.web import render
from lmdemo.web.atlas_view import YOUR_TEXT, AtlasView, RuleReadings
from lmdemo.web.inside import Inside
from lmdemo.web.registry import Models

pytestmark = pytest.mark.usefixtures("one_thread")

SHAKESPEARE = (DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
SHIPPED_CHAR = ROOT / "checkpoints" / "shakespeare-char"
PIECES = ["I ", "saw", " 12", "3 ", "films", " (", "and", ") ", "", "Not", " more", "\n"]
ENTRY_KEYS = {"property", "description", "layer", "unit", "quantity", "metric", "score", "baseline", "sign"}


def marked(written: str, pieces: list[str] = PIECES) -> list[str]:
    """The pieces a yes/no rule holds on."""
    return [piece for piece, value in zip(pieces, parse_rule(written).truths([pieces])[0]) if value]


# -- the syntax ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("written, name, kind, description", [
    (r"\d+", "rule", BINARY, r"text matching \d+"),
    (r"numbers=\d+", "numbers", BINARY, r"text matching \d+"),
    ("neg=words: not, never, no", "neg", BINARY, "the words not, never, no"),
    ("inside ( … )", "rule", BINARY, "text inside (…)"),
    ('quoted=inside " ... "', "quoted", BINARY, 'text inside "…"'),
    (r"since \n", "rule", POSITION, r"the tokens since a match of \n"),
    ("a=b=c", "a", BINARY, "text matching b=c"),  # the first '=' after a name ends it
    ("<b>=x", "rule", BINARY, "text matching <b>=x"),  # not a name: all of it is the expression
])
def test_each_syntax_reads_as_a_named_rule_of_its_kind(written, name, kind, description):
    rule = parse_rule(written)
    assert (rule.name, rule.kind, rule.description) == (name, kind, description)
    prop = rule.as_property()
    assert (prop.name, prop.kind, prop.description, prop.ends) == (name, kind, description, None)


def test_a_token_holds_a_rule_when_its_characters_touch_a_match():
    assert marked(r"\d+") == [" 12", "3 "]  # one match over two tokens marks both
    assert marked(r"o") == ["Not", " more"]  # case as written: "Not" only by its "o"
    assert marked("words: NOT, saw") == ["saw", "Not"]  # whole words, any case: " more" has no "not" in it
    assert marked("inside ( ... )") == [" (", "and", ") "]  # both marks included; the empty piece touches nothing
    assert marked(r"^|\b") == []  # empty matches cover no character
    assert marked(r"^\w+$", ["a b", "\n", "cd", "\n", "e f"]) == ["cd"]  # ^ and $ at every line's start and end
    rule = parse_rule(r"since \d")
    assert rule.truths([PIECES])[0].tolist() == [1, 2, 0, 0, *range(1, 9)]


def test_inside_stays_on_one_line():
    assert "".join(marked("inside ( ... )", list("a (b\nc) d (e)"))) == "(e)"


@pytest.mark.parametrize("written, message", [
    ("", "write a rule: [NAME=]RULE"),
    ("   ", "write a rule: [NAME=]RULE"),
    ("name=", "the rule 'name' is empty after '='"),
    ("(", "not a regular expression Python reads: missing ), unterminated subpattern at position 0 (in '(')"),
    ("(?<=a+)b", "look-behind requires fixed-width pattern"),
    ("words:", "words: needs at least one word"),
    ("words: , ,", "words: needs at least one word"),
    ("inside (", "inside needs an opening and a closing mark"),
    ("inside … )", "inside needs an opening and a closing mark"),
    ("since", "since needs a regular expression after it"),
    ("since [", "not a regular expression Python reads"),
    ("x" * (MAX_RULE_CHARACTERS + 1), f"a rule may be at most {MAX_RULE_CHARACTERS} characters"),
    (42, "a rule must be text (got int)"),
])
def test_a_bad_rule_is_refused_with_one_line_saying_why(written, message):
    with pytest.raises(RuleError) as refused:
        parse_rule(written)
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert isinstance(refused.value, SettingsError)  # what the web and the CLI turn into one line


def test_a_runaway_expression_is_stopped_in_bounded_time(monkeypatch):
    """`(a+)+$` over "aaa…b" backtracks through 2^n ways; matching runs in a child process killed at the limit."""
    monkeypatch.setattr(lmdemo.rules, "MATCH_SECONDS", 0.5)
    rule = parse_rule(r"(a+)+$")
    began = time.monotonic()
    with pytest.raises(RuleError, match=r"took over 0.5 s to match 41 characters and was stopped: simplify it"):
        rule.character_marks(["a" * 40 + "b"])
    assert time.monotonic() - began < 5
    assert parse_rule(r"(a+)+$").character_marks(["aaa", "ab"])[0].all()  # a fresh child for the next rule


# -- chosen and scored as the atlas's own ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped_readings() -> tuple:
    """The shipped character model's readings over a small slice of its text (2,000 characters a part)."""
    trained = load_model(SHIPPED_CHAR)
    parts = [texts_from(text, name, trained.tokenizer, clean=False, tokens=2_000, max_reviews=0)
             for text, name in ((SHAKESPEARE[:200_000], "first 200k"), (SHAKESPEARE[-100_000:], "last 100k"))]
    return trained, parts, read_parts(trained, *parts)


def test_a_rules_row_is_the_atlas_row_of_the_same_property(shipped_readings):
    """`since \\n` is the position in the line: chosen and scored by the same code on the same text, its row is the
    atlas's own, unit, score and random baseline."""
    trained, parts, readings = shipped_readings
    atlas = rule_atlas(trained, [parse_rule(r"line=since \n")], readings)
    own = next(e for e in build_atlas(trained, *parts, keep_examples=False)["properties"]
               if e["property"] == "position_in_line")
    (row,) = atlas["properties"]
    assert row["property"] == "line" and row["metric"] == "r" and "dial" not in row
    assert {key: row[key] for key in ("layer", "unit", "quantity", "sign")} == \
        {key: own[key] for key in ("layer", "unit", "quantity", "sign")}
    assert row["score"] == pytest.approx(own["score"], abs=1e-3)
    assert row["baseline"] == pytest.approx(own["baseline"], abs=1e-3)


def test_a_speaker_rule_finds_a_unit_far_above_the_random_model(shipped_readings):
    trained, _, readings = shipped_readings
    atlas = rule_atlas(trained, [parse_rule(r"speaker=^[A-Z][A-Za-z ]*:$"), parse_rule(r"vowels=[aeiou]")], readings)
    assert [row["property"] for row in atlas["properties"]] == ["speaker", "vowels"]
    speaker = atlas["properties"][0]
    assert set(speaker) == ENTRY_KEYS and speaker["metric"] == "auc"
    assert speaker["score"] > 0.9 and speaker["score"] > speaker["baseline"], speaker
    assert 1 <= speaker["layer"] <= 2 and 0 <= speaker["unit"] < 512 and speaker["quantity"] in ("h", "c")
    assert (atlas["choose"]["source"], atlas["score"]["source"]) == ("first 200k", "last 100k")
    assert atlas["examples"] and all(example["text"] in SHAKESPEARE for example in atlas["examples"])


@pytest.mark.parametrize("written, message", [
    ("never=zzz", ("never (text matching zzz) holds on 0 of the 2,000 tokens of the first 200k, as the model reads "
                   "it: a unit is scored where it holds on at least 20 tokens and fails on 20")),
    (r"always=.|\n", "holds on 2,000 of the 2,000 tokens"),
    (r"flat=since .|\n", r"flat (the tokens since a match of .|\n) does not vary"),
])
def test_a_rule_the_text_holds_too_little_of_is_refused(shipped_readings, written, message):
    trained, _, readings = shipped_readings
    with pytest.raises(SettingsError) as refused:
        rule_atlas(trained, [parse_rule(written)], readings)
    assert message in str(refused.value)


def test_two_rules_of_one_name_are_refused(shipped_readings):
    trained, _, readings = shipped_readings
    with pytest.raises(RuleError, match="two rules are named rule: give each its own NAME="):
        rule_atlas(trained, [parse_rule("a"), parse_rule("b")], readings)


# -- the command -----------------------------------------------------------------------------------------------------
def test_the_command_prints_the_rules_rows_in_the_atlas_schema_and_writes_nothing(char_model, tmp_path, capsys):
    model = shutil.copytree(char_model, tmp_path / char_model.name)
    assert main(["atlas", str(model), "--rule", r"speaker=^[A-Z][A-Za-z ]*:$", "--rule", r"line=since \n",
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    shipped = read_atlas(SHIPPED_CHAR)
    assert set(printed) == set(shipped)
    assert set(printed["choose"]) == set(shipped["choose"]) and set(printed["score"]) == set(shipped["score"])
    assert [row["property"] for row in printed["properties"]] == ["speaker", "line"]
    assert all(set(row) == ENTRY_KEYS for row in printed["properties"])
    assert [row["metric"] for row in printed["properties"]] == ["auc", "r"]
    assert printed["choose"]["tokens"] <= RULE_TOKENS and printed["choose"]["rated_reviews"] == 0
    assert not (model / ATLAS_FILE).exists()
    assert main(["atlas", str(model), "--rule", "vowels=[aeiou]"]) == 0
    table = capsys.readouterr().out
    assert re.search(r"^vowels +L[12] [hc] \d+ +auc +0\.\d{3} +0\.\d{3}", table, re.MULTILINE), table
    assert "written:" not in table


@pytest.mark.parametrize("args, message", [
    (["--rule", "("], "lmdemo: error: not a regular expression Python reads"),
    (["--rule", "a", "--rule", "b"], "lmdemo: error: two rules are named rule"),
    (["--rule", "a", "--reviews", "10"], "--reviews is for sentiment, which --rule does not score"),
])
def test_the_command_refuses_a_bad_rule_in_one_line(char_model, args, message, capsys):
    assert main(["atlas", str(char_model), *args]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


# -- the web ---------------------------------------------------------------------------------------------------------
class Owner:
    """Stands for a served model: the readings are keyed by it, weakly."""


def test_the_readings_are_read_once_per_model_kept_for_a_few_and_forgotten():
    kept = RuleReadings(2)
    models = {name: Owner() for name in ("first", "second", "third")}
    reads = []

    def read(name: str) -> str:
        kept.read(models[name], lambda: reads.append(name) or f"readings of {name}")
        return kept.read(models[name], lambda: pytest.fail("read twice"))

    assert read("first") == "readings of first"
    read("second")
    read("third")  # the least recently used goes
    assert len(kept) == 2
    read("first")
    assert reads == ["first", "second", "third", "first"]
    del models["third"]  # a model the registry drops takes its readings with it
    gc.collect()
    assert len(kept) == 1
    kept.forget_idle(0.0)
    assert len(kept) == 0


def test_a_rules_unit_is_shown_over_the_visitors_text_and_where_it_holds_most(char_model):
    models = Models({"tiny": str(char_model)})
    view, inside = AtlasView(models), Inside(models)
    text = inside.text(None, "tiny", "ROMEO:\nWhat say you?\n", 0)
    found, reading = view.rule(text, "tiny", r"tags=<b>|[A-Z]")
    (row,) = found.rows
    assert row.property == "tags" and row.description == "text matching <b>|[A-Z]" and found.model == "tiny"
    first, *examples = reading.texts
    assert first.title == YOUR_TEXT and "".join(first.pieces) == "ROMEO:\nWhat say you?\n"
    assert "".join(p for p, hold in zip(first.pieces, first.holds) if hold) == "ROMEOW"
    assert [example.title for example in examples] == ["held-out text 1", "held-out text 2"]
    assert all(0 < sum(example.holds) < len(example.holds) for example in examples)
    shown = render.unit_text_html(reading)
    assert render.escape(row.sentence) in shown and "&lt;b&gt;" in shown and "<b>|" not in shown
    assert shown.count('class="tok holds"') == sum(sum(t.holds) for t in reading.texts)
    assert len(view.readings) == 1
    view.rule(None, "tiny", "vowels=[aeiou]")  # the text is read once per model
    assert len(view.readings) == 1


def test_a_model_whose_text_is_not_here_says_so(char_model, tmp_path):
    folder = Path(shutil.copytree(char_model, tmp_path / "moved"))
    config = json.loads((folder / "config.json").read_text())
    config["data"] = str(tmp_path / "gone.txt")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(SettingsError, match=r"the text this model trained on \(\S*gone.txt\) is not on this server"):
        AtlasView(Models({"moved": str(folder)})).rule(None, "moved", r"\d")


# -- the page --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rule_server(char_model, tmp_path_factory) -> Iterator[str]:
    with app_serving([char_model], tmp_path_factory, "--no-train", name="rule-app") as url:
        yield url


@pytest.mark.browser
def test_the_inside_tab_finds_a_unit_for_a_written_rule(rule_server):
    with chromium_page(rule_server) as page:
        page.get_by_role("tab", name="Inside the LSTM").click()
        box = page.locator("#rule-box textarea")
        box.fill("(")
        page.locator("#rule-find").click()
        page.get_by_text("not a regular expression Python reads").first.wait_for(timeout=30_000)
        box.fill(r"speaker=^[A-Z][A-Za-z ]*:$")
        page.locator("#rule-find").click()
        sentence = page.locator("#rule-unit .lm-atlas-sentence b")
        sentence.wait_for(timeout=60_000)
        assert re.fullmatch(r"Unit \d+ of layer [12]'s [hc] is (high|low) on text matching \^\[A-Z\]\[A-Za-z \]\*:\$ "
                            r"and (low|high) elsewhere\.", sentence.inner_text())
        row = page.locator("#rule-table").inner_text()
        assert "speaker" in row and sentence.inner_text() in row and "AUC" in row
        assert "scored on the test split" in page.locator("#rule-status").inner_text()
        tokens = page.locator("#rule-unit .lm-text .tok")
        assert tokens.count() > 100
        colours = {tokens.nth(i).evaluate("e => getComputedStyle(e).backgroundColor") for i in range(60)}
        assert len(colours) > 5, colours  # coloured by the unit's value, not one shade
        assert page.locator("#rule-unit .tok.holds").count() > 0  # where the rule holds, underlined
        assert not page.elsewhere, f"the page fetched from other hosts: {page.elsewhere}"
