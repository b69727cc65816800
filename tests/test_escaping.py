"""Escape once, everywhere (issue 30): a text from a model, a tokenizer or a visitor reads as written in every status
line, toast, card and heading of the page, whatever it holds: `<unk>`, `<eos>`, `<script>`, `&amp;`, `*`, `_`,
backticks. The page used to show "⚠️ 2 words not in the model's vocabulary became" and stop: its Markdown took
`<unk>` for a tag, and the list of unknown words went with it.

The model here is the tests' word model in a folder whose name (the model's name on the page) and training-data path
hold all of them, and the prompt holds them as words the model never saw.
"""

from __future__ import annotations

import html
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from browser import chromium_page
from servers import app_serving

from lmdemo.generation import SettingsError
from lmdemo.web import render
from lmdemo.web.demo import Demo
from lmdemo.web.forms import Limits, read_sampling
from lmdemo.web.inside import Inside
from lmdemo.web.registry import Models

MARKUP = "<unk> <eos> <script> &amp; *a* _b_ `c`"
NAME = f"ptb {MARKUP}"  # a folder's name: no "/"
DATA = f"/corpora/{MARKUP}/train_*x*.txt"  # the training data, as the model's config names it
PROMPT = "the company said <script>alert(1)</script> *a* _b_ `c` &amp; 你好 <eos> and"
BAD_TEMPERATURE = "<unk>&amp;*a*_b_`c`"  # one form value, quoted back in the error's toast
WAIT_MS = 120_000


def words(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def marked_model(word_model, tmp_path_factory) -> Path:
    """The tests' word model, named and trained (as its config says) on paths full of markup."""
    folder = shutil.copytree(word_model, tmp_path_factory.mktemp("escaping") / NAME)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "data": DATA}))
    return folder


@pytest.fixture(scope="module")
def expected(marked_model, char_model) -> dict[str, str]:
    """What the page must show, as the library words it: the prompt's note, the data's name, the error message."""
    models = Models({NAME: str(marked_model)})
    (note,) = [n for n in models.generator(NAME).prompt(PROMPT, Limits().max_prompt_tokens).notes if "<unk>" in n]
    with pytest.raises(SettingsError) as refused:
        read_sampling(Limits(), BAD_TEMPERATURE, 20, 0, 1, 0)
    return dict(note=note, data=models.describe(NAME).data, refused=str(refused.value))


def test_escape_keeps_every_markup_character_as_written():
    escaped = render.escape(MARKUP + ' "quoted" \\ [link](x) a|b ~c~')
    assert html.unescape(escaped) == MARKUP + ' "quoted" \\ [link](x) a|b ~c~'
    assert not set(escaped) & set('<>"\\`*_[]|~') and "&amp;amp;" in escaped and "'" == render.escape("'")


def test_every_text_of_a_visitor_or_a_model_reaches_the_page_escaped(marked_model, char_model, expected):
    """In-process: each Markdown, HTML and Plotly text that carries the model's name, its data, the prompt's note or a
    refused value carries it escaped, never raw."""
    models = Models({NAME: str(marked_model), "char": str(char_model)})
    demo, inside = Demo(models), Inside(models)
    sampling = read_sampling(demo.limits, "0.5, 1", 20, 0, 1, 3)
    for progress in demo.generate(NAME, PROMPT, sampling):
        pass
    view = inside.units(inside.text(progress, NAME, PROMPT, 1), 2, "h", "variable", 4)
    shown = {"status": render.status_markdown(progress), "card": render.model_markdown(models.describe(NAME)),
             "compare": render.compare_markdown(demo.compare([NAME, "char"], PROMPT, sampling)),
             "inside": render.inside_markdown(view), "atlas": render.atlas_markdown(NAME, None),
             "refused": render.refused(expected["refused"], "Check the settings").message,
             "bars": render.next_token_figure(demo.next_tokens(progress, 0, 0))["layout"]["title"]["text"]}
    wanted = {"status": [expected["note"]], "card": [NAME, expected["data"]], "compare": [NAME, expected["note"]],
              "inside": [NAME, expected["note"]], "atlas": [NAME], "refused": [expected["refused"]], "bars": ["<unk>"]}
    for where, texts in wanted.items():
        for text in texts:
            assert render.escape(text) in shown[where] and text not in shown[where], (where, text, shown[where])


@pytest.fixture(scope="module")
def server(marked_model, char_model, tmp_path_factory) -> Iterator[str]:
    with app_serving([marked_model, char_model], tmp_path_factory, name="escaping-app") as url:
        yield url


def settled(page) -> None:
    page.wait_for_function("!document.querySelector('.pending, .generating')", timeout=WAIT_MS)


def toasts(page) -> str:
    return words(" ".join(page.locator("[data-testid=toast-text]").all_inner_texts()))


@pytest.mark.browser
def test_status_lines_toasts_cards_and_headings_show_markup_as_written(server, expected):
    """The real page, as a visitor reads it (`innerText`): Sample's card, status, toast, prompt and bars' title;
    a refused value's toast; Inside's headings; Compare's status, table and cards."""
    note, data = words(expected["note"]), words(expected["data"])
    with chromium_page(server) as page:
        shown = page.locator("[role=tabpanel]:visible")
        card = shown.get_by_text("word-level LSTM").first
        assert NAME in words(card.inner_text()) and data in words(card.inner_text())

        shown.get_by_role("textbox", name="Prompt").first.fill(PROMPT)
        page.get_by_role("button", name="Generate").click()
        page.get_by_text("Next token after").first.wait_for(timeout=WAIT_MS)
        settled(page)
        status = words(shown.locator(".prose", has_text="tokens/s").first.inner_text())
        assert f"⚠️ {note}" in status, status
        assert note in toasts(page)
        assert "<unk>" in shown.locator("#samples .ctx").first.inner_text()  # the prompt as read, before each sample
        title = words(shown.locator(".js-plotly-plot .gtitle").first.text_content())
        assert "<unk>" in title and "<unk>" in note, title
        endings = [words(t).split("ended at ")[-1] for t in shown.locator("#samples header small").all_inner_texts()
                   if "ended at" in t]
        assert set(endings) <= {"<eos>", "stop string"}, endings

        page.get_by_label("Temperatures", exact=False).first.fill(BAD_TEMPERATURE)
        page.get_by_role("button", name="Generate").click()
        page.get_by_text("must be a number").first.wait_for(timeout=WAIT_MS)
        assert words(expected["refused"]) in toasts(page)

        page.get_by_role("tab", name="Inside the LSTM").click()
        assert f"{NAME} has no cell atlas" in words(page.locator("#atlas-status").inner_text())
        page.get_by_role("button", name="Show units").click()
        heading = page.get_by_text("reading the prompt").first
        heading.wait_for(timeout=WAIT_MS)
        assert f"{NAME} reading the prompt" in words(heading.inner_text()) and note in words(heading.inner_text())

        page.get_by_role("tab", name="Compare").click()
        shown.get_by_role("textbox", name="Prompt").fill(PROMPT)
        page.get_by_role("button", name="Compare", exact=True).click()
        page.get_by_text("validation (training log)").wait_for(timeout=WAIT_MS)
        settled(page)
        text = words(shown.inner_text())
        assert f"{NAME}: Done" in text and f"⚠️ {note}" in text, text
        header = words(shown.locator("table th").nth(1).inner_text())
        assert header == NAME, header
        assert text.count(f"{NAME} — word-level LSTM") == 1 and data in text
        assert not page.elsewhere, f"the page fetched from other hosts: {page.elsewhere}"
