"""Training speed of each preset on this machine: tokens/s at fp32 and bf16 autocast.

Runs the real trainer for a few steps per preset on the local corpora (../shared/data) and prints
the median tokens/s of the logged intervals (the first interval, which includes warm-up, is dropped).

    python bench/presets.py                      # every preset, fp32 and bf16, 12 steps each
    python bench/presets.py --preset ptb-tied-650 --steps 20 --precision fp32
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmdemo.config import PRESETS, Config, preset  # noqa: E402
from lmdemo.metrics import read_metrics  # noqa: E402
from lmdemo.training import train  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
LOCAL_DATA = {  # the Hub corpora this machine cannot reach, replaced by local files of the same kind
    "ptb-tied-650": dict(data=str(DATA / "ptb"), train_split="valid", valid_split="test"),
    "wikitext2-tied-1024": dict(data=str(DATA / "wikitext-2"), train_split="valid", valid_split="test"),
    "cnndm-3x512": dict(data=str(DATA / "wikitext-2"), train_split="valid", valid_split="test", train_docs=None),
    "imdb-word": dict(data=str(DATA / "imdb"), valid_split="valid"),
    "shakespeare-char": dict(data=str(DATA / "tinyshakespeare" / "input.txt")),
}


def measure(name: str, precision: str, steps: int) -> tuple[float, int, int]:
    """Median tokens/s, parameters and vocabulary size of `steps` training steps."""
    values = {**preset(name), **LOCAL_DATA[name], "precision": precision, "max_steps": steps,
              "log_every": max(1, steps // 4), "eval_batch_size": 64, "max_tokens": 150_000}
    with tempfile.TemporaryDirectory() as out:
        train(Config(**values), Path(out) / name, progress_bar=False, command="bench")
        metrics = read_metrics(Path(out) / name / "metrics.jsonl")
    speeds = [r["tokens_per_sec"] for r in metrics.events("train")][1:]
    start = metrics.events("start")[0]
    return statistics.median(speeds), start["params"], start["vocab_size"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    print(f"{'preset':<22}{'params':>12}{'vocab':>8}" + "".join(f"{p + ' tok/s':>14}" for p in args.precision))
    for name in args.preset:
        row = [measure(name, precision, args.steps) for precision in args.precision]
        print(f"{name:<22}{row[0][1]:>12,}{row[0][2]:>8,}" + "".join(f"{speed:>14,.0f}" for speed, _, _ in row),
              flush=True)


if __name__ == "__main__":
    main()
