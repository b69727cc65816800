"""Our trainer against the textbook training loop, like with like: same data, start, order and settings.

    python bench/train_speed.py                         # both cases, 240 s of training per loop
    python bench/train_speed.py --case word --seconds 120
    python bench/train_speed.py --seconds 10 --interval 2 --select-tokens 2000 --score-tokens 5000 \\
        --sync-seconds 5                                # a smoke run: checks the script, measures nothing

The textbook loop is the one in pytorch/examples' word_language_model: fp32, `nn.LSTM`, full softmax,
`loss.item()` after every step, validation at every epoch end keeping the best model. Ours is
`lmdemo.training.train` with its defaults (bf16 autocast where the CPU has native bf16, else fp32; no
host syncs between log intervals; the adaptive softmax for the 10k-word vocabulary), and for the
word case also with `--softmax full` to show what bf16 alone is worth.

What every loop shares, so that only the loop differs:

- the token ids, vocabulary, model shape, batch, bptt, optimiser, constant learning rate, dropout,
  clipping, thread count (`--threads`, default: the cores this process may use; torch's threads for
  the textbook loop, lmdemo's `threads` for ours) and the CPU (lmdemo's `device` is pinned to cpu);
- the initial weights: the textbook model copies those of `LSTMLanguageModel(config)` built after
  `torch.manual_seed(config.seed)`, and a one-step probe of lmdemo's trainer (SGD at lr 1e-30, which
  moves no weight measurably) asserts that its trainer starts from exactly these weights. With the
  adaptive softmax the extra cluster layer draws from the random stream first, so `--softmax full`
  starts from the same rule but a different draw; the table says which rows share the exact start;
- the data order: windows in order from the start of the text every epoch (lmdemo's `shift_windows`
  is off here; the textbook loop has none), the LSTM state carried across windows and reset at each
  epoch, and the same dropout seed (tests/test_bench.py checks that, in fp32 with the full softmax, lmdemo's
  trainer and this textbook loop keep the same weights);
- model selection and scoring: both loops score their model on the selection text at every epoch end
  and when the budget runs out, and keep the best (lmdemo's rule: better by more than 1e-4 of the
  loss); then `lmdemo.evaluation.evaluate` scores each kept model on the scoring text, which no loop
  trained on or selected with. Selection and scoring both sit in the held-out split: its first
  `--select-tokens` select, the rest (capped by `--score-tokens`) scores;
- the budget, `--seconds` of training, validations included: the textbook loop checks its clock every
  `--interval` steps, lmdemo gets it as `max_minutes` and stops the way its trainer does; each loop's
  actual training time is printed ("time s") so that a mismatch shows.

For each loop it prints tokens/s (the median over the timed intervals after the first; validation time
is left out), the GFLOP/s that implies and their share of this CPU's fp32 or bf16 peak (see
`cpu_peaks`; the textbook loop is counted with its full softmax), the training time, the steps done, the
step whose model was kept ("kept"), and the perplexity of that model on the scoring text (and bits per
character). It also measures what the textbook's per-step `loss.item()` costs: the time spent inside
those calls during its run, and `--sync-seconds` of textbook steps alternating with and without it
(without: the loss is summed on the device, as lmdemo does).

Cases: "word" = 2x650 tied LSTM, 10k words, batch 64 x bptt 35, Adam 1e-3, clip 0.25, trained on
WikiText-2 `valid.txt`; `test.txt`'s first 20,000 tokens select, its other ~226k tokens score.
"char" = a 2x512 character model (embedding 128, untied) on Tiny Shakespeare, batch 64 x bptt 128,
Adam 2e-3, clip 1, trained on the first 90 % (the standard split); the last 10 % is held out, its first
half selects, its second half scores.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmdemo.batches import StreamBatches  # noqa: E402
from lmdemo.checkpoint import load_model, read_weights  # noqa: E402
from lmdemo.config import Config, adaptive_cutoffs  # noqa: E402
from lmdemo.evaluation import evaluate  # noqa: E402
from lmdemo.metrics import improves, read_metrics  # noqa: E402
from lmdemo.model import LSTMLanguageModel  # noqa: E402
from lmdemo.training import encode_splits, train  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
# Every case: lmdemo's windows do not shift (the textbook's do not), it trains on the CPU, and its own
# test split is empty (the bench scores every loop itself). `select` = held-out tokens that select the
# model (None: half of the held-out split).
COMMON = dict(shift_windows=False, device="cpu", schedule="constant", warmup_steps=0, weight_decay=0.0)
CASES = {
    "word": dict(level="word", data=str(DATA / "wikitext-2"), train_split="valid", valid_split="test",
                 test_split="none", max_vocab=10_000, emb_size=650, hidden_size=650, num_layers=2, dropout=0.5,
                 tie_weights=True, batch_size=64, bptt=35, optimizer="adam", lr=1e-3, clip=0.25, **COMMON),
    "char": dict(level="char", data=str(DATA / "tinyshakespeare" / "input.txt"), valid_fraction=0.1,
                 test_fraction=0.0, lowercase=False, emb_size=128, hidden_size=512, num_layers=2, dropout=0.25,
                 tie_weights=False, batch_size=64, bptt=128, optimizer="adam", lr=2e-3, clip=1.0, **COMMON),
}
SELECT_TOKENS = {"word": 20_000, "char": None}
HELD_OUT = {"word": "WikiText-2 test.txt", "char": "the last 10 % of input.txt"}
PROBE_LR = 1e-30  # one SGD step at this rate moves a weight by 1e-30 x its gradient: nothing, in fp32
PROBE_TOLERANCE = 1e-20


class TextbookLSTM(nn.Module):
    """word_language_model's RNNModel, LSTM only: embedding, nn.LSTM, dropout, (tied) decoder. Its weights
    are copied from lmdemo's initial model (`textbook_from`), so its own initialisation does not matter."""

    def __init__(self, vocab: int, emb: int, hidden: int, layers: int, dropout: float, tied: bool):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab, emb)
        self.rnn = nn.LSTM(emb, hidden, layers, dropout=dropout if layers > 1 else 0.0, batch_first=True)
        self.decoder = nn.Linear(hidden, vocab)
        if tied:
            self.decoder.weight = self.encoder.weight

    def forward(self, ids, hidden=None, targets=None):
        output, hidden = self.rnn(self.drop(self.encoder(ids)), hidden)
        logits = self.decoder(self.drop(output))
        if targets is None:
            return logits, hidden
        # lmdemo's model contract, so `evaluate` scores every loop with the same code
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1)), hidden


def initial_model(config: Config) -> LSTMLanguageModel:
    """The model lmdemo's trainer starts from: built right after seeding with `config.seed`."""
    torch.manual_seed(config.seed)
    return LSTMLanguageModel(config)


def textbook_from(init: LSTMLanguageModel) -> TextbookLSTM:
    """A textbook model holding exactly `init`'s weights (asserted), for every weight it has."""
    config = init.config
    assert init.projection is None, "the textbook model has no tied projection: use emb_size == hidden_size"
    model = TextbookLSTM(config.vocab_size, config.emb_size, config.hidden_size, config.num_layers,
                         config.dropout, config.tie_weights)
    names = {"encoder.weight": "embedding.weight", "decoder.weight": "decoder.weight",
             "decoder.bias": "decoder.bias", **{f"rnn.{n}": f"lstm.{n}" for n, _ in model.rnn.named_parameters()}}
    source = init.state_dict()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(source[names[name]])
    copied = model.state_dict()
    assert copied.keys() == names.keys(), sorted(set(copied) ^ set(names))
    assert all(torch.equal(copied[name], source[theirs]) for name, theirs in names.items()), \
        "the textbook model does not start from lmdemo's initial weights"
    return model


def trainer_start_difference(config: Config, folder: Path, expected: LSTMLanguageModel) -> float:
    """Largest |difference| between `expected`'s weights and those lmdemo's trainer starts from for `config`,
    read back after one SGD step at lr 1e-30, over the weights both have (all that the textbook model has)."""
    probe = config.replace(optimizer="sgd", lr=PROBE_LR, max_steps=1, max_minutes=None, clip=0.0, epochs=1,
                           eval_every=None, eval_tokens=min(config.eval_tokens or 1_000, 1_000))
    started = read_weights(train(probe, folder, progress_bar=False, command="bench: start probe")).state_dict()
    wanted = expected.state_dict()
    shared = ["embedding.weight", "decoder.weight", "decoder.bias", *(k for k in wanted if k.startswith("lstm."))]
    shared += [k for k in wanted.keys() & started.keys() if k not in shared]
    return max((started[k].double() - wanted[k].double()).abs().max().item() for k in shared)


@dataclass
class LoopResult:
    model: nn.Module  # the kept (best-by-selection) model
    speed: float  # median tokens/s over the timed intervals after the first
    steps: int
    picked: int  # the step whose model was kept
    seconds: float  # the training wall time, validations included
    item_seconds: float = math.nan  # time spent inside loss.item() (textbook only)
    precision: str = "fp32"
    data: dict | None = None  # lmdemo: the training and validation tokens and the vocabulary it saw


def textbook_step(model: TextbookLSTM, optimizer: torch.optim.Optimizer, config: Config, inputs: torch.Tensor,
                  targets: torch.Tensor, hidden: tuple | None) -> tuple[torch.Tensor, tuple]:
    """One step of pytorch/examples' loop: detach the carried state, forward, full softmax, clip, update."""
    hidden = None if hidden is None else tuple(h.detach() for h in hidden)
    optimizer.zero_grad()
    output, hidden = model(inputs, hidden)
    loss = F.cross_entropy(output.reshape(-1, config.vocab_size), targets.reshape(-1))
    loss.backward()
    if config.clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
    optimizer.step()
    return loss, hidden


def textbook_train(config: Config, init: LSTMLanguageModel, ids: torch.Tensor, select: torch.Tensor,
                   seconds: float, interval: int, max_steps: int | None = None) -> LoopResult:
    """Train the textbook way from `init`'s weights for `seconds` (or `max_steps`): `loss.item()` every step,
    validation on `select` at every epoch end and at the end, the best model kept in memory."""
    model = textbook_from(init)
    torch.manual_seed(config.seed)  # lmdemo seeds its dropout the same way after building its model
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    batches = StreamBatches(ids, config.batch_size, config.bptt)
    model.train()
    best_loss, best_state, picked, last_val_step = math.inf, None, 0, -1
    hidden, total_loss, step, item_seconds, stop = None, 0.0, 0, 0.0, False
    speeds: list[float] = []
    started = interval_start = time.perf_counter()
    interval_tokens = 0

    def validate() -> None:
        nonlocal best_loss, best_state, picked, last_val_step
        loss = evaluate(model, select, config.eval_batch_size, config.eval_bptt).loss
        last_val_step = step
        if improves(loss, best_loss):
            best_loss, picked = loss, step
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    while not stop:
        for window in range(len(batches)):
            if max_steps and step >= max_steps:
                stop = True
                break
            inputs, targets = batches.window(window)
            loss, hidden = textbook_step(model, optimizer, config, inputs, targets, hidden)
            before = time.perf_counter()
            total_loss += loss.item()  # the textbook's host sync, every step
            item_seconds += time.perf_counter() - before
            step += 1
            interval_tokens += targets.numel()
            if step % interval == 0:
                now = time.perf_counter()
                speeds.append(interval_tokens / (now - interval_start))
                interval_start, interval_tokens = now, 0
                stop = now - started >= seconds
            if stop:
                break
        else:  # epoch end: restart the streams and validate; validating is not training speed
            hidden = None
            paused = time.perf_counter()
            validate()
            interval_start += time.perf_counter() - paused
    if last_val_step != step:
        validate()
    elapsed = time.perf_counter() - started
    model.load_state_dict(best_state)
    return LoopResult(model, statistics.median(speeds[1:]) if len(speeds) > 1 else math.nan, step, picked,
                      elapsed, item_seconds)


def sync_cost(config: Config, init: LSTMLanguageModel, ids: torch.Tensor, seconds: float) -> tuple[float, float, int]:
    """Median seconds per textbook step with `loss.item()` and without it (the loss summed on the device, as
    lmdemo does), from steps alternating between the two for `seconds` (the first two of each dropped);
    and the number of steps per kind."""
    model = textbook_from(init)
    torch.manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    batches = StreamBatches(ids, config.batch_size, config.bptt)
    model.train()
    times: dict[bool, list[float]] = {True: [], False: []}
    on_device, on_host, step, hidden = torch.zeros((), dtype=torch.float64), 0.0, 0, None
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for window in range(len(batches)):
            sync = step % 2 == 0
            before = time.perf_counter()
            inputs, targets = batches.window(window)
            loss, hidden = textbook_step(model, optimizer, config, inputs, targets, hidden)
            if sync:
                on_host += loss.item()
            else:
                on_device += loss.detach().double() * targets.numel()
            times[sync].append(time.perf_counter() - before)
            step += 1
            if time.perf_counter() - started >= seconds:
                break
        hidden = None
    kept = {kind: values[2:] or values for kind, values in times.items()}
    if not kept[True] or not kept[False]:
        return math.nan, math.nan, 0
    return statistics.median(kept[True]), statistics.median(kept[False]), min(map(len, kept.values()))


def lmdemo_train(config: Config, out: Path, seconds: float, interval: int) -> LoopResult:
    """Train with lmdemo for `seconds`; its validation (at every epoch end and at the end) keeps the best
    model. The median tokens/s is over its log intervals after the first."""
    config = config.replace(max_minutes=seconds / 60, epochs=10_000, eval_every=None, log_every=interval,
                            save_every=1e9)
    best = train(config, out, progress_bar=False, command="bench")
    metrics = read_metrics(out / "metrics.jsonl")
    speeds = [record["tokens_per_sec"] for record in metrics.events("train")[1:]]
    kept = [record for record in metrics.events("val") if record.get("best")]
    start, last = metrics.last("start"), metrics.trained()
    data = {"train": start.get("train_tokens"), "valid": start.get("valid_tokens"), "vocab": start["vocab_size"]}
    return LoopResult(load_model(best).model, statistics.median(speeds) if speeds else math.nan, last["step"],
                      kept[-1]["step"] if kept else 0, last["time"], precision=start["precision"], data=data)


def flops_per_token(config: Config, ids: torch.Tensor) -> float:
    """Multiply-adds x 2 of one training token (forward + backward = 3 x forward) in the LSTM layers and
    the output layer; the embedding lookup, element-wise gate maths and the optimiser are left out. The
    adaptive softmax scores its head for every token and a cluster only for the targets in it (`ids`
    gives the shares)."""
    lstm = sum(4 * config.hidden_size * ((config.emb_size if layer == 0 else config.hidden_size)
                                        + config.hidden_size) for layer in range(config.num_layers))
    decoder_in = config.emb_size if config.tie_weights else config.hidden_size
    projection = config.hidden_size * config.emb_size if config.tie_weights and decoder_in != config.hidden_size else 0
    scored = float(config.vocab_size)
    if config.adaptive_softmax:
        cuts = adaptive_cutoffs(config.vocab_size)
        scored = cuts[0] + len(cuts) - 1 + sum(((ids >= low) & (ids < high)).float().mean().item() * (high - low)
                                               for low, high in zip(cuts, cuts[1:]))
    return 3 * 2 * (lstm + projection + decoder_in * scored)


def cpu_peaks(threads: int, lscpu: str | None = None) -> tuple[float, float, str]:
    """Theoretical fp32 and bf16 GFLOP/s of `threads` cores, from lscpu's flags and clock (`lscpu`: its
    output, read when not given).

    fp32: 2 FMA units x vector lanes (16 with AVX-512, 8 with AVX2) x 2 flops per cycle and core;
    AMD Zen 4 (family 25) runs AVX-512 on 256-bit units, so 8 lanes there.
    bf16: AMX tiles do 1,024 bf16 flops per cycle and core; without AMX, AVX512-BF16's dot product
    doubles the AVX-512 fp32 rate; without either there is no native bf16 (0).
    """
    if lscpu is None:
        try:
            lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        except OSError:
            lscpu = ""
    flags = set(re.search(r"Flags:\s*(.*)", lscpu).group(1).split()) if "Flags:" in lscpu else set()
    mhz = re.search(r"CPU max MHz:\s*([\d.]+)", lscpu) or re.search(r"@\s*([\d.]+)GHz", lscpu)
    if mhz is not None:
        ghz = float(mhz.group(1)) / (1 if "GHz" in mhz.group(0) else 1000)
    else:
        try:
            found = re.search(r"cpu MHz\s*:\s*([\d.]+)", Path("/proc/cpuinfo").read_text())
        except OSError:
            found = None
        ghz = float(found.group(1)) / 1000 if found else math.nan
    zen4 = "AuthenticAMD" in lscpu and re.search(r"CPU family:\s*25\b", lscpu) is not None
    lanes = 16 if "avx512f" in flags and not zen4 else 8 if "avx2" in flags else 4
    fp32 = threads * ghz * 2 * lanes * 2
    bf16 = threads * ghz * 1024 if "amx_bf16" in flags else 2 * fp32 if "avx512_bf16" in flags else 0.0
    how = (f"{threads} cores x {ghz:.2f} GHz; fp32 2 FMA x {lanes} lanes x 2; "
           f"bf16 {'AMX 1,024 flops/cycle' if 'amx_bf16' in flags else 'AVX512-BF16 2x fp32' if bf16 else 'none'}")
    return fp32, bf16, how


def share(achieved: float, peak: float) -> str:
    """`achieved` as a percentage of `peak`, or n/a where there is no peak (no native bf16, unknown clock)."""
    return f"{100 * achieved / peak:.1f}%" if peak > 0 and math.isfinite(peak) else "n/a"


def run_case(name: str, seconds: float, interval: int, threads: int, select_tokens: int | None,
             score_tokens: int | None, sync_seconds: float) -> None:
    case_started = time.perf_counter()
    torch.set_num_threads(threads)
    config = Config(**CASES[name], threads=threads)
    tokenizer, encoded = encode_splits(config, None)
    splits = {split: encoded[split].ids for split in encoded}
    config = config.replace(vocab_size=tokenizer.vocab_size)
    held_out = splits["valid"]
    select_tokens = select_tokens or SELECT_TOKENS[name] or held_out.numel() // 2
    select, score = held_out[:select_tokens], held_out[select_tokens:][:score_tokens]
    if select.numel() < 2 or score.numel() < 2:
        raise SystemExit(f"{name}: the held-out split has {held_out.numel():,} tokens; --select-tokens "
                         f"{select_tokens:,} leaves too few to select or to score with")
    config = config.replace(eval_tokens=select_tokens)  # lmdemo's validation = `select`, exactly
    fp32_peak, bf16_peak, how = cpu_peaks(threads)
    char = config.level == "char"
    print(f"\n== {name}: {config.num_layers}x{config.hidden_size} (emb {config.emb_size}, "
          f"{'tied' if config.tie_weights else 'untied'}), vocab {config.vocab_size:,}, batch {config.batch_size} x "
          f"bptt {config.bptt}, {config.optimizer} {config.lr:g}, clip {config.clip:g}, {threads} thread(s), "
          f"{seconds:g} s per loop\n   train {splits['train'].numel():,} tokens; held out ({HELD_OUT[name]}): the "
          f"first {select.numel():,} select each loop's model (the best at epoch ends and at the end), the next "
          f"{score.numel():,} score it; windows not shifted\n   peaks {fp32_peak:,.0f} GFLOP/s fp32, "
          f"{bf16_peak:,.0f} bf16 ({how})", flush=True)

    variants = {"defaults": config}
    if config.adaptive_softmax:
        variants["--softmax full"] = config.replace(softmax="full")
    init = initial_model(config)
    textbook_from(init)  # asserts the copy
    starts = {}
    with tempfile.TemporaryDirectory() as folder:
        for label, variant in variants.items():
            starts[label] = trainer_start_difference(variant, Path(folder) / f"probe {label}", init)
    assert starts["defaults"] <= PROBE_TOLERANCE, (
        f"lmdemo's trainer does not start from the weights the textbook loop copies (max |diff| "
        f"{starts['defaults']:.3g})")
    for label, difference in starts.items():
        same = difference <= PROBE_TOLERANCE
        print(f"   start: lmdemo {label} {'= the textbook start exactly' if same else '= same rule, different draw'}"
              f" (max |diff| {difference:.2g}; one SGD step at lr {PROBE_LR:g} read back)", flush=True)

    cols = (f"{'loop':<32}{'tok/s':>9}{'speed-up':>10}{'GFLOP/s':>9}{'% peak':>8}{'time s':>8}{'steps':>7}"
            f"{'kept':>7}{'ppl':>9}")
    print(cols + (f"{'bpc':>7}" if char else ""), flush=True)
    baseline = math.nan

    def report(label: str, variant: Config, result: LoopResult) -> None:
        if result.data is not None:  # lmdemo read the same text and built the same vocabulary
            same = {"train": splits["train"].numel(), "valid": select.numel(), "vocab": config.vocab_size}
            assert result.data == same, f"lmdemo saw {result.data}, the textbook loop {same}"
        scored = evaluate(result.model, score, config.eval_batch_size, config.eval_bptt)
        achieved = result.speed * flops_per_token(variant, splits["train"]) / 1e9
        peak = bf16_peak if result.precision == "bf16" else fp32_peak
        print(f"{label:<32}{result.speed:>9,.0f}{result.speed / baseline:>9.2f}x{achieved:>9,.1f}"
              f"{share(achieved, peak):>8}{result.seconds:>8,.0f}{result.steps:>7,}{result.picked:>7,}"
              f"{scored.ppl:>9.2f}" + (f"{scored.bits:>7.3f}" if char else ""), flush=True)

    textbook = textbook_train(config, init, splits["train"], select, seconds, interval)
    baseline = textbook.speed
    report("textbook (fp32, full)", config.replace(softmax="full"), textbook)
    del textbook.model
    with tempfile.TemporaryDirectory() as folder:
        for label, variant in variants.items():
            result = lmdemo_train(variant, Path(folder) / label, seconds, interval)
            report(f"lmdemo {label} ({result.precision})", variant, result)
    step_seconds = textbook.seconds / max(textbook.steps, 1)
    print(f"   host sync: the textbook's loss.item() took {1e6 * textbook.item_seconds / max(textbook.steps, 1):,.1f} "
          f"us per step, {100 * textbook.item_seconds / textbook.seconds:.2g}% of its loop "
          f"({step_seconds:.3f} s per step, validations included)", flush=True)
    if sync_seconds > 0:
        with_item, without, count = sync_cost(config, init, splits["train"], sync_seconds)
        print(f"   host sync: textbook steps alternating with/without loss.item() for {sync_seconds:g} s: "
              + (f"median {with_item:.4f} / {without:.4f} s per step over {count} each "
                 f"({100 * (with_item / without - 1):+.2f}%)" if count else "too short to time"), flush=True)
    print(f"   ({name} took {(time.perf_counter() - case_started) / 60:.1f} min)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--seconds", type=float, default=240, help="training budget per loop (default: 240)")
    parser.add_argument("--interval", type=int, default=10,
                        help="steps per timed interval; the first interval warms up (default: 10)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads for every loop (default: the cores this process may use)")
    parser.add_argument("--select-tokens", type=int, default=None,
                        help="held-out tokens that select each loop's model (default: 20,000 for word, half "
                             "the held-out split for char)")
    parser.add_argument("--score-tokens", type=int, default=None,
                        help="score on at most this many held-out tokens after those (default: all of them)")
    parser.add_argument("--sync-seconds", type=float, default=60,
                        help="seconds of textbook steps alternating with and without loss.item() (default: 60; "
                             "0 skips)")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.interval < 1:
        parser.error("--threads and --interval must be positive")
    for name in args.case:
        run_case(name, args.seconds, args.interval, args.threads, args.select_tokens, args.score_tokens,
                 args.sync_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
