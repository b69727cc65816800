"""A link that reopens it (issue 31, item 3): "Copy link" on the Sample, Inside and Compare tabs gives the page's
address with the settings a visitor typed as its query, and a page opened on it sets the form and runs it again, to
the same samples, token for token, or the same view of the units."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import gradio as gr
import pytest
from browser import chromium_page
from servers import app_serving, wait_until

from lmdemo.generation import SettingsError
from lmdemo.web import links
from lmdemo.web.atlas_view import AtlasView
from lmdemo.web.compare_tab import CompareEvents
from lmdemo.web.demo import Demo
from lmdemo.web.forms import Limits, read_sampling
from lmdemo.web.gate import Gate, Serving
from lmdemo.web.inside import Inside
from lmdemo.web.inside_tab import ATLAS_UNIT, OPENED_VIEWS, RULE_UNIT, InsideEvents
from lmdemo.web.links import (
    SPAN_VIEW,
    UNITS_VIEW,
    CompareLink,
    InsideLink,
    SampleLink,
    read_query,
    write_query,
)
from lmdemo.web.registry import Models
from lmdemo.web.sample_tab import SampleEvents

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1",
       "PYTHONUNBUFFERED": "1"}
ENV.pop("LMDEMO_MODELS", None)
STEERABLE, PLAIN = "steerable-tiny", "shakespeare-tiny"
PROMPT = "ROMEO & JULIET:\n50% + 50% = #1?\té ✓ 😀"  # what a query must escape, and letters beyond ASCII
SPEECH = "ROMEO:\nWhat say you?\n\nJULIET:\n"  # a prompt the tiny model reads without <unk>
SPEAKER = r"speaker=^[A-Z][A-Za-z ]*:$"  # a rule the tiny model's text holds often enough to score


@pytest.fixture(scope="module")
def atlas_model(char_model, tmp_path_factory) -> Path:
    """The tiny char model with an atlas naming a steerable (made-up) unit, so the Sample tab shows its dial and the
    Inside tab its row."""
    folder = tmp_path_factory.mktemp("atlas") / STEERABLE
    shutil.copytree(char_model, folder)
    atlas = {"choose": {"source": "first 90%"}, "score": {"source": "test split"},
             "properties": [{"property": "sentiment", "layer": 2, "unit": 5, "quantity": "h", "metric": "accuracy",
                             "score": 0.8, "baseline": 0.55, "dial": {"negative": -0.9, "positive": 0.9}}]}
    (folder / "atlas.json").write_text(json.dumps(atlas))
    return folder


@pytest.fixture(scope="module")
def models(atlas_model, char_model) -> Models:
    return Models({STEERABLE: str(atlas_model), PLAIN: str(char_model)})


def sample_link(**changes) -> SampleLink:
    """A Sample link as a run makes it: numbers that only read back exactly when written in full."""
    sampling = read_sampling(Limits(), "0.1234567, 1, 1.3", 40, 5, 0.95, "18446744073709551615", "\n\n", True,
                             "2:5:h=-0.345678912")
    return replace(SampleLink.of(STEERABLE, PROMPT, sampling, column=1, position=7), **changes)


def inside_link(**changes) -> InsideLink:
    """An Inside link as its form makes it: the atlas row, a rule, and a span found on layer 1's cell state."""
    link = InsideLink.of(STEERABLE, PROMPT, "sentiment", f"  {SPEAKER} ", 1, "c", "change", 5.0, "3", "", SPAN_VIEW,
                         " 2", "+4")
    return replace(link, **changes)


def query_with(link: SampleLink | CompareLink | InsideLink, **values: str) -> str:
    """The link's query with some values replaced (or, given None, left out), as a hand-edited link would be."""
    pairs = {"tab": link.tab, **links.query_values(link), **values}
    return "?" + urlencode({key: value for key, value in pairs.items() if value is not None})


# -- in-process: writing and reading a link ----------------------------------------------------------------------
def test_a_sample_link_reads_back_as_the_same_settings(models):
    link = sample_link()
    query = write_query(link, models, Limits())
    assert query.startswith("?tab=sample&model=steerable-tiny&prompt=")
    assert read_query(query, models, Limits()) == link
    values = dict(parse_qsl(query[1:]))
    assert values["temperatures"] == "0.1234567, 1, 1.3" and values["seed"] == "18446744073709551615"
    assert values["dial"] == "2:5:h=-0.345678912" and values["avoid_unk"] == "1" and values["stop"] == "\n\n"
    assert (values["column"], values["position"]) == ("1", "7")
    assert not re.search(r"[/\\]tmp|pytest|checkpoints", query), "no server path in a link"


def test_a_compare_link_reads_back_as_the_same_settings(models):
    link = CompareLink.of(PLAIN, STEERABLE, PROMPT, read_sampling(Limits(), "0.5 1", 60, 0, 1, "7"))
    query = write_query(link, models, Limits())
    assert query.startswith("?tab=compare&model_a=shakespeare-tiny&model_b=steerable-tiny&prompt=")
    assert read_query(query, models, Limits()) == link


def test_an_inside_link_reads_back_as_the_same_view(models):
    link = inside_link()
    assert (link.rule, link.count, link.at, link.unit, link.first, link.last) == (SPEAKER, 5, 3, None, 2, 4)
    query = write_query(link, models, Limits())
    assert query.startswith("?tab=inside&model=steerable-tiny&prompt=")
    assert read_query(query, models, Limits()) == link
    values = dict(parse_qsl(query[1:], keep_blank_values=True))
    assert {key: values[key] for key in ("property", "rule", "layer", "quantity", "sort", "count", "at", "unit",
                                         "detail", "first", "last")} == \
        {"property": "sentiment", "rule": SPEAKER, "layer": "1", "quantity": "c", "sort": "change", "count": "5",
         "at": "3", "unit": "", "detail": "span", "first": "2", "last": "4"}
    assert not re.search(r"[/\\]tmp|pytest|checkpoints", query), "no server path in a link"
    plain = inside_link(model=PLAIN, property="", rule="", detail="", first=None, last=None)
    assert read_query(write_query(plain, models, Limits()), models, Limits()) == plain


def test_a_prompt_too_long_for_a_link_is_refused_never_cut(models):
    fits = sample_link(prompt="x" * links.MAX_PROMPT_CHARS)
    assert read_query(write_query(fits, models, Limits()), models, Limits()).prompt == fits.prompt
    with pytest.raises(SettingsError, match="the prompt has 1,501 characters and a link holds at most 1,500: "
                                            "shorten it to share it"):
        write_query(sample_link(prompt="x" * 1501), models, Limits())
    with pytest.raises(SettingsError, match="the link would be 12,.* characters long and holds at most 6,000 "
                                            ".*: shorten the prompt to share it"):
        write_query(sample_link(prompt="😀" * 1000), models, Limits())  # 12 characters each, escaped


def test_a_model_a_link_cannot_carry_is_refused(models, char_model):
    with pytest.raises(SettingsError, match="'char-tiny-1' is not served here"):
        write_query(sample_link(model="char-tiny-1"), models, Limits())  # a visitor's own model, this session only
    by_path = Models({str(char_model): str(char_model)})
    with pytest.raises(SettingsError, match="is served under its folder's path, which a link does not carry"):
        write_query(sample_link(model=str(char_model), dial=""), by_path, Limits())


@pytest.mark.parametrize("values, message", [
    ({"model": "nope"}, "model 'nope' is not served here"),
    ({"seed": "abc"}, "seed must be a whole number"),
    ({"top_p": "2"}, "top-p must be a number in \\(0, 1\\]"),
    ({"temperatures": "warm"}, "each temperature must be a number"),
    ({"max_new_tokens": "1e9"}, "max new tokens must be a whole number from 1 to 1000"),
    ({"avoid_unk": "yes"}, "avoid_unk must be 1 \\(on\\) or 0 \\(off\\)"),
    ({"dial": "9:0:h=1"}, "the dial's layer must be from 1 to 2"),
    ({"column": "3"}, "column must be from 0 to 2, one per temperature"),
    ({"position": "-1"}, "position must be from 0 to max_new_tokens, 40"),
    ({"seed": None}, "the link lacks seed"),
    ({"tab": "train"}, "a link opens the sample, inside or compare tab, not 'train'"),
])
def test_junk_in_a_link_is_refused_with_one_line(models, values, message):
    with pytest.raises(SettingsError, match=message) as refused:
        read_query(query_with(sample_link(), **values), models, Limits())
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("values, message", [
    ({"model": PLAIN}, "model 'shakespeare-tiny' has no cell atlas, so a link cannot show a unit of it"),
    ({"property": "nope"}, "steerable-tiny's atlas has no property 'nope'; choose one of: sentiment"),
    ({"rule": "("}, "not a regular expression Python reads"),
    ({"rule": "x" * 201}, "a rule may be at most 200 characters"),
    ({"prompt": "x" * 1501}, "the prompt has 1,501 characters and a link holds at most 1,500"),
    ({"layer": "3"}, "layer must be from 1 to 2 \\(got 3\\)"),
    ({"layer": "1.5"}, "layer must be a whole number"),
    ({"quantity": "z"}, "quantity must be one of 'h', 'c', 'input_gate', 'forget_gate', 'candidate', 'output_gate' \\(got 'z'\\)"),
    ({"sort": "best"}, "sort must be one of 'unit', 'active', 'variable', 'change'"),
    ({"count": "65"}, "count must be from 1 to 64"),
    ({"unit": "-1"}, "unit must be from 0 to"),
    ({"at": "1000"}, "at must be from 0 to 999"),
    ({"detail": "heatmap"}, "detail must be one of '', 'units', 'span'"),
    ({"first": ""}, "a span needs its first and last positions, the first not after the last"),
    ({"first": "9"}, "a span needs its first and last positions, the first not after the last"),
    ({"rule": None}, "the link lacks rule"),
])
def test_junk_in_an_inside_link_is_refused_with_one_line(models, values, message):
    with pytest.raises(SettingsError, match=message) as refused:
        read_query(query_with(inside_link(), **values), models, Limits())
    assert "\n" not in str(refused.value)


def test_a_dial_on_a_model_without_one_is_refused(models):
    with pytest.raises(SettingsError, match="model 'shakespeare-tiny' has no dial on the page"):
        read_query(query_with(sample_link(model=PLAIN)), models, Limits())


def test_a_query_without_a_tab_is_no_link_and_a_huge_one_is_refused_unread(models):
    assert read_query("", models, Limits()) is None
    assert read_query("?__theme=dark&__sign=abc", models, Limits()) is None  # a Space's own parameters
    assert read_query(query_with(sample_link(), __theme="dark"), models, Limits()) == sample_link()
    with pytest.raises(SettingsError, match="the link is 6,001 characters long; a link made here has at most 6,000"):
        read_query("?tab=sample&" + "x" * 5989, models, Limits())


# -- in-process: the tabs' handlers -------------------------------------------------------------------------------
def last(updates) -> tuple:
    """A streamed event's last update: the finished run."""
    for update in updates:
        pass
    return update


def test_the_sample_tabs_link_reopens_the_same_samples_with_its_bars(models):
    events = SampleEvents(Demo(models, Limits()), Gate(Serving(decode="per-request")))
    with pytest.raises(gr.Error, match="Generate first"):
        events.link_query(None, None, 0, 0)
    form = (STEERABLE, SPEECH, "0.5, 1.3", 30, 0, 1.0, "99", "", False, "2:5:h=0.9")
    samples, _, _, run, shown = last(events.on_generate(None, *form))
    assert shown == SampleLink.of(STEERABLE, SPEECH, read_sampling(Limits(), *form[2:]))
    query = events.link_query(shown, run, 1, 4)

    opened = read_query(query, models, Limits())
    tab, *values, dial_on, dial_slider, dial, start = events.on_opened(opened)
    assert tab.selected == "sample" and start == opened
    assert [values[0], *values[3:]] == [STEERABLE, SPEECH, "0.5, 1.3", 30, 0, 1.0, "99", "", False]
    assert (dial_on.value, dial_slider.value, dial.value) == (True, 0.9, "2:5:h=0.9")
    again, _, _, _, shown_again = last(events.on_generate(None, *values[:1], *values[3:], dial.value, opened))
    assert strip_mark(again) == strip_mark(samples), "the same samples"
    assert (shown_again.column, shown_again.position) == (1, 4), "the bars look where the link's did"
    which, position, *_ = events.on_finished(None, run, shown_again)
    assert (which.value, position.value) == (1, 4)


def strip_mark(samples_html: str) -> str:
    """The samples without the mark of the bars' position."""
    return re.sub(r" ?lm-chosen", "", samples_html)


def test_the_compare_tabs_link_reopens_the_same_comparison(models):
    events = CompareEvents(Demo(models, Limits()), Gate(Serving(decode="per-request")))
    with pytest.raises(gr.Error, match="Compare first"):
        events.link_query(None)
    form = (PLAIN, STEERABLE, SPEECH, "0.5, 1", 30, 0, 1.0, "5")
    first = events.on_compare(None, *form)
    opened = read_query(events.link_query(first[-1]), models, Limits())
    tab, *values, start = events.on_opened(opened)
    assert tab.selected == "compare" and start == opened and values == list(form)
    again = events.on_compare(None, *values)
    assert (again[2], again[6]) == (first[2], first[6]), "both models' samples, the same"


def test_the_inside_tabs_link_reopens_the_same_view_and_runs_the_rule_again(models):
    events = InsideEvents(Inside(models, Limits()), AtlasView(models, Limits()))
    text = (None, STEERABLE, SPEECH, 0)  # no run: the Sample tab's model and prompt
    settings = (1, "c", "unit", 5, "", "3")  # layer, quantity, sort, count, change at, traced unit
    unit_view = events.on_unit(*text, "sentiment")
    rule_view = events.on_rule(*text, SPEAKER)
    *detailed, shown = events.on_show(*text, *settings)
    assert shown == UNITS_VIEW
    opened = read_query(events.link_query(*text, "sentiment", SPEAKER, *settings, "", "", shown), models, Limits())

    tab, model, prompt, waiting, ready = events.on_opened(opened, PLAIN)  # a model change resets the pickers: wait
    assert (tab.selected, model, prompt, waiting, ready) == ("inside", STEERABLE, SPEECH, opened, gr.skip())
    assert events.on_model_ready(opened, PLAIN) == gr.skip() and events.on_model_ready(None, STEERABLE) == gr.skip()
    assert events.on_model_ready(opened, STEERABLE) == (None, opened)
    assert events.on_opened(opened, STEERABLE)[3:] == (gr.skip(), opened), "the same model: ready at once"
    chosen, rule, layer, quantity, sort, count, at, unit, first, last, detail, *openers = events.on_ready(opened)
    assert (chosen, rule, layer.value, quantity, sort, count, at, unit, first, last) == \
        ("sentiment", SPEAKER, 1, "c", "unit", 5, "", "3", "", "")
    assert detail.open and [view for view, opener in zip(OPENED_VIEWS, openers) if opener == opened] == \
        [ATLAS_UNIT, RULE_UNIT, UNITS_VIEW]
    again = (None, model, prompt, 0)
    assert events.on_unit(*again, chosen) == unit_view
    rule_again = events.on_rule(*again, rule)
    assert (rule_again[0], rule_again[1].value, rule_again[2]) == (rule_view[0], rule_view[1].value, rule_view[2])
    *detailed_again, _ = events.on_show(*again, layer.value, quantity, sort, count, at, unit)
    assert detailed_again[:2] == detailed[:2] and detailed_again[3].equals(detailed[3])


def test_a_sample_on_the_inside_tab_is_linked_as_its_text_and_bad_values_are_refused(models):
    sampling = SampleEvents(Demo(models, Limits()), Gate(Serving(decode="per-request")))
    _, _, _, run, _ = last(sampling.on_generate(None, PLAIN, SPEECH, "0.5, 1", 30, 0, 1.0, "5", "", False, ""))
    events = InsideEvents(Inside(models, Limits()), AtlasView(models, Limits()))
    form = ("", "", 2, "h", "variable", 32, "", "", "", "", "")  # property … detail: no atlas, rule or detailed view
    linked = read_query(events.link_query(run, PLAIN, "the box, edited since", 2, *form), models, Limits())
    assert linked.prompt == run.prompt.text + run.samples[1].text and linked.prompt.startswith(SPEECH)
    with pytest.raises(gr.Error, match="sample must be from 1 to 2"):
        events.link_query(run, PLAIN, SPEECH, 3, *form)
    with pytest.raises(gr.Error, match="generate some text first"):
        events.link_query(None, PLAIN, SPEECH, 1, *form)
    with pytest.raises(gr.Error, match="not a regular expression Python reads"):
        events.link_query(None, PLAIN, SPEECH, 0, "", "(", *form[2:])
    with pytest.raises(gr.Error, match="unit must be a whole number"):
        events.link_query(None, PLAIN, SPEECH, 0, *form[:7], "three", *form[8:])
    long_prompt = SPEECH * 40  # read as its last 1,000 tokens (characters), and 600 more sampled
    _, _, _, long_run, _ = last(sampling.on_generate(None, PLAIN, long_prompt, "1", 600, 0, 1.0, "5", "", False, ""))
    with pytest.raises(gr.Error, match="the prompt with its sample at T = 1 has 1,600 characters and a link holds "
                                       "at most 1,500: shorten it to share it"):
        events.link_query(long_run, PLAIN, long_prompt, 1, *form)


def test_a_long_prompt_is_refused_by_copy_link_with_one_line(models):
    events = CompareEvents(Demo(models, Limits()), Gate(Serving(decode="per-request")))
    shown = events.on_compare(None, PLAIN, PLAIN, "x" * 2000, "1", 5, 0, 1.0, "0")[-1]
    with pytest.raises(gr.Error, match="the prompt has 2,000 characters and a link holds at most 1,500"):
        events.link_query(shown)


# -- in the browser ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(atlas_model, char_model, tmp_path_factory) -> Iterator[str]:
    """`python app.py` on the model with a dial (the page opens on it) and the plain one."""
    with app_serving([atlas_model, char_model], tmp_path_factory) as url:
        yield url


SEED = re.compile(r"^\s*Seed")  # a label's text as Chromium reads it: the Sample tab's has a line of help too


def test_generate_and_compare_keep_their_api(server):
    """The states the links add are no inputs or outputs of the API: `/generate` still takes nine inputs or ten and
    gives three outputs, `/compare` eight and nine."""
    from gradio_client import Client

    client = Client(server, verbose=False)
    nine = ("ROMEO:\n", "0.5, 1", 20, 0, 1.0, "3", "", False)
    _, _, status = client.predict(STEERABLE, *nine, api_name="/generate")
    assert status.startswith("**Done** 2 samples") and client.predict(STEERABLE, *nine, "", api_name="/generate")[0]
    assert len(client.predict(PLAIN, STEERABLE, *nine[:-2], api_name="/compare")) == 9


def visible(page, label: str | re.Pattern):
    """The one field of that label on the tab in view."""
    return page.get_by_label(label, exact=isinstance(label, str)).filter(visible=True)


def column_tokens(page) -> list[list[str]]:
    """The visible samples, token by token, one list per column."""
    return [column.locator(".tok").all_text_contents() for column in page.locator(".lm-col:visible").all()]


def copied_link(page, box_label: str, server: str) -> str:
    page.get_by_role("button", name="Copy link").filter(visible=True).click()
    box = visible(page, re.compile(rf"^\s*{box_label}"))
    link = wait_until(lambda: box.count() and box.input_value().startswith("http") and box.input_value(), 30,
                      "Copy link gave no address")
    assert link.startswith(server) and urlsplit(link).query, "the link is the page's own address with a query"
    return link


@pytest.mark.browser
def test_a_copied_sample_link_reopens_the_same_samples_in_a_fresh_page(server):
    with chromium_page(server) as page:
        visible(page, re.compile(r"^\s*Temperatures")).fill("0.5, 1.3")
        visible(page, SEED).fill("4242")
        page.get_by_label("Dial sentiment: hold its unit (samples without and with the dial, same seed)").check()
        page.wait_for_function("() => [...document.querySelectorAll('textarea')].some(e => e.value === '2:5:h=0.9')",
                               timeout=20_000)
        page.get_by_role("button", name="Generate").click()
        page.get_by_text("Next token after").first.wait_for(timeout=60_000)  # done, and /after_generate answered
        page.get_by_label("Sample", exact=True).click()
        page.get_by_role("option", name="T = 1.3").click()
        second = page.locator("#samples .lm-col").nth(1)
        wait_until(lambda: second.locator(".lm-chosen").count(), 30, "choosing T = 1.3 did not move the mark")
        box = page.locator("input[type=number][aria-label*='Position in the sample']")
        box.fill("6")
        box.press("Tab")  # leaving the box releases the slider, as letting go of its handle does
        marked = second.locator(".tok").nth(6)
        wait_until(lambda: "lm-chosen" in (marked.get_attribute("class") or ""), 30, "the position was not marked")
        page.get_by_role("button", name="Random seed").click()  # the seed box changes; the link keeps the run's
        wait_until(lambda: visible(page, SEED).input_value() != "4242", 30, "the dice did not change the seed")
        shown = column_tokens(page)
        link = copied_link(page, "Link to these samples", server)
        assert dict(parse_qsl(urlsplit(link).query))["seed"] == "4242"
        assert len(shown) == 4 and all(shown), "two temperatures, without and with the dial"

    with chromium_page(link) as fresh:
        fresh.get_by_text("Next token after").first.wait_for(timeout=60_000)
        assert column_tokens(fresh) == shown, "the same samples, token for token"
        assert visible(fresh, SEED).input_value() == "4242"
        assert fresh.get_by_label("Sample", exact=True).input_value() == "T = 1.3"
        wait_until(lambda: fresh.locator("input[type=number][aria-label*='Position in the sample']").input_value()
                   == "6", 30, "the bars' position was not restored")
        marked = fresh.locator("#samples .lm-col").nth(1).locator(".tok").nth(6)
        assert "lm-chosen" in marked.get_attribute("class")
        assert not fresh.elsewhere, f"the page fetched from other hosts: {fresh.elsewhere}"


@pytest.mark.browser
def test_a_copied_compare_link_reopens_the_same_comparison_in_a_fresh_page(server):
    with chromium_page(server) as page:
        page.get_by_role("tab", name="Compare").click()
        visible(page, "Prompt").fill("JULIET:\nO Romeo, Romeo!")
        visible(page, SEED).fill("31")
        page.get_by_role("button", name="Compare", exact=True).click()
        wait_until(lambda: len(column_tokens(page)) == 4, 60, "the comparison never showed")
        shown = column_tokens(page)
        link = copied_link(page, "Link to this comparison", server)

    with chromium_page(link) as fresh:
        wait_until(lambda: len(column_tokens(fresh)) == 4, 60, "the link's comparison never ran")
        assert column_tokens(fresh) == shown, "the same samples, token for token"
        assert visible(fresh, "Prompt").input_value() == "JULIET:\nO Romeo, Romeo!"


@pytest.mark.browser
def test_a_copied_inside_link_reopens_the_same_view_and_rule_in_a_fresh_page(server):
    text = "JULIET:\nO Romeo, Romeo!\n"
    with chromium_page(server) as page:
        page.get_by_label("Model", exact=True).click()  # not the model the page opens on: the link changes it
        page.get_by_role("option", name=PLAIN).click()
        inside = page.get_by_role("tab", name="Inside the LSTM")
        inside.click()
        page.locator("#atlas-status").get_by_text(f"{PLAIN} has no cell atlas").wait_for(timeout=30_000)
        page.get_by_role("tab", name="Sample").click()  # the model's own prompt is in: write another
        visible(page, "Prompt").fill(text)
        inside.click()
        page.locator("#rule-box textarea").fill(SPEAKER)
        page.locator("#rule-find").click()
        page.locator("#rule-unit .lm-atlas-sentence b").wait_for(timeout=60_000)
        visible(page, "Layer").click()
        page.get_by_role("option", name="1 (bottom)").click()
        visible(page, "Show").click()
        page.get_by_role("option", name="cell state c").click()
        count = page.locator("input[type=number][aria-label*='How many units']")
        count.fill("5")
        count.press("Tab")  # leaving the box releases the slider
        visible(page, re.compile(r"^\s*Unit to trace")).fill("3")
        page.get_by_role("button", name="Show units").click()
        status = page.locator("#inside-status")
        wait_until(lambda: "5 of" in status.inner_text(), 60, "Show units showed nothing")
        shown = [page.locator(where).inner_text() for where in ("#rule-unit .lm-atlas-sentence", "#rule-table",
                                                                 "#inside-status", "#inside-table")]
        link = copied_link(page, "Link to this view", server)
        values = dict(parse_qsl(urlsplit(link).query, keep_blank_values=True))
        assert {key: values[key] for key in ("tab", "model", "prompt", "rule", "layer", "quantity", "count", "unit",
                                             "detail")} == \
            {"tab": "inside", "model": PLAIN, "prompt": text, "rule": SPEAKER, "layer": "1", "quantity": "c",
             "count": "5", "unit": "3", "detail": "units"}

    with chromium_page(link) as fresh:
        fresh.locator("#rule-unit .lm-atlas-sentence b").wait_for(timeout=60_000)
        wait_until(lambda: "5 of" in fresh.locator("#inside-status").inner_text(), 60, "the link's view never ran")
        assert [fresh.locator(where).inner_text() for where in ("#rule-unit .lm-atlas-sentence", "#rule-table",
                                                                "#inside-status", "#inside-table")] == shown
        assert fresh.get_by_role("tab", name="Inside the LSTM").get_attribute("aria-selected") == "true"
        assert fresh.locator("#rule-box textarea").input_value() == SPEAKER
        assert (visible(fresh, "Layer").input_value(), visible(fresh, "Show").input_value()) == \
            ("1 (bottom)", "cell state c")
        assert fresh.get_by_label("Model", exact=True).input_value() == PLAIN
        assert fresh.get_by_label("Prompt", exact=True).input_value() == text
        assert not fresh.elsewhere, f"the page fetched from other hosts: {fresh.elsewhere}"


@pytest.mark.browser
def test_a_link_with_junk_opens_the_page_on_its_defaults_with_one_warning(server):
    with chromium_page(server + "?tab=sample&model=nope") as page:
        warning = page.get_by_test_id("toast-body")
        warning.wait_for(timeout=30_000)
        assert re.search(r"This link cannot be opened: the link lacks prompt, .*, position\. The page opens on its "
                         r"defaults\.", warning.inner_text())
        assert warning.count() == 1
        assert page.get_by_label("Model", exact=True).input_value() == STEERABLE
        page.get_by_label("Model", exact=True).click()  # a visitor's choice of model still resets the dial
        page.get_by_role("option", name=PLAIN).click()
        page.get_by_label("sentiment: negative ↔ positive").first.wait_for(state="hidden", timeout=30_000)
