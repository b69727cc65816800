"""The Inside tab's atlas: rows and sentences written from atlas.json, a unit over a text, the atlas a trainer
writes for its own model, and the page opening on the atlas in a real browser."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from browser import chromium_page
from conftest import DATA, ROOT
from servers import app_serving

from lmdemo.atlas import EXAMPLE_REVIEWS, build_atlas, read_atlas, stream_texts, texts_from, write_atlas
from lmdemo.checkpoint import load_model
from lmdemo.cli import main
from lmdemo.generation import SettingsError
from lmdemo.internals import read_internals
from lmdemo.properties import PROPERTIES, properties_for, truth
from lmdemo.web import render
from lmdemo.web.atlas_view import YOUR_TEXT, AtlasView, rows_of
from lmdemo.web.inside import Inside, InsideText
from lmdemo.web.registry import Models

SHAKESPEARE = (DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
STRUCTURAL_CHAR = {prop.name for prop in properties_for("char")}
DESCRIPTIONS = {prop.name: prop.description for prop in PROPERTIES}
HEADING_CHARACTERS = 30  # a card heading stays on one line, cut where it overflows: 30 characters fit the narrowest
# card (380 px, bold at 1.05rem), beside its token count


def entry(name: str, metric: str, sign: int, description: str = "", **more) -> dict:
    return {"property": name, "description": description, "layer": 2, "unit": 17, "quantity": "h", "metric": metric,
            "score": 0.8, "baseline": 0.55, "sign": sign, **more}


@pytest.mark.parametrize("row, sentence", [
    (entry("sentiment", "accuracy", 1, "the review's sentiment"),
     "Unit 17 of layer 2's h rises through a positive review and falls through a negative one"),
    (entry("sentiment", "accuracy", -1, "the review's sentiment"),
     "Unit 17 of layer 2's h falls through a positive review and rises through a negative one"),
    (entry("position_in_line", "r", 1, "the position in the line"),
     "Unit 17 of layer 2's h rises along each line and drops at a newline."),
    (entry("position_in_sentence", "r", -1, "the position in the sentence"),
     "Unit 17 of layer 2's h falls through each sentence and jumps back at its end."),
    (entry("depth", "r", 1, "the depth of nesting"), "Unit 17 of layer 2's h rises with the depth of nesting."),
    (entry("vowel", "auc", 1, "vowels"), "Unit 17 of layer 2's h is high on vowels and low elsewhere."),
    (entry("upper_case", "auc", -1, "upper-case letters"),
     "Unit 17 of layer 2's h is low on upper-case letters and high elsewhere."),
    (entry("sentence_end_next", "auc", -1, DESCRIPTIONS["sentence_end_next"]),
     "Unit 17 of layer 2's h is low on the last token before a sentence ends (. ! ?) and high elsewhere."),
])
def test_each_row_gets_one_plain_sentence_by_its_kind_and_direction(row, sentence):
    assert rows_of({"properties": [row]})[0].sentence.startswith(sentence)


@pytest.mark.parametrize("sign, value, rated, said", [
    (-1, -0.62, "positive", "The unit ends at -0.62, below its threshold +0.12: read as positive, as rated."),
    (-1, 0.31, "positive", "The unit ends at +0.31, above its threshold +0.12: read as negative, but rated positive: "
                           "a miss."),
    (1, 0.31, "positive", "The unit ends at +0.31, above its threshold +0.12: read as positive, as rated."),
    (-1, 0.05, None, "The unit ends at +0.05, below its threshold +0.12: read as positive."),
])
def test_a_sentiment_reading_says_what_the_units_end_value_means(sign, value, rated, said):
    row = rows_of({"properties": [entry("sentiment", "accuracy", sign, "the review's sentiment", threshold=0.12)]})[0]
    assert row.end_reading(value, rated) == said


def test_the_atlas_table_has_one_row_per_property_with_its_unit_score_and_baseline():
    atlas = {"properties": [entry("number", "auc", 1, "numbers"), entry("sentiment", "accuracy", -1, "sentiment")]}
    rows = rows_of(atlas)
    frame = render.atlas_frame(type("Atlas", (), {"rows": rows})())
    assert list(frame.columns) == ["property", "unit", "metric", "score", "random", "what it does"]
    assert frame.values.tolist() == [
        ["number", "layer 2 · h · unit 17", "AUC", "0.800", "0.550", rows[0].sentence],
        ["sentiment", "layer 2 · h · unit 17", "accuracy", "80.0%", "55.0%", rows[1].sentence]]


@pytest.fixture(scope="module")
def atlas_model(char_model, tmp_path_factory) -> Path:
    """The tests' character model with an atlas of its own (small texts: a few seconds)."""
    folder = shutil.copytree(char_model, tmp_path_factory.mktemp("atlas") / "shakespeare-atlas")
    trained = load_model(folder)
    parts = [texts_from(text, name, trained.tokenizer, clean=False, tokens=4_000)
             for text, name in ((SHAKESPEARE[:200_000], "the first 200k"), (SHAKESPEARE[-100_000:], "the last 100k"))]
    write_atlas(folder, build_atlas(trained, *parts))
    return folder


def test_a_model_without_an_atlas_gets_one_line_and_the_detailed_view(char_model):
    view = AtlasView(Models({"plain": str(char_model)}))
    assert view.atlas("plain") is None
    message = render.atlas_markdown("plain", None)
    assert "**plain** has no cell atlas" in message and "detailed view" in message and "\n" not in message
    with pytest.raises(SettingsError, match="plain has no cell atlas"):
        view.unit(None, "plain", "vowel")


def test_a_rows_unit_is_shown_over_the_text_and_held_out_examples(atlas_model):
    models = Models({"atlas": str(atlas_model)})
    view, inside = AtlasView(models), Inside(models)
    atlas = view.atlas("atlas")
    assert [row.property for row in atlas.rows] == [e["property"] for e in read_atlas(atlas_model)["properties"]]
    assert "the first 200k" in render.atlas_markdown("atlas", atlas)
    row = next(row for row in atlas.rows if row.property == "upper_case")
    text = inside.text(None, "atlas", "ROMEO:\nWhat say you?\n", 0)
    reading = view.unit(text, "atlas", "upper_case")
    first, *examples = reading.texts
    assert first.title == YOUR_TEXT and "".join(first.pieces) == "ROMEO:\nWhat say you?\n"
    assert first.caption == f"{text.description}." and all(not example.caption for example in examples)
    assert len(examples) == 2 and all(text.title.startswith("held-out text") for text in examples)
    # the values are the unit's own, as the cell that generates text holds them
    generator = models.generator("atlas")
    for text in reading.texts:
        ids = generator.tokenizer.encode("".join(text.pieces))
        held = read_internals(generator, ids, len(ids)).values[row.quantity][row.layer - 1][:, row.unit]
        torch.testing.assert_close(torch.tensor(text.values), held, rtol=0, atol=1e-4)
        prop = next(p for p in PROPERTIES if p.name == "upper_case")
        assert text.holds == truth(text.pieces, [prop])[:, 0].astype(bool).tolist()
    # the examples are those where the property holds most (both answers present)
    assert all(0 < sum(text.holds) < len(text.holds) for text in examples)
    shown = render.unit_text_html(reading)
    assert render.escape(row.sentence) in shown and render.escape(first.caption) in shown
    assert shown.count('class="tok holds"') == sum(sum(t.holds) for t in reading.texts)
    assert len(re.findall(r'style="background:rgba\(', shown)) == sum(len(t.values) for t in reading.texts)
    with pytest.raises(SettingsError, match="has no property 'sentiment'"):
        view.unit(None, "atlas", "sentiment")


def test_a_long_text_shows_its_end_but_the_examples_stay_whole(atlas_model):
    models = Models({"atlas": str(atlas_model)})
    view, inside = AtlasView(models), Inside(models)
    text = inside.text(None, "atlas", SHAKESPEARE[:1_000], 0)
    reading = view.unit(text, "atlas", "position_in_line")
    first, *examples = reading.texts
    assert len(first.tokens) == inside.limits.max_inside_tokens and first.cut == len(text.ids) - len(first.tokens)
    assert all(example.cut == 0 for example in examples)
    assert SHAKESPEARE[:1_000].endswith("".join(first.pieces))


def test_every_card_heading_is_short_and_the_text_is_described_under_it(atlas_model):
    """A sample's description ("the prompt (19 tokens) and its sample at T = 0.8 (200 tokens)") is too long for a
    card heading, which stays on one line: it goes under the heading, whole."""
    models = Models({"atlas": str(atlas_model)})
    generator = models.generator("atlas")
    description = "the prompt (19 tokens) and its sample at T = 0.8 (200 tokens)"
    text = InsideText("atlas", generator.tokenizer.encode(SHAKESPEARE[:219]), description, [])
    reading = AtlasView(models).unit(text, "atlas", "upper_case")
    assert all(len(shown.title) <= HEADING_CHARACTERS for shown in reading.texts), [t.title for t in reading.texts]
    assert reading.texts[0].caption == f"{description}."
    assert f"<p class=\"lm-note lm-caption\">{render.escape(description)}.</p>" in render.unit_text_html(reading)


@pytest.mark.parametrize("name", ["imdb-word", "imdb-bpe"])
def test_the_shipped_sentiment_examples_show_what_the_unit_does(name):
    """The rated reviews under the sentiment row agree with its sentence: typical ones of each label, read right by
    the unit's value at their end, and one review it misreads, shown as a miss; each says what the unit read."""
    view = AtlasView(Models({name: str(ROOT / "checkpoints" / name)}))
    reading = view.unit(None, name, "sentiment")
    entry = next(e for e in read_atlas(ROOT / "checkpoints" / name)["properties"] if e["property"] == "sentiment")
    rated = [text.title.removeprefix("a ").removesuffix(" review") for text in reading.texts]
    read_as = ["positive" if entry["sign"] * (text.values[-1] - entry["threshold"]) > 0 else "negative"
               for text in reading.texts]
    right = [label for label, read in zip(rated, read_as) if label == read]
    assert (right.count("positive"), right.count("negative"), len(rated) - len(right)) == \
        (EXAMPLE_REVIEWS, EXAMPLE_REVIEWS, 1), list(zip(rated, read_as))
    # the colours are centred on the threshold: a review ends red where the unit's rise reads it, as the row says
    rising = "positive" if entry["sign"] > 0 else "negative"
    sections = render.unit_text_html(reading).split("<section")[1:]
    for text, section, label, read in zip(reading.texts, sections, rated, read_as):
        assert text.caption.startswith(f"The unit ends at {text.values[-1]:+.2f}")
        assert text.caption.endswith("as rated." if label == read else f"but rated {label}: a miss.")
        red = re.findall(r"background:rgba\((\d+),(\d+),(\d+),", section)[-1] == tuple(map(str, render.POSITIVE_RGB))
        assert red == (read == rising), (text.values[-1], section[-300:])


def test_stream_texts_cut_an_encoded_split_at_line_starts(char_model):
    tokenizer = load_model(char_model).tokenizer
    ids = tokenizer.encode(SHAKESPEARE[:30_000])
    texts = stream_texts(ids, "a split", tokenizer, tokens=2_000)
    assert texts.source == "a split" and not texts.reviews and 4 <= len(texts.passages) <= 5
    text = "".join(tokenizer.pieces(ids))
    for passage in texts.passages:
        piece = "".join(tokenizer.pieces(passage))
        at = text.find(piece)
        assert at == 0 or text[at - 1] == "\n", piece[:40]


def test_train_with_atlas_writes_structural_properties_from_its_own_splits(tmp_path):
    """`train --atlas` (what a Train tab job runs): the best model's atlas, chosen on the training split, scored on
    the validation split, structural properties only, and no passage of its text (a visitor's text stays theirs)."""
    text = tmp_path / "play.txt"
    text.write_text(SHAKESPEARE[:30_000], encoding="utf-8")
    assert main(["train", "--data", str(text), "--level", "char", "--out", str(tmp_path / "with-atlas"), "--quiet",
                 "--atlas", "--emb-size", "16", "--hidden-size", "32", "--num-layers", "1", "--max-steps", "40",
                 "--batch-size", "8", "--bptt", "32", "--precision", "fp32"]) == 0
    atlas = read_atlas(tmp_path / "with-atlas" / "model")
    names = {e["property"] for e in atlas["properties"]}
    assert names and names <= STRUCTURAL_CHAR and "sentiment" not in names
    assert (atlas["choose"]["source"], atlas["score"]["source"]) == (f"train split of {text}", f"valid split of {text}")
    assert atlas["examples"] == []
    assert all(0 <= e["baseline"] <= 1 for e in atlas["properties"])


# -- the page ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def atlas_server(atlas_model, tmp_path_factory) -> Iterator[str]:
    with app_serving([atlas_model], tmp_path_factory, name="atlas-app") as url:
        yield url


@pytest.mark.browser
def test_the_inside_tab_opens_on_the_atlas_and_a_row_colours_its_unit(atlas_server, atlas_model):
    rows = rows_of(read_atlas(atlas_model))
    with chromium_page(atlas_server) as page:
        page.get_by_role("tab", name="Inside the LSTM").click()
        table = page.locator("#atlas-table")
        table.get_by_text(rows[0].sentence).first.wait_for(timeout=30_000)
        assert page.locator("#atlas-status").get_by_text("What the units of shakespeare-atlas follow").count() == 1
        opening = page.locator("#atlas-unit .lm-atlas-sentence").inner_text()
        assert rows[0].sentence in opening
        last = rows[-1]
        table.get_by_test_id(f"cell-{len(rows) - 1}-0").click()  # the last row's property
        page.locator("#atlas-unit .lm-atlas-sentence").get_by_text(last.sentence).wait_for(timeout=30_000)
        tokens = page.locator("#atlas-unit .lm-text .tok")
        assert tokens.count() > 100
        colours = {tokens.nth(i).evaluate("e => getComputedStyle(e).backgroundColor") for i in range(40)}
        assert len(colours) > 5, colours  # coloured by value, not one shade
        # after a run the unit is shown over the prompt and its first sample: every card heading is seen whole
        page.get_by_role("tab", name="Sample", exact=True).click()
        page.get_by_role("button", name="Generate").click()
        page.get_by_text("Done").first.wait_for(timeout=60_000)
        page.get_by_role("tab", name="Inside the LSTM").click()
        page.locator("#atlas-unit").get_by_text("its sample at T =").wait_for(timeout=30_000)
        cut = page.locator("#atlas-unit .lm-col header b").evaluate_all(
            "headings => headings.filter(b => b.getBoundingClientRect().right > "
            "b.closest('section').getBoundingClientRect().right).map(b => b.textContent)")
        assert cut == [], f"card headings cut at the card's edge: {cut}"
        assert not page.elsewhere, f"the page fetched from other hosts: {page.elsewhere}"
