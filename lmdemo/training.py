"""Training: truncated BPTT over continuous streams, logged, checkpointed and resumable.

A run is a folder:
    config.json       the resolved Config (vocab_size filled in)
    tokenizer.json    built from the training split
    metrics.jsonl     the log (see lmdemo.metrics)
    state.safetensors everything needed to resume: weights, optimiser, RNGs, LSTM state, counters
    model/            the best model so far by validation loss, as a model folder

Each file is replaced atomically, and the state records how many log records it had seen, so a
run killed at any moment (kill -9 included) resumes from its last state with a log that has no
duplicated or missing entries. Time-based decisions (save, time limit) are taken at log intervals
on rank 0 and broadcast, so every process of a data-parallel run takes the same branch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import random
import shlex
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from lmdemo.batches import StreamBatches
from lmdemo.checkpoint import MODEL_DIR, read_weights, save_model
from lmdemo.config import Config, ConfigError
from lmdemo.corpus import load_corpus
from lmdemo.evaluation import evaluate
from lmdemo.files import write_atomic
from lmdemo.metrics import CONFIG_FILE, METRICS_FILE, MetricsWriter, loss_record
from lmdemo.model import LSTMLanguageModel
from lmdemo.parallel import Parallel
from lmdemo.tokenizer import TOKENIZER_FILE, Tokenizer

STATE_FILE = "state.safetensors"


@dataclass
class Counters:
    """The scalar part of a resumable state."""

    epoch: int = 0
    window: int = 0  # next window of the epoch
    step: int = 0
    tokens: int = 0
    elapsed: float = 0.0  # training wall time before this process started
    best_val: float = math.inf
    evals_since_best: int = 0
    lr_scale: float = 1.0  # plateau reductions so far
    evals_since_drop: int = 0
    records: int = 0  # log records the state has seen
    since_val_loss: float = 0.0  # summed over processes, since the last validation
    since_val_tokens: int = 0
    last_val_step: int = -1


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


def describe_hardware(device: torch.device, threads: int, world: int) -> str:
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
    return f"{world} process(es) × {threads} thread(s) on {name} ({os.cpu_count()} CPUs), torch {torch.__version__}"


def encode_splits(config: Config, tokenizer: Tokenizer | None) -> tuple[Tokenizer, dict[str, torch.Tensor]]:
    """Load the corpus, build the tokenizer if none is given, and encode every split to one id stream."""
    corpus = load_corpus(config)
    if tokenizer is None:
        tokenizer = Tokenizer.build(corpus.train, config.level, config.min_freq, config.max_vocab, config.lowercase)
    splits = {}
    for name in ("train", "valid", "test"):
        limits = [config.max_tokens] + ([config.eval_tokens] if name == "valid" else [])
        cap = min((n for n in limits if n is not None), default=None)
        splits[name] = tokenizer.encode_documents(corpus.split(name))[:cap]
    return tokenizer, splits


def train(config: Config, out: str | Path, resume: bool = False, progress_bar: bool = True,
          command: str | None = None) -> Path:
    """Train (or resume) the run in `out`; returns the folder of the best model."""
    out = Path(out)
    parallel = Parallel()
    device = resolve_device(config, parallel)
    parallel.start(device)
    best = _Run(config, out, resume, progress_bar, command, parallel, device).run()
    # Only after a clean run: a rank that failed must not wait in teardown for peers mid-collective.
    parallel.stop()
    return best


class _Run:
    def __init__(self, config: Config, out: Path, resume: bool, progress_bar: bool, command: str | None,
                 parallel: Parallel, device: torch.device):
        state_path = out / STATE_FILE
        if resume and not state_path.exists():
            raise ConfigError(f"nothing to resume in {out}: it has no {STATE_FILE}")
        if not resume and state_path.exists():
            raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        self.out, self.parallel, self.device, self.progress_bar = out, parallel, device, progress_bar
        self.threads = config.threads or max(1, len(os.sched_getaffinity(0)) // parallel.local_world)
        torch.set_num_threads(self.threads)
        self.precision = "bf16" if config.precision != "fp32" and native_bf16(device) else "fp32"
        if config.precision == "bf16" and self.precision == "fp32" and parallel.main:
            print("lmdemo: warning: --precision bf16 needs native bf16 (AVX512-BF16 or AMX on a CPU); this "
                  "device has none (its bf16 LSTM kernels fail or run far slower), so training runs in fp32",
                  file=sys.stderr)

        tokenizer = Tokenizer.load(out / TOKENIZER_FILE) if resume else None
        self.tokenizer, self.splits = encode_splits(config, tokenizer)
        self.config = config.replace(vocab_size=self.tokenizer.vocab_size)
        self.batches = self._epoch_batches(0)
        if self.splits["valid"].numel() < 2:
            raise ConfigError("the validation split has fewer than 2 tokens")

        torch.manual_seed(self.config.seed)
        self.model = LSTMLanguageModel(self.config).to(device)
        torch.manual_seed(self.config.seed + parallel.rank)  # different dropout masks per process
        self.optimizer = _optimizer(self.model, self.config)
        self.counters = Counters()
        self.hidden: tuple[torch.Tensor, torch.Tensor] | None = None
        if resume:
            self._load_state(state_path)
            if self._limits_reached():
                raise ConfigError(f"the run in {out} already reached its limits (step {self.counters.step}, "
                                  f"epoch {self.counters.epoch}); raise --epochs, --max-steps or --max-minutes "
                                  f"to train further")
        elif parallel.main:
            out.mkdir(parents=True, exist_ok=True)
            self.config.save(out / CONFIG_FILE)
            self.tokenizer.save(out / TOKENIZER_FILE)
        self.log = MetricsWriter(out / METRICS_FILE, keep=self.counters.records) if parallel.main else None
        self.network = DistributedDataParallel(self.model) if parallel.enabled else self.model
        self.started = time.monotonic()
        self.last_save = self.started
        self._log("start", command=command or shlex.join([Path(sys.executable).name, "-m", "lmdemo", *sys.argv[1:]]),
                  hardware=describe_hardware(device, self.threads, parallel.world), precision=self.precision,
                  precision_asked=config.precision,
                  world=parallel.world, params=self.model.num_parameters(), vocab_size=self.config.vocab_size,
                  resumed=resume, **{f"{k}_tokens": v.numel() for k, v in self.splits.items()})

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> Path:
        config, counters = self.config, self.counters
        windows = len(self.batches)
        total_steps = min(config.epochs * windows, config.max_steps or math.inf)
        bar = tqdm(total=int(total_steps), initial=counters.step, unit="step", dynamic_ncols=True,
                   disable=not (self.progress_bar and self.parallel.main), desc=self.out.name)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.precision == "bf16" else nullcontext()
        interval = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, tokens
        interval_start = time.monotonic()
        stop = False
        self.model.train()
        while counters.epoch < config.epochs and not stop:
            self.batches = self._epoch_batches(counters.epoch)
            for window in range(counters.window, len(self.batches)):
                if config.max_steps and counters.step >= config.max_steps:
                    stop = True
                    break
                inputs, targets = (t.to(self.device) for t in self.batches.window(window))
                self._set_lr(total_steps)
                with autocast:
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
                counters.window = window + 1
                counters.tokens += targets.numel() * self.parallel.world
                bar.update(1)

                if counters.step % config.log_every == 0:
                    seconds = time.monotonic() - interval_start
                    loss_sum, tokens = self._absorb(interval)
                    self._log("train", **loss_record("train", loss_sum / tokens, config.level),
                              tokens_per_sec=tokens / max(seconds, 1e-9), epoch=counters.epoch + (window + 1) / len(self.batches))
                    bar.set_postfix(loss=f"{loss_sum / tokens:.3f}", ppl=f"{math.exp(min(loss_sum / tokens, 50)):.1f}",
                                    tok_s=f"{tokens / max(seconds, 1e-9):,.0f}", refresh=False)
                    interval_start = time.monotonic()
                    save_now, out_of_time = self._decide()
                    stop = out_of_time
                    if save_now and not stop:
                        self._save_state()
                if config.eval_every and counters.step - max(counters.last_val_step, 0) >= config.eval_every \
                        and not stop:
                    stop = self._validate(interval, epoch_end=False)
                    interval_start = time.monotonic()
                if stop:
                    break
            else:
                counters.epoch += 1
                counters.window = 0
                self.hidden = None  # the streams restart at the next epoch
                stop = self._validate(interval, epoch_end=True) or stop
                interval_start = time.monotonic()
        bar.close()
        if counters.last_val_step != counters.step:
            self._validate(interval, epoch_end=False)
        return self._finish()

    def _epoch_batches(self, epoch: int) -> StreamBatches:
        """The epoch's windows; with shift_windows, epochs after the first start at a seeded random offset
        (the same on every process and after a resume)."""
        config = self.config
        offset = random.Random(f"{config.seed}:{epoch}").randrange(config.bptt) if config.shift_windows and epoch else 0
        return StreamBatches(self.splits["train"], config.batch_size, config.bptt, self.parallel.rank,
                             self.parallel.world, offset)

    def _limits_reached(self) -> bool:
        config, counters = self.config, self.counters
        return (counters.epoch >= config.epochs or bool(config.max_steps and counters.step >= config.max_steps)
                or bool(config.max_minutes and counters.elapsed >= config.max_minutes * 60))

    def _set_lr(self, total_steps: float) -> None:
        config, counters = self.config, self.counters
        factor = min(1.0, (counters.step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
        if config.schedule == "cosine":
            done = counters.step / total_steps
            if config.max_minutes:
                done = max(done, self._elapsed() / (config.max_minutes * 60))
            factor *= 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, done)))  # to a tenth of the peak
        elif config.schedule == "plateau":
            factor *= counters.lr_scale
        for group in self.optimizer.param_groups:
            group["lr"] = config.lr * factor

    def _absorb(self, interval: torch.Tensor) -> tuple[float, int]:
        """Sum the interval over processes, add it to the since-validation totals, and reset it."""
        loss_sum, tokens = self.parallel.sum(interval.clone()).tolist()
        interval.zero_()
        self.counters.since_val_loss += loss_sum
        self.counters.since_val_tokens += int(tokens)
        return loss_sum, max(int(tokens), 1)

    def _decide(self) -> tuple[bool, bool]:
        now = time.monotonic()
        flags = torch.tensor([now - self.last_save >= self.config.save_every,
                              bool(self.config.max_minutes) and self._elapsed() >= self.config.max_minutes * 60],
                             dtype=torch.int32, device=self.device)
        save_now, out_of_time = self.parallel.from_main(flags).tolist()
        return bool(save_now), bool(out_of_time)

    def _validate(self, interval: torch.Tensor, epoch_end: bool) -> bool:
        """Score the validation split, keep the best model, adjust the rate; True to stop early."""
        config, counters = self.config, self.counters
        self._absorb(interval)
        score = evaluate(self.model, self.splits["valid"], config.eval_batch_size, config.eval_bptt, self.parallel)
        train_part = (loss_record("train", counters.since_val_loss / counters.since_val_tokens, config.level)
                      if counters.since_val_tokens else {})
        counters.since_val_loss, counters.since_val_tokens = 0.0, 0
        counters.last_val_step = counters.step
        improved = score.loss < counters.best_val - 1e-4 * abs(counters.best_val) if math.isfinite(counters.best_val) \
            else math.isfinite(score.loss)
        if improved:
            counters.best_val = score.loss
            counters.evals_since_best = counters.evals_since_drop = 0
        else:
            counters.evals_since_best += 1
            counters.evals_since_drop += 1
            if config.schedule == "plateau" and counters.evals_since_drop > config.lr_patience:
                counters.lr_scale *= config.lr_factor
                counters.evals_since_drop = 0
        self._log("val", **train_part, **loss_record("val", score.loss, config.level),
                  epoch=counters.epoch if epoch_end else counters.epoch + counters.window / len(self.batches),
                  epoch_end=epoch_end, best=improved)
        if improved and self.parallel.main:
            save_model(self.out / MODEL_DIR, self.model, self.tokenizer, self.out / METRICS_FILE, self.out.name)
        self._save_state()
        return bool(config.early_stop and counters.evals_since_best >= config.early_stop)

    def _finish(self) -> Path:
        """Score the best model on the test split and write the final model folder."""
        self.parallel.barrier()
        best = self.out / MODEL_DIR
        if (best / "model.safetensors").exists():
            self.model.load_state_dict(read_weights(best).state_dict())
        if self.splits["test"].numel() >= 2:
            score = evaluate(self.model, self.splits["test"], self.config.eval_batch_size, self.config.eval_bptt,
                             self.parallel)
            unk_rate = (self.splits["test"] == self.tokenizer.unk_id).double().mean().item()
            self._log("test", **loss_record("test", score.loss, self.config.level), test_tokens=score.tokens,
                      test_unk_rate=unk_rate)
        if self.parallel.main:
            save_model(best, self.model, self.tokenizer, self.out / METRICS_FILE, self.out.name)
        self._save_state()
        return best

    # -- logging and state --------------------------------------------------------------------
    def _elapsed(self) -> float:
        return self.counters.elapsed + time.monotonic() - self.started

    def _log(self, event: str, **values) -> None:
        counters = self.counters
        values = {"step": counters.step, "epoch": counters.epoch, "tokens": counters.tokens,
                  "time": round(self._elapsed(), 3), "lr": self.optimizer.param_groups[0]["lr"], **values}
        if self.log is not None:
            self.log.append(event, **values)
        counters.records += 1

    def _save_state(self) -> None:
        """Everything needed to resume, in one file written atomically by rank 0."""
        parallel = self.parallel
        hidden = self.hidden
        tensors = {f"model.{name}": p.detach().cpu().contiguous() for name, p in self.model.named_parameters()}
        tensors["rng"] = parallel.gather(torch.get_rng_state().unsqueeze(0).to(self.device)).cpu()
        if hidden is not None:
            tensors["hidden.h"] = parallel.gather(hidden[0], dim=1).cpu()
            tensors["hidden.c"] = parallel.gather(hidden[1], dim=1).cpu()
        optimizer = self.optimizer.state_dict()
        for index, values in optimizer["state"].items():
            for key, value in values.items():
                tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
        counters = dataclasses.replace(self.counters, elapsed=self._elapsed())
        metadata = {"counters": json.dumps(dataclasses.asdict(counters)),
                    "param_groups": json.dumps(optimizer["param_groups"])}
        if parallel.main:
            write_atomic(self.out / STATE_FILE, save_tensors(tensors, metadata))
        self.last_save = time.monotonic()

    def _load_state(self, path: Path) -> None:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            metadata = f.metadata()
        tensors = load_tensors(path.read_bytes())
        with torch.no_grad():
            for name, parameter in self.model.named_parameters():
                parameter.copy_(tensors[f"model.{name}"])
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
        self.counters = Counters(**json.loads(metadata["counters"]))
        rng = tensors["rng"]
        if rng.size(0) == self.parallel.world:
            torch.set_rng_state(rng[self.parallel.rank].clone())
        if "hidden.h" in tensors:
            self.hidden = (self.parallel.mine(tensors["hidden.h"], 1).to(self.device),
                           self.parallel.mine(tensors["hidden.c"], 1).to(self.device))


def _optimizer(model: torch.nn.Module, config: Config) -> torch.optim.Optimizer:
    params = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
