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
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from lmdemo.atlas import ATLAS_FILE, Unit, read_atlas, read_passages
from lmdemo.generation import SettingsError
from lmdemo.properties import BINARY, POSITION, PROPERTIES, truth
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


class AtlasView:
    """The served models' atlases and their units over texts."""

    def __init__(self, models: Models, limits: Limits = Limits()):
        self.models, self.limits = models, limits

    def atlas(self, name: str) -> ModelAtlas | None:
        """Model `name`'s atlas, or None when its folder has none (or one this tab cannot read)."""
        folder = self.models.generator(name).trained.folder
        path = Path(folder) / ATLAS_FILE
        try:
            atlas = _read_cached(str(folder), path.stat().st_mtime_ns)
        except OSError:
            return None
        if atlas is None:
            return None
        return ModelAtlas(name, atlas["rows"], atlas["chosen_on"], atlas["scored_on"], atlas["examples"])

    def unit(self, text: InsideText | None, name: str, property_name: str) -> UnitReading:
        """The unit of `property_name` in model `name`'s atlas over `text` (the visitor's, when given; its last
        `max_inside_tokens` shown) and the held-out examples that suit the property."""
        atlas = self.atlas(name)
        if atlas is None:
            raise SettingsError(f"{name} has no cell atlas: use the detailed view")
        row = atlas.row(property_name)
        generator = self.models.generator(name)
        tokenizer = generator.tokenizer
        # the visitor's text cut to its end as the detailed view cuts it; the examples whole
        to_read = [_ToRead(YOUR_TEXT, f"{text.description}.", None, text.ids, self.limits.max_inside_tokens)] \
            if text is not None and text.ids else []
        to_read += [_ToRead(title, "", rated, ids, len(ids))
                    for title, example, rated in _examples_for(row, atlas.examples, tokenizer)
                    if (ids := tokenizer.encode(example))]
        if not to_read:
            raise SettingsError("nothing to read: type a prompt in the Sample tab")
        values = read_passages(generator.trained.model, [item.ids for item in to_read], tokenizer.start_id)
        column = Unit(row.layer - 1, row.quantity, row.unit).column(generator.config.hidden_size)
        prop = next((p for p in PROPERTIES if p.name == row.property and p.kind == BINARY), None)
        shown, first = [], 0
        for item in to_read:
            unit_values = values[first:first + len(item.ids), column].tolist()
            first += len(item.ids)
            cut = max(0, len(item.ids) - item.limit)
            pieces = tokenizer.pieces(item.ids[cut:], context=item.ids[:cut])
            holds = truth(pieces, [prop])[:, 0].astype(bool).tolist() if prop is not None else None
            caption = item.caption
            if row.threshold is not None:
                caption = f"{caption} {row.end_reading(unit_values[-1], item.rated)}".strip()
            shown.append(UnitText(item.title, tokenizer.tokens(item.ids[cut:]), pieces, unit_values[cut:], holds,
                                  cut, caption))
        return UnitReading(name, row, shown, tokenizer.by_line)


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


def _examples_for(row: AtlasRow, examples: list[dict], tokenizer) -> list[tuple[str, str, str | None]]:
    """(title, text, rating) of the held-out examples to show a row's unit over: every rated review for sentiment
    (the atlas picked them: `lmdemo.atlas.review_examples`); else the `SHOWN_EXAMPLES` passages where a yes/no
    property holds most (while not everywhere), the first ones for a position."""
    if row.kind == SENTIMENT:
        return [(f"a {example['sentiment']} review", example["text"], example["sentiment"])
                for example in examples if example.get("sentiment")]
    passages = [example["text"] for example in examples if not example.get("sentiment")]
    prop = next((p for p in PROPERTIES if p.name == row.property), None)
    if row.kind == BINARY and prop is not None:
        def held(text: str) -> float:
            flags = truth(tokenizer.pieces(tokenizer.encode(text)), [prop])[:, 0]
            return min(flags.sum(), len(flags) - flags.sum())
        passages = sorted(passages, key=held, reverse=True)
    return [(f"held-out text {index}", text, None) for index, text in enumerate(passages[:SHOWN_EXAMPLES], 1)]
