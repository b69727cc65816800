""""Why this token?" as HTML (`lmdemo.why`): the token and its probability, what it is measured against, the top
layer's units that pushed for it and against it, and what holding units did.

Each unit is a bar as long as its share and coloured like a unit's value in the atlas (`render.unit_colour`: red
for, blue against, as strong as its share beside the largest shown), named by the atlas where it has a name ("unit 19,
sentiment"). Every bar and held row carries its unit's layer, quantity and number (`data-layer`, `data-quantity`,
`data-unit`), so the page can link one to its row of the Inside tab's heatmap. The page's styles are `render`'s; the
few a bar needs are inline.
"""

from __future__ import annotations

from collections.abc import Callable

from lmdemo.tokenizer import UNK
from lmdemo.web.render import escape, unit_colour, visible
from lmdemo.why import Held, Step, UnitShare, Why

UnitHref = Callable[[int, str, int], str | None]  # (layer, quantity, unit) -> a link to its heatmap row, or None
TOP_BARS = 5  # units shown for the token and as many against it
ROW_STYLE = ("display:grid;grid-template-columns:minmax(9rem,16rem) 1fr 3.5rem;gap:.5rem;align-items:center;"
             "margin:.15rem 0")
TRACK_STYLE = "background:#f3f5f8;border-radius:.2rem;height:.9rem"
BAR_STYLE = "display:block;height:100%;border-radius:.2rem"
NUMBER = 'style="text-align:right"'
NO_WHY = ('<div class="lm-empty">Click a token of a sample or of the prompt: why the model gave it its probability '
          'appears here.</div>')


def why_html(why: Why, place: str | None = None, unit_href: UnitHref | None = None) -> str:
    """The explanation of one token: its probability against the reference, how the units add up to the log-ratio,
    the `TOP_BARS` units for it and against it, and the probability with units held. `place` is where the page says
    the token is ("the prompt's token 3"); by default, its index in the text. `unit_href` gives a unit the atlas does
    not name a link to its row of the Inside tab's heatmap over this text (None: no link)."""
    steps = "".join(f'<p class="lm-note lm-caption">{_step_sentence(step)}</p>' for step in why.steps)
    total = (f"log-ratio {why.logit_difference:+.3f} = the units' shares {why.sum_of_shares:+.3f} + the decoder's bias "
             f"{why.bias_difference:+.3f} (exact: the top layer's h reaches the logits linearly)")
    sides = {"for": [unit for unit in why.units if unit.share > 0][:TOP_BARS],
             "against": [unit for unit in why.units if unit.share < 0][:TOP_BARS]}
    bound = max((abs(unit.share) for side in sides.values() for unit in side), default=0.0) or 1e-6
    bars = "".join(f'<p class="lm-caption"><b>{heading}</b></p>' + "".join(_bar(unit, bound, unit_href)
                                                                               for unit in side)
                   for heading, side in sides.items() if side)
    held = ""
    if why.held:
        held = (f'<table class="lm-note" style="margin-top:.5rem"><tr><th style="text-align:left">held (not held: '
                f'p = {why.probability:.1%})</th><th {NUMBER}>from this token on</th><th {NUMBER}>from the text\'s '
                f'start</th></tr>{"".join(_held_row(item) for item in why.held)}</table>')
    place = escape(place) if place is not None else f"token {why.position}"
    return (f'<section class="lm-why"><header><b>{_token(why.token)}</b><small>{place}: '
            f'p = {why.probability:.1%}</small></header>{steps}<p class="lm-note lm-caption">{escape(total)}</p>'
            f'<div style="padding:.3rem .7rem .6rem">{bars}{held}</div></section>')


def unit_label(layer: int, quantity: str, unit: int, name: str | None) -> str:
    """A unit as the page names it: by the atlas property it follows, else by where it is (as the atlas table does)."""
    if name:
        return f"unit {unit}, {name.replace('_', ' ')}"
    return f"layer {layer} · {quantity} · unit {unit}"


def _step_sentence(step: Step) -> str:
    where = "" if step.choice == "token" else f"{step.choice}: "
    chosen = step.chosen if step.chosen_id is None else visible(step.chosen)  # a cluster's name is no token
    return escape(f"{where}{chosen} (p = {step.chosen_probability:.1%}) against the "
                  f"{step.reference_is}, {visible(step.reference)} (p = {step.reference_probability:.1%}): "
                  f"log-ratio {step.logit_difference:+.3f}")


def _unit_data(layer: int, quantity: str, unit: int) -> str:
    """Where a unit is, for the page to link it to its heatmap row."""
    return f'data-layer="{layer}" data-quantity="{escape(quantity)}" data-unit="{unit}"'


def _bar(unit: UnitShare, bound: float, unit_href: UnitHref | None) -> str:
    label = escape(unit_label(unit.layer, unit.quantity, unit.unit, unit.name))
    href = unit_href(unit.layer, unit.quantity, unit.unit) if unit_href is not None and not unit.name else None
    if href:
        label = f'<a href="{escape(href)}" target="_blank" title="its row in the Inside tab\'s heatmap">{label}</a>'
    width = 100 * min(1.0, abs(unit.share) / bound)
    return (f'<div class="lm-why-unit" {_unit_data(unit.layer, unit.quantity, unit.unit)} style="{ROW_STYLE}">'
            f'<span>{label}</span><span style="{TRACK_STYLE}"><span style="{BAR_STYLE};width:{width:.1f}%;'
            f'background:{unit_colour(unit.share, bound)}"></span></span><span {NUMBER}>{unit.share:+.2f}</span></div>')


def _held_row(held: Held) -> str:
    """A held unit's row: the token's probability with the unit held (the dial's mechanism) in the state the token is
    predicted from, and after every token read since the text's start where that was measured."""
    label = unit_label(held.layer, held.quantity, held.unit, held.name)
    from_start = "—" if held.from_start is None else f"{held.from_start:.1%}"
    return (f'<tr {_unit_data(held.layer, held.quantity, held.unit)}><td>{escape(label)} at {held.value:g}</td>'
            f'<td {NUMBER}>{held.from_token:.1%}</td><td {NUMBER}>{from_start}</td></tr>')


def _token(token: str) -> str:
    return escape("⟨unk⟩" if token == UNK else visible(token))
