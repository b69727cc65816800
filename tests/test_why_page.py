""""Why this token?" on the page (issue 31, item 1): the Sample tab's panel explains the bars' token, a click on a
token of a sample moves the bars there and explains it, one on the prompt explains that token, and Hold holds any unit
beside; a bad hold or click is one line."""

from __future__ import annotations

import dataclasses
import html
import re
from collections.abc import Iterator

import gradio as gr
import pytest
from browser import chromium_page
from servers import app_serving, wait_until
from test_app import ROOT
from test_next_token_position import chosen_tokens

from lmdemo.generation import Dial
from lmdemo.web import links, render
from lmdemo.web.demo import Demo, Progress
from lmdemo.web.forms import Limits, read_sampling
from lmdemo.web.gate import GATED, Gate, Serving
from lmdemo.web.page import build_app
from lmdemo.web.registry import Models
from lmdemo.web.sample_tab import SampleEvents
from lmdemo.web.why_view import NO_WHY

SEED, LENGTH = 7, 40
PANEL_EVENTS = ("on_why", "on_token", "on_prompt_token", "on_hold")

pytestmark = pytest.mark.usefixtures("one_thread")


def header(panel: str) -> tuple[str, str, float]:
    """The token the panel explains (as drawn), where the page says it is, and its probability in percent."""
    found = re.search(r"<header><b>(.*?)</b><small>(.*): p = ([\d.]+)%</small></header>", panel)
    assert found, f"no explanation in {panel[:200]!r}"
    return found.group(1), found.group(2), float(found.group(3))


def shares(panel: str) -> list[float]:
    """The shares of the units the panel draws as bars."""
    return [float(share) for share in re.findall(r'class="lm-why-unit".*?<span style="text-align:right">'
                                                 r"([+-][\d.]+)</span></div>", panel)]


def click(column: int, position: int) -> gr.SelectData:
    """What a click on a token sends (`render.CHOOSE_TOKEN_JS`)."""
    return gr.SelectData(None, {"index": [column, position], "value": ""})


def refusal(call) -> str:
    with pytest.raises(gr.Error) as refused:
        call()
    assert "\n" not in refused.value.message, "one line"
    return refused.value.message


# -- in-process: the tab's handlers -------------------------------------------------------------------
@pytest.fixture(scope="module")
def events_and_run(char_model) -> tuple[SampleEvents, Progress]:
    """The tab's handlers on the tiny char model, and a finished run of two columns."""
    models, limits = Models({"char": str(char_model)}), Limits()
    events = SampleEvents(Demo(models, limits), Gate(Serving(decode="per-request")))
    for run in events.demo.generate("char", "ROMEO:\nWhat say you", read_sampling(limits, "0.2, 1.3", LENGTH, 0, 1,
                                                                                    SEED, "")):
        pass
    assert all(len(sample.ids) == LENGTH for sample in run.samples)
    return events, run


def test_the_panel_explains_the_token_the_bars_point_at(events_and_run):
    events, run = events_and_run
    for column, position in ((0, 0), (1, 7), (1, LENGTH - 1)):
        sample = run.samples[column]
        panel, prompt_view, clicked_prompt = events.on_why(run, column, position, None)
        token, place, percent = header(panel)
        assert token == render.escape(render.visible(sample.tokens[position]))
        assert place == f"T = {sample.temperature:g}, position {position} of the sample"
        assert percent == pytest.approx(100 * sample.probabilities[position], abs=0.051)
        assert shares(panel) and any(share > 0 for share in shares(panel))
        assert prompt_view == gr.skip() and clicked_prompt is None, "no prompt token was marked"


def test_at_a_samples_end_the_panel_explains_the_likeliest_next_token(events_and_run):
    events, run = events_and_run
    likeliest = events.demo.next_tokens(run, 1, LENGTH, 1).scores[0]
    token, place, percent = header(events.on_why(run, 1, LENGTH + 5, None)[0])  # past the end: its end, as the bars
    assert token == render.escape(render.visible(likeliest.token))
    assert place == "T = 1.3, the likeliest token after the sample's end"
    assert percent == pytest.approx(100 * likeliest.probability, abs=0.051)


def test_a_unit_the_atlas_does_not_name_links_to_its_heatmap_row_over_the_same_text(events_and_run):
    """The link opens the Inside tab on the prompt and sample read so far, that unit traced at the token."""
    events, run = events_and_run
    panel = events.on_why(run, 1, 7, None)[0]
    found = re.findall(r'data-layer="(\d+)" data-quantity="(\w)" data-unit="(\d+)"[^>]*><span><a href="([^"]+)"', panel)
    assert found, "no unit links to its heatmap row"
    layer, quantity, unit, href = found[0]
    link = links.read_query(html.unescape(href), events.models, events.limits)
    assert isinstance(link, links.InsideLink) and (link.layer, link.quantity, link.unit) == (int(layer), quantity,
                                                                                              int(unit))
    assert link.detail == links.UNITS_VIEW and link.at == len(run.prompt.ids) + 7
    tokenizer = events.models.generator(run.model).tokenizer
    assert link.prompt == tokenizer.decode([*run.prompt.ids, *run.samples[1].ids])


def test_a_click_on_a_sample_token_moves_the_bars_mark_and_panel_there(events_and_run):
    events, run = events_and_run
    column, slider, samples, panel, prompt_view, clicked_prompt = events.on_token(run, 2, click(1, 4))
    assert column == 1 and (slider.maximum, slider.value) == (LENGTH, 4)
    assert chosen_tokens(samples) == [(1, 4)]
    assert header(panel)[1] == "T = 1.3, position 4 of the sample"
    assert "lm-chosen" not in prompt_view and clicked_prompt is None, "the prompt token clicked before is unmarked"


def test_a_click_on_a_prompt_token_explains_it_and_hold_holds_a_unit_beside(events_and_run):
    events, run = events_and_run
    panel, prompt_view, clicked_prompt = events.on_prompt_token(run, click(0, 3))
    scored = run.reading.scores[3]
    token, place, percent = header(panel)
    assert (token, place, clicked_prompt) == (render.escape(render.visible(scored.token)), "the prompt's token 3", 3)
    assert percent == pytest.approx(100 * scored.probability, abs=0.051)
    spans = re.findall(r'<span class="tok ([^"]*)"', prompt_view)
    assert [position for position, classes in enumerate(spans) if "lm-chosen" in classes] == [3]
    held = events.on_hold(run, 1, 4, clicked_prompt, " 1:3:c=1.5 ")
    assert header(held)[:2] == (token, "the prompt's token 3"), "Hold explains the token on view"
    row = re.search(r"<td>layer 1 · c · unit 3 at 1.5</td><td [^>]*>([\d.]+)%</td><td [^>]*>([\d.]+)%</td>", held)
    assert row, "the held unit's row, from the token on and from the text's start"
    assert "at 1.5" not in events.on_hold(run, 1, 4, None, ""), "an empty box holds nothing more"


def test_a_bad_hold_or_click_is_refused_in_one_line(events_and_run):
    events, run = events_and_run
    assert "LAYER:UNIT:QUANTITY=VALUE" in refusal(lambda: events.on_hold(run, 0, 0, None, "2:19"))
    assert "quantity must be h" in refusal(lambda: events.on_hold(run, 0, 0, None, "1:3:q=0"))
    assert "layer must be from 1 to 2" in refusal(lambda: events.on_hold(run, 0, 0, None, "3:0:h=0"))
    assert "unit must be from 0 to 63" in refusal(lambda: events.on_hold(run, 0, 0, None, "1:64:h=0"))
    assert "position must be from 0" in refusal(lambda: events.on_prompt_token(run, click(0, 999)))
    assert "position must be from 0" in refusal(lambda: events.on_prompt_token(run, click(0, -1)))
    assert "column and a position" in refusal(lambda: events.on_token(run, None, gr.SelectData(None, {
        "index": 3, "value": ""})))
    assert "sample must be from 1 to 2" in refusal(lambda: events.on_token(run, None, click(5, 0)))
    assert "Generate some text first" in refusal(lambda: events.on_hold(None, 0, 0, None, ""))


def test_only_a_finished_runs_tokens_can_be_chosen_and_not_the_dialled_ones(events_and_run):
    _, run = events_and_run
    streaming = dataclasses.replace(run, done=False)
    assert render.CHOOSE not in render.samples_html(streaming) + render.prompt_html(streaming)
    assert render.prompt_html(run).startswith(f'<div class="lm-prompt" {render.CHOOSE}>')
    dialled = dataclasses.replace(run, dial=Dial(1, 3, "h", 0.5), dialled=run.samples)
    assert re.findall(r'<div class="lm-samples"( [^>]*)?>', render.samples_html(dialled)) == [f" {render.CHOOSE}", ""]


def test_nothing_read_leaves_the_panel_empty(events_and_run):
    """An empty prompt and a sample that took no token: no text to explain, and no refusal after the run."""
    events, run = events_and_run
    empty = dataclasses.replace(run, prompt=dataclasses.replace(run.prompt, ids=[], pieces=[]),
                                samples=[dataclasses.replace(run.samples[0], ids=[], tokens=[], probabilities=[],
                                                             pieces=[])])
    assert events.on_why(empty, 0, 0, None)[0] == NO_WHY


def test_the_panel_names_units_by_the_atlas():
    """shakespeare-char's atlas names lower-layer units and cells: held, they are named."""
    models, limits = Models({"shakespeare-char": str(ROOT / "checkpoints" / "shakespeare-char")}), Limits()
    events = SampleEvents(Demo(models, limits), Gate(Serving(decode="per-request")))
    for run in events.demo.generate("shakespeare-char", "ROMEO:\n", read_sampling(limits, "0.5", 20, 0, 1, SEED, "")):
        pass
    assert "<td>unit 503, position in line at 0</td>" in events.on_hold(run, 0, 10, None, "1:503:c=0")


def test_the_panels_events_are_private_gated_events(char_model):
    app = build_app(Models({"char": str(char_model)}))
    handlers = [function for function in app.fns.values()
                if getattr(getattr(function.fn, "__wrapped__", None), "__name__", None) in PANEL_EVENTS]
    assert {function.fn.__wrapped__.__name__ for function in handlers} == set(PANEL_EVENTS)
    for function in handlers:
        public = function.api_name == "why"  # /why's own handler, `WhyEvents.on_why`
        assert getattr(function.fn, GATED) and (public or function.api_visibility == "private"), function.api_name


# -- in the browser -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(char_model, tmp_path_factory) -> Iterator[str]:
    """`python app.py` on the tiny char model alone."""
    with app_serving([char_model], tmp_path_factory) as url:
        yield url


def explained(page) -> tuple[str, str]:
    """The token the panel explains, as drawn, and where it says the token is."""
    panel = page.locator("#why-token .lm-why header")
    return panel.locator("b").inner_text(), panel.locator("small").inner_text().rsplit(": p = ", 1)[0]


def drawn(token) -> str:
    """A token as its tooltip names it, as the panel names it too."""
    return token.get_attribute("title").rsplit(": p = ", 1)[0]


def wait_for_panel(page, place: str) -> None:
    wait_until(lambda: page.locator("#why-token .lm-why").count() and explained(page)[1] == place, 30,
               lambda: f"the panel never explained {place!r}: it shows {page.locator('#why-token').inner_text()!r}")


@pytest.mark.browser
def test_clicking_a_token_explains_it_with_its_units(server):
    with chromium_page(server) as page:
        page.get_by_label("Temperatures", exact=False).fill("0.2, 1.3")
        length = page.locator("input[type=number][aria-label*='Max new tokens']")
        length.fill(str(LENGTH))
        length.press("Tab")
        page.get_by_role("button", name="Generate").click()
        wait_for_panel(page, "T = 0.2, position 0 of the sample")  # after a run: the bars' first token

        columns = page.locator("#samples .lm-col")
        token = columns.nth(1).locator(".tok").nth(5)
        assert token.evaluate("e => getComputedStyle(e).cursor") == "pointer", "a token says it can be clicked"
        token.click()
        wait_for_panel(page, "T = 1.3, position 5 of the sample")
        assert explained(page)[0] == drawn(token)
        units = page.locator("#why-token .lm-why-unit")
        assert units.count() >= 2 and all(re.fullmatch(r"[+-]\d+\.\d\d", unit.locator("span").last.inner_text())
                                          for unit in units.all()), "units with their shares"
        assert page.get_by_label("Sample", exact=True).input_value() == "T = 1.3"
        position = page.locator("input[type=number][aria-label*='Position in the sample']")
        assert position.input_value() == "5"
        assert "lm-chosen" in token.get_attribute("class") and page.locator("#samples .lm-chosen").count() == 1
        page.get_by_text("the sample at T = 1.3 took").wait_for(timeout=30_000)  # the bars moved there too

        again = columns.nth(0).locator(".tok").nth(2)  # the samples were drawn again: the click still chooses
        again.click()
        wait_for_panel(page, "T = 0.2, position 2 of the sample")

        prompt_token = page.locator("#prompt-view .tok").nth(1)
        prompt_token.click()
        wait_for_panel(page, "the prompt's token 1")
        assert explained(page)[0] == drawn(prompt_token) and "lm-chosen" in prompt_token.get_attribute("class")

        hold = page.locator("#why-hold textarea, #why-hold input").first
        hold.fill("1:3:c=1")
        page.locator("#why-hold-button").click()
        page.locator("#why-token").get_by_text("layer 1 · c · unit 3 at 1").wait_for(timeout=30_000)
        assert explained(page)[1] == "the prompt's token 1", "Hold explains the token on view"
        hold.fill("1:3:q=1")
        page.locator("#why-hold-button").click()
        page.get_by_text("the dial's quantity must be h").first.wait_for(timeout=30_000)

        position.fill("3")
        position.press("Tab")  # the slider let go: the panel follows the bars again, the prompt's mark goes
        wait_for_panel(page, "T = 0.2, position 3 of the sample")
        wait_until(lambda: not page.locator("#prompt-view .lm-chosen").count(), 30, "the prompt's mark stayed")
        assert not page.elsewhere, f"the page fetched from other hosts: {page.elsewhere}"
