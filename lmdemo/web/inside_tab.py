"""The "Inside the LSTM" tab: a thin Gradio layer over `lmdemo.web.inside` (the requests) and `render`.

It reads the Sample tab's model, prompt and last run: units x tokens of that text, ranked, traced, or found by a
marked span.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from lmdemo.generation import SettingsError
from lmdemo.internals import QUANTITIES
from lmdemo.web import render
from lmdemo.web.compute import ComputeSlots
from lmdemo.web.demo import Progress
from lmdemo.web.forms import FIELD_CHARS
from lmdemo.web.inside import UNIT_SORTS, Inside, UnitView
from lmdemo.web.registry import Models

DEFAULT_UNITS = 32

INSIDE_HELP = """What the model holds after reading each token of the **Sample** tab's text: rows are units of one
layer, columns are tokens. **h** is what a layer passes on (to the layer above, or to the prediction), **c** is its
memory; the **input**, **forget** and **output** gates (0 = shut, 1 = open) say how much it writes, keeps and shows,
and the **cell candidate g** is what it would write. Rank the units to find the busy ones, or mark a span of token
positions to find units that are high on it and low elsewhere."""

SPAN_HELP = """**Find units for a pattern** (after LSTMVis): give the first and last token positions of a span (the
small numbers above the text; hover a token for its own). Units are ranked by *(mean inside − mean outside) ÷ the
unit's standard deviation over the shown text*: how many of its own spreads it sits higher on the span. A perfect
on/off unit scores about 1/√(p(1−p)) for a span that is a share p of the text, so 4.4 for 5 %; 0 means no
preference."""


def build(inside: Inside, run: gr.State, model: gr.Dropdown, prompt: gr.Textbox, heavy: dict[str, Any],
          slots: ComputeSlots) -> tuple[gr.Dropdown, gr.Dropdown]:
    """Units x tokens of the sampling tab's text: ranked, traced, or found by a marked span.

    Returns the text and layer pickers, which the sampling tab updates after a run or a model change.
    """
    limits = inside.limits
    gr.Markdown(INSIDE_HELP, elem_classes="lm-help")
    with gr.Row():
        text = gr.Dropdown([("the prompt", 0)], value=0, label="Text", scale=2,
                           info="the Sample tab's model and prompt, or the prompt and one of its samples")
        layer = gr.Dropdown(label="Layer", **layer_choices(inside.models, inside.models.default))
        quantity = gr.Dropdown([(label, key) for key, label in QUANTITIES.items()], value="h", label="Show")
    with gr.Row():
        sort = gr.Dropdown([(label, key) for key, label in UNIT_SORTS.items()], value="variable", label="Units")
        count = gr.Slider(1, limits.max_units, value=min(DEFAULT_UNITS, limits.max_units), step=1,
                          label=f"How many units (up to {limits.max_units})")
        # text boxes, not numbers: a browser shows an empty gr.Number as 0, and empty means "the default" here
        at = gr.Textbox("", label="Change at position", info="for “largest change”; empty = the last token",
                        max_length=FIELD_CHARS)
        unit = gr.Textbox("", label="Unit to trace", info="empty = the top-ranked unit", max_length=FIELD_CHARS)
    show = gr.Button("Show units", variant="primary")
    gr.Markdown(SPAN_HELP, elem_classes="lm-help")
    with gr.Row(equal_height=False):
        first = gr.Textbox("", label="Span from position", placeholder="e.g. 22", max_length=FIELD_CHARS)
        last = gr.Textbox("", label="to position (inclusive)", placeholder="e.g. 28", max_length=FIELD_CHARS)
        find = gr.Button("Find units", variant="secondary")
    status = gr.Markdown(f"Press **Show units**. At most the last {limits.max_inside_tokens} tokens of a text and "
                         f"{limits.max_units} units are drawn.")
    positions = gr.HTML('<div class="lm-empty">The text, with token positions, appears here.</div>')
    heatmap = gr.Plot(show_label=False, elem_id="inside-heatmap")
    with gr.Row(equal_height=False):
        table = gr.Dataframe(label="Ranked units", interactive=False, scale=2)
        trace = gr.Plot(show_label=False, scale=3)

    def shown(view: UnitView) -> tuple:
        return (render.inside_markdown(view), render.positions_html(view), render.unit_heatmap(view),
                render.unit_table(view), render.unit_trace(view))

    def on_show(current: Progress | None, name: str, prompt_text: str, choice: Any, layer_number: Any, what: str,
                order: str, how_many: Any, at_position: Any, traced: Any) -> tuple:
        try:
            chosen = inside.text(current, name, prompt_text, choice)
            return shown(inside.units(chosen, layer_number, what, order, how_many, at_position, traced))
        except SettingsError as error:
            raise gr.Error(str(error), title="Check the settings") from None

    def on_find(current: Progress | None, name: str, prompt_text: str, choice: Any, layer_number: Any, what: str,
                start: Any, end: Any, how_many: Any, traced: Any) -> tuple:
        try:
            chosen = inside.text(current, name, prompt_text, choice)
            return shown(inside.find_span(chosen, layer_number, what, start, end, how_many, traced))
        except SettingsError as error:
            raise gr.Error(str(error), title="Check the span") from None

    reading = [run, model, prompt, text, layer, quantity]
    outputs = [status, positions, heatmap, table, trace]
    show.click(slots.guard(on_show), [*reading, sort, count, at, unit], outputs, api_name="inside", **heavy)
    find.click(slots.guard(on_find), [*reading, first, last, count, unit], outputs, api_name="find_units", **heavy)
    return text, layer


def layer_choices(models: Models, name: str) -> dict[str, Any]:
    """The layer picker's choices for a model, the top layer chosen."""
    layers = models.describe(name).num_layers
    names = {1: " (bottom)", layers: " (top)"} if layers > 1 else {}
    return dict(choices=[(f"{n}{names.get(n, '')}", n) for n in range(1, layers + 1)], value=layers)


def text_choices(progress: Progress) -> Any:
    """The inside tab's text picker after a run: the prompt alone or with one of the run's samples."""
    choices = [("the prompt", 0)] + [(f"the prompt + sample at T = {s.temperature:g}", i)
                                     for i, s in enumerate(progress.samples, 1)]
    return gr.Dropdown(choices=choices, value=1)
