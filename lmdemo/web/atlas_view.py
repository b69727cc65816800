"""The Inside tab's opening view: the model's cell atlas (`lmdemo.atlas`) as rows a visitor can read, and the unit of
a chosen row over a text.

Each property of `atlas.json` becomes an `AtlasRow` with one plain sentence written from it (what its unit does,
and which way). Choosing a row reads the Sample tab's text and a few of the atlas's held-out examples through the
model with `lmdemo.atlas.read_passages`, the very reading the atlas scored, and keeps that one unit's value at every
token. For sentiment each text also says what the unit read at its end and what that means (the side of the atlas's
threshold, and for a rated review whether that reading is right), so a review the unit misreads is shown as a miss
rather than contradicting the row's sentence; and its colours are centred on the threshold, so that a colour shows
which way the unit reads. Reading `atlas.json` is a file read, cached per model folder (and the file's modification
time).

A visitor's own rule (`lmdemo.rules`) becomes an atlas of one row the same way: its unit chosen on the model's training
text and scored on held-out text, beside a random model's (`lmdemo.rules.rule_atlas`), over text each model reads once
(`RuleReadings`), then shown like an atlas row over the visitor's text and the held-out passages where it holds most.
"""

from __future__ import annotations

import functools
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from lmdemo.atlas import (
    ATLAS_FILE,
    Readings,
    Unit,
    corpus_texts,
    read_atlas,
    read_parts,
    read_passages,
)
from lmdemo.config import data_name
from lmdemo.corpus import CorpusError
from lmdemo.generation import Generator, SettingsError
from lmdemo.properties import BINARY, POSITION, PROPERTIES, Property
from lmdemo.rules import RULE_TOKENS, RuleError, parse_rule, rule_atlas
from lmdemo.tokenizer import Tokenizer
from lmdemo.web.forms import Limits
from lmdemo.web.inside import InsideText
from lmdemo.web.registry import Models

SENTIMENT = "sentiment"
KINDS = {"r": POSITION, "auc": BINARY, "accuracy": SENTIMENT}  # a row's kind, from the metric that scored it
# how a position unit's sentence reads: (along what it rises or falls, where it goes back)
POSITION_PHRASES = {"position_in_line": ("along each line", "at a newline"),
                    "position_in_sentence": ("through each sentence", "at its end")}
SHOWN_EXAMPLES = 2  # held-out passages shown under the visitor's text: those where the property holds most
YOUR_TEXT = "your text"  # the visitor's text's card heading: short, as a card heading stays on one line
ATLAS_CACHE = 16  # atlas files kept read
RULE_READINGS = 2  # models whose text, read for rules, is kept: 300-400 MB each for the shipped models


@dataclass(frozen=True)
class AtlasRow:
    """One property of a model's atlas: the unit that follows it, its held-out score and the random baseline."""

    property: str
    description: str  # what the unit follows: "the position in the line"
    kind: str  # POSITION, BINARY or SENTIMENT
    layer: int  # from 1 (bottom)
    quantity: str  # "h" or "c"
    unit: int  # from 0
    metric: str  # "r", "auc" or "accuracy"
    score: float
    baseline: float
    sign: int  # +1: the unit rises with the property, -1: it falls
    threshold: float | None = None  # sentiment: above it (sign +1) or below it (sign -1) a review reads positive

    @property
    def centre(self) -> float:
        """The value the unit's colours are centred on (white): its threshold where it reads a review by one, else 0."""
        return self.threshold if self.threshold is not None else 0.0

    @property
    def label(self) -> str:
        return f"layer {self.layer} · {self.quantity} · unit {self.unit}"

    @property
    def sentence(self) -> str:
        """What the unit does, in one plain sentence."""
        who = f"Unit {self.unit} of layer {self.layer}'s {self.quantity}"
        up, down = ("rises", "falls") if self.sign > 0 else ("falls", "rises")
        high, low = ("high", "low") if self.sign > 0 else ("low", "high")
        if self.kind == SENTIMENT:
            return f"{who} {up} through a positive review and {down} through a negative one (read at the review's end)."
        if self.kind == POSITION:
            if self.property in POSITION_PHRASES:
                along, back = POSITION_PHRASES[self.property]
                return f"{who} {up} {along} and {'drops' if self.sign > 0 else 'jumps back'} {back}."
            return f"{who} {up} with {self.description}."
        return f"{who} is {high} on {self.description} and {low} elsewhere."

    def end_reading(self, value: float, rated: str | None = None) -> str:
        """What the sentiment unit's `value` at a text's end says, in one sentence: which side of the threshold it
        is on, the sentiment that reads as and, for a review `rated` "positive" or "negative", whether that is right."""
        read = "positive" if self.sign * (value - self.threshold) > 0 else "negative"
        said = (f"The unit ends at {value:+.2f}, {'above' if value > self.threshold else 'below'} its threshold "
                f"{self.threshold:+.2f}: read as {read}")
        if rated is None:
            return f"{said}."
        return f"{said}, as rated." if read == rated else f"{said}, but rated {rated}: a miss."


@dataclass(frozen=True)
class ModelAtlas:
    """A model's atlas as the tab shows it: its rows, where the units were chosen and scored, and held-out texts."""

    model: str
    rows: list[AtlasRow]
    chosen_on: str
    scored_on: str
    examples: list[dict]  # {"text": ..., "sentiment": "positive" | "negative" (rated reviews only)}

    def row(self, name: str) -> AtlasRow:
        found = next((row for row in self.rows if row.property == name), None)
        if found is None:
            raise SettingsError(f"{self.model}'s atlas has no property {name!r}; choose one of: "
                                f"{', '.join(row.property for row in self.rows)}")
        return found


@dataclass
class UnitText:
    """One text read by the model, with the chosen unit's value after each shown token."""

    title: str
    tokens: list[str]
    pieces: list[str]
    values: list[float]
    holds: list[bool] | None  # where a yes/no property holds (None: not drawn)
    cut: int = 0  # tokens before the shown ones (the model read them too)
    caption: str = ""  # what the text is, beyond its heading, and for sentiment what the unit read at its end


class _ToRead(NamedTuple):
    """A text a unit view reads: its card heading, what it is, its rating (a rated review), ids and tokens shown."""

    title: str
    caption: str
    rated: str | None
    ids: list[int]
    limit: int

    @property
    def cut(self) -> int:
        """Tokens before the shown ones."""
        return max(0, len(self.ids) - self.limit)

    def pieces(self, tokenizer: Tokenizer) -> list[str]:
        """The shown tokens' pieces."""
        return tokenizer.pieces(self.ids[self.cut:], context=self.ids[:self.cut])


@dataclass
class UnitReading:
    """A row's unit over the visitor's text and a few held-out examples."""

    model: str
    row: AtlasRow
    texts: list[UnitText]
    by_line: bool  # a text read as one stream of characters is drawn monospaced, as written

    @property
    def bound(self) -> float:
        """The largest |value - the row's centre| shown: how far the colour scale reaches either side of it."""
        centre = self.row.centre
        return max((abs(value - centre) for text in self.texts for value in text.values), default=0.0) or 1e-6


def rows_of(atlas: dict) -> list[AtlasRow]:
    """The atlas's properties as rows, in its order."""
    return [AtlasRow(entry["property"], entry.get("description", entry["property"].replace("_", " ")),
                     KINDS.get(entry["metric"], BINARY), int(entry["layer"]), entry["quantity"], int(entry["unit"]),
                     entry["metric"], float(entry["score"]), float(entry["baseline"]), int(entry.get("sign", 1)),
                     float(entry["threshold"]) if "threshold" in entry else None)
            for entry in atlas["properties"]]


def model_atlas(models: Models, name: str) -> ModelAtlas | None:
    """Model `name`'s atlas, or None when its folder has none (or one this tab cannot read)."""
    folder = models.generator(name).trained.folder
    path = Path(folder) / ATLAS_FILE
    try:
        atlas = _read_cached(str(folder), path.stat().st_mtime_ns)
    except OSError:
        return None
    if atlas is None:
        return None
    return ModelAtlas(name, atlas["rows"], atlas["chosen_on"], atlas["scored_on"], atlas["examples"])


class AtlasView:
    """The served models' atlases and their units over texts, and units for visitors' rules."""

    def __init__(self, models: Models, limits: Limits = Limits()):
        self.models, self.limits = models, limits
        self.readings = RuleReadings(RULE_READINGS)

    def atlas(self, name: str) -> ModelAtlas | None:
        return model_atlas(self.models, name)

    def unit(self, text: InsideText | None, name: str, property_name: str) -> UnitReading:
        """The unit of `property_name` in model `name`'s atlas over `text` (the visitor's, when given; its last
        `max_inside_tokens` shown) and the held-out examples that suit the property."""
        atlas = self.atlas(name)
        if atlas is None:
            raise SettingsError(f"{name} has no cell atlas: use the detailed view")
        row = atlas.row(property_name)
        prop = next((p for p in PROPERTIES if p.name == row.property), None)
        return self._unit_over(name, row, text, atlas.examples, lambda pieces: prop)

    def rule(self, text: InsideText | None, name: str, written: Any) -> tuple[ModelAtlas, UnitReading]:
        """A visitor's rule (`lmdemo.rules`) as an atlas of one row, chosen and scored on model `name`'s own text
        (read once per model: `RuleReadings`), and its unit over `text` and the held-out passages where the rule
        holds most. A rule that cannot be read, run or scored raises `SettingsError` with one line saying why."""
        rule = parse_rule(written)
        generator = self.models.generator(name)
        readings = self.readings.read(generator, lambda: _rule_readings(generator))
        atlas = rule_atlas(generator.trained, [rule], readings)
        found = ModelAtlas(name, rows_of(atlas), atlas["choose"]["source"], atlas["score"]["source"],
                           atlas["examples"])
        return found, self._unit_over(name, found.rows[0], text, found.examples, rule.as_property)

    def _unit_over(self, name: str, row: AtlasRow, text: InsideText | None, examples: list[dict],
                   property_for: Callable[[list[list[str]]], Property | None]) -> UnitReading:
        """`row`'s unit over `text` (the visitor's, cut to its end as the detailed view cuts it) and the held-out
        `examples` that suit it, whole; `property_for(every shown text's pieces)` is what is underlined where it holds
        (None: nothing)."""
        generator = self.models.generator(name)
        tokenizer = generator.tokenizer
        visitor = [_ToRead(YOUR_TEXT, f"{text.description}.", None, text.ids, self.limits.max_inside_tokens)] \
            if text is not None and text.ids else []
        candidates = [_ToRead(title, "", rated, ids, len(ids))
                      for title, example, rated in _example_texts(row, examples) if (ids := tokenizer.encode(example))]
        every_pieces = [item.pieces(tokenizer) for item in [*visitor, *candidates]]
        prop = property_for(every_pieces)
        readable = [(item, pieces, _holds(prop, pieces)) for item, pieces in zip([*visitor, *candidates], every_pieces)]
        to_read = [*readable[:len(visitor)], *_shown_examples(row, readable[len(visitor):])]
        if not to_read:
            raise SettingsError("nothing to read: type a prompt in the Sample tab")
        values = read_passages(generator.trained.model, [item.ids for item, _, _ in to_read], tokenizer.start_id)
        column = Unit(row.layer - 1, row.quantity, row.unit).column(generator.config.hidden_size)
        shown, first = [], 0
        for item, item_pieces, item_holds in to_read:
            unit_values = values[first:first + len(item.ids), column].tolist()
            first += len(item.ids)
            caption = item.caption
            if row.threshold is not None:
                caption = f"{caption} {row.end_reading(unit_values[-1], item.rated)}".strip()
            shown.append(UnitText(item.title, tokenizer.tokens(item.ids[item.cut:]), item_pieces,
                                  unit_values[item.cut:], item_holds, item.cut, caption))
        return UnitReading(name, row, shown, tokenizer.by_line)


def _rule_readings(generator: Generator) -> Readings:
    """What a model's rules are chosen and scored on: `RULE_TOKENS` tokens of each part of its own corpus, read by it
    and by a random model of its shape."""
    trained = generator.trained
    try:
        choose, score = corpus_texts(trained, RULE_TOKENS, max_reviews=0)
    except (CorpusError, ImportError, OSError):
        data = data_name(trained.config.data, trained.config.data_config)  # shown: never a local folder
        raise RuleError(f"the text this model trained on ({data}) is not on this server, and a rule's unit is chosen "
                        f"and scored on it") from None
    return read_parts(trained, choose, score)


class RuleReadings:
    """The `Readings` of the last `size` models a rule was scored on, each model's held weakly: a model the registry
    drops (an ended session's) takes its readings with it. A model's text is read once, under its own lock, so two
    rules at once do not read it twice; other models' rules go on meanwhile."""

    def __init__(self, size: int):
        self.size = size
        self.lock = threading.Lock()
        self.kept: weakref.WeakKeyDictionary[Generator, Readings] = weakref.WeakKeyDictionary()
        self.reading: weakref.WeakKeyDictionary[Generator, threading.Lock] = weakref.WeakKeyDictionary()
        self.used: OrderedDict[weakref.ref, float] = OrderedDict()  # when each model's readings were last used

    def read(self, generator: Generator, read: Callable[[], Readings]) -> Readings:
        """`generator`'s readings, from `read()` the first time."""
        with self.lock:
            found = self._touch(generator)
            if found is not None:
                return found
            model_lock = self.reading.setdefault(generator, threading.Lock())
        with model_lock:
            with self.lock:
                found = self._touch(generator)  # read meanwhile, by the rule this one waited for
            if found is not None:
                return found
            found = read()
            with self.lock:
                self.kept[generator] = found
                self._touch(generator)
                while len(self.used) > self.size:
                    self._drop_oldest()
            return found

    def forget_idle(self, idle_s: float) -> None:
        """Drop the readings nobody used for `idle_s` (their visitors have gone: see `PageStates`)."""
        now = time.monotonic()
        with self.lock:
            while self.used and now - next(iter(self.used.values())) > idle_s:
                self._drop_oldest()

    def __len__(self) -> int:
        with self.lock:
            return len(self.kept)

    def _touch(self, generator: Generator) -> Readings | None:
        """The model's readings, marked as used now; None when there are none."""
        for gone in [owner for owner in self.used if owner() is None]:
            del self.used[gone]
        found = self.kept.get(generator)
        if found is not None:
            owner = weakref.ref(generator)
            self.used[owner] = time.monotonic()
            self.used.move_to_end(owner)
        return found

    def _drop_oldest(self) -> None:
        owner, _ = self.used.popitem(last=False)
        model = owner()
        if model is not None:
            self.kept.pop(model, None)


@functools.lru_cache(maxsize=ATLAS_CACHE)
def _read_cached(folder: str, modified_ns: int) -> dict | None:
    """An atlas file as rows (read again when the file changes: `modified_ns`); None when it cannot be read."""
    try:
        atlas = read_atlas(folder)
        if atlas is None:
            return None
        return {"rows": rows_of(atlas), "chosen_on": atlas["choose"]["source"], "scored_on": atlas["score"]["source"],
                "examples": [example for example in atlas.get("examples", []) if example.get("text")]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _holds(prop: Property | None, pieces: list[str]) -> list[bool] | None:
    """Where a yes/no property holds, token by token (None: nothing to underline)."""
    return prop.truth(pieces).astype(bool).tolist() if prop is not None and prop.kind == BINARY else None


def _example_texts(row: AtlasRow, examples: list[dict]) -> list[tuple[str, str, str | None]]:
    """(title, text, rating) of the held-out examples that can show a row's unit: the rated reviews for sentiment (the
    atlas picked them: `lmdemo.atlas.review_examples`), else the passages."""
    if row.kind == SENTIMENT:
        return [(f"a {example['sentiment']} review", example["text"], example["sentiment"])
                for example in examples if example.get("sentiment")]
    return [("held-out text", example["text"], None) for example in examples if not example.get("sentiment")]


def _shown_examples(row: AtlasRow, candidates: Sequence[tuple[_ToRead, list[str], list[bool] | None]]
                    ) -> list[tuple[_ToRead, list[str], list[bool] | None]]:
    """The examples to show a row's unit over: every rated review for sentiment; else the `SHOWN_EXAMPLES` passages
    where a yes/no property holds most (while not everywhere), the first ones for a position, numbered."""
    if row.kind == SENTIMENT:
        return list(candidates)

    def held(candidate: tuple[_ToRead, list[str], list[bool] | None]) -> int:
        flags = candidate[2] or []
        return min(sum(flags), len(flags) - sum(flags))

    ordered = sorted(candidates, key=held, reverse=True) if row.kind == BINARY else candidates
    return [(item._replace(title=f"held-out text {number}"), pieces, holds)
            for number, (item, pieces, holds) in enumerate(ordered[:SHOWN_EXAMPLES], 1)]
