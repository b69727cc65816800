"""Our trainer against the textbook training loop, side by side on the same data and settings.

    python bench/train_speed.py                         # both cases, 240 s of training per loop
    python bench/train_speed.py --case word --seconds 120 --steps 20

The textbook loop is the one in pytorch/examples' word_language_model and the write-ups: fp32,
`nn.LSTM`, full softmax, `loss.item()` after every step, torch's default threads. Ours is
`lmdemo.training.train` with its defaults (bf16 autocast where the CPU has native bf16, no host
syncs between log intervals). Both get the same token ids, model shape, optimiser, learning rate,
dropout and clipping. For each case it prints:

- tokens/s over the same `--steps` steps (steps N to 2N: the first N warm up) and their ratio,
  with the achieved GFLOP/s against this CPU's fp32 and bf16 peaks (see `cpu_peaks`);
- validation perplexity after the same wall-clock training budget (`--seconds`), scored for both
  by `lmdemo.evaluation.evaluate` on the whole held-out text.

Cases: "word" = 2x650 tied LSTM, WikiText-2 `valid.txt` to train and `test.txt` to score, 10k words,
batch 64 x bptt 35, Adam 1e-3 (the configuration the issue's figures use); "char" = the shakespeare-char
shape (2x512, embedding 128) on Tiny Shakespeare, batch 64 x bptt 128, first 90 % / last 10 %.
"""

from __future__ import annotations

import argparse
import math
import re
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
from lmdemo.training import encode_splits, native_bf16, train  # noqa: E402

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

    def forward(self, ids, hidden=None):
        output, hidden = self.rnn(self.drop(self.encoder(ids)), hidden)
        return self.decoder(self.drop(output)), hidden


def textbook_train(config: Config, ids: torch.Tensor, seconds: float, timed: range) -> tuple[nn.Module, float, int]:
    """Train the textbook way for `seconds`; returns the model, the tokens/s over the `timed` steps and
    the number of steps done."""
    torch.manual_seed(config.seed)
    model = TextbookLSTM(config.vocab_size, config.emb_size, config.hidden_size, config.num_layers,
                         config.dropout, config.tie_weights)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    batches = StreamBatches(ids, config.batch_size, config.bptt)
    model.train()
    hidden, total_loss, step, timer = None, 0.0, 0, {}
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for window in range(len(batches)):
            if step in (timed.start, timed.stop):
                timer[step] = time.perf_counter()
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
            if time.perf_counter() - started >= seconds:
                break
        hidden = None
    tokens = (timed.stop - timed.start) * config.batch_size * config.bptt
    speed = tokens / (timer[timed.stop] - timer[timed.start]) if timed.stop in timer else math.nan
    return model, speed, step


def our_train(config: Config, out: Path, seconds: float | None = None, steps: int | None = None,
              log_every: int = 50) -> tuple[Path, list[dict]]:
    config = config.replace(max_minutes=seconds / 60 if seconds else None, max_steps=steps, epochs=10_000,
                            eval_every=None, log_every=log_every, save_every=1e9, eval_tokens=20_000)
    best = train(config, out, progress_bar=False, command="bench")
    return best, read_metrics(out / "metrics.jsonl").events("train")


def flops_per_token(config: Config) -> float:
    """Multiply-adds x 2 of one training token (forward + backward = 3 x forward) in the LSTM layers and
    the decoder; the embedding lookup, element-wise gate maths and the optimiser are left out."""
    lstm = sum(4 * config.hidden_size * ((config.emb_size if layer == 0 else config.hidden_size)
                                        + config.hidden_size) for layer in range(config.num_layers))
    decoder_in = config.emb_size if config.tie_weights else config.hidden_size
    projection = config.hidden_size * config.emb_size if config.tie_weights and decoder_in != config.hidden_size else 0
    return 3 * 2 * (lstm + projection + decoder_in * config.vocab_size)


def cpu_peaks(threads: int) -> tuple[float, float, str]:
    """Theoretical fp32 and bf16 GFLOP/s of `threads` cores, from lscpu's flags and clock.

    fp32: 2 FMA units x vector lanes (16 with AVX-512, 8 with AVX2) x 2 flops per cycle and core.
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
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    fp32 = threads * ghz * 2 * lanes * 2
    bf16 = threads * ghz * 1024 if "amx_bf16" in flags else 2 * fp32 if "avx512_bf16" in flags else 0.0
    how = (f"{threads} cores x {ghz:.2f} GHz; fp32 2 FMA x {lanes} lanes x 2; "
           f"bf16 {'AMX 1,024 flops/cycle' if 'amx_bf16' in flags else 'AVX512-BF16 2x fp32' if bf16 else 'none'}")
    return fp32, bf16, how


def run_case(name: str, seconds: float, steps: int) -> None:
    config = Config(**CASES[name])
    tokenizer, splits = encode_splits(config, None)
    config = config.replace(vocab_size=tokenizer.vocab_size)
    threads = torch.get_num_threads()
    timed = range(steps, 2 * steps)
    flops = flops_per_token(config)
    fp32_peak, bf16_peak, how = cpu_peaks(threads)
    print(f"\n== {name}: {config.num_layers}x{config.hidden_size} (emb {config.emb_size}), vocab "
          f"{config.vocab_size:,}, batch {config.batch_size} x bptt {config.bptt}, {splits['train'].numel():,} "
          f"training tokens; {flops / 1e6:.1f} MFLOP per token; peaks {fp32_peak:,.0f} (fp32) / "
          f"{bf16_peak:,.0f} (bf16) GFLOP/s ({how})", flush=True)

    with tempfile.TemporaryDirectory() as folder:
        textbook, textbook_speed, textbook_steps = textbook_train(config, splits["train"], seconds, timed)
        textbook_ppl = evaluate(textbook, splits["valid"]).ppl
        _, records = our_train(config, Path(folder) / "speed", steps=2 * steps, log_every=steps)
        ours_speed = records[1]["tokens_per_sec"]  # the log's second interval: steps N to 2N
        best, records = our_train(config, Path(folder) / "budget", seconds=seconds)
        ours_ppl = evaluate(load_model(best).model, splits["valid"]).ppl
        ours_steps = records[-1]["step"]
    precision = "bf16" if native_bf16(torch.device("cpu")) else "fp32"
    rows = [("textbook (fp32)", textbook_speed, textbook_steps, textbook_ppl, fp32_peak),
            (f"lmdemo ({precision})", ours_speed, ours_steps, ours_ppl, bf16_peak if precision == "bf16" else fp32_peak)]
    print(f"{'loop':<18}{'tok/s':>10}{'GFLOP/s':>10}{'% peak':>8}{'steps in ' + str(int(seconds)) + ' s':>16}"
          f"{'val ppl':>10}")
    for label, speed, done, ppl, peak in rows:
        achieved = speed * flops / 1e9
        print(f"{label:<18}{speed:>10,.0f}{achieved:>10,.1f}{100 * achieved / peak:>7.1f}%{done:>16,}{ppl:>10.2f}")
    print(f"speed-up {ours_speed / textbook_speed:.2f}x over steps {timed.start}-{timed.stop}; validation "
          f"perplexity after {seconds:.0f} s: {ours_ppl:.2f} vs {textbook_ppl:.2f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--seconds", type=float, default=240, help="training budget per loop (default: 240)")
    parser.add_argument("--steps", type=int, default=20,
                        help="steps timed for tokens/s, after as many untimed ones (default: 20)")
    args = parser.parse_args(argv)
    for name in args.case:
        run_case(name, args.seconds, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
