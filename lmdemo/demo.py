"""The web demo's requests as plain functions: which models, what they are, sample, explain a token.

Everything here returns plain data (dataclasses, lists, numbers, tensors) so the Gradio app stays a
thin layer of widgets and the behaviour can be tested without a browser. Models are loaded once per
process and shared: a `Generator` holds no request state.
"""

from __future__ import annotations

import functools
import math
import os
import re
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmdemo.checkpoint import MODEL_DIR, TrainedModel, load_model
from lmdemo.config import data_name
from lmdemo.generation import SEED_LIMIT, Generator, Prompt, Sample, Sampling, SettingsError, TokenScore
from lmdemo.internals import (QUANTITIES, Internals, SpanMatch, UnitScore, match_span, most_active, most_variable,
                              read_internals, top_units)
from lmdemo.metrics import CONFIG_FILE

MODELS_ENV = "LMDEMO_MODELS"
DRAWN_SEED_LIMIT = 2**32  # seeds the random-seed button draws: short enough to read back and retype
DEFAULT_TEMPERATURES = (0.2, 0.5, 0.8, 1.0, 1.3)
DEFAULT_BARS = 10
UNIT_SORTS = {"unit": "unit number", "active": "most active (mean |value|)", "variable": "most variable (std)",
              "change": "largest change at a token"}
INTERNALS_CACHE = 8  # texts whose internals are kept, so re-sorting or re-plotting does not re-read them

EXAMPLES = {
    "char": ["ROMEO:\n", "JULIET:\nO Romeo, Romeo! wherefore art thou",
             "First Citizen:\nBefore we proceed any further, hear me speak.\n\n",
             "KING RICHARD III:\nNow is the winter of our discontent\n"],
    "word": ["this movie was", "i expected a lot more from this film , but", "the acting was superb and the story",
             "one of the worst films i have ever seen ."],
}


class NoModelsError(RuntimeError):
    """Nothing to serve: no shipped checkpoint, no --model and no LMDEMO_MODELS."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask for, so one user cannot hold the server for long."""

    max_prompt_tokens: int = 1000
    max_new_tokens: int = 1000
    max_temperatures: int = 8
    max_bars: int = 50
    max_inside_tokens: int = 300  # "Inside the LSTM" shows the last this-many tokens of a text
    max_units: int = 64  # and draws at most this many units


@dataclass
class ModelInfo:
    """What the model picker shows about a model."""

    name: str
    source: str
    level: str
    parameters: int
    num_layers: int
    hidden_size: int
    emb_size: int
    vocab_size: int
    data: str
    steps: int | None = None
    validation_ppl: float | None = None
    validation_bpc: float | None = None
    test_ppl: float | None = None
    test_bpc: float | None = None
    metrics_problems: list[str] = field(default_factory=list)


@dataclass
class Progress:
    """A generation request so far: what the model read, how it scored it, and the samples."""

    model: str
    level: str  # "char" or "word"
    prompt_text: str
    prompt: Prompt
    prompt_scores: list[TokenScore]
    samples: list[Sample]
    seconds: float
    done: bool = False


@dataclass
class NextTokens:
    """The model's next-token distribution at one point of a sample."""

    context: str  # the text read so far (prompt and the sample's first `position` tokens)
    position: int
    scores: list[TokenScore]
    chosen: TokenScore | None  # what the sample actually took there, if it went on


@dataclass
class InsideText:
    """A text to look inside: which model reads it, its ids and how to describe it."""

    model: str
    level: str  # "char" or "word"
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
    tokens: list[str]
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


@dataclass
class Comparison:
    """The same prompt, settings and seed through several models, with each one's next-token bars after the prompt."""

    runs: list[Progress]
    next_tokens: list[NextTokens]


def discover_models(checkpoints: Path, extra: Sequence[str] = (), environ: dict[str, str] | None = None
                    ) -> dict[str, str]:
    """Display name -> source for every model to serve: shipped folders, then --model, then LMDEMO_MODELS."""
    environ = os.environ if environ is None else environ
    sources = sorted(str(p.parent) for p in checkpoints.glob(f"*/{CONFIG_FILE}")) if checkpoints.is_dir() else []
    sources += list(extra)
    sources += [s.strip() for s in environ.get(MODELS_ENV, "").split(",") if s.strip()]
    names: dict[str, str] = {}
    for source in dict.fromkeys(sources):
        name = _display_name(source)
        names[name if name not in names else source] = source
    if not names:
        raise NoModelsError(f"no models to serve: add a model folder (with {CONFIG_FILE}) under {checkpoints}/, "
                            f"pass --model FOLDER_OR_HUB_ID, or set {MODELS_ENV}")
    return names


class Demo:
    """The models of one process and the requests on them."""

    def __init__(self, sources: dict[str, str], limits: Limits = Limits()):
        """Load every model now, so a bad one fails at start-up rather than at a user's first click."""
        self.limits = limits
        self.generators = {name: Generator(load_model(source)) for name, source in sources.items()}

    @property
    def names(self) -> list[str]:
        return list(self.generators)

    def generator(self, name: str) -> Generator:
        if name not in self.generators:
            raise SettingsError(f"unknown model {name!r}; choose one of: {', '.join(self.generators)}")
        return self.generators[name]

    # -- describing ----------------------------------------------------------------------------
    def describe(self, name: str) -> ModelInfo:
        trained: TrainedModel = self.generator(name).trained
        config = trained.config
        info = ModelInfo(name=name, source=trained.source, level=config.level,
                         parameters=trained.model.num_parameters(), num_layers=config.num_layers,
                         hidden_size=config.hidden_size, emb_size=config.emb_size, vocab_size=config.vocab_size,
                         data=data_name(config.data, config.data_config))
        metrics = trained.metrics
        if metrics is None:
            return info
        best, test = metrics.best("val_loss"), metrics.last("test")
        if best:
            info.validation_ppl, info.validation_bpc = best.get("val_ppl"), best.get("val_bpc")
        if test:
            info.test_ppl, info.test_bpc = test.get("test_ppl"), test.get("test_bpc")
        steps = [r["step"] for r in metrics.records if isinstance(r.get("step"), int)]
        info.steps = max(steps) if steps else None
        info.metrics_problems = list(metrics.problems)
        return info

    def examples(self, name: str) -> list[str]:
        """Prompts in the style of the model's training text."""
        return list(EXAMPLES[self.generator(name).tokenizer.level])

    # -- sampling ------------------------------------------------------------------------------
    def sampling(self, temperatures: str | Sequence[float], max_new_tokens: Any, top_k: Any, top_p: Any,
                 seed: Any, stop: str | None = None, avoid_unk: bool = False) -> Sampling:
        """Settings from form values (text or numbers), checked against the limits."""
        sampling = Sampling(temperatures=parse_temperatures(temperatures, self.limits.max_temperatures),
                            max_new_tokens=_whole(max_new_tokens, "max new tokens"), top_k=_whole(top_k, "top-k"),
                            top_p=_number(top_p, "top-p"), seed=parse_seed(seed), stop=stop or None,
                            avoid_unk=bool(avoid_unk))
        sampling.check(self.limits.max_new_tokens)
        return sampling

    def generate(self, name: str, prompt_text: str | None, sampling: Sampling, every: float = 0.1
                 ) -> Iterator[Progress]:
        """Stream a request: a `Progress` at most every `every` seconds, and a last one with `done`.

        Every update is the same object brought up to date, so keep a copy to compare updates.
        """
        generator = self.generator(name)
        prompt_text = prompt_text or ""
        prompt = generator.prompt(prompt_text, self.limits.max_prompt_tokens)
        start = time.perf_counter()
        progress = Progress(name, generator.tokenizer.level, prompt_text, prompt, generator.surprisal(prompt.ids), [], 0.0)
        last_shown = -every
        for samples in generator.stream(prompt.ids, sampling):
            progress.samples, progress.seconds = samples, time.perf_counter() - start
            if progress.seconds - last_shown >= every:
                last_shown = progress.seconds
                yield progress
        progress.seconds, progress.done = time.perf_counter() - start, True
        yield progress

    # -- explaining ----------------------------------------------------------------------------
    def next_tokens(self, run: Progress, sample_index: int, position: int, k: int = 10) -> NextTokens:
        """The top-k next tokens after the prompt and the first `position` tokens of one sample."""
        if not 0 <= sample_index < len(run.samples):
            raise SettingsError(f"sample must be from 1 to {len(run.samples)} (got {sample_index + 1})")
        if not 1 <= k <= self.limits.max_bars:
            raise SettingsError(f"number of bars must be from 1 to {self.limits.max_bars} (got {k})")
        generator, sample = self.generator(run.model), run.samples[sample_index]
        position = max(0, min(int(position), len(sample.ids)))
        ids = [*run.prompt.ids, *sample.ids[:position]]
        scores = generator.next_tokens(ids, k)
        chosen = None
        if position < len(sample.ids):
            chosen = TokenScore(sample.ids[position], sample.tokens[position], sample.probabilities[position])
        return NextTokens(generator.tokenizer.decode(ids), position, scores, chosen)

    # -- comparing -----------------------------------------------------------------------------
    def compare(self, names: Sequence[str], prompt_text: str | None, sampling: Sampling, k: int = DEFAULT_BARS
                ) -> Comparison:
        """Run each model to the end on the same request; the bars show each one's first token after the prompt."""
        runs = []
        for name in names:
            for progress in self.generate(name, prompt_text, sampling, every=math.inf):
                pass
            runs.append(progress)
        return Comparison(runs, [self.next_tokens(run, 0, 0, k) for run in runs])

    # -- looking inside ------------------------------------------------------------------------
    def inside_text(self, run: Progress | None, name: str, prompt_text: str | None, sample: Any) -> InsideText:
        """Sample 0: `prompt_text` read by model `name`; sample k >= 1: the last run's prompt and its k-th sample."""
        choice = _whole(sample, "text")
        if choice == 0:
            generator = self.generator(name)
            prompt = generator.prompt(prompt_text or "", self.limits.max_prompt_tokens)
            return InsideText(name, generator.tokenizer.level, prompt.ids, f"the prompt ({len(prompt.ids)} tokens)",
                              prompt.notes)
        if run is None:
            raise SettingsError("generate some text first to look inside a sample, or choose the prompt")
        if not 1 <= choice <= len(run.samples):
            raise SettingsError(f"sample must be from 1 to {len(run.samples)} (got {choice})")
        chosen = run.samples[choice - 1]
        return InsideText(run.model, run.level, [*run.prompt.ids, *chosen.ids],
                          f"the prompt ({len(run.prompt.ids)} tokens) and its sample at T = {chosen.temperature:g} "
                          f"({len(chosen.ids)} tokens)", list(run.prompt.notes))

    def inside(self, text: InsideText, layer: Any, quantity: str, sort: str, count: Any, at: Any = None,
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
            position = internals.start + len(internals.ids) - 1 if at in (None, "") else _whole(at, "change at")
            ranking = top_units(internals.change(quantity, layer, self._index(internals, position, "change at")),
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
        first, last = _whole(first, "span start"), _whole(last, "span end")
        if first > last:
            raise SettingsError(f"the span's start ({first}) must not come after its end ({last})")
        begin, end = self._index(internals, first, "span start"), self._index(internals, last, "span end")
        if end - begin + 1 == len(internals.ids):
            raise SettingsError("the span covers every shown token: leave some outside to compare with")
        ranking = match_span(values, range(begin, end + 1), count)
        return self._view(text, internals, layer, quantity, ranking, f"match with #{first}–{last}", "score", unit,
                          marked=(first, last))

    def _matrix(self, text: InsideText, layer: Any, quantity: str, count: Any
                ) -> tuple[Internals, int, torch.Tensor, int]:
        """The text's internals, the layer as an index, that layer's [tokens, units] values and the unit count."""
        layers = self.generator(text.model).config.num_layers
        number = _whole(layer, "layer")
        if not 1 <= number <= layers:
            raise SettingsError(f"layer must be from 1 (bottom) to {layers} (top) for {text.model} (got {number})")
        if quantity not in QUANTITIES:
            raise SettingsError(f"quantity must be one of: {', '.join(QUANTITIES)} (got {quantity!r})")
        count = _whole(count, "number of units")
        if not 1 <= count <= self.limits.max_units:
            raise SettingsError(f"number of units must be from 1 to {self.limits.max_units} (got {count})")
        if not text.ids:
            raise SettingsError("the text is empty: type a prompt or choose a sample")
        internals = _read_internals(self.generator(text.model), tuple(text.ids), self.limits.max_inside_tokens)
        return internals, number - 1, internals.matrix(quantity, number - 1), count

    @staticmethod
    def _index(internals: Internals, position: int, what: str) -> int:
        """A text position as an index into the shown window."""
        last = internals.start + len(internals.ids) - 1
        if not internals.start <= position <= last:
            raise SettingsError(f"{what} must be a shown token position, from {internals.start} to {last} "
                                f"(got {position})")
        return position - internals.start

    def _view(self, text: InsideText, internals: Internals, layer: int, quantity: str,
              ranking: list[UnitScore] | list[SpanMatch], ordered_by: str, label: str, unit: Any,
              **marks: Any) -> UnitView:
        if unit in (None, ""):
            traced = ranking[0].unit
        else:
            traced = _whole(unit, "unit")
            if not 0 <= traced < internals.hidden_size:
                raise SettingsError(f"unit must be from 0 to {internals.hidden_size - 1} (got {traced})")
        values = internals.matrix(quantity, layer)
        return UnitView(text, layer, internals.num_layers, quantity, internals.tokens, internals.start,
                        internals.total, internals.hidden_size, ranking, ordered_by, label,
                        values[:, [row.unit for row in ranking]].t(), traced, values[:, traced].tolist(), **marks)


@functools.lru_cache(maxsize=INTERNALS_CACHE)
def _read_internals(generator: Generator, ids: tuple[int, ...], max_tokens: int) -> Internals:
    return read_internals(generator, ids, max_tokens)


def bits_per_token(probabilities: Sequence[float]) -> float | None:
    """Mean surprisal in bits (bits per character for character models); None for no tokens."""
    if not probabilities:
        return None
    return -sum(math.log2(max(p, 1e-45)) for p in probabilities) / len(probabilities)


def parse_temperatures(value: str | Sequence[float], limit: int = 8) -> list[float]:
    """Temperatures from "0.2, 0.5 1.0" (commas or spaces) or a list of numbers."""
    parts = re.split(r"[,\s;]+", value.strip()) if isinstance(value, str) else list(value)
    parts = [p for p in parts if p != ""]
    if not parts:
        raise SettingsError("give at least one temperature, e.g. 0.2, 0.8, 1.2")
    temperatures = []
    for part in parts:
        number = _number(part, "each temperature")
        if number < 0:
            raise SettingsError(f"temperatures must be 0 (greedy) or positive (got {part})")
        temperatures.append(number)
    if len(temperatures) > limit:
        raise SettingsError(f"at most {limit} temperatures at once (got {len(temperatures)})")
    return temperatures


def parse_seed(value: Any) -> int:
    """A seed from a form: whole numbers from 0 to 2**64-1, as text or a number."""
    seed = _whole(value, "seed")
    if not 0 <= seed < SEED_LIMIT:
        raise SettingsError(f"seed must be from 0 to 2**64-1 = {SEED_LIMIT - 1} (got {seed})")
    return seed


def draw_seed() -> int:
    """A fresh random seed for the dice button."""
    return secrets.randbelow(DRAWN_SEED_LIMIT)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise SettingsError(f"{what} must be a number (got {value!r})")
    try:
        number = float(str(value).strip()) if not isinstance(value, (int, float)) else float(value)
    except ValueError:
        raise SettingsError(f"{what} must be a number (got {value!r})") from None
    if not math.isfinite(number):
        raise SettingsError(f"{what} must be a finite number (got {value!r})")
    return number


def _whole(value: Any, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = "" if value is None else str(value).strip()
    if re.fullmatch(r"[+-]?\d+", text):  # exact, even past 2**53
        return int(text)
    try:
        number: float | None = _number(value, what)
    except SettingsError:
        number = None
    if number is None or not number.is_integer():
        raise SettingsError(f"{what} must be a whole number (got {value!r})")
    return int(number)


def _display_name(source: str) -> str:
    """A folder's name (a training run's `model/` is named after its run), or a Hub repo id as given."""
    folder = Path(source).expanduser()
    if not folder.is_dir():
        return source
    folder = folder.resolve()
    return folder.parent.name if folder.name == MODEL_DIR else folder.name
