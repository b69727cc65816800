"""Which models the web demo serves, loaded once per process, and what the model picker says about each.

A `Generator` holds no request state, so one per model serves every request and thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lmdemo.atlas import ATLAS_FILE, read_atlas
from lmdemo.checkpoint import MODEL_DIR, load_model
from lmdemo.config import data_name
from lmdemo.files import hub_id
from lmdemo.generation import Dial, Generator, SettingsError
from lmdemo.metrics import CONFIG_FILE
from lmdemo.properties import SENTIMENT
from lmdemo.space import MODELS_ENV, read_models_file

# The app shows its best first: it opens on the first of these models that is served (else the first
# served), and its Compare tab on this pair when both are, two tokenisations of the same reviews.
DEFAULT_PREFERENCE = ("imdb-bpe", "imdb-word")
COMPARE_PREFERENCE = ("imdb-word", "imdb-bpe")


@dataclass(frozen=True)
class Steerable:
    """A property the model's atlas found a unit for, with the value that pushes the text to each of its ends
    ("positive" and "negative" for sentiment): what the Sample tab's dial turns."""

    property: str
    layer: int  # from 1, the bottom layer
    unit: int  # from 0
    quantity: str  # "h" or "c"
    ends: tuple[tuple[str, float], tuple[str, float]]  # (end, value), the lower value first

    def dial(self, value: float) -> Dial:
        return Dial(self.layer, self.unit, self.quantity, value)


def read_steerable(folder: Path, num_layers: int, hidden_size: int) -> list[Steerable]:
    """The steerable properties of a model folder's atlas (none without `atlas.json`), review sentiment first (the
    dial measured to steer, by bench/atlas.py: the Sample tab's slider turns the first); a property whose `dial`
    does not name two ends and a unit of this model makes the file unreadable, with one line saying why."""
    path = folder / ATLAS_FILE
    try:
        atlas = read_atlas(folder)
        if atlas is None:
            return []
        properties = atlas["properties"]
        steerable = []
        for entry in properties:
            if not entry.get("dial"):
                continue
            ends = sorted(((str(end), float(value)) for end, value in entry["dial"].items()), key=lambda e: e[1])
            if len(ends) != 2 or ends[0][1] == ends[1][1]:
                raise ValueError(f"{entry['property']}: a dial needs two ends with different values")
            found = Steerable(str(entry["property"]), entry["layer"], entry["unit"], entry["quantity"],
                              (ends[0], ends[1]))
            for _, value in ends:
                found.dial(value).check(num_layers, hidden_size)
            steerable.append(found)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise SettingsError(f"{path} cannot be read: {error}") from None
    return sorted(steerable, key=lambda found: found.property != SENTIMENT.name)


class NoModelsError(RuntimeError):
    """Nothing to serve: no shipped checkpoint, no --model and no LMDEMO_MODELS, or none of them loads."""


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
    unit: str = "token"  # what one token is, in words
    has_unk: bool = True  # whether the vocabulary has `<unk>` (byte-level subwords need none)
    lower_bound: bool = False  # whether bits per character understate the text's cost (words with <unk>)
    steps: int | None = None
    validation_ppl: float | None = None
    validation_bpc: float | None = None
    test_ppl: float | None = None
    test_bpc: float | None = None
    metrics_problems: list[str] = field(default_factory=list)
    steerable: list[Steerable] = field(default_factory=list)  # what the Sample tab's dial can turn


def discover_models(checkpoints: Path, extra: Sequence[str] = (), environ: dict[str, str] | None = None,
                    models_file: Path | None = None) -> dict[str, str]:
    """Display name -> source for every model to serve: shipped folders, then the lines of `models_file`
    (when it exists), then --model, then LMDEMO_MODELS."""
    environ = os.environ if environ is None else environ
    sources = sorted(str(p.parent) for p in checkpoints.glob(f"*/{CONFIG_FILE}")) if checkpoints.is_dir() else []
    if models_file is not None and models_file.is_file():
        sources += read_models_file(models_file)
    sources += list(extra)
    sources += [s.strip() for s in environ.get(MODELS_ENV, "").split(",") if s.strip()]
    names: dict[str, str] = {}
    for source in dict.fromkeys(sources):
        name = _display_name(source)
        names[name if name not in names else source] = source
    if not names:
        listed = f", list them in {models_file}" if models_file is not None else ""
        raise NoModelsError(f"no models to serve: add a model folder (with {CONFIG_FILE}) under {checkpoints}/"
                            f"{listed}, pass --model FOLDER_OR_HUB_ID, or set {MODELS_ENV}")
    return names


class Models:
    """The loaded models by display name."""

    def __init__(self, sources: dict[str, str], default_preference: Sequence[str] = DEFAULT_PREFERENCE,
                 compare_preference: Sequence[str] = COMPARE_PREFERENCE, skip_broken: bool = False):
        """Load every model now, so a bad one fails at start-up rather than at a user's first click.

        With `skip_broken`, a model that cannot be loaded (a missing Hub repo, a corrupt file) is left out
        and its reason kept in `skipped`; only when none loads is that an error (`NoModelsError`)."""
        self.generators: dict[str, Generator] = {}
        self.steerable: dict[str, list[Steerable]] = {}  # display name -> its atlas's steerable properties
        self.skipped: dict[str, str] = {}  # display name -> why it is not served
        # models trained in the app, by (owning session or None, name); served to their owner only, so every
        # session may call its first model char-tiny-1
        self.private: dict[tuple[str | None, str], Generator] = {}
        self.visitor: Callable[[], str | None] | None = None  # who is asking (the web app: the request's session)
        for name, source in sources.items():
            if not skip_broken:
                self._load(name, source)
                continue
            try:
                self._load(name, source)
            except Exception as error:  # noqa: BLE001 - any failure of one model leaves the others served
                self.skipped[name] = (str(error).splitlines() or [type(error).__name__])[0]
        if not self.generators:
            reasons = "; ".join(f"{name}: {reason}" for name, reason in self.skipped.items())
            raise NoModelsError(f"no model could be loaded ({reasons})" if reasons else "no models to serve")
        self.default_preference, self.compare_preference = tuple(default_preference), tuple(compare_preference)

    def _load(self, name: str, source: str) -> None:
        generator = Generator(load_model(source))
        config = generator.config
        self.steerable[name] = read_steerable(generator.trained.folder, config.num_layers, config.hidden_size)
        self.generators[name] = generator

    @property
    def names(self) -> list[str]:
        return list(self.generators)

    @property
    def default(self) -> str:
        """The model the app opens on: the first preferred one that is served, else the first served."""
        return next((found for name in self.default_preference if (found := self._served(name))), self.names[0])

    @property
    def compare_pair(self) -> tuple[str, str]:
        """The Compare tab's first two models: the preferred pair when both are served, else the default
        and the next other model (the default twice when it is the only one)."""
        pair = [self._served(name) for name in self.compare_preference]
        if len(pair) == 2 and all(pair):
            return pair[0], pair[1]
        first = self.default
        return first, next((name for name in self.names if name != first), first)

    def _served(self, preferred: str) -> str | None:
        """The served model a preference names: that name, else a Hub repo id with that name (`user/imdb-bpe`
        for `imdb-bpe`, as a Space serves the models it pulls from the Hub)."""
        if preferred in self.generators:
            return preferred
        return next((name for name in self.generators if name.rsplit("/", 1)[-1] == preferred), None)

    def generator(self, name: str) -> Generator:
        """The model called `name`; an unknown name is a setting the user can fix."""
        private = self._private(name)  # a session's own model (lmdemo.web.jobs)
        if private is not None:
            return private
        if name in self.skipped:
            raise SettingsError(f"model {name!r} is not served: {self.skipped[name]}")
        if name not in self.generators:
            raise SettingsError(f"unknown model {name!r}; choose one of: {', '.join(self.generators)}")
        return self.generators[name]

    def describe(self, name: str) -> ModelInfo:
        """The model's shape, data and measured quality, from its config and metrics log."""
        trained = self.generator(name).trained
        config = trained.config
        info = ModelInfo(name=name, source=trained.source, level=config.level,
                         parameters=trained.model.num_parameters(), num_layers=config.num_layers,
                         hidden_size=config.hidden_size, emb_size=config.emb_size, vocab_size=config.vocab_size,
                         data=data_name(config.data, config.data_config), unit=trained.tokenizer.unit,
                         has_unk=trained.tokenizer.unk_id is not None,
                         lower_bound=trained.tokenizer.lossy, steerable=list(self.steerable.get(name, [])))
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
        """The model's own example prompts, openings of the text it learnt (`lmdemo.checkpoint.example_prompts`);
        an empty prompt for a folder without them, never another text's."""
        return list(self.generator(name).trained.examples) or [""]

    # -- private models: trained in the app (lmdemo.web.jobs), served only to the session that trained them ---
    def add_private(self, name: str, generator: Generator, owner: str | None = None) -> None:
        """Serve `generator` under `name` without listing it (`names`, the pickers and error messages show the
        shipped models only), and, once `set_visitor` says who asks, only to `owner`."""
        if name in self.generators:
            raise ValueError(f"{name!r} is already a served model")
        self.private[(owner, name)] = generator

    def remove_private(self, name: str, owner: str | None = None) -> None:
        self.private.pop((owner, name), None)

    def set_visitor(self, visitor: Callable[[], str | None]) -> None:
        """`visitor()` names who is asking (the web app: the request's session); a private model with an owner
        is then unknown to everyone else."""
        self.visitor = visitor

    def _private(self, name: str) -> Generator | None:
        """The asking session's model called `name` (or one served to everyone); before `set_visitor`, anyone's."""
        if self.visitor is None:
            return next((generator for (_, found), generator in self.private.items() if found == name), None)
        return self.private.get((self.visitor(), name)) or self.private.get((None, name))


def _display_name(source: str) -> str:
    """A folder's name (a training run's `model/` is named after its run), or a Hub repo id as given."""
    if hub_id(source):
        return source
    folder = Path(source).expanduser().resolve()
    return folder.parent.name if folder.name == MODEL_DIR else folder.name
