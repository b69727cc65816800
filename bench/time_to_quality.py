"""Time to quality: how soon lmdemo, with its own choices, reaches the quality pytorch/examples' word_language_model
reaches in two epochs, on the same text, token stream, vocabulary and threads.

    python bench/time_to_quality.py --peer ../examples/word_language_model/main.py
    python bench/time_to_quality.py --peer PATH --threads 2 --fraction 0.25 --eval-every 40
    python bench/time_to_quality.py --peer PATH --lr 5e-3 --schedule cosine --dropout 0   # lmdemo with other choices

The text: WikiText-2 `valid.txt` trains; `test.txt`, in lmdemo's tokens, is cut in halves: the first selects (each
loop's validation), the second scores. lmdemo's tokenizer (as bench/train_speed.py's word case: 10,000 most frequent
words) writes the peer's three files, so both read the same token ids (the peer's vocabulary is the words those
files hold, lmdemo's also its <unk>, <eos> and start token; every scored token is in both).

The peer runs at the issue's settings: `main.py --emsize 650 --nhid 650 --dropout 0.5 --tied --epochs 2` (its own
SGD at rate 20, batch 20, bptt 35, clipping 0.25, fp32, full softmax; its rate quartered when validation does not
improve). Its time is the sum of its two epochs' times as it prints them (each with its validation pass); its
figures are the validation perplexity of its best epoch and the test perplexity it prints for that model.

lmdemo then trains the same shape (2x650, tied, dropout 0.5 unless `--dropout` says otherwise) with the choices it
makes itself for everything else (`Config`'s defaults: batch, learning rate and optimiser, schedule, bf16 where the
CPU has it, the adaptive softmax at this vocabulary; any of them can be set here to try others) for `--fraction` of
the peer's time, as a `--max-minutes` budget. It validates on the first half as the peer does, at each epoch's end,
and at the end of its budget (`--eval-every N`: every N steps too; each pass costs time inside the budget, on an
AVX2 CPU in fp32 as much as 40-60 steps), and keeps its best model, which `lmdemo.evaluation.evaluate` then scores on
the second half. Printed: each loop's validation points (seconds since its start, perplexity), when lmdemo's
validation first reached the peer's best (in seconds and as a share of the peer's time), and both scores on the
second half.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from train_speed import CASES

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmdemo.checkpoint import load_model  # noqa: E402
from lmdemo.config import Config  # noqa: E402
from lmdemo.evaluation import evaluate  # noqa: E402
from lmdemo.metrics import read_metrics  # noqa: E402
from lmdemo.training import encode_splits, train  # noqa: E402

PEER_SETTINGS = ["--model", "LSTM", "--emsize", "650", "--nhid", "650", "--dropout", "0.5", "--tied", "--epochs", "2"]
SHAPE = dict(emb_size=650, hidden_size=650, num_layers=2, dropout=0.5, tie_weights=True)
TEXT = {field: CASES["word"][field] for field in ("level", "data", "train_split", "valid_split", "test_split",
                                                    "max_vocab")}
EPOCH_LINE = re.compile(r"end of epoch\s+(\d+)\s+\|\s+time:\s+([\d.]+)s\s+\|\s+valid loss\s+[\d.]+\s+\|"
                        r"\s+valid ppl\s+([\d.]+)")
TEST_LINE = re.compile(r"End of training\s+\|\s+test loss\s+[\d.]+\s+\|\s+test ppl\s+([\d.]+)")
# lmdemo's own choices that can be set here instead, each with its type
CHOICES = {"batch_size": int, "lr": float, "optimizer": str, "schedule": str, "warmup_steps": int, "dropout": float,
           "precision": str, "softmax": str}


def lmdemo_config(args: argparse.Namespace) -> Config:
    """The issue's shape on the issue's text, and lmdemo's own choices for the rest unless set here."""
    chosen = {field: value for field in CHOICES if (value := getattr(args, field)) is not None}
    return Config(**{**TEXT, **SHAPE, **chosen}, threads=args.threads, seed=args.seed)


def write_peer_files(folder: Path, tokenizer, train_ids: torch.Tensor, select: torch.Tensor,
                     score: torch.Tensor) -> None:
    """The peer's train/valid/test files in lmdemo's tokens, each one line (the <eos> the peer adds at its end is
    lmdemo's <eos> word)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, ids in (("train.txt", train_ids), ("valid.txt", select), ("test.txt", score)):
        (folder / name).write_text(" ".join(tokenizer.tokens(ids.tolist())) + "\n")


def run_peer(main_py: Path, folder: Path, threads: int) -> tuple[list[tuple[float, float]], float]:
    """The peer's validation points (seconds since its start, perplexity) at its epoch ends, and its test
    perplexity."""
    command = [sys.executable, str(main_py), "--data", str(folder), *PEER_SETTINGS, "--save", str(folder / "model.pt")]
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run(command, cwd=folder, env=environment, capture_output=True, text=True, timeout=3600,
                          check=False)
    epochs = [(float(seconds), float(ppl)) for _, seconds, ppl in EPOCH_LINE.findall(done.stdout)]
    test = TEST_LINE.search(done.stdout)
    if done.returncode != 0 or not epochs or test is None:
        raise SystemExit(f"the peer failed (exit code {done.returncode}): {(done.stderr or done.stdout)[-400:]}")
    points, elapsed = [], 0.0
    for seconds, ppl in epochs:
        elapsed += seconds
        points.append((elapsed, ppl))
    return points, float(test.group(1))


def run_lmdemo(config: Config, out: Path, seconds: float, select: torch.Tensor, score: torch.Tensor
               ) -> tuple[list[tuple[float, float]], float, float, str]:
    """lmdemo's validation points (seconds, perplexity), its training time, its kept model's perplexity on `score`,
    and the precision it trained in."""
    best = train(config.replace(max_minutes=seconds / 60), out, progress_bar=False, command="bench")
    metrics = read_metrics(out / "metrics.jsonl")
    points = [(record["time"], record["val_ppl"]) for record in metrics.events("val")]
    scored = evaluate(load_model(best).model, score, config.eval_batch_size, config.eval_bptt)
    return points, metrics.trained()["time"], scored.ppl, metrics.last("start")["precision"]


def first_reaching(points: list[tuple[float, float]], ppl: float) -> float | None:
    return next((seconds for seconds, value in points if value <= ppl), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", type=Path, required=True, help="pytorch/examples' word_language_model/main.py")
    parser.add_argument("--threads", type=int, default=2, help="threads of each loop (default 2)")
    parser.add_argument("--fraction", type=float, default=0.25, help="lmdemo's budget, a share of the peer's time")
    parser.add_argument("--eval-every", type=int,
                        help="lmdemo's steps between validations too (default: at epoch ends and the budget's end)")
    parser.add_argument("--seed", type=int, default=1234)
    for field, kind in CHOICES.items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=kind, help=f"lmdemo's {field} (default: its own)")
    args = parser.parse_args(argv)
    if not args.peer.is_file():
        raise SystemExit(f"no peer at {args.peer}: pass pytorch/examples' word_language_model/main.py")
    torch.set_num_threads(args.threads)
    config = lmdemo_config(args)
    tokenizer, encoded = encode_splits(config, None)
    held_out = encoded["valid"].ids
    select, score = held_out[:held_out.numel() // 2], held_out[held_out.numel() // 2:]
    config = config.replace(vocab_size=tokenizer.vocab_size, eval_tokens=select.numel(), eval_every=args.eval_every)
    print(f"train {encoded['train'].ids.numel():,} tokens (WikiText-2 valid.txt), select {select.numel():,} and "
          f"score {score.numel():,} (the halves of test.txt), vocabulary {tokenizer.vocab_size:,}, "
          f"{args.threads} thread(s)", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        write_peer_files(Path(folder) / "peer", tokenizer, encoded["train"].ids, select, score)
        peer_points, peer_test = run_peer(args.peer, Path(folder) / "peer", args.threads)
        peer_seconds, peer_valid = peer_points[-1][0], min(ppl for _, ppl in peer_points)
        print(f"peer ({' '.join(PEER_SETTINGS[2:])}): validation " + ", ".join(
            f"{ppl:.2f} at {seconds:.0f} s" for seconds, ppl in peer_points) +
            f"; {peer_seconds:.0f} s in all; test {peer_test:.2f}", flush=True)
        budget = args.fraction * peer_seconds
        points, seconds, test, precision = run_lmdemo(config, Path(folder) / "lmdemo", budget, select, score)
    print(f"lmdemo (batch {config.batch_size}, {config.optimizer} {config.lr:g}, {config.schedule}"
          f"{f' after {config.warmup_steps} warm-up steps' if config.warmup_steps else ''}, "
          f"dropout {config.dropout:g}, "
          f"{precision}, {'adaptive' if config.adaptive_softmax else 'full'} softmax): validation " +
          ", ".join(f"{ppl:.2f} at {at:.0f} s" for at, ppl in points) +
          f"; {seconds:.0f} s in all; test {test:.2f}")
    reached = first_reaching(points, peer_valid)
    print(f"the peer's best validation ({peer_valid:.2f}) reached by lmdemo: " +
          (f"after {reached:.0f} s = {reached / peer_seconds:.2f} of the peer's {peer_seconds:.0f} s"
           if reached is not None else f"not within its {seconds:.0f} s"))
    print(f"on the scoring half: lmdemo {test:.2f} after {seconds:.0f} s ({seconds / peer_seconds:.2f} of the peer's "
          f"time), the peer {peer_test:.2f} after {peer_seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
