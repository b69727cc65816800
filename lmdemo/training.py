"""Training: truncated BPTT over continuous streams, logged, checkpointed and resumable.

A run is a folder (`lmdemo.run_folder`: config, tokenizer, log, resumable state, best model), and what
it scores and keeps is `lmdemo.run_scores`; this module builds the run and runs its loop.

The loop follows nanoGPT's: one step, then one place (`Trainer._plan`) decides whether to log,
validate, save and stop. Everything that shapes the run is a function of the step: the learning
rate, when to validate and when to stop. A `--max-minutes` budget counts from the command's start and is
turned into a step budget once, from the cost of the run's own step, validation and saving measured before
the first step, and recorded in the state, so a run killed at any moment (kill -9 included) or stopped by
Ctrl-C resumes to the same log an uninterrupted run writes. Time-based saves and stop requests are decided at
log intervals on rank 0 and broadcast, so every process takes the same branch. The log's last record says
why the run ended (`end`: budget, steps, epochs, early stop or a stop request).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import platform
import random
import shlex
import signal
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from lmdemo.atlas import PART_TOKENS, build_atlas, random_model, stream_texts, write_atlas
from lmdemo.batches import StreamBatches
from lmdemo.checkpoint import TrainedModel, example_prompts, load_model
from lmdemo.config import Config, ConfigError
from lmdemo.corpus import Corpus, load_corpus
from lmdemo.evaluation import Split, evaluate
from lmdemo.metrics import perplexity
from lmdemo.model import LSTMLanguageModel
from lmdemo.parallel import Parallel
from lmdemo.run_folder import Counters, RunFolder
from lmdemo.run_scores import RunScores
from lmdemo.tokenizer import Tokenizer


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
    limit: str | None  # the limit reached ("budget", "steps" or "epochs", ENDINGS' keys): validate, save and stop
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
        name = platform.machine()  # not platform.processor(): on Linux it runs `uname -p`, a process for nothing
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


def encode_splits(config: Config, tokenizer: Tokenizer | None, names: Sequence[str] = ("train", "valid", "test"),
                  corpus: Corpus | None = None) -> tuple[Tokenizer, dict[str, Split]]:
    """Load the corpus (unless given), build the tokenizer if none is given, and encode the named splits to one id
    stream each. A stream cut short (max_tokens, eval_tokens) covers that share of the split's characters."""
    corpus = corpus if corpus is not None else load_corpus(config)
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
          command: str | None = None, atlas: bool = False, started: float | None = None) -> Path:
    """Train (or resume) the run in `out`; returns the folder of the best model. With `atlas`, the best model's
    cell atlas follows (`Trainer.write_atlas`). `started` (`time.monotonic()`, default now) is when the user asked
    for the run: the command's start, from which a --max-minutes budget counts."""
    out = Path(out)
    started = time.monotonic() if started is None else started
    parallel = Parallel()
    device = resolve_device(config, parallel)
    parallel.start(device)
    trainer = Trainer(config, out, resume, parallel, set_up_hardware(config, parallel, device), command, started,
                      atlas)
    best = trainer.run(progress_bar)
    # Only after a clean run: a rank that failed must not wait in teardown for peers mid-collective.
    parallel.stop()
    if atlas and parallel.main:
        trainer.write_atlas(best)
    return best


class Trainer:
    """One run: its data, model, optimiser and counters, and the loop (a step, then one plan of what follows)."""

    def __init__(self, config: Config, out: Path, resume: bool, parallel: Parallel, hardware: Hardware,
                 command: str | None = None, started: float | None = None, atlas: bool = False):
        # the clock of `elapsed`: from the command's start, so a budget counts reading and tokenising too
        self.started = time.monotonic() if started is None else started
        self.atlas = atlas  # the cell atlas follows training (`write_atlas`): a budget sets its time aside
        self.folder = RunFolder(out, resume, parallel.main)
        self.out, self.parallel, self.hardware = out, parallel, hardware
        corpus = load_corpus(config)
        self.tokenizer, self.splits = encode_splits(config, self.folder.load_tokenizer(config) if resume else None,
                                                    corpus=corpus)
        examples = example_prompts(corpus)
        del corpus
        self.config = config.resolved(self.tokenizer.vocab_size)
        if resume:
            self.folder.check_resumable(self.config)
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
            self.counters, self.hidden = self.folder.load_state(self.model, self.optimizer, parallel, hardware.device)
            self.batches = self._epoch_batches(self.counters.epoch)
        self.last_save = time.monotonic()
        self.stop = StopRequest()
        self._set_budget()
        if resume and self._limit_reached() is not None:
            raise ConfigError(f"the run in {out} already reached its limits (step {self.counters.step}, "
                              f"epoch {self.counters.epoch}); raise --epochs, --max-steps or --max-minutes "
                              f"to train further")
        self.folder.start(self.config, self.tokenizer, resume, self.counters.log_offset, examples)
        self.scores = RunScores(self.config, self.splits, self.tokenizer, parallel, self.folder, self.counters,
                                self._log)
        self._log("start", command=command or shlex.join([Path(sys.executable).name, "-m", "lmdemo", *sys.argv[1:]]),
                  hardware=describe_hardware(hardware, parallel.world), precision=hardware.precision,
                  precision_asked=config.precision, world=parallel.world, params=self.model.num_parameters(),
                  vocab_size=self.config.vocab_size, resumed=resume, step_budget=self.counters.step_budget,
                  **{f"{k}_tokens": v.ids.numel() for k, v in self.splits.items()},
                  **{f"{k}_characters": v.characters for k, v in self.splits.items()})

    def write_atlas(self, best: Path) -> None:
        """Write the best model's cell atlas (`lmdemo.atlas`) of structural properties into its folder: units
        chosen on the training split, scored on the validation split, both read from the ids in memory (a Train
        tab job's text file is gone by then). It keeps no passages of the text: a model folder gets shared (a Train
        tab job's zip), its training text may be private (its example prompts, `lmdemo.checkpoint.example_prompts`,
        are a few words from the openings of a few passages). Nothing is written when the text holds too little of
        any property."""
        trained = load_model(best)
        choose, score = (stream_texts(self.splits[name].ids.tolist(), f"{name} split of {self.config.data}",
                                      self.tokenizer) for name in ("train", "valid"))
        atlas = build_atlas(trained, choose, score, keep_examples=False)
        if atlas["properties"]:
            write_atlas(best, atlas)

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
                loss = self.scores.log_train(interval, speed.per_second(), self._epoch_progress())
                bar.set_postfix(loss=f"{loss:.3f}", ppl=f"{perplexity(loss):.1f}", tok_s=f"{speed.per_second():,.0f}",
                                refresh=False)
                speed = Speed()
            paused = time.monotonic()
            stopped = self.scores.validate(self.model, interval, self._epoch_progress(), epoch_end) \
                if plan.validate else None
            if plan.save or plan.validate:
                self._save_state(interval)
            speed.start += time.monotonic() - paused  # validating and saving are not training speed
            if plan.limit or plan.stop or stopped:
                break
        bar.close()
        return self.scores.test_best(self.model, self.hardware.device, self._ending(plan, stopped))

    def _ending(self, plan: Plan, stopped: str | None) -> dict[str, Any]:
        """Why the loop ended, for the `end` record: what validation stopped it (early stop, divergence), else the
        limit reached, else a stop request; with the limit and whether the last validation still improved (a
        longer run would likely help)."""
        config, counters = self.config, self.counters
        reason = stopped or plan.limit or "stop"
        limit = {"early_stop": config.early_stop, "budget": config.max_minutes, "steps": config.max_steps,
                 "epochs": config.epoch_limit, "diverged": self.scores.diverged_past}.get(reason)
        return {"reason": reason, "limit": limit,
                "improving": counters.evals_since_best == 0 and math.isfinite(counters.best_val)}

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
        if counters.epoch < config.epoch_limit:
            self.batches = self._epoch_batches(counters.epoch)
        return True

    def _plan(self, epoch_end: bool) -> Plan:
        """The one place that decides what happens after a step."""
        config, counters = self.config, self.counters
        limit = self._limit_reached()
        log = counters.step % config.log_every == 0 or limit is not None  # a run ending at a limit logs its last steps
        save = stop = False
        if log:  # time-based saves and stop requests: rank 0 decides for everyone
            flags = torch.tensor([time.monotonic() - self.last_save >= config.save_every, self.stop.requested],
                                 dtype=torch.int32, device=self.hardware.device)
            save, stop = (bool(flag) for flag in self.parallel.from_main(flags).tolist())
        validate = epoch_end or limit is not None or bool(
            config.eval_every and counters.step - counters.last_val_step >= config.eval_every)
        return Plan(log=log, validate=validate, save=(save or stop) and not validate, limit=limit, stop=stop)

    def _limit_reached(self) -> str | None:
        """The limit the run has reached, if any, the tightest first: "budget", "steps" or "epochs"."""
        config, counters = self.config, self.counters
        for name, limit in (("budget", counters.step_budget), ("steps", config.max_steps)):
            if limit is not None and counters.step >= limit:
                return name
        return "epochs" if counters.epoch >= config.epoch_limit else None

    def _total_steps(self) -> float:
        """The run's length in steps: the schedule's horizon and the stopping point."""
        config, counters = self.config, self.counters
        return min(config.epoch_limit * self.epoch_windows, config.max_steps or math.inf,
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

    def _epoch_progress(self) -> float:
        """Epochs done, with the share of the current one."""
        return self.counters.epoch + self.counters.window / len(self.batches)

    def _save_state(self, interval: torch.Tensor) -> None:
        """Everything needed to resume, in the run folder; the loss since the last record travels in the counters."""
        self.scores.absorb(interval)
        counters = dataclasses.replace(self.counters, elapsed=self.elapsed(), log_offset=self.folder.log_offset)
        self.folder.save_state(self.model, self.optimizer, counters, self.hidden, self.parallel, self.hardware.device)
        self.last_save = time.monotonic()

    def elapsed(self) -> float:
        return self.counters.elapsed + time.monotonic() - self.started

    def _log(self, event: str, **values) -> None:
        counters = self.counters
        self.folder.append(event, {"step": counters.step, "epoch": counters.epoch, "tokens": counters.tokens,
                                   "time": round(self.elapsed(), 3), "lr": self.optimizer.param_groups[0]["lr"],
                                   **values})


# -- the --max-minutes budget ------------------------------------------------------------------------
# The cell atlas after training is timed on this much of each part it reads (PART_TOKENS), then scaled: its time grows
# with the tokens (a 1x256 character model on a Zen 3 core: 0.55 s for 2,000 tokens a part, 0.91 s for 4,000, 4.75 s
# for 20,000), and its share of a budget differs too much between CPUs for a fixed rate against validation.
ATLAS_SAMPLE_TOKENS = 2_000


def measure_step_budget(trainer: Trainer) -> int:
    """The step at which --max-minutes runs out: time a few of the run's own steps (`Trainer._step`, with its
    clipping, learning rate and gradient exchange between processes), a slice of validation and the saving that
    follows each validation (the state, and the best model, as if every validation improved), put the run back as
    it was, then count the steps, with their share of validations, that fit the time left once what follows
    training is set aside (the validation and saving at the limit, the final test, and the atlas when one is asked
    for, `_time_atlas`). Rank 0's figure holds for all."""
    config = trainer.config
    saved = _snapshot(trainer)
    step_seconds = _time_steps(trainer)
    valid, test = trainer.splits["valid"].ids, trainer.splits["test"].ids
    sample = valid[:min(valid.numel(), config.eval_batch_size * config.eval_bptt * 2)]
    started = time.monotonic()
    evaluate(trainer.model, sample, config.eval_batch_size, config.eval_bptt, trainer.parallel)
    token_seconds = (time.monotonic() - started) / max(sample.numel(), 1)
    _restore(trainer, saved)
    validation_seconds = token_seconds * valid.numel() + _time_saving(trainer)
    evals_per_step = (1 / config.eval_every if config.eval_every else 0) + 1 / len(trainer.batches)
    atlas_seconds = _time_atlas(trainer) if trainer.atlas and trainer.parallel.main else 0.0
    after = validation_seconds + token_seconds * test.numel() + atlas_seconds  # at the limit, the test, the atlas
    left = config.max_minutes * 60 - trainer.elapsed() - after
    steps = max(1, int(left / (step_seconds + validation_seconds * evals_per_step)))
    budget = torch.tensor([trainer.counters.step + steps], device=trainer.hardware.device)
    return int(trainer.parallel.from_main(budget).item())


def _time_steps(trainer: Trainer) -> float:
    """Seconds per training step, over two seconds of steps (at most a thousand) after two that warm up kernels and
    allocations; rank 0 says when it has timed enough, so every process takes the same steps (each exchanges
    gradients)."""
    device = trainer.hardware.device
    scratch = torch.zeros(2, dtype=torch.float64, device=device)
    timed, seconds = 0, 0.0
    for index in range(2 + 1000):
        started = time.monotonic()
        trainer._step(scratch)
        scratch.tolist()  # waits for the device
        if index >= 2:
            timed, seconds = timed + 1, seconds + time.monotonic() - started
            enough = torch.tensor([timed >= 3 and seconds >= 2.0], dtype=torch.int32, device=device)
            if trainer.parallel.from_main(enough).item():
                break
    return seconds / timed


def _time_atlas(trainer: Trainer) -> float:
    """Seconds the cell atlas will take (`Trainer.write_atlas`): the same work for a random model of the run's shape
    (the weights do not change its time; the run's own model and random state stay untouched) over ATLAS_SAMPLE_TOKENS
    of each part, scaled to the tokens the atlas reads; listing the passages over the whole splits counts once."""
    started = time.monotonic()
    parts = [stream_texts(trainer.splits[name].ids.tolist(), name, trainer.tokenizer, ATLAS_SAMPLE_TOKENS)
             for name in ("train", "valid")]
    listing = time.monotonic() - started
    stand_in = TrainedModel(random_model(trainer.config), trainer.tokenizer, "", trainer.out, None)
    started = time.monotonic()
    build_atlas(stand_in, *parts, keep_examples=False)
    sizes = [trainer.splits[name].ids.numel() for name in ("train", "valid")]
    scale = sum(min(size, PART_TOKENS) for size in sizes) / sum(min(size, ATLAS_SAMPLE_TOKENS) for size in sizes)
    return listing + (time.monotonic() - started) * scale


def _time_saving(trainer: Trainer) -> float:
    """Seconds to save what a validation saves, the resumable state and the best model, written with the run's own
    code to a scratch folder beside the run (the same disk), then deleted."""
    parent = trainer.out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".lmdemo-timing-", dir=parent) as scratch:
        folder = RunFolder(Path(scratch), resume=False, main=trainer.parallel.main)
        started = time.monotonic()
        folder.save_state(trainer.model, trainer.optimizer, trainer.counters, trainer.hidden, trainer.parallel,
                          trainer.hardware.device)
        folder.save_best(trainer.model, trainer.tokenizer)
        return time.monotonic() - started


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


def _optimizer(model: torch.nn.Module, config: Config) -> torch.optim.Optimizer:
    """The optimiser, fused: one kernel per step on every device we train on, where torch's default on a CPU is
    a handful of passes over each parameter (AdamW on a 2x650 tied model: 10 ms against 67 ms a step). A run
    saved unfused resumes unfused: its state's settings are restored with it."""
    optimizer = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[config.optimizer]
    return optimizer(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
