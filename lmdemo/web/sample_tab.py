"""The Sample tab: a thin Gradio layer over `lmdemo.web.demo` (the requests), `forms` (form values) and
`render` (HTML and figures). Controls on the right, samples below, next-token bars at the bottom, and under them
"Why this token?" (`lmdemo.why`, asked through `why_api.WhyEvents` as `/why` asks): why the model gave the bars'
token, or a prompt token clicked, its probability, unit by unit. A click on a token of a finished run chooses it.

Its model, prompt and last run are what the Inside tab reads, and a run refreshes the Inside tab's text picker.
"Copy link" gives a link to the run on view, and a page opened on such a link sets the form and runs it
(`lmdemo.web.links`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import gradio as gr
from gradio.components.plot import PlotData
from gradio.events import Dependency

from lmdemo.admission import Busy
from lmdemo.generation import Dial, Sample, SettingsError
from lmdemo.web import inside_tab, links, render
from lmdemo.web.demo import (DEFAULT_BARS, DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURES, Demo, Progress,
                             chosen_position)
from lmdemo.web.forms import FIELD_CHARS, Limits, draw_seed, parse_whole, read_sampling
from lmdemo.web.gate import UNLIMITED, Gate
from lmdemo.web.links import SampleLink
from lmdemo.web.registry import Models, Steerable
from lmdemo.web.why_api import WhyEvents
from lmdemo.web.why_view import NO_WHY, why_html

TEMPERATURE_HELP = """**Temperature** reshapes the model's odds before each token is drawn. **0** always
takes the likeliest token (greedy: safe, repetitive); below 1 favours likely tokens; **1** samples the model
as trained; above 1 gives rare tokens more room, until the text turns to gibberish. **Top-k** keeps the k
likeliest tokens, **top-p** the fewest holding p of the probability. All columns share one set of random
numbers, so they differ by temperature, not luck."""
POSITION_INFO = ("tokens already written: 0 = right after the prompt; the sample outlines the token it took next "
                 "(click a token to move there)")
WHY_HELP = """Click a token of a sample or of the prompt. Each bar is a unit of the top layer's h: its share of the
log-ratio of the token's probability to the likeliest other token's (red for the token, blue against it), named by the
model's cell atlas where it names the unit. The table holds units at 0 from the token on; hold any unit of any layer
below, as the dial does, to see the token's probability with it held from the token on and from the text's start."""
HOLD_HELP = "LAYER:UNIT:QUANTITY=VALUE, as the dial reads it (layers from 1, units from 0, h or c); empty = none"
FIRST_BARS = (0, 0)  # the column and position whose bars a finished run shows first: the first token after the prompt


@dataclass
class SampleTab:
    """The tab's widgets: `connect` wires their events; the Inside tab reads `run`, `model` and `prompt`."""

    run: gr.State
    model: gr.Dropdown
    model_info: gr.Markdown
    prompt: gr.Textbox
    examples: gr.Dataset
    generate: gr.Button
    stop: gr.Button
    status: gr.Markdown
    copy_link: gr.Button
    link: gr.Textbox
    temperatures: gr.Textbox
    max_new_tokens: gr.Slider
    top_k: gr.Number
    top_p: gr.Slider
    seed: gr.Textbox
    dice: gr.Button
    stop_text: gr.Textbox
    avoid_unk: gr.Checkbox
    dial_on: gr.Checkbox
    dial_slider: gr.Slider
    dial: gr.Textbox
    samples: gr.HTML
    prompt_view: gr.HTML
    which: gr.Dropdown
    position: gr.Slider
    bars: gr.Slider
    plot: gr.Plot
    why: gr.HTML
    hold: gr.Textbox
    hold_button: gr.Button


def build(models: Models, limits: Limits, run: gr.State) -> SampleTab:
    """Lay the tab out on the default model; `run` keeps the last finished request for the bars and Inside."""
    first = models.default
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            model = gr.Dropdown(models.names, value=first, label="Model", interactive=len(models.names) > 1)
            model_info = gr.Markdown(render.model_markdown(models.describe(first)), label="Model card")
            prompt = gr.Textbox(value=models.examples(first)[0], label="Prompt", lines=4, max_lines=14,
                                max_length=limits.max_prompt_chars,
                                placeholder="Leave empty to start from the beginning of a text")
            examples = gr.Dataset(components=[prompt], samples=[[e] for e in models.examples(first)],
                                  label="Example prompts")
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", scale=3)
                stop = gr.Button("Stop", variant="secondary", scale=1)
            status = gr.Markdown("Press **Generate** to sample.", label="Status")
            copy_link, link = links.copy_widgets("these samples")
        with gr.Column(scale=2):
            temperatures = gr.Textbox(
                ", ".join(f"{t:g}" for t in DEFAULT_TEMPERATURES),
                label=f"Temperatures: one column each, up to {limits.max_temperatures}",
                info="numbers from 0 (greedy) up, separated by commas", max_length=FIELD_CHARS)
            gr.Markdown(TEMPERATURE_HELP, elem_classes="lm-help")
            max_new_tokens = gr.Slider(1, limits.max_new_tokens, step=1, label="Max new tokens",
                                       value=min(DEFAULT_MAX_NEW_TOKENS, limits.max_new_tokens))
            with gr.Row():
                top_k = gr.Number(0, label="Top-k (0 = off)", precision=0, minimum=0)
                top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.01, label="Top-p (1 = off)")
            with gr.Row(equal_height=True):
                seed = gr.Textbox("0", label="Seed", info="same seed + settings = same text", scale=2,
                                  max_length=FIELD_CHARS)
                dice = gr.Button("Random seed", scale=1)
            with gr.Row():
                stop_text = gr.Textbox("", label="Stop at (optional)", placeholder="e.g. a blank line",
                                       info="a sample ends once it contains this text", max_length=FIELD_CHARS)
                avoid_unk = gr.Checkbox(False, **unk_choice(models, first))
            on_choice, slider_choice, text_choice = dial_choices(models, first)
            dial_on = gr.Checkbox(**on_choice)
            dial_slider = gr.Slider(**slider_choice)
            dial = gr.Textbox(**text_choice, max_length=FIELD_CHARS, placeholder="e.g. 2:17:h=0.9")
    gr.Markdown("### Samples")
    choosable = {"js_on_load": render.CHOOSE_TOKEN_JS, "css_template": render.CHOOSABLE_CSS}  # a click chooses a token
    samples = gr.HTML(render.NO_SAMPLES, label="Samples", elem_id="samples", **choosable)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            gr.Markdown("### How surprised was the model by the prompt?")
            prompt_view = gr.HTML('<div class="lm-empty">The prompt, coloured by surprisal, appears here.</div>',
                                  label="Prompt surprisal", elem_id="prompt-view", **choosable)
        with gr.Column(scale=3):
            gr.Markdown("### What might come next?")
            with gr.Row():
                which = gr.Dropdown([], label="Sample", info="pick a column", scale=1)
                position = gr.Slider(0, DEFAULT_MAX_NEW_TOKENS, value=0, step=1, label="Position in the sample",
                                     scale=2, info=POSITION_INFO)
                bars = gr.Slider(3, limits.max_bars, value=DEFAULT_BARS, step=1, label="Bars", scale=1)
            plot = gr.Plot(label="Next-token probabilities", show_label=False)
            gr.Markdown("### Why this token?")
            gr.Markdown(WHY_HELP, elem_classes="lm-help")
            why = gr.HTML(NO_WHY, label="Why this token?", elem_id="why-token")
            with gr.Row(equal_height=True):
                hold = gr.Textbox("", label="Hold a unit", placeholder="e.g. 2:19:h=0", info=HOLD_HELP, scale=3,
                                  max_length=FIELD_CHARS, elem_id="why-hold")
                hold_button = gr.Button("Hold", scale=1, elem_id="why-hold-button")
    return SampleTab(run, model, model_info, prompt, examples, generate, stop, status, copy_link, link, temperatures,
                     max_new_tokens, top_k, top_p, seed, dice, stop_text, avoid_unk, dial_on, dial_slider, dial, samples,
                     prompt_view, which, position, bars, plot, why, hold, hold_button)


def connect(tab: SampleTab, demo: Demo, inside_text: gr.Dropdown, inside_layer: gr.Dropdown, gate: Gate,
            tabs: gr.Tabs, opened: gr.State) -> None:
    """Wire the tab's events: a model change (its card, examples, the Inside layers, the `<unk>` box, the dial),
    the dial's box and slider (they write the dial's text), Generate (streamed; `/generate`, whose tenth input is
    the dial's text: a caller that sends nine gets no dial; when it succeeds the page asks `/after_generate` for
    the run's bars and pickers), Stop, the random seed and the next-token bars (`/next_tokens`). Generate and the
    bars are sampling events of the `gate` (its fair share per address). Choosing a column re-ranges the position
    slider to that sample, and the chosen position is marked in its text, both in events of their own that leave
    `/next_tokens` as it was.

    "Why this token?" follows the bars' token (after a run, a column or position chosen); a click on a token of a
    sample moves the column, the position, the mark and the bars there, and one on the prompt's explains that token
    instead (the page remembers which, for Hold). Its events are private model work of the `gate`, as `/why` is.

    A link (`lmdemo.web.links`) the page `opened` on sets the form, shows this tab among `tabs` and starts the same
    Generate; the run's bars then look where the link's did. A visitor's choice of model resets the prompt and
    the dial (a model set by a link keeps the link's); "Copy link" links the run on view."""
    events = SampleEvents(demo, gate)
    model = tab.model
    model.input(events.on_model, model, [tab.model_info, tab.examples, tab.prompt], api_name="model_info")
    model.change(events.layer_picker, model, inside_layer, api_visibility="private")
    model.change(events.unk_box, model, tab.avoid_unk, api_visibility="private")
    model.input(events.dial_boxes, model, [tab.dial_on, tab.dial_slider, tab.dial], api_visibility="private")
    dial_inputs = [model, tab.dial_on, tab.dial_slider]
    tab.dial_on.input(events.on_dial, dial_inputs, tab.dial, api_visibility="private")
    tab.dial_slider.release(events.on_dial, dial_inputs, tab.dial, api_visibility="private")
    tab.examples.click(first_of, tab.examples, tab.prompt, api_visibility="private")
    tab.dice.click(random_seed, None, tab.seed, api_name="random_seed")
    sampling = dict(preprocess=False, **UNLIMITED)  # raw values: lmdemo checks them and names the field
    session_ttl = gate.serving.session_ttl_s
    shown = gr.State(None, time_to_live=session_ttl)  # the link of the finished run on view
    start = gr.State(None, time_to_live=session_ttl)  # set once the form holds an opened link: it runs it
    settings = [tab.temperatures, tab.max_new_tokens, tab.top_k, tab.top_p, tab.seed, tab.stop_text, tab.avoid_unk]
    opened.change(events.on_opened, opened,
                  [tabs, model, tab.model_info, tab.examples, tab.prompt, *settings, tab.dial_on, tab.dial_slider,
                   tab.dial, start], api_visibility="private")
    generation = gr.on([tab.generate.click, start.change], gate.sampling(events.on_generate),
                       [model, tab.prompt, *settings, tab.dial, opened],
                       [tab.samples, tab.prompt_view, tab.status, tab.run, shown], api_name="generate", **sampling)
    finished = generation.success(gate.sampling(events.on_finished), [tab.run, shown],
                                  [tab.which, tab.position, tab.plot, inside_text], api_name="after_generate",
                                  **UNLIMITED)
    links.connect_copy(tab.copy_link, tab.link, events.link_query, [shown, tab.run, tab.which, tab.position])
    tab.stop.click(None, None, None, cancels=[generation], api_visibility="private")
    explore_inputs = [tab.run, tab.which, tab.position, tab.bars]
    explore = gate.sampling(events.on_explore)  # lmdemo checks the sample, position and count against the run
    tab.which.input(explore, explore_inputs, tab.plot, api_name="next_tokens", **sampling)
    tab.position.release(explore, explore_inputs, tab.plot, api_visibility="private", **sampling)
    tab.bars.release(explore, explore_inputs, tab.plot, api_visibility="private", **sampling)
    mark_inputs = [tab.run, tab.which, tab.position]  # raw values too: a typed position may lie past the end
    column_chosen = tab.which.input(gate.event(events.on_column), mark_inputs, [tab.position, tab.samples],
                                    api_visibility="private", **sampling)
    position_chosen = tab.position.release(gate.event(events.on_position), mark_inputs, tab.samples,
                                           api_visibility="private", **sampling)
    _connect_why(tab, events, gate, [finished, column_chosen, position_chosen], explore, explore_inputs)


def _connect_why(tab: SampleTab, events: SampleEvents, gate: Gate, bars_moved: list[Dependency], explore: Callable,
                explore_inputs: list[Any]) -> None:
    """"Why this token?": after each event in `bars_moved` (a run's end, a column or position chosen) the panel
    explains the bars' token; a click on a sample's token moves the bars there (`explore` draws them) and explains
    it, one on the prompt's explains that token; Hold explains the same token with a unit held. All private model
    work of the `gate`, as `/why` is; the clicks arrive as `.select` events (`render.CHOOSE_TOKEN_JS`)."""
    raw = dict(preprocess=False, api_visibility="private", **UNLIMITED)
    # the prompt token the panel explains, when one was clicked: Hold explains it again, and the bars' next move
    # clears its mark
    clicked_prompt = gr.State(None, time_to_live=gate.serving.session_ttl_s)
    panel = [tab.why, tab.prompt_view, clicked_prompt]
    for moved in bars_moved:
        moved.success(gate.model_work(events.on_why), [tab.run, tab.which, tab.position, clicked_prompt], panel, **raw)
    tab.samples.select(gate.model_work(events.on_token), [tab.run, clicked_prompt],
                       [tab.which, tab.position, tab.samples, *panel], **raw).success(
        explore, explore_inputs, tab.plot, **raw)
    tab.prompt_view.select(gate.model_work(events.on_prompt_token), tab.run, panel, **raw)
    gr.on([tab.hold_button.click, tab.hold.submit], gate.model_work(events.on_hold),
          [tab.run, tab.which, tab.position, clicked_prompt, tab.hold], tab.why, **raw)


class SampleEvents:
    """The tab's event handlers, over the requests of `demo`; `gate` says who asks."""

    def __init__(self, demo: Demo, gate: Gate):
        self.demo, self.gate = demo, gate
        self.models, self.limits = demo.models, demo.limits
        self.whys = WhyEvents(demo.models, demo.limits)

    def on_model(self, name: str) -> tuple[str, Any, str]:
        try:
            shown, info = self.models.examples(name), self.models.describe(name)
        except SettingsError as error:
            raise render.refused(str(error), "Unknown model") from None
        return render.model_markdown(info), gr.Dataset(samples=[[e] for e in shown]), shown[0]

    def layer_picker(self, name: str) -> gr.Dropdown:
        return gr.Dropdown(**inside_tab.layer_choices(self.models, name))

    def unk_box(self, name: str) -> gr.Checkbox:
        return gr.Checkbox(**unk_choice(self.models, name))

    def dial_boxes(self, name: str) -> tuple:
        return _dial_updates(dial_choices(self.models, name))

    def on_dial(self, name: str, on: bool, value: float) -> str:
        steerable = self.models.describe(name).steerable
        return str(steerable[0].dial(value)) if on and steerable else ""

    def on_opened(self, opened: SampleLink | None) -> tuple:
        """The form set to an opened link (the model's own card, examples and dial boxes with it), the tab in
        view, and `start` set, which runs it."""
        if opened is None:
            return gr.skip()
        card, examples, _ = self.on_model(opened.model)
        dial_boxes = _dial_updates(dial_choices(self.models, opened.model, opened.dial))
        return (gr.Tabs(selected=SampleLink.tab), opened.model, card, examples, opened.prompt, opened.temperatures,
                opened.max_new_tokens, opened.top_k, opened.top_p, str(opened.seed), opened.stop, opened.avoid_unk,
                *dial_boxes, opened)

    def on_generate(self, request: gr.Request, name: str, prompt_text: str, temperature_text: str, max_new: Any,
                    k: Any, p: Any, seed_text: Any, stop_at: str, no_unk: bool, dial_text: Any = None,
                    opened: SampleLink | None = None) -> Iterator[tuple]:
        """A run; the link it is, for "Copy link", keeps the bars of the link `opened` when it asks for the same
        samples."""
        try:
            sampling = read_sampling(self.limits, temperature_text, max_new, k, p, seed_text, stop_at, no_unk,
                                     dial_text)
            progress = self.demo.generate(name, prompt_text, sampling, client=self.gate.client(request))
            link = SampleLink.of(name, prompt_text, sampling)
            yield from _generation_updates(progress, opened if opened is not None and opened.same_run(link) else link)
        except SettingsError as error:
            raise render.refused(str(error), "Check the settings") from None
        except Busy as error:
            raise render.refused(str(error), "Busy") from None

    def on_explore(self, request: gr.Request, current: Progress | None, index: Any, at: Any, count: Any) -> Any:
        if current is None:
            raise render.refused("Generate some text first: the bars explain a sample's next tokens.",
                                 "Nothing to explain yet")
        try:
            return _figure(self.demo, current, index, at, count, self.gate.client(request))
        except SettingsError as error:
            raise render.refused(str(error), "Check the settings") from None
        except Busy as error:
            raise render.refused(str(error), "Busy") from None

    def on_column(self, current: Progress | None, index: Any, at: Any) -> tuple[Any, Any]:
        """Another column: the slider runs to that sample's own end (a position past it becomes its end) and the
        mark moves there. Without a run (a page whose first run still streams) nothing changes."""
        if current is None:
            return gr.skip(), gr.skip()
        column, position = _chosen(current, index, at)
        return (_position_slider(current.samples[column], position),
                render.samples_html(current, chosen=(column, position)))

    def on_position(self, current: Progress | None, index: Any, at: Any) -> Any:
        """The slider let go: the mark moves to its position."""
        if current is None:
            return gr.skip()
        return render.samples_html(current, chosen=_chosen(current, index, at))

    def on_finished(self, request: gr.Request, current: Progress | None, shown: SampleLink | None = None) -> tuple:
        """The bars of a finished run, where its link looks (the first token after the prompt unless a link said)."""
        if current is None:
            raise render.refused("Generate some text first: this shows a finished run's bars.", "Nothing to show yet")
        try:
            return _finished_updates(self.demo, current, self.gate.client(request), _bars_of(current, shown))
        except Busy as error:
            raise render.refused(str(error), "Busy") from None

    def on_why(self, current: Progress | None, index: Any, at: Any, clicked_prompt: int | None) -> tuple:
        """The panel on the bars' token (column `index`, position `at`), and the prompt's mark cleared when a prompt
        token was explained. Without a run (a page whose first run still streams) nothing changes."""
        if current is None:
            return gr.skip(), gr.skip(), gr.skip()
        column, position = _chosen(current, index, at)
        prompt_view = render.prompt_html(current) if clicked_prompt is not None else gr.skip()
        return self._why(current, column, position), prompt_view, None

    def on_token(self, current: Progress | None, clicked_prompt: int | None, event: gr.SelectData) -> tuple:
        """A click on a sample's token: the column picker, the slider and the mark move there, and the panel
        explains it."""
        current = _finished_run(current)
        column, position = _chosen(current, *_clicked(event))
        return (column, _position_slider(current.samples[column], position),
                render.samples_html(current, chosen=(column, position)),
                *self.on_why(current, column, position, clicked_prompt))

    def on_prompt_token(self, current: Progress | None, event: gr.SelectData) -> tuple:
        """A click on the prompt's token: the panel explains it and the prompt marks it."""
        current = _finished_run(current)
        try:
            position = parse_whole(_clicked(event)[1], "position")
            if position < 0:
                raise SettingsError(f"position must be from 0, a token of the prompt (got {position})")
        except SettingsError as error:
            raise render.refused(str(error), "Check the settings") from None
        return self._why(current, prompt_token=position), render.prompt_html(current, chosen=position), position

    def on_hold(self, current: Progress | None, index: Any, at: Any, clicked_prompt: int | None, hold: Any) -> str:
        """Hold: the panel's token (the clicked prompt token, else the bars') explained with the unit `hold` held."""
        current = _finished_run(current)
        column, position = _chosen(current, index, at)
        return self._why(current, column, position, clicked_prompt, hold)

    def _why(self, current: Progress, column: int = 0, position: int = 0, prompt_token: int | None = None,
             hold: Any = "") -> str:
        """The panel: why the model gave the prompt's token `prompt_token` its probability, or else the bars' token
        (the one sample `column` took after `position` tokens; at its end, the likeliest next token), with the
        unit `hold` (a dial's text) held too."""
        prompt = current.prompt.ids
        if prompt_token is not None:
            ids, at, place = prompt, prompt_token, f"the prompt's token {prompt_token}"
        else:
            sample = current.samples[column]
            ids, ended = [*prompt, *sample.ids], position == len(sample.ids)
            at = -1 if ended else len(prompt) + position
            where = "the likeliest token after the sample's end" if ended else f"position {position} of the sample"
            place = f"T = {sample.temperature:g}, {where}"
        if not ids:  # an empty prompt and a sample that took no token: nothing read to explain
            return NO_WHY
        text = self.models.generator(current.model).tokenizer.decode(ids)
        position = len(ids) - 1 if at == -1 else at

        def heatmap_row(layer: int, quantity: str, unit: int) -> str | None:
            return links.unit_query(current.model, text, layer, quantity, unit, position, self.models, self.limits)

        try:
            return why_html(self.whys.explain(current.model, ids, at, hold), place, heatmap_row)
        except SettingsError as error:
            raise render.refused(str(error), "Check the settings") from None

    def link_query(self, shown: SampleLink | None, current: Progress | None, index: Any, at: Any) -> str:
        """"Copy link": the query that reopens the run on view (`shown`, finished as `current`), with the bars
        where they look now."""
        if shown is not None:
            column, position = _chosen(current, index, at)
            shown = replace(shown, column=column, position=position)
        return links.link_query(shown, self.models, self.limits, "Generate first, and let the run finish")


def first_of(chosen: list[str]) -> str:
    """An example prompt's text."""
    return chosen[0]


def random_seed() -> str:
    return str(draw_seed())


def _generation_updates(progress_stream: Iterator[Progress], link: SampleLink) -> Iterator[tuple]:
    """The page's updates of one request: samples, prompt colouring and status while it runs, the run and its
    `link` at the end (no link while it runs: a run cut short is not on a link). A prompt's notes are shown once,
    as warnings. Every output gets a value each time, never `gr.skip()`: Gradio rebuilds a skipped component and
    its config, which cost a busy server more than the samples did; a value that did not change is sent as an
    empty diff. The prompt is drawn once, and again at the end, when its tokens can be chosen by a click."""
    prompt_view = None
    for progress in progress_stream:
        if prompt_view is None:
            for note in progress.prompt.notes:
                gr.Warning(render.escape(note))
        if prompt_view is None or progress.done:
            prompt_view = render.prompt_html(progress)
        run = progress if progress.done else gr.skip()  # a State takes a skip without rebuilding anything
        chosen = _bars_of(progress, link) if progress.done else None  # where `/after_generate` puts the bars
        yield (render.samples_html(progress, chosen=chosen), prompt_view, render.status_markdown(progress), run,
               link if progress.done else None)


def _bars_of(progress: Progress, link: SampleLink | None) -> tuple[int, int]:
    """Where a finished run's bars look: where its link says, else at the first token after the prompt."""
    return _chosen(progress, link.column, link.position) if link is not None else FIRST_BARS


def _finished_updates(demo: Demo, progress: Progress, client: str, chosen: tuple[int, int] = FIRST_BARS) -> tuple:
    """After a run (a second event, which the page sends when the first succeeds): the bars' pickers and the bars
    at `chosen` (column, position), and the Inside tab's text picker."""
    column, position = chosen
    choices = [(f"T = {s.temperature:g}", i) for i, s in enumerate(progress.samples)]
    return (gr.Dropdown(choices=choices, value=column), _position_slider(progress.samples[column], position),
            _figure(demo, progress, column, position, DEFAULT_BARS, client), inside_tab.text_choices(progress))


def _finished_run(current: Progress | None) -> Progress:
    """The page's run, which a click or Hold needs (a page kept past its session's life has none left)."""
    if current is None:
        raise render.refused("Generate some text first: the panel explains a token of a run.", "Nothing to explain yet")
    return current


def _clicked(event: gr.SelectData) -> tuple[Any, Any]:
    """The column and position a click on a token sent (`render.CHOOSE_TOKEN_JS`), unchecked."""
    if not isinstance(event.index, list) or len(event.index) != 2:
        raise render.refused(f"a click names a column and a position (got {str(event.index)[:40]!r})",
                             "Check the settings")
    return event.index[0], event.index[1]


def _chosen(progress: Progress, index: Any, at: Any) -> tuple[int, int]:
    """The column and position the bars explain, read from the form as `Demo.next_tokens` reads them: a position
    past the sample's end is its end."""
    try:
        return chosen_position(progress, index, at)
    except SettingsError as error:
        raise render.refused(str(error), "Check the settings") from None


def _position_slider(sample: Sample, position: int) -> gr.Slider:
    """The position slider over one sample: 0 (right after the prompt) to its own end, so it cannot run past a
    short sample's end."""
    return gr.Slider(maximum=max(1, len(sample.ids)), value=position)  # a slider needs a range: an empty sample's is 0-1


def unk_choice(models: Models, name: str) -> dict[str, Any]:
    """The "never sample <unk>" box: only a model with an `<unk>` token can sample one."""
    has_unk = models.describe(name).has_unk
    return dict(label="Never sample <unk>" if has_unk else "Never sample <unk> (this model has none)",
                interactive=has_unk)


def dial_choices(models: Models, name: str, dial: str = "") -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The dial's on-box, slider and text for a model: shown only when its atlas names a property the dial can
    turn (the first such), the slider running between the values that push the text to either end. The text is
    `dial` (a link's); when it holds the slider's unit within its range, the box is on and the slider there."""
    steerable = models.describe(name).steerable
    if not steerable:
        return dict(value=False, visible=False, label="Dial"), dict(visible=False), dict(value="", visible=False)
    first = steerable[0]
    (low_end, low), (high_end, high) = first.ends
    held = _held_value(first, dial, low, high)
    return (dict(value=held is not None, visible=True, label=f"Dial {first.property}: hold its unit (samples "
                                                             f"without and with the dial, same seed)"),
            dict(minimum=low, maximum=high, value=high if held is None else held, step=(high - low) / 100,
                 visible=True, label=f"{first.property}: {low_end} ↔ {high_end}",
                 info=f"unit {first.unit} of layer {first.layer}'s {first.quantity}, held at this value"),
            dict(value=dial, visible=True, label="Dial (LAYER:UNIT:QUANTITY=VALUE, empty = off)",
                 info="any unit: layers from 1, units from 0, quantity h or c"))


def _held_value(steerable: Steerable, dial: str, low: float, high: float) -> float | None:
    """The value at which `dial` holds the steerable unit, when it does and within the slider's range."""
    try:
        held = Dial.parse(dial) if dial else None
    except SettingsError:
        return None
    if held is None or steerable.dial(held.value) != held or not low <= held.value <= high:
        return None
    return held.value


def _dial_updates(choices: tuple[dict[str, Any], dict[str, Any], dict[str, Any]]) -> tuple:
    on_choice, slider_choice, text_choice = choices
    return gr.Checkbox(**on_choice), gr.Slider(**slider_choice), gr.Textbox(**text_choice)


def _figure(demo: Demo, progress: Progress, index: Any, at: Any, count: Any, client: str) -> PlotData:
    explained = demo.next_tokens(progress, index, at, count, client=client)
    return render.plot_value(render.next_token_figure(explained))
