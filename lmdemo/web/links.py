"""Links that reopen the page: a tab's settings written as the query of the page's own address
(`?tab=sample&model=…&seed=7`), and such a query read back, checked, into the same settings, so the page can set
its form and run them again, token for token.

A link holds what a visitor typed or chose and nothing else: no server path, no session, no result. Each tab's link
is one frozen dataclass whose fields are the query's parameters, in order (`LINKS` names them by tab id): `of` makes
one from a run's settings (the Inside tab's: from its form), `read` from a query's texts, through the same form
parsers, so a link read back equals the link of the view it came from. Another tab gets links with a dataclass of its
own, an entry in `LINKS` and a handler in its module that sets its form.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode

import gradio as gr

from lmdemo.files import hub_id
from lmdemo.generation import Dial, Sampling, SettingsError
from lmdemo.internals import QUANTITIES
from lmdemo.rules import parse_rule
from lmdemo.web import render
from lmdemo.web.atlas_view import model_atlas
from lmdemo.web.forms import Limits, parse_whole, read_prompt, read_sampling
from lmdemo.web.inside import UNIT_SORTS
from lmdemo.web.registry import Models

TAB = "tab"  # the parameter naming the tab a link opens
NO_LINK = "No link"  # the title of Copy link's refusals
UNITS_VIEW, SPAN_VIEW = "units", "span"  # the Inside tab's detailed views: Show units' and Find units'
MAX_PROMPT_CHARS = 1_500  # of a prompt in a link; a longer one is refused, never cut
MAX_QUERY_CHARS = 6_000  # of a whole query: every proxy takes a request line of 8 KB
MAX_ADDRESS_CHARS = MAX_QUERY_CHARS + 2_000  # of a link: the page's own address, then the query
# what the page's load hands over: its query, only when it names a tab, so a visit without a link costs the server
# nothing (a Python load event would make Gradio keep a state of every page; lmdemo.web.page_states)
QUERY_JS = "() => new URLSearchParams(window.location.search).has('tab') ? window.location.search : ''"
# a query made into an address on the page's own (whatever proxy or Space serves it), copied where the browser lets
ADDRESS_JS = """(query) => {
    const address = new URL(query, window.location.href).href;
    navigator.clipboard?.writeText(address).catch(() => {});
    return address;
}"""


def number_text(value: float) -> str:
    """The shortest text that reads back as exactly `value` ("0.5", "1", "0.1234567"): what the link and the form
    show of a number, so a link reproduces the run to the last bit."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


def dial_text(dial: Dial | None) -> str:
    """The dial as the form's box reads it, its value exact; "" when there is none."""
    return "" if dial is None else f"{dial.layer}:{dial.unit}:{dial.quantity}={number_text(dial.value)}"


@dataclass(frozen=True)
class SampleLink:
    """The Sample tab's run: model, prompt and sampling settings, and where the bars were looking."""

    model: str
    prompt: str
    temperatures: str  # as the form shows them: "0.2, 0.5, 1"
    max_new_tokens: int
    top_k: int
    top_p: float
    seed: int
    stop: str  # "" = none
    avoid_unk: bool
    dial: str  # LAYER:UNIT:QUANTITY=VALUE, "" = off
    column: int = 0  # the bars' sample: 0 = the first temperature
    position: int = 0  # and its tokens already written: 0 = right after the prompt

    tab: ClassVar[str] = "sample"

    @classmethod
    def of(cls, model: str, prompt: Any, sampling: Sampling, column: int = 0, position: int = 0) -> SampleLink:
        """The link of a run: the settings it sampled with (as the form parsed them), bars at `column`, `position`."""
        return cls(model, prompt or "", temperature_text(sampling.temperatures), sampling.max_new_tokens,
                   sampling.top_k, sampling.top_p, sampling.seed, sampling.stop or "", sampling.avoid_unk,
                   dial_text(sampling.dial), column, position)

    @classmethod
    def read(cls, values: Mapping[str, str], models: Models, limits: Limits) -> SampleLink:
        model = linked_model(values["model"], models, "model")
        sampling = read_sampling(limits, values["temperatures"], values["max_new_tokens"], values["top_k"],
                                 values["top_p"], values["seed"], values["stop"], read_flag(values["avoid_unk"],
                                                                                            "avoid_unk"),
                                 values["dial"])
        if sampling.dial is not None:
            info = models.describe(model)
            if not info.steerable:
                raise SettingsError(f"model {model!r} has no dial on the page, so a link cannot turn one")
            sampling.dial.check(info.num_layers, info.hidden_size)
        column, position = parse_whole(values["column"], "column"), parse_whole(values["position"], "position")
        if not 0 <= column < len(sampling.temperatures):
            raise SettingsError(f"column must be from 0 to {len(sampling.temperatures) - 1}, one per temperature "
                                f"(got {column})")
        if not 0 <= position <= sampling.max_new_tokens:
            raise SettingsError(f"position must be from 0 to max_new_tokens, {sampling.max_new_tokens} (got {position})")
        return cls.of(model, linked_prompt(values["prompt"], limits), sampling, column, position)

    def same_run(self, other: SampleLink) -> bool:
        """Whether `other` asks for the same samples, wherever its bars look."""
        return replace(self, column=0, position=0) == replace(other, column=0, position=0)


@dataclass(frozen=True)
class CompareLink:
    """The Compare tab's run: two models, one prompt, one set of sampling settings."""

    model_a: str
    model_b: str
    prompt: str
    temperatures: str
    max_new_tokens: int
    top_k: int
    top_p: float
    seed: int

    tab: ClassVar[str] = "compare"

    @classmethod
    def of(cls, model_a: str, model_b: str, prompt: Any, sampling: Sampling) -> CompareLink:
        """The link of a comparison: its models and the settings both sampled with."""
        return cls(model_a, model_b, prompt or "", temperature_text(sampling.temperatures), sampling.max_new_tokens,
                   sampling.top_k, sampling.top_p, sampling.seed)

    @classmethod
    def read(cls, values: Mapping[str, str], models: Models, limits: Limits) -> CompareLink:
        model_a, model_b = (linked_model(values[key], models, key) for key in ("model_a", "model_b"))
        sampling = read_sampling(limits, values["temperatures"], values["max_new_tokens"], values["top_k"],
                                 values["top_p"], values["seed"])
        return cls.of(model_a, model_b, linked_prompt(values["prompt"], limits), sampling)


@dataclass(frozen=True)
class InsideLink:
    """The Inside tab's view: the text a model reads (typed on the Sample tab), the atlas row and the rule whose
    units are shown, and the detailed view's settings, with which of its views was on display."""

    model: str
    prompt: str  # the text read: the Sample tab's prompt, or a run's prompt and sample as text
    property: str  # the atlas row whose unit is shown, "" = none (a model without an atlas)
    rule: str  # the visitor's rule, "" = none
    layer: int  # from 1 (bottom)
    quantity: str  # a key of `QUANTITIES`
    sort: str  # a key of `UNIT_SORTS`
    count: int  # units drawn
    at: int | None  # the text position "largest change" ranks at; None = the last token
    unit: int | None  # the traced unit; None = the top-ranked one
    detail: str  # the detailed view on display: "" = none, `UNITS_VIEW` or `SPAN_VIEW`
    first: int | None = None  # the span's first and last text positions, for `SPAN_VIEW`
    last: int | None = None

    tab: ClassVar[str] = "inside"

    @classmethod
    def of(cls, model: str, prompt: str, property_name: Any, rule: Any, layer: Any, quantity: Any, sort: Any,
           count: Any, at: Any, unit: Any, detail: Any, first: Any = None, last: Any = None) -> InsideLink:
        """The link of the tab's form values, raw as the page sends them (numbers or text; empty = the default): a
        number that is not whole raises `SettingsError`, the rest is left to `check`."""
        def optional(value: Any, key: str) -> int | None:
            return None if value in (None, "") else parse_whole(value, key)
        return cls(model, prompt, str(property_name or ""), str(rule or "").strip(), parse_whole(layer, "layer"),
                   str(quantity), str(sort), parse_whole(count, "count"), optional(at, "at"), optional(unit, "unit"),
                   str(detail or ""), optional(first, "first"), optional(last, "last"))

    @classmethod
    def read(cls, values: Mapping[str, str], models: Models, limits: Limits) -> InsideLink:
        link = cls.of(linked_model(values["model"], models, "model"), linked_prompt(values["prompt"], limits),
                      values["property"], values["rule"], values["layer"], values["quantity"], values["sort"],
                      values["count"], values["at"], values["unit"], values["detail"], values["first"], values["last"])
        link.check(models, limits)
        return link

    def check(self, models: Models, limits: Limits) -> None:
        """Refuse (`SettingsError`, one line) what the tab's views would refuse before reading the text: a row the
        model's atlas lacks, a rule that cannot be read, a setting out of its range, a span without its ends."""
        if self.property:
            atlas = model_atlas(models, self.model)
            if atlas is None:
                raise SettingsError(f"model {self.model!r} has no cell atlas, so a link cannot show a unit of it")
            atlas.row(self.property)
        if self.rule:
            parse_rule(self.rule)
        one_of(self.quantity, QUANTITIES, "quantity")
        one_of(self.sort, UNIT_SORTS, "sort")
        one_of(self.detail, ("", UNITS_VIEW, SPAN_VIEW), "detail")
        info = models.describe(self.model)
        within(self.layer, 1, info.num_layers, "layer")
        within(self.count, 1, limits.max_units, "count")
        within(self.unit, 0, info.hidden_size - 1, "unit")
        for key in ("at", "first", "last"):  # a link's text is read as a prompt, of at most `max_prompt_tokens`
            within(getattr(self, key), 0, limits.max_prompt_tokens - 1, key)
        if self.detail == SPAN_VIEW and (self.first is None or self.last is None or self.first > self.last):
            raise SettingsError("a span needs its first and last positions, the first not after the last")


Link = SampleLink | InsideLink | CompareLink
LINKS: dict[str, type[Link]] = {kind.tab: kind for kind in (SampleLink, InsideLink, CompareLink)}  # the page's order


def unit_query(model: str, text: str, layer: int, quantity: str, unit: int, at: int, models: Models,
               limits: Limits) -> str | None:
    """The query that opens the Inside tab on `text` with `unit` traced and ranked at token `at`: its row in the
    heatmap; None when no link can carry it (a session's model, a text too long for a link)."""
    link = InsideLink(model, text, "", "", layer, quantity, "variable", limits.max_units, at, unit, UNITS_VIEW)
    try:
        return write_query(link, models, limits)
    except SettingsError:
        return None


def one_of(value: str, allowed: Collection[str], key: str) -> None:
    """Refuse a link's choice that is not one of the form's."""
    if value not in allowed:
        raise SettingsError(f"{key} must be one of {', '.join(map(repr, allowed))} (got {value[:40]!r})")


def within(number: int | None, lowest: int, highest: int, key: str) -> None:
    """Refuse a link's whole number outside the form's range; None (the form's default) is in it."""
    if number is not None and not lowest <= number <= highest:
        raise SettingsError(f"{key} must be from {lowest} to {highest} (got {number})")


def temperature_text(temperatures: Sequence[float]) -> str:
    return ", ".join(number_text(t) for t in temperatures)


def read_flag(text: str, key: str) -> bool:
    if text not in ("0", "1"):
        raise SettingsError(f"{key} must be 1 (on) or 0 (off)")
    return text == "1"


def linked_model(name: str, models: Models, key: str) -> str:
    """A model a link may name: one served here to every visitor, under a name that is not a server path."""
    if name not in models.names:
        raise SettingsError(f"{key} {name[:80]!r} is not served here (a model trained on the page stays in that "
                            f"page's session)")
    if "/" in name and not hub_id(name):
        raise SettingsError(f"{key} {name!r} is served under its folder's path, which a link does not carry")
    return name


def linked_prompt(text: Any, limits: Limits, what: str = "the prompt") -> str:
    """A prompt a link may carry (`what` it is, for the refusal): at most `MAX_PROMPT_CHARS`, refused (never cut)
    beyond."""
    prompt = read_prompt(text, limits)
    if len(prompt) > MAX_PROMPT_CHARS:
        raise SettingsError(f"{what} has {len(prompt):,} characters and a link holds at most {MAX_PROMPT_CHARS:,}: "
                            f"shorten it to share it")
    return prompt


def query_values(link: Link) -> dict[str, str]:
    """The link's parameters as the query writes them: flags 1 or 0, numbers exact, texts as typed, none empty."""
    def text(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return "1" if value else "0"
        return number_text(value) if isinstance(value, float) else str(value)
    return {field.name: text(getattr(link, field.name)) for field in fields(link)}


def write_query(link: Link, models: Models, limits: Limits) -> str:
    """The query (`?tab=…&…`) of the page's address that reopens `link`; refused with one line (`SettingsError`)
    when it would not read back the same: a model a link cannot name, a prompt or a query too long for a link."""
    values = query_values(link)
    type(link).read(values, models, limits)
    query = "?" + urlencode({TAB: link.tab, **values})
    if len(query) > MAX_QUERY_CHARS:
        raise SettingsError(f"the link would be {len(query):,} characters long and holds at most "
                            f"{MAX_QUERY_CHARS:,} (escaped, a letter beyond plain ASCII takes 6 to 12): shorten the "
                            f"prompt to share it")
    return query


def link_query(link: Link | None, models: Models, limits: Limits, first: str) -> str:
    """"Copy link"'s query for `link`, the run on view; without one (`first` says what to do first), or when it
    cannot be a link, the visitor's one-line refusal."""
    if link is None:
        raise render.refused(f"{first}: a link reopens the run on view.", "Nothing to link yet")
    try:
        return write_query(link, models, limits)
    except SettingsError as error:
        raise render.refused(str(error), NO_LINK) from None


def read_query(query: str, models: Models, limits: Limits) -> Link | None:
    """The link a page's query (`?tab=…`) holds, checked as a form's values are; None when it names no tab. Anything
    else that is not a link's parameter (a Space's own, say) is left alone."""
    if len(query) > MAX_QUERY_CHARS:
        raise SettingsError(f"the link is {len(query):,} characters long; a link made here has at most "
                            f"{MAX_QUERY_CHARS:,}")
    values = dict(parse_qsl(query.removeprefix("?"), keep_blank_values=True))
    tab = values.get(TAB)
    if tab is None:
        return None
    kind = LINKS.get(tab)
    if kind is None:
        *others, last = LINKS
        raise SettingsError(f"a link opens the {', '.join(others)} or {last} tab, not {tab[:40]!r}")
    missing = [field.name for field in fields(kind) if field.name not in values]
    if missing:
        raise SettingsError(f"the link lacks {', '.join(missing)}")
    return kind.read(values, models, limits)


# -- on the page -------------------------------------------------------------------------------------------------
def connect_opening(app: gr.Blocks, models: Models, limits: Limits, opened: Mapping[str, gr.State]) -> None:
    """Open the page's link: its load hands over the query (only when there is one), and the link read from it goes
    to its tab's `opened` state, whose change sets that tab's form and runs it; a link that cannot be opened is one
    warning, and the page stays on its defaults."""
    query = gr.Textbox(visible="hidden", max_length=MAX_QUERY_CHARS)

    def open_query(text: str) -> tuple[Link | None, ...]:
        try:
            link = read_query(text, models, limits)
        except SettingsError as error:
            gr.Warning(render.escape(f"This link cannot be opened: {error}. The page opens on its defaults."))
            link = None
        return tuple(link if link is not None and link.tab == tab else None for tab in opened)

    app.load(None, None, query, js=QUERY_JS, api_visibility="private")
    query.change(open_query, query, list(opened.values()), api_visibility="private")


def copy_widgets(what: str) -> tuple[gr.Button, gr.Textbox]:
    """A "Copy link" button and the box that shows the link, hidden until there is one: where the browser keeps the
    clipboard to itself (a phone, often) the link can be selected there. The box is editable because a disabled one
    cannot be selected on every phone; nothing reads what is typed in it."""
    with gr.Row(equal_height=True):
        button = gr.Button("Copy link", size="sm", scale=1, min_width=110)
        box = gr.Textbox(label=f"Link to {what}", visible=False, lines=1, max_lines=3, max_length=MAX_ADDRESS_CHARS,
                         scale=5)
    return button, box


def connect_copy(button: gr.Button, box: gr.Textbox, make_query: Callable[..., str], inputs: list[Any]) -> None:
    """Copy link: `make_query(*inputs)` writes the query (a refusal is its one-line error); the page makes it an
    address on its own and copies it to the clipboard where the browser allows, and shows it in `box` either way."""
    def show(*values: Any) -> gr.Textbox:
        return gr.Textbox(value=make_query(*values), visible=True)

    button.click(show, inputs, box, api_visibility="private", preprocess=False).success(  # raw: `make_query` reads
        None, box, box, js=ADDRESS_JS, api_visibility="private")
