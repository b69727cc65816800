"""Training: truncated BPTT over continuous streams, logged, checkpointed and resumable.

A run is a folder:
    config.json       the resolved Config (vocabulary size, softmax and its clusters filled in)
    tokenizer.json    built from the training split
    metrics.jsonl     the log (see lmdemo.metrics)
    state.safetensors everything needed to resume: weights, optimiser, RNGs, LSTM state, counters
    model/            the best model so far by validation loss, as a model folder

The loop follows nanoGPT's: one step, then one place (`Trainer._plan`) decides whether to log,
validate, save and stop. Everything that shapes the run is a function of the step: the learning
rate, when to validate and when to stop. A `--max-minutes` budget is turned into a step budget once,
from the speed of the run's own step measured before the first one, and recorded in the state, so a
run killed at any moment (kill -9 included) or stopped by Ctrl-C resumes to the same log an
uninterrupted run writes. Time-based saves and stop requests are decided at log intervals on rank 0
and broadcast, so every process takes the same branch.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import platform
import random
import shlex
import signal
import sys
import threading
import time
from contextlib import nullcontext
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from lmdemo.batches import StreamBatches
from lmdemo.checkpoint import MODEL_DIR, WEIGHTS_FILE, read_weights, save_model
from lmdemo.config import Config, ConfigError
from lmdemo.corpus import load_corpus
from lmdemo.evaluation import evaluate
from lmdemo.files import write_atomic
from lmdemo.metrics import CONFIG_FILE, METRICS_FILE, MetricsWriter, improves, loss_record, perplexity
from lmdemo.model import LSTMLanguageModel
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


@dataclass
class Speed:
    """Tokens trained (all processes) since `start`, which moves on by the time spent validating and saving."""

    tokens: int = 0
    start: float = dataclasses.field(default_factory=time.monotonic)

    def per_second(self) -> float:
        return self.tokens / max(time.monotonic() - self.start, 1e-9)


class StopRequest:
    """Ctrl-C or SIGTERM once: training stops at the next log interval, saves its state and scores the best
    model so far on the test split; it validates only where the run would anyway, so `--resume` continues
    exactly as if it had never stopped. A second time aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("lmdemo: stopping at the next log interval (save, test the best model); once more to abort",
              file=sys.stderr, flush=True)


class Plan(NamedTuple):
    """What to do after a step; decided in one place."""

    log: bool
    validate: bool
    save: bool
    limit: bool  # a limit (epochs, steps, budget) is reached: validate, save and stop
    stop: bool  # a stop was asked for: save and stop, off the validation grid of a longer run


@dataclass
class Hardware:
    """Where and how this process computes."""

    device: torch.device
    threads: int
    precision: str  # "bf16" or "fp32", what actually runs

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.precision == "bf16" else nullcontext()


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 maths runs natively here. Without it CPU autocast is a trap: oneDNN has no bf16
    LSTM kernel (it raises) and bf16 matmuls are emulated (45x slower than fp32 on an AVX2 EPYC)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(config: Config, parallel: Parallel) -> torch.device:
    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but no CUDA GPU is available")
        return torch.device("cuda", parallel.local_rank)
    return torch.device("cpu")


def set_up_hardware(config: Config, parallel: Parallel, device: torch.device) -> Hardware:
    """Threads (cores per process unless given) and precision (bf16 only where it is native)."""
    threads = config.threads or max(1, len(os.sched_getaffinity(0)) // parallel.local_world)
    torch.set_num_threads(threads)
    precision = "bf16" if config.precision != "fp32" and native_bf16(device) else "fp32"
    if config.precision == "bf16" and precision == "fp32" and parallel.main:
        print("lmdemo: warning: --precision bf16 needs native bf16 (AVX512-BF16 or AMX on a CPU); this "
              "device has none (its bf16 LSTM kernels fail or run far slower), so training runs in fp32",
              file=sys.stderr)
    return Hardware(device, threads, precision)


def describe_hardware(hardware: Hardware, world: int) -> str:
    device = hardware.device
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    processes = f"{world} processes" if world > 1 else "1 process"
    threads = f"{hardware.threads} threads" if hardware.threads > 1 else "1 thread"
    return f"{processes} × {threads} on {name} ({os.cpu_count()} CPUs), torch {torch.__version__}"


@dataclass
class Split:
    """A split's id stream and the characters of the text it covers (for bits per character)."""

    ids: torch.Tensor
    characters: int

    @property
    def tokens_per_character(self) -> float:
        return self.ids.numel() / max(self.characters, 1)


def encode_splits(config: Config, tokenizer: Tokenizer | None,
                  names: Sequence[str] = ("train", "valid", "test")) -> tuple[Tokenizer, dict[str, Split]]:
    """Load the corpus, build the tokenizer if none is given, and encode the named splits to one id stream
    each. A stream cut short (max_tokens, eval_tokens) covers that share of the split's characters."""
    corpus = load_corpus(config)
    if tokenizer is None:
        tokenizer = Tokenizer.build(corpus.train, config.level, config.min_freq, config.max_vocab, config.lowercase,
                                    config.tokenize)
    splits = {}
    for name in names:
        docs = corpus.split(name)
        ids = tokenizer.encode_documents(docs)
        limits = [config.max_tokens] + ([config.eval_tokens] if name == "valid" else [])
        cap = min((n for n in limits if n is not None), default=None)
        kept = ids[:cap]
        splits[name] = Split(kept, round(tokenizer.characters(docs) * kept.numel() / max(ids.numel(), 1)))
    return tokenizer, splits


def learning_rate(config: Config, step: int, total_steps: float, lr_scale: float = 1.0) -> float:
    """The rate for optimiser step `step` (0-based): linear warm-up, then the schedule; a function of
    the step alone (and of the plateau reductions so far), so a resumed run follows the same curve."""
    factor = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    if config.schedule == "cosine":
        done = min(1.0, step / total_steps)
        factor *= 0.1 + 0.45 * (1 + math.cos(math.pi * done))  # to a tenth of the peak
    elif config.schedule == "plateau":
        factor *= lr_scale
    return config.lr * factor


def train(config: Config, out: str | Path, resume: bool = False, progress_bar: bool = True,
          command: str | None = None) -> Path:
    """Train (or resume) the run in `out`; returns the folder of the best model."""
    out = Path(out)
    parallel = Parallel()
    device = resolve_device(config, parallel)
    parallel.start(device)
    best = Trainer(config, out, resume, parallel, set_up_hardware(config, parallel, device), command).run(progress_bar)
    # Only after a clean run: a rank that failed must not wait in teardown for peers mid-collective.
    parallel.stop()
    return best


class Trainer:
    """One run: its data, model, optimiser and counters, the loop, and the run folder."""

    def __init__(self, config: Config, out: Path, resume: bool, parallel: Parallel, hardware: Hardware,
                 command: str | None = None):
        state_path = out / STATE_FILE
        if resume and not state_path.exists():
            raise ConfigError(f"nothing to resume in {out}: it has no {STATE_FILE}")
        if not resume and state_path.exists():
            raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        self.out, self.parallel, self.hardware = out, parallel, hardware
        tokenizer = Tokenizer.load(out / TOKENIZER_FILE, config.level, config.tokenize) if resume else None
        self.tokenizer, self.splits = encode_splits(config, tokenizer)
        self.config = config.resolved(self.tokenizer.vocab_size)
        if resume:
            _check_resumable(Config.load(out / CONFIG_FILE), self.config)
        if self.splits["valid"].ids.numel() < 2:
            raise ConfigError("the validation split has fewer than 2 tokens")
        self.batches = self._epoch_batches(0)
        self.epoch_windows = len(self.batches)

        torch.manual_seed(self.config.seed)
        self.model = LSTMLanguageModel(self.config).to(hardware.device)
        torch.manual_seed(self.config.seed + parallel.rank)  # different dropout masks per process
        self.optimizer = _optimizer(self.model, self.config)
        self.network = DistributedDataParallel(self.model) if parallel.enabled else self.model
        self.counters = Counters()
        self.hidden: tuple[torch.Tensor, torch.Tensor] | None = None
        if resume:
            load_state(state_path, self)
            self.batches = self._epoch_batches(self.counters.epoch)
        self.started = time.monotonic()
        self.last_save = self.started
        self.stop = StopRequest()
        self._set_budget()
        if resume and self._limit_reached():
            raise ConfigError(f"the run in {out} already reached its limits (step {self.counters.step}, "
                              f"epoch {self.counters.epoch}); raise --epochs, --max-steps or --max-minutes "
                              f"to train further")
        if parallel.main:
            out.mkdir(parents=True, exist_ok=True)
            self.config.save(out / CONFIG_FILE)
            if not resume:
                self.tokenizer.save(out / TOKENIZER_FILE)
        self.log = MetricsWriter(out / METRICS_FILE, self.counters.log_offset) if parallel.main else None
        self._log("start", command=command or shlex.join([Path(sys.executable).name, "-m", "lmdemo", *sys.argv[1:]]),
                  hardware=describe_hardware(hardware, parallel.world), precision=hardware.precision,
                  precision_asked=config.precision, world=parallel.world, params=self.model.num_parameters(),
                  vocab_size=self.config.vocab_size, resumed=resume, step_budget=self.counters.step_budget,
                  **{f"{k}_tokens": v.ids.numel() for k, v in self.splits.items()},
                  **{f"{k}_characters": v.characters for k, v in self.splits.items()})

    # -- the loop ----------------------------------------------------------------------------
    def run(self, progress_bar: bool = True) -> Path:
        counters = self.counters
        bar = tqdm(total=int(min(self._total_steps(), 1e12)), initial=counters.step, unit="step", dynamic_ncols=True,
                   disable=not (progress_bar and self.parallel.main), desc=self.out.name)
        interval = torch.zeros(2, dtype=torch.float64, device=self.hardware.device)  # loss sum, tokens
        speed = Speed()
        self.model.train()
        with self.stop:
            best = self._loop(bar, interval, speed)
        return best

    def _loop(self, bar: tqdm, interval: torch.Tensor, speed: Speed) -> Path:
        while True:
            tokens_before = self.counters.tokens
            epoch_end = self._step(interval)
            speed.tokens += self.counters.tokens - tokens_before
            bar.update(1)
            plan = self._plan(epoch_end)
            if plan.log:
                loss = self._log_train(interval, speed.per_second())
                bar.set_postfix(loss=f"{loss:.3f}", ppl=f"{perplexity(loss):.1f}", tok_s=f"{speed.per_second():,.0f}",
                                refresh=False)
                speed = Speed()
            paused = time.monotonic()
            stop = plan.limit or plan.stop
            if plan.validate:
                stop = self._validate(interval, epoch_end) or stop
            if plan.save or plan.validate:
                save_state(self.out / STATE_FILE, self, interval)
            speed.start += time.monotonic() - paused  # validating and saving are not training speed
            if stop:
                break
        bar.close()
        return self._finish()

    def _step(self, interval: torch.Tensor) -> bool:
        """One optimiser step on the next window; True if it ended an epoch."""
        config, counters = self.config, self.counters
        inputs, targets = (t.to(self.hardware.device) for t in self.batches.window(counters.window))
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(config, counters.step, self._total_steps(), counters.lr_scale)
        with self.hardware.autocast():
            loss, state = self.network(inputs, self.hidden, targets)
        self.hidden = (state[0].detach(), state[1].detach())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.clip)
        self.optimizer.step()
        interval[0] += loss.detach().double() * targets.numel()
        interval[1] += targets.numel()
        counters.step += 1
        counters.window += 1
        counters.tokens += targets.numel() * self.parallel.world
        if counters.window < len(self.batches):
            return False
        counters.epoch += 1
        counters.window = 0
        self.hidden = None  # the streams restart at the next epoch
        if counters.epoch < config.epochs:
            self.batches = self._epoch_batches(counters.epoch)
        return True

    def _plan(self, epoch_end: bool) -> Plan:
        """The one place that decides what happens after a step."""
        config, counters = self.config, self.counters
        log = counters.step % config.log_every == 0
        limit = self._limit_reached()
        save = stop = False
        if log:  # time-based saves and stop requests: rank 0 decides for everyone
            flags = torch.tensor([time.monotonic() - self.last_save >= config.save_every, self.stop.requested],
                                 dtype=torch.int32, device=self.hardware.device)
            save, stop = (bool(flag) for flag in self.parallel.from_main(flags).tolist())
        validate = epoch_end or limit or bool(config.eval_every and
                                              counters.step - counters.last_val_step >= config.eval_every)
        return Plan(log=log, validate=validate, save=(save or stop) and not validate, limit=limit, stop=stop)

    def _limit_reached(self) -> bool:
        config, counters = self.config, self.counters
        return counters.epoch >= config.epochs or counters.step >= self._total_steps()

    def _total_steps(self) -> float:
        """The run's length in steps: the schedule's horizon and the stopping point."""
        config, counters = self.config, self.counters
        return min(config.epochs * self.epoch_windows, config.max_steps or math.inf,
                   counters.step_budget or math.inf)

    def _epoch_batches(self, epoch: int) -> StreamBatches:
        """The epoch's windows; with shift_windows, epochs after the first start at a seeded random offset
        (the same on every process and after a resume)."""
        config = self.config
        offset = random.Random(f"{config.seed}:{epoch}").randrange(config.bptt) if config.shift_windows and epoch else 0
        return StreamBatches(self.splits["train"].ids, config.batch_size, config.bptt, self.parallel.rank,
                             self.parallel.world, offset)

    def _set_budget(self) -> None:
        """--max-minutes as a step budget, measured once: a resume with the same minutes keeps it."""
        config, counters = self.config, self.counters
        if not config.max_minutes:
            counters.step_budget = counters.budget_minutes = None
        elif counters.budget_minutes != config.max_minutes:
            counters.step_budget, counters.budget_minutes = measure_step_budget(self), config.max_minutes

    def _log_train(self, interval: torch.Tensor, tokens_per_sec: float) -> float:
        """Write a training record for the steps since the last one; returns its loss."""
        counters = self.counters
        loss_sum, tokens = self._absorb(interval)
        counters.interval_loss, counters.interval_tokens = 0.0, 0
        loss = loss_sum / max(tokens, 1)
        self._log("train", **loss_record("train", loss, self.splits["train"].tokens_per_character),
                  tokens_per_sec=tokens_per_sec,
                  epoch=counters.epoch + counters.window / len(self.batches))
        return loss

    def _absorb(self, interval: torch.Tensor) -> tuple[float, int]:
        """Sum the interval over processes into the counters (since the last record and the last
        validation), reset it, and return the totals since the last training record."""
        loss_sum, tokens = self.parallel.sum(interval.clone()).tolist()
        interval.zero_()
        counters = self.counters
        counters.interval_loss += loss_sum
        counters.interval_tokens += int(tokens)
        counters.since_val_loss += loss_sum
        counters.since_val_tokens += int(tokens)
        return counters.interval_loss, counters.interval_tokens

    def _validate(self, interval: torch.Tensor, epoch_end: bool) -> bool:
        """Score the validation split, keep the best model, adjust the rate; True to stop early."""
        config, counters = self.config, self.counters
        self._absorb(interval)
        valid = self.splits["valid"]
        score = evaluate(self.model, valid.ids, config.eval_batch_size, config.eval_bptt, self.parallel)
        train_part = (loss_record("train", counters.since_val_loss / counters.since_val_tokens,
                                  self.splits["train"].tokens_per_character) if counters.since_val_tokens else {})
        counters.since_val_loss, counters.since_val_tokens = 0.0, 0
        counters.last_val_step = counters.step
        improved = improves(score.loss, counters.best_val)
        if improved:
            counters.best_val = score.loss
            counters.evals_since_best = counters.evals_since_drop = 0
        else:
            counters.evals_since_best += 1
            counters.evals_since_drop += 1
            if config.schedule == "plateau" and counters.evals_since_drop > config.lr_patience:
                counters.lr_scale *= config.lr_factor
                counters.evals_since_drop = 0
        self._log("val", **train_part, **loss_record("val", score.loss, valid.tokens_per_character),
                  epoch=counters.epoch + counters.window / len(self.batches), epoch_end=epoch_end, best=improved)
        if improved and self.parallel.main:
            save_model(self.out / MODEL_DIR, self.model, self.tokenizer, self.out / METRICS_FILE, self.out.name)
        return bool(config.early_stop and counters.evals_since_best >= config.early_stop)

    def _finish(self) -> Path:
        """Score the best model on the test split and write the final model folder.

        The run state keeps the last weights (saved at the last validation), so a resume with raised
        limits continues from them; the best model is read back into a separate copy for the test.
        """
        self.parallel.barrier()
        best = self.out / MODEL_DIR
        model = read_weights(best).to(self.hardware.device) if (best / WEIGHTS_FILE).exists() else self.model
        test = self.splits["test"]
        if test.ids.numel() >= 2:
            score = evaluate(model, test.ids, self.config.eval_batch_size, self.config.eval_bptt, self.parallel)
            unk_rate = (test.ids == self.tokenizer.unk_id).double().mean().item() if self.tokenizer.unk_id is not None \
                else 0.0
            self._log("test", **loss_record("test", score.loss, test.tokens_per_character), test_tokens=score.tokens,
                      test_characters=test.characters, test_unk_rate=unk_rate)
        if self.parallel.main:
            save_model(best, model, self.tokenizer, self.out / METRICS_FILE, self.out.name)
        return best

    # -- logging -----------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.counters.elapsed + time.monotonic() - self.started

    def _log(self, event: str, **values) -> None:
        counters = self.counters
        values = {"step": counters.step, "epoch": counters.epoch, "tokens": counters.tokens,
                  "time": round(self.elapsed(), 3), "lr": self.optimizer.param_groups[0]["lr"], **values}
        if self.log is not None:
            self.log.append(event, **values)


def _check_resumable(saved: Config, given: Config) -> None:
    """Refuse, in one line naming them, changes a resumed run cannot honour."""
    changed = [f.name for f in dataclasses.fields(Config)
               if f.name not in RESUMABLE_FIELDS and getattr(saved, f.name) != getattr(given, f.name)]
    if changed:
        listed = ", ".join(f"--{name.replace('_', '-')} ({getattr(saved, name)!r} → {getattr(given, name)!r})"
                           for name in changed)
        raise ConfigError(f"cannot resume with changed settings: {listed}; a resumed run may change only "
                          + ", ".join(f"--{name.replace('_', '-')}" for name in RESUMABLE_FIELDS))


# -- the --max-minutes budget ------------------------------------------------------------------------
def measure_step_budget(trainer: Trainer) -> int:
    """The step at which --max-minutes runs out: time a few of the run's own steps (`Trainer._step`, with its
    clipping, learning rate and gradient exchange between processes) and a slice of validation, put the run
    back as it was, then count the steps, with their share of validations, that fit the time left. Rank 0's
    figure holds for all."""
    config = trainer.config
    saved = _snapshot(trainer)
    step_seconds = _time_steps(trainer)
    valid = trainer.splits["valid"].ids
    sample = valid[:min(valid.numel(), config.eval_batch_size * config.eval_bptt * 2)]
    started = time.monotonic()
    evaluate(trainer.model, sample, config.eval_batch_size, config.eval_bptt, trainer.parallel)
    eval_seconds = (time.monotonic() - started) * valid.numel() / max(sample.numel(), 1)
    _restore(trainer, saved)
    evals_per_step = (1 / config.eval_every if config.eval_every else 0) + 1 / len(trainer.batches)
    left = config.max_minutes * 60 - trainer.elapsed()
    steps = max(1, int(left / (step_seconds + eval_seconds * evals_per_step)))
    budget = torch.tensor([trainer.counters.step + steps], device=trainer.hardware.device)
    return int(trainer.parallel.from_main(budget).item())


def _time_steps(trainer: Trainer) -> float:
    """Seconds per training step, over steps after two that warm up kernels and allocations; rank 0 says when
    it has timed enough, so every process takes the same steps (each exchanges gradients)."""
    device = trainer.hardware.device
    scratch = torch.zeros(2, dtype=torch.float64, device=device)
    timed, seconds = 0, 0.0
    for index in range(2 + 50):
        started = time.monotonic()
        trainer._step(scratch)
        scratch.tolist()  # waits for the device
        if index >= 2:
            timed, seconds = timed + 1, seconds + time.monotonic() - started
            enough = torch.tensor([timed >= 3 and seconds >= 2.0], dtype=torch.int32, device=device)
            if trainer.parallel.from_main(enough).item():
                break
    return seconds / timed


def _snapshot(trainer: Trainer) -> dict[str, Any]:
    """What a training step changes, to put back after steps that only measure."""
    device = trainer.hardware.device
    return {"weights": {name: value.clone() for name, value in trainer.model.state_dict().items()},
            "optimizer": copy.deepcopy(trainer.optimizer.state_dict()), "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "counters": dataclasses.asdict(trainer.counters), "hidden": trainer.hidden, "batches": trainer.batches}


def _restore(trainer: Trainer, saved: dict[str, Any]) -> None:
    trainer.model.load_state_dict(saved["weights"])
    trainer.optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"])
    if saved["cuda_rng"] is not None:
        torch.cuda.set_rng_state(saved["cuda_rng"], trainer.hardware.device)
    vars(trainer.counters).update(saved["counters"])  # in place: callers hold the counters
    trainer.hidden, trainer.batches = saved["hidden"], saved["batches"]


# -- the run state ---------------------------------------------------------------------------------
def save_state(path: Path, trainer: Trainer, interval: torch.Tensor) -> None:
    """Everything needed to resume, in one file written atomically by rank 0 (all ranks take part:
    each contributes its RNG and LSTM state)."""
    parallel = trainer.parallel
    trainer._absorb(interval)  # the loss since the last record travels in the counters
    tensors = {f"model.{name}": p.detach().cpu().contiguous() for name, p in trainer.model.named_parameters()}
    device = trainer.hardware.device
    tensors["rng"] = parallel.gather(torch.get_rng_state().unsqueeze(0).to(device)).cpu()
    if device.type == "cuda":
        tensors["cuda_rng"] = parallel.gather(torch.cuda.get_rng_state(device).unsqueeze(0).to(device)).cpu()
    if trainer.hidden is not None:
        tensors["hidden.h"] = parallel.gather(trainer.hidden[0], dim=1).cpu()
        tensors["hidden.c"] = parallel.gather(trainer.hidden[1], dim=1).cpu()
    optimizer = trainer.optimizer.state_dict()
    for index, values in optimizer["state"].items():
        for key, value in values.items():
            tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
    counters = dataclasses.replace(trainer.counters, elapsed=trainer.elapsed(),
                                   log_offset=trainer.log.offset if trainer.log else 0)
    metadata = {"counters": json.dumps(dataclasses.asdict(counters)),
                "param_groups": json.dumps(optimizer["param_groups"])}
    if parallel.main:
        if trainer.log is not None:
            trainer.log.sync()  # the records the state counts reach the disk before the state does
        write_atomic(path, save_tensors(tensors, metadata))
    trainer.last_save = time.monotonic()


def load_state(path: Path, trainer: Trainer) -> None:
    """Put a saved state into a freshly built trainer."""
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    tensors = load_tensors(path.read_bytes())
    known = {f.name for f in dataclasses.fields(Counters)}
    saved = json.loads(metadata["counters"])
    if "log_offset" not in saved:
        raise ConfigError(f"{path} was written by an older lmdemo and cannot be resumed; start a new run")
    with torch.no_grad():
        for name, parameter in trainer.model.named_parameters():
            parameter.copy_(tensors[f"model.{name}"])
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    trainer.optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    trainer.counters = Counters(**{k: v for k, v in saved.items() if k in known})
    parallel, device = trainer.parallel, trainer.hardware.device
    if tensors["rng"].size(0) == parallel.world:
        torch.set_rng_state(tensors["rng"][parallel.rank].clone())
    if "cuda_rng" in tensors and device.type == "cuda" and tensors["cuda_rng"].size(0) == parallel.world:
        torch.cuda.set_rng_state(tensors["cuda_rng"][parallel.rank].clone(), device)
    if "hidden.h" in tensors:
        trainer.hidden = (parallel.mine(tensors["hidden.h"], 1).to(device),
                          parallel.mine(tensors["hidden.c"], 1).to(device))


def _optimizer(model: torch.nn.Module, config: Config) -> torch.optim.Optimizer:
    params = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
