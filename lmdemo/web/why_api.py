"""`/why` over the API: why a model gave one token of a text its probability (`lmdemo.why`), as JSON.

Its inputs and output are hidden components, as `/train`'s are; the page's own "Why this token?" panel (the Sample
tab's) asks the same `WhyEvents.explain`. Models come from the registry (a session's own trained model too), unit
names from the model's atlas (`model_atlas`, cached), and the work is model work of the gate: one fair share per
address, like the Inside tab's views.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gradio as gr

from lmdemo.generation import Dial, SettingsError
from lmdemo.web import render
from lmdemo.web.atlas_view import ModelAtlas, model_atlas
from lmdemo.web.forms import FIELD_CHARS, Limits, parse_whole, read_prompt
from lmdemo.web.gate import UNLIMITED, Gate
from lmdemo.web.registry import Models
from lmdemo.why import UnitKey, Why, explain


def build(models: Models, limits: Limits, gate: Gate) -> None:
    """`/why` (model name, text, position, hold): position is a token index of the text as the model reads it (its
    last `limits.max_prompt_tokens`), from 0, or -1 (the default) for the likeliest next token after it; hold is empty
    or one unit of any layer to hold as a dial reads it (1:151:c=0), measured beside the units with the largest shares,
    which are held at 0 from the token on."""
    events = WhyEvents(models, limits)
    inputs = [gr.Textbox(visible=False, max_length=FIELD_CHARS),
              gr.Textbox(visible=False, max_length=limits.max_prompt_chars),
              gr.Number(-1, visible=False, precision=0), gr.Textbox("", visible=False, max_length=FIELD_CHARS)]
    answer = gr.JSON(visible=False)
    gr.Button(visible=False).click(gate.model_work(events.on_why), inputs, answer, api_name="why",
                                   preprocess=False, **UNLIMITED)  # raw values: checked here, named in the message


class WhyEvents:
    """The endpoint's handler, and the explanations the page's panel shows, over the served models and their
    atlases."""

    def __init__(self, models: Models, limits: Limits):
        self.models, self.limits = models, limits

    def on_why(self, name: Any, text: Any, position: Any, hold: Any) -> dict:
        try:
            generator = self.models.generator(str(name))
            prompt = generator.prompt(read_prompt(text, self.limits), self.limits.max_prompt_tokens)
            why = self.explain(str(name), prompt.ids, parse_whole(position, "position", empty=-1), hold)
        except SettingsError as error:
            raise render.refused(str(error), "Check the request") from None
        return why.as_json()

    def explain(self, name: str, ids: Sequence[int], position: int, hold: Any = "") -> Why:
        """Why model `name` gave the token at `position` of `ids` (-1: the likeliest next token) its probability,
        its units named by the model's atlas, with `hold` (a dial's text; empty: none) held as well. Anything wrong
        is a `SettingsError` of one line."""
        dials = [_dial(hold)] if str(hold or "").strip() else []
        return explain(self.models.generator(name), ids, position, unit_names(model_atlas(self.models, name)), dials)


def unit_names(atlas: ModelAtlas | None) -> dict[UnitKey, str]:
    """The atlas's name (its property) of each unit it found, by (layer from 1, unit, quantity)."""
    return {(row.layer, row.unit, row.quantity): row.property for row in (atlas.rows if atlas is not None else [])}


def _dial(hold: Any) -> Dial:
    text = str(hold).strip()
    if len(text) > FIELD_CHARS:
        raise SettingsError(f"the unit to hold is {len(text):,} characters long; at most {FIELD_CHARS} are accepted")
    return Dial.parse(text)
