"""A training run's folder: what training writes and `--resume` reads back.

    config.json       the resolved Config (vocabulary size, softmax and its clusters filled in)
    tokenizer.json    built from the training split
    metrics.jsonl     the log (see lmdemo.metrics)
    state.safetensors everything needed to resume: weights, optimiser, RNGs, LSTM state, counters
    model/            the best model so far by validation loss, as a model folder (with the text's example prompts)

Every process reads it; only rank 0 writes. The log reaches the disk before the state that counts it,
so a run killed at any moment resumes from a state whose records are all there.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from lmdemo.checkpoint import MODEL_DIR, WEIGHTS_FILE, read_weights, save_model
from lmdemo.config import Config, ConfigError
from lmdemo.files import write_atomic
from lmdemo.metrics import CONFIG_FILE, METRICS_FILE, MetricsWriter
from lmdemo.model import LSTMLanguageModel, State
from lmdemo.parallel import Parallel
from lmdemo.tokenizer import TOKENIZER_FILE, Tokenizer

STATE_FILE = "state.safetensors"
# What a resumed run may change: its limits and bookkeeping. Anything else (data, batch, windows, seed,
# model, optimiser, schedule) would continue on another grid or another trajectory.
RESUMABLE_FIELDS = ("epochs", "max_steps", "max_minutes", "early_stop", "log_every", "save_every", "threads")


@dataclass
class Counters:
    """The scalar part of a resumable state."""

    epoch: int = 0
    window: int = 0  # next window of the epoch
    step: int = 0
    tokens: int = 0
    elapsed: float = 0.0  # training wall time before this process started
    step_budget: int | None = None  # --max-minutes as steps, measured once
    budget_minutes: float | None = None  # the --max-minutes the budget was measured for
    best_val: float = math.inf
    evals_since_best: int = 0
    lr_scale: float = 1.0  # plateau reductions so far
    evals_since_drop: int = 0
    log_offset: int = 0  # bytes of metrics.jsonl the state has seen
    interval_loss: float = 0.0  # summed over processes, since the last training record
    interval_tokens: int = 0
    since_val_loss: float = 0.0  # summed over processes, since the last validation
    since_val_tokens: int = 0
    last_val_step: int = 0


class RunFolder:
    """One run's folder, refusing to start over a run or to resume nothing."""

    def __init__(self, out: Path, resume: bool, main: bool):
        self.out, self.main = out, main
        self.state_path, self.best = out / STATE_FILE, out / MODEL_DIR
        if resume and not self.state_path.exists():
            raise ConfigError(f"nothing to resume in {out}: it has no {STATE_FILE}")
        if not resume and self.state_path.exists():
            raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        self.log: MetricsWriter | None = None
        self.examples: list[str] = []  # the model folder's example prompts, from the run's text

    def load_tokenizer(self, config: Config) -> Tokenizer:
        return Tokenizer.load(self.out / TOKENIZER_FILE, config.level, config.tokenize)

    def check_resumable(self, config: Config) -> None:
        """Refuse, in one line naming them, changes a resumed run cannot honour."""
        saved = Config.load(self.out / CONFIG_FILE)
        changed = [f.name for f in dataclasses.fields(Config)
                   if f.name not in RESUMABLE_FIELDS and getattr(saved, f.name) != getattr(config, f.name)]
        if changed:
            listed = ", ".join(f"--{name.replace('_', '-')} ({getattr(saved, name)!r} → {getattr(config, name)!r})"
                               for name in changed)
            raise ConfigError(f"cannot resume with changed settings: {listed}; a resumed run may change only "
                              + ", ".join(f"--{name.replace('_', '-')}" for name in RESUMABLE_FIELDS))

    def start(self, config: Config, tokenizer: Tokenizer, resume: bool, log_offset: int, examples: list[str]) -> None:
        """Write the config (and a new run's tokenizer) and open the log where the state left it; every model
        folder saved gets `examples`."""
        self.examples = examples
        if not self.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        config.save(self.out / CONFIG_FILE)
        if not resume:
            tokenizer.save(self.out / TOKENIZER_FILE)
        self.log = MetricsWriter(self.out / METRICS_FILE, log_offset)

    def append(self, event: str, values: dict) -> None:
        if self.log is not None:
            self.log.append(event, **values)

    @property
    def log_offset(self) -> int:
        return self.log.offset if self.log else 0

    def save_best(self, model: LSTMLanguageModel, tokenizer: Tokenizer) -> None:
        """Write `model` as the run's model folder, its card made from the log."""
        if self.main:
            save_model(self.best, model, tokenizer, self.out / METRICS_FILE, self.out.name, examples=self.examples)

    def read_best(self) -> LSTMLanguageModel | None:
        return read_weights(self.best) if (self.best / WEIGHTS_FILE).exists() else None

    def save_state(self, model: LSTMLanguageModel, optimizer: torch.optim.Optimizer, counters: Counters,
                   hidden: State | None, parallel: Parallel, device: torch.device) -> None:
        """Everything needed to resume, in one file written atomically by rank 0 (all ranks take part:
        each contributes its RNG and LSTM state)."""
        tensors = {f"model.{name}": p.detach().cpu().contiguous() for name, p in model.named_parameters()}
        tensors["rng"] = parallel.gather(torch.get_rng_state().unsqueeze(0).to(device)).cpu()
        if device.type == "cuda":
            tensors["cuda_rng"] = parallel.gather(torch.cuda.get_rng_state(device).unsqueeze(0).to(device)).cpu()
        if hidden is not None:
            tensors["hidden.h"] = parallel.gather(hidden[0], dim=1).cpu()
            tensors["hidden.c"] = parallel.gather(hidden[1], dim=1).cpu()
        state = optimizer.state_dict()
        for index, values in state["state"].items():
            for key, value in values.items():
                tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
        metadata = {"counters": json.dumps(dataclasses.asdict(counters)),
                    "param_groups": json.dumps(state["param_groups"])}
        if self.main:
            if self.log is not None:
                self.log.sync()  # the records the state counts reach the disk before the state does
            write_atomic(self.state_path, save_tensors(tensors, metadata))

    def load_state(self, model: LSTMLanguageModel, optimizer: torch.optim.Optimizer, parallel: Parallel,
                   device: torch.device) -> tuple[Counters, State | None]:
        """Put the saved weights, optimiser and RNGs in place; returns the counters and this rank's LSTM state."""
        path = self.state_path
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata()
        tensors = load_tensors(path.read_bytes())
        known = {f.name for f in dataclasses.fields(Counters)}
        saved = json.loads(metadata["counters"])
        if "log_offset" not in saved:
            raise ConfigError(f"{path} was written by an older lmdemo and cannot be resumed; start a new run")
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                parameter.copy_(tensors[f"model.{name}"])
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
        if tensors["rng"].size(0) == parallel.world:
            torch.set_rng_state(tensors["rng"][parallel.rank].clone())
        if "cuda_rng" in tensors and device.type == "cuda" and tensors["cuda_rng"].size(0) == parallel.world:
            torch.cuda.set_rng_state(tensors["cuda_rng"][parallel.rank].clone(), device)
        hidden = None
        if "hidden.h" in tensors:
            hidden = (parallel.mine(tensors["hidden.h"], 1).to(device), parallel.mine(tensors["hidden.c"], 1).to(device))
        return Counters(**{k: v for k, v in saved.items() if k in known}), hidden
