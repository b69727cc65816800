"""The web demo's requests as plain functions: which models, what they are, sample, explain a token.

Everything here returns plain data (dataclasses, lists, numbers) so the Gradio app stays a thin
layer of widgets and the behaviour can be tested without a browser. Models are loaded once per
process and shared: a `Generator` holds no request state.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmdemo.checkpoint import TrainedModel, load_model
from lmdemo.generation import SEED_LIMIT, Generator, Prompt, Sample, Sampling, SettingsError, TokenScore
from lmdemo.metrics import CONFIG_FILE
from lmdemo.training import MODEL_DIR

MODELS_ENV = "LMDEMO_MODELS"
DRAWN_SEED_LIMIT = 2**32  # seeds the random-seed button draws: short enough to read back and retype
DEFAULT_TEMPERATURES = (0.2, 0.5, 0.8, 1.0, 1.3)

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
                         data=_data_name(config.data, config.data_config))
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


def _data_name(data: str, data_config: str | None) -> str:
    """A readable name for the training data: a local file as folder/file, or a Hub dataset id."""
    if not data:
        return "unknown"
    path = Path(data)
    local = data.startswith((".", "/", "~")) or path.suffix != "" or path.exists()
    name = ("/".join(path.parts[-2:]) if path.suffix else path.name) if local else data
    return f"{name} ({data_config})" if data_config else name
