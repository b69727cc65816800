"""Training speed: the machine's own limit beside lmdemo's step, A/B of options, the peer; and our trainer against
the textbook training loop.

    python bench/train_speed.py --batch-size 20                  # limit and step: WikiText-2, 2x650 tied, bptt 35
    python bench/train_speed.py --batch-size 20 --ab dropout_locked=true   # A/B: steps with and without an option
    python bench/train_speed.py --batch-size 20 --peer ../examples/word_language_model/main.py   # and the peer
    python bench/train_speed.py --textbook                       # the textbook comparison, 240 s of training per loop
    python bench/train_speed.py --textbook --case word --seconds 120
    python bench/train_speed.py --textbook --seconds 10 --interval 2 --select-tokens 2000 --score-tokens 5000 \\
        --sync-seconds 5                                         # a smoke run: checks the script, measures nothing

**Limit and step** (the default). The machine's limit is measured in the same run, on the step's own matmul
shapes, split as oneDNN's LSTM splits them: a layer's input part of the gates over the window's tokens,
[batch x bptt, in] x [in, 4 hidden], and its recurrent part token by token, [batch, hidden] x [hidden, 4 hidden];
the projection; the decoder [batch x bptt, D] x [D, words scored] (the adaptive softmax's head). Each is timed in
its forward's shape and in its two gradients' (the input's, and the weight's, summed over the window's tokens in
one matmul), in fp32 and bf16 (where bf16 is native), with the faster of torch's default matmul and oneDNN's,
the best of ten timed runs, five before the steps and five after; a matmul's rate is 3 x its FLOPs over the time
of the three. The step's limit weights each rate by its matmul's share of the step's FLOPs. One token's whole
gates, [batch, in + hidden] x [in + hidden, 4 hidden], are shown for reference. Then `lmdemo.training.Trainer`
takes `--steps` steps of the case's text after `--warmup` (its own `_step`: forward, backward, clipping, learning
rate, optimiser), and its median step gives tokens/s, GFLOP/s and their share of the limit at the precision it
ran. FLOPs counted (`flops_per_token`): the LSTM's, the projection's and the decoder's matmuls, forward + backward
= 3 x forward; the adaptive softmax is credited with the rows it scores; the embedding, the gates' element-wise
maths, dropout and the optimiser are not counted (they are time the limit does not buy). Shape, batch, bptt,
precision, threads and the training options (`--dropout-locked`, `--weight-drop`, ...) are options; `--ab
FIELD=VALUE ...` builds a second trainer with those changes on the same text and seed and alternates their steps
(A B, then B A, ...), so both meet the same load. `--peer PATH` runs pytorch/examples' word_language_model
(`main.py`) on the same tokens, shape, batch, bptt and threads (its own fp32 loop, full softmax, SGD) and reads
its ms/batch; without it, a line says the peer was skipped.

**The textbook comparison** (`--textbook`). The textbook loop is the one in pytorch/examples'
word_language_model: fp32, `nn.LSTM`, full softmax, `loss.item()` after every step, validation at every epoch
end keeping the best model. Ours is `lmdemo.training.train` with its defaults (bf16 autocast where the CPU has
native bf16, else fp32; no host syncs between log intervals; the adaptive softmax for the 10k-word vocabulary),
and for the word case also with `--softmax full` to show what bf16 alone is worth.

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
half selects, its second half scores. The limit mode trains on the same texts; its options override the shape.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
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
from lmdemo.parallel import Parallel  # noqa: E402
from lmdemo.training import Trainer, encode_splits, native_bf16, set_up_hardware, train  # noqa: E402

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


@dataclass
class Matmul:
    """One of a step's matmuls, [rows, inner] x [inner, columns] as its forward computes it, and its cost a token."""

    name: str
    rows: int  # per call: the batch (a token of the recurrence) or the window's tokens
    inner: int
    columns: int
    scored: float  # the columns a token pays for: `columns`, or with the adaptive softmax its head and cluster share
    tokens: int  # the window's tokens, the rows its weight gradient sums over in one matmul (as oneDNN's LSTM does)

    @property
    def flops_per_token(self) -> float:
        """Multiply-adds x 2, forward + backward = 3 x forward."""
        return 3 * 2 * self.inner * self.scored

    def shapes(self) -> list[tuple[int, int, int]]:
        """(m, k, n) of [m, k] x [k, n] for its forward, its input's gradient and its weight's gradient."""
        return [(self.rows, self.inner, self.columns), (self.rows, self.columns, self.inner),
                (self.columns, self.tokens, self.inner)]


def step_matmuls(config: Config, ids: torch.Tensor) -> list[Matmul]:
    """A training step's matmuls, as oneDNN's and cuDNN's LSTMs split them: each layer's input part of the gates over
    the window's tokens at once ([batch x bptt, in] x [in, 4 hidden]) and its recurrent part one token at a time
    ([batch, hidden] x [hidden, 4 hidden]); the tied projection when there is one; the output layer. The adaptive
    softmax scores its head for every token and a cluster only for the targets in it (`ids` gives the shares)."""
    hidden, tokens = config.hidden_size, config.batch_size * config.bptt
    matmuls = []
    for layer in range(config.num_layers):
        inputs = config.emb_size if layer == 0 else hidden
        matmuls += [Matmul(f"layer {layer + 1} input", tokens, inputs, 4 * hidden, 4 * hidden, tokens),
                    Matmul(f"layer {layer + 1} recurrence", config.batch_size, hidden, 4 * hidden, 4 * hidden, tokens)]
    decoder_in = config.emb_size if config.tie_weights else hidden
    if decoder_in != hidden:
        matmuls.append(Matmul("projection", tokens, hidden, decoder_in, decoder_in, tokens))
    if config.adaptive_softmax:
        cuts = config.cutoffs or adaptive_cutoffs(config.vocab_size)
        head = cuts[0] + len(cuts) - 1
        clusters = sum(((ids >= low) & (ids < high)).float().mean().item() * (high - low)
                       for low, high in itertools.pairwise(cuts))
        matmuls.append(Matmul("decoder (adaptive head)", tokens, decoder_in, head, head + clusters, tokens))
    else:
        matmuls.append(Matmul("decoder", tokens, decoder_in, config.vocab_size, config.vocab_size, tokens))
    return matmuls


def token_gates(config: Config) -> Matmul:
    """One token's whole gates, [batch, in + hidden] x [in + hidden, 4 hidden]: the shape issue 32 quotes its
    bf16 rate on, whose forward is shown for reference (an LSTM that did its input part token by token would run at
    about this rate)."""
    hidden = config.hidden_size
    return Matmul("one token's gates", config.batch_size, config.emb_size + hidden, 4 * hidden, 4 * hidden,
                  config.batch_size * config.bptt)


def flops_per_token(config: Config, ids: torch.Tensor) -> float:
    """Multiply-adds x 2 of one training token (forward + backward = 3 x forward) in the LSTM layers and the output
    layer (`step_matmuls`); the embedding lookup, element-wise gate maths, dropout and the optimiser are left out."""
    return sum(matmul.flops_per_token for matmul in step_matmuls(config, ids))


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


# -- the machine's limit beside lmdemo's step ----------------------------------------------------------------------
# The Config fields the limit mode takes as options: the shape, the batch, the precision and the training options.
STEP_OPTIONS = ("emb_size", "hidden_size", "num_layers", "tie_weights", "softmax", "batch_size", "bptt", "optimizer",
                "precision", "dropout", "dropout_locked", "dropout_embedding", "weight_drop", "alpha", "beta")
BEST_OF = 5  # timed runs per matmul shape; the best is the limit
MATMUL_SECONDS = 0.1  # at least this long per timed run
PEER_LOG_INTERVAL = 10  # the peer prints its ms/batch every this many steps


class MatmulRates:
    """GFLOP/s of matmul shapes on this process's threads ([m, k] x [k, n], the second as `F.linear` takes a weight):
    the best of BEST_OF runs of MATMUL_SECONDS or more, and of as many more as `measure_again` adds (on a shared
    machine, the load changes while the steps run)."""

    def __init__(self) -> None:
        self.measured: dict[tuple[int, int, int, torch.dtype], float] = {}

    def of(self, matmul: Matmul, dtype: torch.dtype) -> float:
        """A matmul's rate over its forward and its two gradients: 3 x its FLOPs over the time of the three."""
        return 3 / sum(1 / self.shape(*shape, dtype) for shape in matmul.shapes())

    def step_limit(self, matmuls: list[Matmul], dtype: torch.dtype) -> float:
        """GFLOP/s of a step whose every matmul ran at its measured rate: its FLOPs over the sum of their times."""
        total = sum(matmul.flops_per_token for matmul in matmuls)
        return total / sum(matmul.flops_per_token / self.of(matmul, dtype) for matmul in matmuls)

    def measure_again(self) -> None:
        """Time every shape measured so far once more, keeping the best."""
        for key, rate in self.measured.items():
            self.measured[key] = max(rate, self._measure(*key))

    def shape(self, m: int, k: int, n: int, dtype: torch.dtype) -> float:
        """The rate of [m, k] x [k, n]."""
        key = (m, k, n, dtype)
        if key not in self.measured:
            self.measured[key] = self._measure(*key)
        return self.measured[key]

    @staticmethod
    def _measure(m: int, k: int, n: int, dtype: torch.dtype) -> float:
        """The faster of torch's CPU kernels for the shape: its default matmul, and oneDNN's on oneDNN's tensors
        (the kernels of its LSTM): on a 2-core AMD EPYC (Zen 5) the default fp32 matmul, MKL's, ran at 85-110
        GFLOP/s where oneDNN's reached 164-235."""
        inputs, weight = torch.randn(m, k).to(dtype), torch.randn(n, k).to(dtype)
        kernels = [lambda: F.linear(inputs, weight)]
        if torch.backends.mkldnn.is_available():
            blocked_inputs, blocked_weight = inputs.to_mkldnn(), weight.to_mkldnn()
            kernels.append(lambda: torch.ops.aten.mkldnn_linear(blocked_inputs, blocked_weight))
        best = 0.0
        for kernel in kernels:
            kernel()  # warms up the kernel for this shape
            for _ in range(BEST_OF):
                calls, started = 0, time.perf_counter()
                while calls < 3 or time.perf_counter() - started < MATMUL_SECONDS:
                    kernel()
                    calls += 1
                best = max(best, 2 * m * k * n * calls / (time.perf_counter() - started))
        return best / 1e9


def step_trainer(config: Config, folder: Path) -> Trainer:
    """lmdemo's trainer for `config`, built as `lmdemo.training.train` builds it, in a run folder of its own."""
    parallel = Parallel()
    return Trainer(config, folder, False, parallel, set_up_hardware(config, parallel, torch.device("cpu")), "bench")


def time_steps(trainers: list[Trainer], steps: int, warmup: int) -> list[list[float]]:
    """Seconds of each trainer's steps, taken in turns (A B, then B A, ...) so that every trainer meets the same
    load; the first `warmup` rounds are not kept."""
    scratch = torch.zeros(2, dtype=torch.float64)
    seconds: list[list[float]] = [[] for _ in trainers]
    for turn in range(warmup + steps):
        order = range(len(trainers)) if turn % 2 == 0 else reversed(range(len(trainers)))
        for index in order:
            started = time.perf_counter()
            trainers[index]._step(scratch)
            if turn >= warmup:
                seconds[index].append(time.perf_counter() - started)
    return seconds


def parse_changes(written: list[str]) -> dict[str, object]:
    """`--ab FIELD=VALUE ...` as Config changes: true/false, numbers, or words."""
    known = {f.name for f in dataclasses.fields(Config)}
    changes: dict[str, object] = {}
    for item in written:
        name, equals, text = item.partition("=")
        name = name.lstrip("-").replace("-", "_")
        if not equals or name not in known:
            raise SystemExit(f"--ab takes FIELD=VALUE with a Config field (got {item!r})")
        changes[name] = text.lower() == "true" if text.lower() in ("true", "false") else _number_or_text(text)
    return changes


def _number_or_text(text: str) -> object:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def peer_seconds(main_py: Path, config: Config, trainer: Trainer, steps: int, threads: int,
                 folder: Path) -> float | str:
    """Median seconds per step of pytorch/examples' word_language_model (`main_py`) on the first `steps` windows of
    the trainer's tokens, with its shape, batch, bptt, dropout, clipping, tying and threads; or why it has none.
    Its vocabulary is ours: the validation file it reads lists every word of it once."""
    if config.level != "word":
        return "the peer reads whitespace-separated words; this case is not at the word level"
    if config.tie_weights and config.emb_size != config.hidden_size:
        return "the peer ties only when --emb-size equals --hidden-size"
    tokenizer, ids = trainer.tokenizer, trainer.splits["train"].ids
    # One line: a written <eos> is the same word as the one the peer adds at a line's end.
    tokens = tokenizer.tokens(ids[:config.batch_size * (steps * config.bptt + 1)].tolist())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.txt").write_text(" ".join(tokens) + "\n")
    for split in ("valid.txt", "test.txt"):
        (folder / split).write_text(" ".join(tokenizer.tokens(range(tokenizer.vocab_size))) + "\n")
    command = [sys.executable, str(main_py), "--data", str(folder), "--model", "LSTM", "--emsize", str(config.emb_size),
               "--nhid", str(config.hidden_size), "--nlayers", str(config.num_layers), "--dropout", str(config.dropout),
               "--batch_size", str(config.batch_size), "--bptt", str(config.bptt), "--clip", str(config.clip),
               "--epochs", "1", "--log-interval", str(PEER_LOG_INTERVAL), "--save", str(folder / "model.pt"),
               *(["--tied"] if config.tie_weights else [])]
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    try:
        done = subprocess.run(command, check=False, cwd=folder, env=environment, capture_output=True, text=True,
                              timeout=600)
    except subprocess.TimeoutExpired:
        return "the peer ran past 600 s"
    reported = [float(ms) for ms in re.findall(r"ms/batch\s+([\d.]+)", done.stdout)][1:]  # the first includes start-up
    if not reported:
        return f"the peer printed no ms/batch after its first interval (exit code {done.returncode}): " + \
            (done.stderr or done.stdout).strip()[-300:]
    return statistics.median(reported) / 1000


def run_limit(name: str, options: dict[str, object], changes: dict[str, object], threads: int, steps: int,
              warmup: int, peer: Path | None) -> None:
    """Print the machine's limit on the step's matmul shapes (measured before and after the steps, the best kept),
    lmdemo's step against it (and with `changes`, A/B), and the peer's step."""
    config = Config(**{**CASES[name], **options, "threads": threads, "max_steps": 10**9})
    dtypes = {"fp32": torch.float32, **({"bf16": torch.bfloat16} if native_bf16(torch.device("cpu")) else {})}
    rates = MatmulRates()
    with tempfile.TemporaryDirectory() as folder:
        trainers = [step_trainer(variant, Path(folder) / label) for label, variant in
                    (("A", config), *((("B", config.replace(**changes)),) if changes else ()))]
        config, ids = trainers[0].config, trainers[0].splits["train"].ids
        tokens = config.batch_size * config.bptt
        variants = [(trainer, step_matmuls(trainer.config, ids)) for trainer in trainers]
        peer_matmuls = step_matmuls(config.replace(softmax="full", cutoffs=None), ids)
        for matmuls in [own for _, own in variants] + [[token_gates(config)]] + ([peer_matmuls] if peer else []):
            for matmul in matmuls:
                for dtype in dtypes.values():
                    rates.of(matmul, dtype)
        seconds = time_steps(trainers, steps, warmup)
        peer_step = peer_seconds(peer, config, trainers[0], warmup + steps, threads, Path(folder) / "peer") \
            if peer else "no --peer PATH to pytorch/examples' word_language_model/main.py was given"
        rates.measure_again()

    matmuls, total = variants[0][1], flops_per_token(config, ids)
    print(f"\n== {name}: {config.num_layers}x{config.hidden_size} (emb {config.emb_size}, "
          f"{'tied' if config.tie_weights else 'untied'}), vocab {config.vocab_size:,} ({config.softmax} softmax), "
          f"batch {config.batch_size} x bptt {config.bptt}, dropout {config.dropout:g}, {config.optimizer}, "
          f"{threads} thread(s), {trainers[0].hardware.precision}\n   the machine's limit: matmuls of the step's "
          f"shapes, best of {2 * BEST_OF} runs of {MATMUL_SECONDS:g} s or more before and after the steps (the "
          f"forward's shape and its two gradients)\n   {'matmul':<52}"
          + "".join(f"{kind + ' GFLOP/s':>14}" for kind in dtypes) + f"{'share of the FLOPs':>20}")
    for matmul in matmuls:
        shape = f"{matmul.name} [{matmul.rows} x {matmul.inner}]·[{matmul.inner} x {matmul.columns}]"
        print(f"   {shape:<52}" + "".join(f"{rates.of(matmul, dtype):>14,.1f}" for dtype in dtypes.values())
              + f"{100 * matmul.flops_per_token / total:>19.1f}%")
    print(f"   {'the step (FLOP-weighted)':<52}"
          + "".join(f"{rates.step_limit(matmuls, dtype):>14,.1f}" for dtype in dtypes.values()))
    gates = token_gates(config)
    shape = f"(for reference: {gates.name} [{gates.rows} x {gates.inner}]·[{gates.inner} x {gates.columns}])"
    print(f"   {shape:<52}" + "".join(f"{rates.shape(*gates.shapes()[0], dtype):>14,.1f}" for dtype in dtypes.values()))
    print(f"   FLOPs counted: {total * tokens / 1e9:.2f} G a step ({total / 1e6:.1f} M a token: the matmuls above, "
          f"forward + backward = 3 x forward; not the embedding, gate maths, dropout or optimiser)")
    labels = ["A" if changes else "lmdemo", "B: " + " ".join(f"{k}={v}" for k, v in changes.items())]
    for label, (trainer, own), times in zip(labels, variants, seconds):
        step, precision = statistics.median(times), trainer.hardware.precision
        achieved = sum(matmul.flops_per_token for matmul in own) * tokens / step / 1e9
        limit = rates.step_limit(own, dtypes[precision]) if precision in dtypes else math.nan
        print(f"   {label:<52}{1000 * step:>9,.1f} ms a step (median of {len(times)}, "
              f"{1000 * min(times):,.0f}-{1000 * max(times):,.0f}){tokens / step:>10,.0f} tokens/s"
              f"{achieved:>8,.1f} GFLOP/s = {share(achieved, limit)} of the {precision} limit"
              + (f"; {statistics.median(seconds[0]) / step:.2f}x A's speed" if trainer is not trainers[0] else ""))
    if isinstance(peer_step, str):
        print(f"   peer: skipped: {peer_step}", flush=True)
        return
    achieved = sum(matmul.flops_per_token for matmul in peer_matmuls) * tokens / peer_step / 1e9
    print(f"   {'peer (word_language_model: fp32, full softmax)':<52}{1000 * peer_step:>9,.1f} ms a step (median of "
          f"its ms/batch every {PEER_LOG_INTERVAL} steps){tokens / peer_step:>10,.0f} tokens/s{achieved:>8,.1f} "
          f"GFLOP/s = {share(achieved, rates.step_limit(peer_matmuls, torch.float32))} of the fp32 limit (its "
          f"decoder scores all {config.vocab_size:,} words)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads for every loop (default: the cores this process may use)")
    parser.add_argument("--case", nargs="+", default=None, choices=list(CASES),
                        help="texts and shapes (default: word for the limit, both for --textbook)")
    step = parser.add_argument_group("the machine's limit beside lmdemo's step (the default)")
    step.add_argument("--steps", type=int, default=30, help="timed steps per trainer (default: 30)")
    step.add_argument("--warmup", type=int, default=3, help="steps per trainer before the timed ones (default: 3)")
    step.add_argument("--ab", nargs="+", metavar="FIELD=VALUE",
                      help="also time a trainer with these changes (such as dropout_locked=true weight_drop=0.5), "
                           "steps alternating with the first on the same text")
    step.add_argument("--peer", type=Path, help="pytorch/examples' word_language_model/main.py: time it on the same "
                                                "tokens, shape, batch and threads")
    given = {"default": argparse.SUPPRESS}  # a shape option not given keeps the case's value
    switch = {"action": argparse.BooleanOptionalAction, **given}
    step.add_argument("--emb-size", type=int, help="embedding size", **given)
    step.add_argument("--hidden-size", type=int, help="LSTM hidden size", **given)
    step.add_argument("--num-layers", type=int, help="LSTM layers", **given)
    step.add_argument("--tie-weights", help="tie the embedding and the decoder", **switch)
    step.add_argument("--softmax", choices=("auto", "full", "adaptive"), help="the output layer", **given)
    step.add_argument("--batch-size", type=int, help="streams a step (the issue's shape: 20)", **given)
    step.add_argument("--bptt", type=int, help="tokens a window", **given)
    step.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), help="the optimiser", **given)
    step.add_argument("--precision", choices=("auto", "fp32", "bf16"), help="bf16 autocast where native", **given)
    step.add_argument("--dropout", type=float, help="the dropout rate", **given)
    step.add_argument("--dropout-locked", help="one dropout mask per sequence", **switch)
    step.add_argument("--dropout-embedding", type=float, help="drop whole words at this rate", **given)
    step.add_argument("--weight-drop", type=float, help="DropConnect on the hidden-to-hidden matrices", **given)
    step.add_argument("--alpha", type=float, help="activation regularisation", **given)
    step.add_argument("--beta", type=float, help="temporal activation regularisation", **given)
    textbook = parser.add_argument_group("the textbook comparison (--textbook)")
    textbook.add_argument("--textbook", action="store_true",
                          help="train the textbook loop and lmdemo's, like with like")
    textbook.add_argument("--seconds", type=float, default=240, help="training budget per loop (default: 240)")
    textbook.add_argument("--interval", type=int, default=10,
                          help="steps per timed interval; the first interval warms up (default: 10)")
    textbook.add_argument("--select-tokens", type=int, default=None,
                          help="held-out tokens that select each loop's model (default: 20,000 for word, half "
                               "the held-out split for char)")
    textbook.add_argument("--score-tokens", type=int, default=None,
                          help="score on at most this many held-out tokens after those (default: all of them)")
    textbook.add_argument("--sync-seconds", type=float, default=60,
                          help="seconds of textbook steps alternating with and without loss.item() (default: 60; "
                               "0 skips)")
    args = parser.parse_args(argv)
    if min(args.threads, args.interval, args.steps) < 1 or args.warmup < 0:
        parser.error("--threads, --interval and --steps must be positive, --warmup not negative")
    if not args.textbook:
        options = {name: getattr(args, name) for name in STEP_OPTIONS if hasattr(args, name)}
        changes = parse_changes(args.ab or [])
        for name in args.case or ["word"]:
            run_limit(name, options, changes, args.threads, args.steps, args.warmup, args.peer)
        return 0
    for name in args.case or list(CASES):
        run_case(name, args.seconds, args.interval, args.threads, args.select_tokens, args.score_tokens,
                 args.sync_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
