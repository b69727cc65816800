"""The Sample tab's next-token position: its slider runs to the chosen column's own end, and the chosen position is
marked in that column's text (issue 30, item 9)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator

import pytest
from browser import chromium_page
from servers import app_serving, wait_until

from lmdemo.checkpoint import read_examples
from lmdemo.web import render
from lmdemo.web.demo import Demo, Progress
from lmdemo.web.forms import Limits, read_sampling
from lmdemo.web.gate import Gate, Serving
from lmdemo.web.registry import Models
from lmdemo.web.sample_tab import SampleEvents

SEED, LENGTH = 7, 120


def stop_text_ending_early(short: str, others: list[str], from_character: int = 8) -> str:
    """Four characters of `short` that no other text holds (first met from `from_character` on, no newline): as the
    stop text, they end that sample there, a short column, and leave the others as they were."""
    for start in range(from_character, len(short) - 4):
        piece = short[start:start + 4]
        if not re.search(r"[\n↵]", piece) and piece not in short[:start + 3] and all(piece not in o for o in others):
            return piece
    pytest.fail(f"no stop text would end {short!r} early: try another seed")


def chosen_tokens(samples_html: str) -> list[tuple[int, int | None]]:
    """Where the page's samples are marked: (column, the marked token's position in it, None for its end)."""
    columns = re.findall(r'<section class="lm-col">(.*?)</section>', samples_html, flags=re.DOTALL)
    found = []
    for column, body in enumerate(columns):
        spans = re.findall(r'<span class="([^"]*)"', body)
        tokens = [classes.split() for classes in spans if {"tok", "lm-chosen"} & set(classes.split())]
        found += [(column, position if "tok" in classes else None)
                  for position, classes in enumerate(tokens) if "lm-chosen" in classes]
    return found


# -- in-process: the tab's handlers -------------------------------------------------------------------
@pytest.fixture(scope="module")
def events_and_run(char_model) -> tuple[SampleEvents, Progress]:
    """The tab's handlers on the tiny char model, and a finished run whose first column (T = 1.3) stopped early
    and whose second (T = 0.2) ran to its full length."""
    models, limits = Models({"char": str(char_model)}), Limits()
    events = SampleEvents(Demo(models, limits), Gate(Serving(decode="per-request")))
    prompt = read_examples(char_model)[0]

    def finished(stop: str = "") -> Progress:
        for progress in events.demo.generate("char", prompt, read_sampling(limits, "1.3, 0.2", LENGTH, 0, 1, SEED,
                                                                           stop)):
            pass
        return progress

    full = finished()
    run = finished(stop_text_ending_early(full.samples[0].text, [full.samples[1].text]))
    assert len(run.samples[0].ids) < len(run.samples[1].ids) == LENGTH
    return events, run


def test_after_a_run_the_slider_runs_to_the_first_columns_own_end(events_and_run):
    events, run = events_and_run
    which, position, *_ = events.on_finished(None, run)
    assert (position.maximum, position.value) == (len(run.samples[0].ids), 0)
    assert which.value == 0


def test_a_sample_that_took_no_token_still_gets_a_slider(events_and_run):
    """A sample that ended at once (its first token was the stop text, or the end of the text) has nothing past
    position 0; its slider still has a range (the soak bench found 71 runs failing with Gradio's "Slider minimum must
    be less than maximum")."""
    events, run = events_and_run
    empty = dataclasses.replace(run.samples[0], ids=[], tokens=[], probabilities=[], pieces=[])
    _, position, *_ = events.on_finished(None, dataclasses.replace(run, samples=[empty, *run.samples[1:]]))
    assert (position.minimum, position.maximum, position.value) == (0, 1, 0)


def test_choosing_a_column_re_ranges_the_slider_and_clamps_its_value(events_and_run):
    events, run = events_and_run
    short, long = (len(sample.ids) for sample in run.samples)
    slider, samples = events.on_column(run, 1, short + 5)
    assert (slider.maximum, slider.value) == (long, short + 5), "the long column keeps the position"
    assert chosen_tokens(samples) == [(1, short + 5)]
    slider, samples = events.on_column(run, 0, short + 5)
    assert (slider.maximum, slider.value) == (short, short), "the short column ends the slider at its own end"
    assert chosen_tokens(samples) == [(0, None)], "its end is marked, after its last token"


def test_the_mark_follows_the_position_on_the_chosen_column_only(events_and_run):
    events, run = events_and_run
    assert chosen_tokens(events.on_position(run, 0, 3)) == [(0, 3)]
    assert chosen_tokens(events.on_position(run, 1, 0)) == [(1, 0)]
    assert chosen_tokens(render.samples_html(run)) == [], "Compare's columns (no bars under them) carry no mark"
    marked = re.search(r'<span class="tok [^"]*lm-chosen[^"]*" title="[^"]*">(.*?)</span>',
                       events.on_position(run, 0, 3)).group(1)
    assert marked == render.escape(run.samples[0].pieces[3]).replace("\n", render.NEWLINE)


# -- in the browser -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(char_model, tmp_path_factory) -> Iterator[str]:
    """`python app.py` on the tiny char model alone (the page opens on it, with its first example prompt)."""
    with app_serving([char_model], tmp_path_factory) as url:
        yield url


@pytest.mark.browser
def test_a_short_column_ends_the_slider_and_its_text_shows_the_position(server):
    with chromium_page(server) as page:
        page.get_by_label("Temperatures", exact=False).fill("0.2, 1.3")
        page.get_by_role("button", name="Generate").click()
        page.get_by_text("Next token after").first.wait_for(timeout=60_000)  # done, and /after_generate answered
        columns, picker = page.locator("#samples .lm-col"), page.get_by_label("Sample", exact=True)
        texts = ["".join(column.locator(".tok").all_text_contents()) for column in columns.all()]
        choose(page, "T = 1.3")  # so that the next run's /after_generate is seen choosing T = 0.2 again
        page.get_by_label("Stop at (optional)").fill(stop_text_ending_early(texts[1], [texts[0]]))
        page.get_by_role("button", name="Generate").click()
        wait_until(lambda: picker.input_value() == "T = 0.2", 60, "the second run's bars never came")
        short = columns.nth(1).locator(".tok").count()
        assert short < len(columns.nth(0).locator(".tok").all()), "the stop text did not end the T = 1.3 column"

        choose(page, "T = 1.3")
        slider = page.locator("input[type=range][aria-label*='Position in the sample']")
        wait_until(lambda: slider.get_attribute("max") == str(short), 30,
                   lambda: f"the slider runs to {slider.get_attribute('max')}; the column has {short} tokens")
        box = page.locator("input[type=number][aria-label*='Position in the sample']")
        box.fill("3")
        box.press("Tab")  # leaving the box releases the slider, as letting go of its handle does
        marked = columns.nth(1).locator(".tok").nth(3)
        wait_until(lambda: "lm-chosen" in (marked.get_attribute("class") or ""), 30,
                   "the fourth token of the short column is not marked")
        assert page.locator("#samples .lm-chosen").count() == 1
        assert marked.evaluate("e => getComputedStyle(e).outlineStyle") != "none", "the mark is drawn"
        box.fill("999")  # typed past the end: the slider and the mark stop at the sample's end
        box.press("Tab")
        end = columns.nth(1).locator(".lm-end")
        wait_until(end.count, 30, "typing a position past the end did not mark the end of the short column")
        assert page.locator("#samples .lm-chosen").count() == 1 and box.input_value() == str(short)
        assert not page.elsewhere, f"the page fetched from other hosts: {page.elsewhere}"


def choose(page, column: str) -> None:
    """Pick a sample column for the next-token bars, as a visitor does."""
    page.get_by_label("Sample", exact=True).click()
    page.get_by_role("option", name=column).click()
