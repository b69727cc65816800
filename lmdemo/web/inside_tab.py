"""The "Inside the LSTM" tab: a thin Gradio layer over `lmdemo.web.atlas_view` and `lmdemo.web.inside` (the
requests) and `render`.

It opens on the model's cell atlas (what its units follow, one row per property; choosing a row shows that unit
over the Sample tab's text and held-out text), then finds a unit for a rule the visitor writes (`lmdemo.rules`), shown
the same way, and keeps the detailed view below: units x tokens of that text, ranked, traced, or found by a marked
span. "Copy link" gives a link to the tab's view, and a page opened on such a link sets the form and shows it again
(`lmdemo.web.links`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from lmdemo.generation import SettingsError
from lmdemo.internals import QUANTITIES
from lmdemo.rules import MAX_RULE_CHARACTERS, RULE_TOKENS
from lmdemo.web import links, render
from lmdemo.web.atlas_view import AtlasView, ModelAtlas
from lmdemo.web.demo import Progress
from lmdemo.web.forms import FIELD_CHARS, parse_whole
from lmdemo.web.gate import UNLIMITED, Gate
from lmdemo.web.inside import UNIT_SORTS, Inside, InsideText, UnitView
from lmdemo.web.links import SPAN_VIEW, UNITS_VIEW, InsideLink
from lmdemo.web.registry import Models

DEFAULT_UNITS = 32
ATLAS_UNIT, RULE_UNIT = "atlas unit", "rule unit"  # with the detailed views: the views a link can open
OPENED_VIEWS = (ATLAS_UNIT, RULE_UNIT, UNITS_VIEW, SPAN_VIEW)
ATLAS_COLUMN_WIDTHS = ["14%", "18%", "8%", "6%", "6%", "48%"]  # property, unit, metric, score, random, what it does

ATLAS_HELP = """**Scores**, on text the model never trained on: **r** is the unit's correlation with a position (1: in
step with it); **AUC** is how often the unit tells a token where the property holds from one where it does not
(0.5: chance, 1: always); **accuracy** is the share of rated reviews whose sentiment the unit's value at their end
tells right. Found automatically (`python -m lmdemo atlas`), after Karpathy, Johnson & Fei-Fei (2015) and Radford
et al.'s sentiment unit (2017)."""

RULE_HELP = f"""**A unit for your own rule.** Write a rule over text and the unit that follows it best is found as the
atlas's are: chosen on up to {RULE_TOKENS:,} tokens of the text the model trained on, scored on as many it never
trained on, beside a random model's best unit. A rule is a regular expression (`\\d+`, `"[^"]*"`; `^` and `$` match at
each line's start and end), `words: not, never, no`, `inside ( … )` (from an opening mark to the next closing one on
its line), or `since \\n` (the tokens read since a match); `NAME=` in front names it. A token holds the rule when any
of its characters is in a match, in the text as the model reads it (a word model's is lower-cased). The first rule on
a model reads its text (a few seconds); later ones take a second or less."""

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


def build(inside: Inside, run: gr.State, model: gr.Dropdown, prompt: gr.Textbox, gate: Gate, tabs: gr.Tabs,
          opened: gr.State) -> tuple[gr.Dropdown, gr.Dropdown]:
    """The cell atlas of the model, one unit over the Sample tab's text, and the detailed view below: units x
    tokens of that text, ranked, traced, or found by a marked span. Every view that reads a text is model work
    of the `gate` (a fair turn per address).

    A link (`lmdemo.web.links`) the page `opened` on shows this tab among `tabs`, sets the Sample tab's `model` and
    `prompt` (what this tab reads) and then, once the model's atlas is in (a model change resets the unit and layer
    pickers), this tab's form, and runs its views through the same events as their buttons. "Copy link" links the
    form as it is, with which detailed view is on display.

    Returns the text and layer pickers, which the sampling tab updates after a run or a model change.
    """
    limits, models = inside.limits, inside.models
    events = InsideEvents(inside, AtlasView(models, limits))
    opening = events.atlases.atlas(models.default)
    atlas_status = gr.Markdown(render.atlas_markdown(models.default, opening), elem_id="atlas-status")
    atlas_table = gr.Dataframe(render.atlas_frame(opening), interactive=False, wrap=True, show_label=False,
                               column_widths=ATLAS_COLUMN_WIDTHS, elem_id="atlas-table", visible=opening is not None)
    with gr.Row():
        chosen = gr.Dropdown(**property_choices(opening), label="Show the unit of", scale=1)
        text = gr.Dropdown([("the prompt", 0)], value=0, label="Text", scale=2,
                           info="the Sample tab's model and prompt, or the prompt and one of its samples")
    copy_link, link = links.copy_widgets("this view")
    unit_view = gr.HTML(_opening_unit(events.atlases, inside, opening, prompt.value), elem_id="atlas-unit")
    atlas_help = gr.Markdown(ATLAS_HELP, elem_classes="lm-help", visible=opening is not None)
    gr.Markdown(RULE_HELP, elem_classes="lm-help")
    with gr.Row(equal_height=True):
        rule = gr.Textbox("", label="Your rule", placeholder="e.g. \\d+   ·   words: not, never   ·   inside ( … )",
                          max_length=MAX_RULE_CHARACTERS, scale=4, elem_id="rule-box")
        find_rule = gr.Button("Find its unit", variant="secondary", scale=1, elem_id="rule-find")
    rule_status = gr.Markdown("", elem_id="rule-status")
    rule_table = gr.Dataframe(render.atlas_frame(None), interactive=False, wrap=True, show_label=False,
                              column_widths=ATLAS_COLUMN_WIDTHS, elem_id="rule-table", visible=False)
    rule_unit = gr.HTML("", elem_id="rule-unit")
    gate.pages.also_forget(events.atlases.readings.forget_idle)
    with gr.Accordion("Detailed view: any layer's units as a heatmap, and finding units for a span",
                      open=opening is None) as detail:
        gr.Markdown(INSIDE_HELP, elem_classes="lm-help")
        with gr.Row():
            layer = gr.Dropdown(label="Layer", **layer_choices(models, models.default))
            quantity = gr.Dropdown([(label, key) for key, label in QUANTITIES.items()], value="h", label="Show")
            sort = gr.Dropdown([(label, key) for key, label in UNIT_SORTS.items()], value="variable", label="Units")
        with gr.Row():
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
        status = gr.Markdown(f"Press **Show units**. At most the last {limits.max_inside_tokens} tokens of a text "
                             f"and {limits.max_units} units are drawn.", elem_id="inside-status")
        positions = gr.HTML('<div class="lm-empty">The text, with token positions, appears here.</div>')
        heatmap = gr.Plot(show_label=False, elem_id="inside-heatmap")
        with gr.Row(equal_height=False):
            table = gr.Dataframe(label="Ranked units", interactive=False, scale=2, elem_id="inside-table")
            trace = gr.Plot(show_label=False, scale=3)

    # raw values (lmdemo checks them): a sample can be chosen before the page has listed it (/after_generate), and a
    # session's own model is not among the picker's listed choices (lmdemo.web.jobs)
    raw = dict(preprocess=False, **UNLIMITED)
    session_ttl = gate.serving.session_ttl_s
    shown_detail = gr.State("", time_to_live=session_ttl)  # the detailed view on display: "", UNITS_VIEW, SPAN_VIEW
    waiting = gr.State(None, time_to_live=session_ttl)  # an opened link whose model is changing
    ready = gr.State(None, time_to_live=session_ttl)  # an opened link whose model is in: it sets the form
    # each set to an opened link whose view it runs, as its button would
    openers = {view: gr.State(None, time_to_live=session_ttl) for view in OPENED_VIEWS}
    form = [chosen, rule, layer, quantity, sort, count, at, unit, first, last]
    show_unit = dict(fn=gate.model_work(events.on_unit), inputs=[run, model, prompt, text, chosen], outputs=unit_view,
                     **raw)
    opened.change(events.on_opened, [opened, model], [tabs, model, prompt, waiting, ready], api_visibility="private")
    model.change(events.on_model, model, [atlas_status, atlas_table, chosen, atlas_help, detail], api_name="atlas",
                 preprocess=False).then(gate.model_work(events.on_new_model), [model, chosen], unit_view,
                                        api_visibility="private", **raw).then(
        events.on_model_ready, [waiting, model], [waiting, ready], api_visibility="private")
    ready.change(events.on_ready, ready, [*form, detail, *openers.values()], api_visibility="private")
    atlas_table.select(events.on_row, model, chosen, api_visibility="private").then(**show_unit,
                                                                                     api_visibility="private")
    gr.on([chosen.input, openers[ATLAS_UNIT].change], **show_unit, api_name="atlas_unit")
    find_unit = dict(fn=gate.model_work(events.on_rule), inputs=[run, model, prompt, text, rule],
                     outputs=[rule_status, rule_table, rule_unit], **raw)
    gr.on([find_rule.click, openers[RULE_UNIT].change], **find_unit, api_name="rule_unit")
    rule.submit(**find_unit, api_visibility="private")
    model.change(events.on_rule_cleared, None, [rule_status, rule_table, rule_unit], api_visibility="private")
    text.change(**show_unit, api_visibility="private")
    reading = [run, model, prompt, text, layer, quantity]
    outputs = [status, positions, heatmap, table, trace, shown_detail]
    gr.on([show.click, openers[UNITS_VIEW].change], gate.model_work(events.on_show),
          [*reading, sort, count, at, unit], outputs, api_name="inside", **raw)
    gr.on([find.click, openers[SPAN_VIEW].change], gate.model_work(events.on_find),
          [*reading, first, last, count, unit], outputs, api_name="find_units", **raw)
    links.connect_copy(copy_link, link, events.link_query, [run, model, prompt, text, *form, shown_detail])
    return text, layer


class InsideEvents:
    """The tab's event handlers over `inside` (the detailed view) and `atlases` (the cell atlas)."""

    def __init__(self, inside: Inside, atlases: AtlasView):
        self.inside, self.atlases = inside, atlases

    def on_show(self, current: Progress | None, name: str, prompt_text: str, choice: Any, layer_number: Any,
                what: str, order: str, how_many: Any, at_position: Any, traced: Any) -> tuple:
        inside = self.inside
        return _shown(lambda: inside.units(inside.text(current, name, prompt_text, choice), layer_number, what, order,
                                           how_many, at_position, traced), "Check the settings", UNITS_VIEW)

    def on_find(self, current: Progress | None, name: str, prompt_text: str, choice: Any, layer_number: Any,
                what: str, start: Any, end: Any, how_many: Any, traced: Any) -> tuple:
        inside = self.inside
        return _shown(lambda: inside.find_span(inside.text(current, name, prompt_text, choice), layer_number, what,
                                               start, end, how_many, traced), "Check the span", SPAN_VIEW)

    def link_query(self, current: Progress | None, name: str, prompt_text: Any, choice: Any, property_name: Any,
                   written: Any, layer_number: Any, what: Any, order: Any, how_many: Any, at_position: Any,
                   traced: Any, start: Any, end: Any, shown_detail: str) -> str:
        """"Copy link": the query that reopens the tab's view, its form as it is (a run's sample carried as text)."""
        models, limits = self.inside.models, self.inside.limits
        try:
            link = InsideLink.of(name, self._linked_text(current, name, prompt_text, choice), property_name, written,
                                 layer_number, what, order, how_many, at_position, traced, shown_detail, start, end)
            return links.write_query(link, models, limits)
        except SettingsError as error:
            raise render.refused(str(error), links.NO_LINK) from None

    def _linked_text(self, current: Progress | None, name: str, prompt_text: Any, choice: Any) -> str:
        """The text a link carries: the prompt as typed or, as a link holds no run, a run's prompt and chosen sample
        as text; either within a link's limit."""
        number = parse_whole(choice, "text")
        if number == 0:
            return links.linked_prompt(prompt_text, self.inside.limits)
        self.inside.text(current, name, prompt_text, number)  # refuses a run or a sample that is not there
        sample = current.samples[number - 1]
        return links.linked_prompt(current.prompt.text + sample.text, self.inside.limits,
                                   f"the prompt with its sample at T = {sample.temperature:g}")

    def on_opened(self, opened: InsideLink | None, name: str) -> tuple:
        """A link the page opened on: this tab in view and the Sample tab's model and prompt set to the link's; the
        link is `ready` for the rest at once, or `waiting` while its model changes (which resets this tab's
        pickers)."""
        if opened is None:
            return gr.skip()
        changing = opened.model != name
        return (gr.Tabs(selected=InsideLink.tab), opened.model, opened.prompt, opened if changing else gr.skip(),
                gr.skip() if changing else opened)

    def on_model_ready(self, waiting: InsideLink | None, name: str) -> tuple:
        """After a model change: the `waiting` link `ready`, when this is its model. Chained after the change's atlas
        and unit view, whose pickers and view would otherwise overwrite the link's (the Sample tab's reset of the
        layer picker, an event of no work, is long done by then)."""
        if waiting is None or waiting.model != name:
            return gr.skip()
        return None, waiting

    def on_ready(self, link: InsideLink) -> tuple:
        """The form set to a `ready` link (the layer picker to its model's layers), the detailed view opened when the
        link showed one, and the openers of the link's views set, which run them as their buttons do."""
        def text(number: int | None) -> str:
            return "" if number is None else str(number)
        layers = gr.Dropdown(**{**layer_choices(self.inside.models, link.model), "value": link.layer})
        wanted = {ATLAS_UNIT: bool(link.property), RULE_UNIT: bool(link.rule), UNITS_VIEW: link.detail == UNITS_VIEW,
                  SPAN_VIEW: link.detail == SPAN_VIEW}
        return (link.property or None, link.rule, layers, link.quantity, link.sort, link.count, text(link.at),
                text(link.unit), text(link.first), text(link.last),
                gr.Accordion(open=True) if link.detail else gr.skip(),
                *(link if wanted[view] else gr.skip() for view in OPENED_VIEWS))

    def on_model(self, name: Any) -> tuple:
        try:
            if not isinstance(name, str):
                raise SettingsError(f"the model must be a name (got {type(name).__name__})")
            atlas = self.atlases.atlas(name)
        except SettingsError as error:
            raise render.refused(str(error), "Unknown model") from None
        found = atlas is not None
        return (render.atlas_markdown(name, atlas), gr.Dataframe(render.atlas_frame(atlas), visible=found),
                gr.Dropdown(**property_choices(atlas)), gr.Markdown(visible=found), gr.Accordion(open=not found))

    def on_row(self, name: str, event: gr.SelectData) -> str:
        atlas = self.atlases.atlas(name)
        if atlas is None or not 0 <= event.index[0] < len(atlas.rows):
            return gr.skip()
        return atlas.rows[event.index[0]].property

    def on_unit(self, current: Progress | None, name: str, prompt_text: str, choice: Any, property_name: Any) -> str:
        """The unit over the visitor's text (when the chosen text is this model's) and the held-out examples."""
        if not property_name or self.atlases.atlas(name) is None:
            return ""
        try:
            own = self._own_text(current, name, prompt_text, choice)
            return render.unit_text_html(self.atlases.unit(own, name, property_name))
        except SettingsError as error:
            raise render.refused(str(error), "Check the settings") from None

    def on_rule(self, current: Progress | None, name: str, prompt_text: str, choice: Any, written: Any) -> tuple:
        """The unit for the visitor's rule: one line on where it was chosen and scored, its atlas row, and the unit over
        the visitor's text (when the chosen text is this model's) and held-out passages."""
        try:
            own = self._own_text(current, name, prompt_text, choice)
            found, reading = self.atlases.rule(own, name, written)
        except SettingsError as error:
            raise render.refused(str(error), "Check the rule") from None
        return (rule_markdown(found), gr.Dataframe(render.atlas_frame(found), visible=True),
                render.unit_text_html(reading))

    def on_rule_cleared(self) -> tuple:
        """Another model: the last rule's unit was another model's."""
        return "", gr.Dataframe(visible=False), ""

    def _own_text(self, current: Progress | None, name: str, prompt_text: str, choice: Any) -> InsideText | None:
        """The chosen text when model `name` read it (not a sample of the model shown before)."""
        chosen_text = self.inside.text(current, name, prompt_text, choice)
        return chosen_text if chosen_text.model == name else None

    def on_new_model(self, name: str, property_name: Any) -> str:
        """A model just chosen: its unit over the held-out examples (the Sample tab is replacing the prompt)."""
        try:
            return render.unit_text_html(self.atlases.unit(None, name, property_name)) if property_name else ""
        except SettingsError:  # no atlas, or one without examples: the table says what there is
            return ""


def _shown(view_of: Callable[[], UnitView], title: str, detail: str) -> tuple:
    """The detailed view's outputs for the view `view_of` makes, and which `detail` view it is (for a link); a bad
    setting is one error titled `title`."""
    try:
        view = view_of()
    except SettingsError as error:
        raise render.refused(str(error), title) from None
    return (render.inside_markdown(view), render.positions_html(view), render.unit_heatmap(view),
            render.unit_table(view), render.unit_trace(view), detail)


def rule_markdown(found: ModelAtlas) -> str:
    """Above a rule's row: whose unit it is and where it was chosen and scored."""
    return (f"**The unit of {render.escape(found.model)} that follows your rule best**, chosen on the "
            f"{render.escape(found.chosen_on)} and scored on the {render.escape(found.scored_on)}, text it never "
            f"trained on; **random**: the best unit of a random model of the same shape.")


def property_choices(atlas: ModelAtlas | None) -> dict[str, Any]:
    """The atlas's properties to choose from, the first chosen (hidden without an atlas)."""
    rows = atlas.rows if atlas is not None else []
    return {"choices": [(f"{row.property.replace('_', ' ')} ({row.label})", row.property) for row in rows],
            "value": rows[0].property if rows else None, "visible": bool(rows)}


def _opening_unit(atlases: AtlasView, inside: Inside, atlas: ModelAtlas | None, prompt_text: str) -> str:
    """What the tab opens on: the default model's first atlas row over the Sample tab's opening prompt."""
    if atlas is None or not atlas.rows:
        return ""
    try:
        opening = inside.text(None, atlas.model, prompt_text, 0)
        return render.unit_text_html(atlases.unit(opening, atlas.model, atlas.rows[0].property))
    except SettingsError:
        return ""


def layer_choices(models: Models, name: str) -> dict[str, Any]:
    """The layer picker's choices for a model, the top layer chosen."""
    layers = models.describe(name).num_layers
    names = {1: " (bottom)", layers: " (top)"} if layers > 1 else {}
    return {"choices": [(f"{n}{names.get(n, '')}", n) for n in range(1, layers + 1)], "value": layers}


def text_choices(progress: Progress) -> Any:
    """The inside tab's text picker after a run: the prompt alone or with one of the run's samples."""
    choices = [("the prompt", 0)] + [(f"the prompt + sample at T = {s.temperature:g}", i)
                                     for i, s in enumerate(progress.samples, 1)]
    return gr.Dropdown(choices=choices, value=1)
