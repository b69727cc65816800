"""Our trainer against the textbook training loop, side by side on the same data and settings.

    python bench/train_speed.py                         # both cases, 240 s of training per loop
    python bench/train_speed.py --case word --seconds 120

The textbook loop is the one in pytorch/examples' word_language_model and the write-ups: fp32,
`nn.LSTM`, full softmax, `loss.item()` after every step, torch's default threads. Ours is
`lmdemo.training.train` with its defaults (bf16 autocast where the CPU has native bf16, no host
syncs between log intervals, data laid out once as tensors, the adaptive softmax for the 10k-word
vocabulary), and for the word case also with `--softmax full` to show what bf16 alone is worth.
Every loop gets the same token ids, model shape, optimiser, learning rate, dropout and clipping, and
trains for the same wall-clock budget (`--seconds`). For each loop it prints:

- tokens/s: the median over the run's log intervals after the first (the first one warms up),
  the achieved GFLOP/s and their share of this CPU's fp32 or bf16 peak (see `cpu_peaks`);
- the steps done in the budget and the validation perplexity of the model it ends with, scored
  for all loops by `lmdemo.evaluation.evaluate` on the whole held-out text;
- each loop's speed-up over the textbook loop.

Cases: "word" = 2x650 tied LSTM, WikiText-2 `valid.txt` to train and `test.txt` to score, 10k words,
batch 64 x bptt 35, Adam 1e-3 (the configuration the issue's figures use); "char" = a 2x512 character
model (embedding 128) on Tiny Shakespeare, batch 64 x bptt 128, first 90 % / last 10 %.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmdemo.batches import StreamBatches  # noqa: E402
from lmdemo.checkpoint import load_model  # noqa: E402
from lmdemo.config import Config  # noqa: E402
from lmdemo.evaluation import evaluate  # noqa: E402
from lmdemo.metrics import read_metrics  # noqa: E402
from lmdemo.model import adaptive_cutoffs  # noqa: E402
from lmdemo.training import encode_splits, train  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
CASES = {
    "word": dict(level="word", data=str(DATA / "wikitext-2"), train_split="valid", valid_split="test",
                 max_vocab=10_000, emb_size=650, hidden_size=650, num_layers=2, dropout=0.5, tie_weights=True,
                 batch_size=64, bptt=35, optimizer="adam", lr=1e-3, clip=0.25, schedule="constant"),
    "char": dict(level="char", data=str(DATA / "tinyshakespeare" / "input.txt"), valid_fraction=0.1,
                 lowercase=False, emb_size=128, hidden_size=512, num_layers=2, dropout=0.25, tie_weights=False,
                 batch_size=64, bptt=128, optimizer="adam", lr=2e-3, clip=1.0, schedule="constant"),
}


class TextbookLSTM(nn.Module):
    """word_language_model's RNNModel, LSTM only: embedding, nn.LSTM, dropout, (tied) decoder."""

    def __init__(self, vocab: int, emb: int, hidden: int, layers: int, dropout: float, tied: bool):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab, emb)
        self.rnn = nn.LSTM(emb, hidden, layers, dropout=dropout, batch_first=True)
        self.decoder = nn.Linear(hidden, vocab)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        if tied:
            self.decoder.weight = self.encoder.weight

    def forward(self, ids, hidden=None, targets=None):
        output, hidden = self.rnn(self.drop(self.encoder(ids)), hidden)
        logits = self.decoder(self.drop(output))
        if targets is None:
            return logits, hidden
        # lmdemo's model contract, so `evaluate` scores every loop with the same code
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1)), hidden


def textbook_train(config: Config, ids: torch.Tensor, seconds: float, interval: int) -> tuple[nn.Module, float, int]:
    """Train the textbook way for `seconds`; returns the model, its median tokens/s over `interval`-step
    intervals after the first, and the number of steps done."""
    torch.manual_seed(config.seed)
    model = TextbookLSTM(config.vocab_size, config.emb_size, config.hidden_size, config.num_layers,
                         config.dropout, config.tie_weights)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    batches = StreamBatches(ids, config.batch_size, config.bptt)
    model.train()
    hidden, total_loss, step, marks = None, 0.0, 0, [time.perf_counter()]
    while marks[-1] - marks[0] < seconds:
        for window in range(len(batches)):
            inputs, targets = batches.window(window)
            hidden = None if hidden is None else tuple(h.detach() for h in hidden)
            optimizer.zero_grad()
            output, hidden = model(inputs, hidden)
            loss = F.cross_entropy(output.reshape(-1, config.vocab_size), targets.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
            optimizer.step()
            total_loss += loss.item()
            step += 1
            if step % interval == 0:
                marks.append(time.perf_counter())
                if marks[-1] - marks[0] >= seconds:
                    break
        hidden = None
    tokens = interval * config.batch_size * config.bptt
    speeds = [tokens / (after - before) for before, after in zip(marks[1:], marks[2:])]
    return model, statistics.median(speeds) if speeds else math.nan, step


def our_train(config: Config, out: Path, seconds: float, interval: int) -> tuple[Path, float, int, str]:
    """Train with lmdemo for `seconds`; returns the best model's folder, the median tokens/s over the log
    intervals after the first, the steps done and the precision used."""
    config = config.replace(max_minutes=seconds / 60, epochs=10_000, eval_every=None, log_every=interval,
                            save_every=1e9, eval_tokens=20_000)
    best = train(config, out, progress_bar=False, command="bench")
    metrics = read_metrics(out / "metrics.jsonl")
    speeds = [record["tokens_per_sec"] for record in metrics.events("train")[1:]]
    return (best, statistics.median(speeds) if speeds else math.nan, metrics.records[-1]["step"],
            metrics.last("start")["precision"])


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


def cpu_peaks(threads: int) -> tuple[float, float, str]:
    """Theoretical fp32 and bf16 GFLOP/s of `threads` cores, from lscpu's flags and clock.

    fp32: 2 FMA units x vector lanes (16 with AVX-512, 8 with AVX2) x 2 flops per cycle and core;
    AMD Zen 4 (family 25) runs AVX-512 on 256-bit units, so 8 lanes there.
    bf16: AMX tiles do 1,024 bf16 flops per cycle and core; without AMX, AVX512-BF16's dot product
    doubles the AVX-512 fp32 rate; without either there is no native bf16 (0).
    """
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    flags = set(re.search(r"Flags:\s*(.*)", lscpu).group(1).split()) if "Flags:" in lscpu else set()
    mhz = re.search(r"CPU max MHz:\s*([\d.]+)", lscpu) or re.search(r"@\s*([\d.]+)GHz", lscpu)
    if mhz is None:
        mhz = re.search(r"cpu MHz\s*:\s*([\d.]+)", Path("/proc/cpuinfo").read_text())
        ghz = float(mhz.group(1)) / 1000
    else:
        ghz = float(mhz.group(1)) / (1 if "GHz" in mhz.group(0) else 1000)
    zen4 = "AuthenticAMD" in lscpu and re.search(r"CPU family:\s*25\b", lscpu) is not None
    lanes = 16 if "avx512f" in flags and not zen4 else 8 if "avx2" in flags else 4
    fp32 = threads * ghz * 2 * lanes * 2
    bf16 = threads * ghz * 1024 if "amx_bf16" in flags else 2 * fp32 if "avx512_bf16" in flags else 0.0
    how = (f"{threads} cores x {ghz:.2f} GHz; fp32 2 FMA x {lanes} lanes x 2; "
           f"bf16 {'AMX 1,024 flops/cycle' if 'amx_bf16' in flags else 'AVX512-BF16 2x fp32' if bf16 else 'none'}")
    return fp32, bf16, how


def run_case(name: str, seconds: float, interval: int) -> None:
    config = Config(**CASES[name])
    tokenizer, splits = encode_splits(config, None)
    config = config.replace(vocab_size=tokenizer.vocab_size)
    fp32_peak, bf16_peak, how = cpu_peaks(torch.get_num_threads())
    print(f"\n== {name}: {config.num_layers}x{config.hidden_size} (emb {config.emb_size}), vocab "
          f"{config.vocab_size:,}, batch {config.batch_size} x bptt {config.bptt}, {splits['train'].numel():,} "
          f"training tokens, {seconds:.0f} s per loop; peaks {fp32_peak:,.0f} GFLOP/s fp32, {bf16_peak:,.0f} "
          f"bf16 ({how})", flush=True)
    print(f"{'loop':<34}{'tok/s':>9}{'speed-up':>10}{'GFLOP/s':>9}{'% peak':>8}{'steps':>7}{'val ppl':>9}",
          flush=True)

    def report(label: str, variant: Config, speed: float, steps: int, ppl: float, precision: str) -> None:
        achieved = speed * flops_per_token(variant, splits["train"]) / 1e9
        peak = bf16_peak if precision == "bf16" else fp32_peak
        print(f"{label:<34}{speed:>9,.0f}{speed / baseline:>9.2f}x{achieved:>9,.1f}{100 * achieved / peak:>7.1f}%"
              f"{steps:>7,}{ppl:>9.2f}", flush=True)

    textbook, baseline, steps = textbook_train(config, splits["train"], seconds, interval)
    report("textbook (fp32, full)", config, baseline, steps, evaluate(textbook, splits["valid"]).ppl, "fp32")
    variants = {"defaults": config}
    if config.adaptive_softmax:
        variants["--softmax full"] = config.replace(softmax="full")
    with tempfile.TemporaryDirectory() as folder:
        for label, variant in variants.items():
            best, speed, steps, precision = our_train(variant, Path(folder) / label, seconds, interval)
            ppl = evaluate(load_model(best).model, splits["valid"]).ppl
            report(f"lmdemo {label} ({precision})", variant, speed, steps, ppl, precision)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--seconds", type=float, default=240, help="training budget per loop (default: 240)")
    parser.add_argument("--interval", type=int, default=10,
                        help="steps per timed interval; the first interval warms up (default: 10)")
    args = parser.parse_args(argv)
    for name in args.case:
        run_case(name, args.seconds, args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
