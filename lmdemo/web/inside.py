"""The "Inside the LSTM" tab's requests: which text to read, which units to show, which fit a marked span.

The values come from `lmdemo.internals` (the cell that generates text, step by step); this module
turns form values into a `UnitView`: the chosen units of one quantity of one layer over the shown
tokens, best first, and one unit's trace. The last few texts' internals are cached, so re-sorting or
tracing another unit does not re-read the text; the cache holds its models weakly, so a model nobody serves any
more (an ended session's) goes at once, with its cached texts and its decode loop.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from lmdemo.generation import Generator, SettingsError
from lmdemo.web.demo import Progress
from lmdemo.web.forms import Limits, parse_whole, read_prompt
from lmdemo.internals import (QUANTITIES, Internals, SpanMatch, UnitScore, match_span, most_active, most_variable,
                              read_internals, top_units)
from lmdemo.web.registry import Models

UNIT_SORTS = {"unit": "unit number", "active": "most active (mean |value|)", "variable": "most variable (std)",
              "change": "largest change at a token"}
INTERNALS_CACHE = 8  # texts whose internals are kept (all models together), so re-sorting or re-plotting does not
# re-read them


@dataclass
class InsideText:
    """A text to look inside: which model reads it, its ids and how to describe it."""

    model: str
    ids: list[int]
    description: str
    notes: list[str]


@dataclass
class UnitView:
    """Chosen units of one quantity of one layer over the shown tokens, best first, and one unit's trace."""

    text: InsideText
    layer: int  # 0 = bottom
    num_layers: int
    quantity: str  # a key of `internals.QUANTITIES`
    tokens: list[str]  # the shown tokens as the model sees them (raw)
    pieces: list[str]  # and each one's share of the readable text (`Tokenizer.pieces`)
    start: int  # position in the text of tokens[0]
    total: int  # tokens in the text
    hidden_size: int
    ranking: list[UnitScore] | list[SpanMatch]
    ordered_by: str  # how the units were chosen, in words
    score_label: str  # what each unit's score is
    values: torch.Tensor  # [len(ranking), len(tokens)]
    trace_unit: int
    trace: list[float]
    marked: tuple[int, int] | None = None  # the span searched for, as text positions
    at: int | None = None  # the token whose change was ranked, as a text position

    @property
    def units(self) -> list[int]:
        return [row.unit for row in self.ranking]

    @property
    def notes(self) -> list[str]:
        """What was left out, in words for the page."""
        notes = list(self.text.notes)
        if self.start:
            notes.append(f"showing the last {len(self.tokens)} of {self.total} tokens (positions {self.start}–"
                         f"{self.total - 1}); the model still read them all")
        return notes


class Inside:
    """The "Inside the LSTM" tab's requests on the served models."""

    def __init__(self, models: Models, limits: Limits = Limits()):
        self.models, self.limits = models, limits
        self.internals = InternalsCache(INTERNALS_CACHE)

    def text(self, run: Progress | None, name: str, prompt_text: Any, sample: Any) -> InsideText:
        """Sample 0: `prompt_text` read by model `name`; sample k >= 1: the last run's prompt and its k-th sample."""
        choice = parse_whole(sample, "text")
        if choice == 0:
            prompt_text = read_prompt(prompt_text, self.limits)
            generator = self.models.generator(name)
            prompt = generator.prompt(prompt_text, self.limits.max_prompt_tokens)
            return InsideText(name, prompt.ids, f"the prompt ({len(prompt.ids)} tokens)", prompt.notes)
        if run is None:
            raise SettingsError("generate some text first to look inside a sample, or choose the prompt")
        if not 1 <= choice <= len(run.samples):
            raise SettingsError(f"sample must be from 1 to {len(run.samples)} (got {choice})")
        chosen = run.samples[choice - 1]
        return InsideText(run.model, [*run.prompt.ids, *chosen.ids],
                          f"the prompt ({len(run.prompt.ids)} tokens) and its sample at T = {chosen.temperature:g} "
                          f"({len(chosen.ids)} tokens)", list(run.prompt.notes))

    def units(self, text: InsideText, layer: Any, quantity: str, sort: str, count: Any, at: Any = None,
              unit: Any = None) -> UnitView:
        """The top `count` units by `sort` (a key of UNIT_SORTS); `at` is the text position a change is ranked at."""
        if sort not in UNIT_SORTS:
            raise SettingsError(f"sort must be one of: {', '.join(UNIT_SORTS)} (got {sort!r})")
        internals, layer, values, count = self._matrix(text, layer, quantity, count)
        ordered_by, position = UNIT_SORTS[sort], None
        if sort == "unit":
            activity = most_active(values)
            ranking = [UnitScore(u, float(activity[u])) for u in range(min(count, internals.hidden_size))]
            label = "mean |value|"
        elif sort == "change":
            position = parse_whole(at, "change at", empty=internals.start + len(internals.ids) - 1)
            ranking = top_units(internals.change(quantity, layer, _index(internals, position, "change at")),
                                count, by_magnitude=True)
            label = f"change at #{position}"
            ordered_by = f"largest change at #{position}"
        else:
            ranking = top_units((most_active if sort == "active" else most_variable)(values), count)
            label = "mean |value|" if sort == "active" else "std"
        return self._view(text, internals, layer, quantity, ranking, ordered_by, label, unit, at=position)

    def find_span(self, text: InsideText, layer: Any, quantity: str, first: Any, last: Any, count: Any,
                  unit: Any = None) -> UnitView:
        """Units that are high on text positions `first`..`last` (inclusive) and low elsewhere; see `match_span`."""
        internals, layer, values, count = self._matrix(text, layer, quantity, count)
        if first in (None, "") or last in (None, ""):
            raise SettingsError("mark a span: give the positions of its first and last tokens")
        first, last = parse_whole(first, "span start"), parse_whole(last, "span end")
        if first > last:
            raise SettingsError(f"the span's start ({first}) must not come after its end ({last})")
        begin, end = _index(internals, first, "span start"), _index(internals, last, "span end")
        if end - begin + 1 == len(internals.ids):
            raise SettingsError("the span covers every shown token: leave some outside to compare with")
        ranking = match_span(values, range(begin, end + 1), count)
        return self._view(text, internals, layer, quantity, ranking, f"match with #{first}–{last}", "score", unit,
                          marked=(first, last))

    def _matrix(self, text: InsideText, layer: Any, quantity: str, count: Any
                ) -> tuple[Internals, int, torch.Tensor, int]:
        """The text's internals, the layer as an index, that layer's [tokens, units] values and the unit count."""
        generator = self.models.generator(text.model)
        layers = generator.config.num_layers
        number = parse_whole(layer, "layer")
        if not 1 <= number <= layers:
            raise SettingsError(f"layer must be from 1 (bottom) to {layers} (top) for {text.model} (got {number})")
        if quantity not in QUANTITIES:
            raise SettingsError(f"quantity must be one of: {', '.join(QUANTITIES)} (got {quantity!r})")
        count = parse_whole(count, "number of units")
        if not 1 <= count <= self.limits.max_units:
            raise SettingsError(f"number of units must be from 1 to {self.limits.max_units} (got {count})")
        if not text.ids:
            raise SettingsError("the text is empty: type a prompt or choose a sample")
        internals = self.internals.read(generator, text.ids, self.limits.max_inside_tokens)
        return internals, number - 1, internals.matrix(quantity, number - 1), count

    def _view(self, text: InsideText, internals: Internals, layer: int, quantity: str,
              ranking: list[UnitScore] | list[SpanMatch], ordered_by: str, label: str, unit: Any,
              **marks: Any) -> UnitView:
        """The chosen units' values and the traced unit (the top-ranked one unless `unit` names another)."""
        traced = parse_whole(unit, "unit", empty=ranking[0].unit)
        if not 0 <= traced < internals.hidden_size:
            raise SettingsError(f"unit must be from 0 to {internals.hidden_size - 1} (got {traced})")
        values = internals.matrix(quantity, layer)
        pieces = self.models.generator(text.model).tokenizer.pieces(internals.ids, context=text.ids[:internals.start])
        return UnitView(text, layer, internals.num_layers, quantity, internals.tokens, pieces, internals.start,
                        internals.total, internals.hidden_size, ranking, ordered_by, label,
                        values[:, [row.unit for row in ranking]].t(), traced, values[:, traced].tolist(), **marks)


class InternalsCache:
    """The internals of the last `size` texts read (all models together), each model's held weakly: a model the
    registry drops (an ended session's) is not kept alive by its cached texts, and its entries go with it.

    Each model's texts are in a `WeakKeyDictionary` (model -> {(ids, max_tokens): Internals}); the order of use,
    for evicting the oldest, names the model by a weak reference. `Internals` hold no model."""

    def __init__(self, size: int):
        self.size = size
        self.lock = threading.Lock()
        self.texts: weakref.WeakKeyDictionary[Generator, dict[tuple, Internals]] = weakref.WeakKeyDictionary()
        self.order: OrderedDict[tuple[weakref.ref, tuple], float] = OrderedDict()  # when last used, oldest first

    def read(self, generator: Generator, ids: list[int] | tuple[int, ...], max_tokens: int) -> Internals:
        """`read_internals(generator, ids, max_tokens)`, from the cache when this model read this text lately."""
        key = (tuple(ids), max_tokens)
        with self.lock:
            found = self.texts.get(generator, {}).get(key)
            if found is not None:
                self.order[(weakref.ref(generator), key)] = time.monotonic()
                self.order.move_to_end((weakref.ref(generator), key))
                return found
        internals = read_internals(generator, key[0], max_tokens)  # outside the lock: other reads go on
        with self.lock:
            self.texts.setdefault(generator, {})[key] = internals
            self.order[(weakref.ref(generator), key)] = time.monotonic()
            self.order.move_to_end((weakref.ref(generator), key))
            for gone in [entry for entry in self.order if entry[0]() is None]:  # a model that went: its texts did too
                del self.order[gone]
            while len(self.order) > self.size:
                self._drop_oldest()
        return internals

    def forget_idle(self, idle_s: float) -> None:
        """Drop the texts nobody read for `idle_s` (the visitors who read them have gone: see `PageStates`)."""
        now = time.monotonic()
        with self.lock:
            while self.order and now - next(iter(self.order.values())) > idle_s:
                self._drop_oldest()

    def _drop_oldest(self) -> None:
        (owner_ref, old), _ = self.order.popitem(last=False)
        owner = owner_ref()
        texts = self.texts.get(owner) if owner is not None else None
        if texts is not None:
            texts.pop(old, None)
            if not texts:
                del self.texts[owner]

    def __len__(self) -> int:
        with self.lock:
            return sum(len(texts) for texts in self.texts.values())


def _index(internals: Internals, position: int, what: str) -> int:
    """A text position as an index into the shown window."""
    last = internals.start + len(internals.ids) - 1
    if not internals.start <= position <= last:
        raise SettingsError(f"{what} must be a shown token position, from {internals.start} to {last} "
                            f"(got {position})")
    return position - internals.start

