"""The cell atlas measured: each property's held-out score beside a random model's, the sentiment unit on every
rated test review against a linear probe on all units, and how long `python -m lmdemo atlas` takes.

    python bench/atlas.py                                  # the three shipped models
    python bench/atlas.py checkpoints/imdb-word --threads 2

For each model: the atlas as the command builds it by default (a sample of the rated reviews), timed; then the
atlas on every rated review (train+valid to choose, test to score: what the shipped atlas.json holds), whose
table is printed; and for a model with rated reviews an all-unit probe: a logistic regression on every unit's
value at the end of each review (h and c of every layer, standardised; its L2 weight chosen on a fifth of the
train+valid reviews held back, then refit on all of them), scored on the test reviews, beside the majority class.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmdemo.atlas import REVIEWS_PER_PART, build_atlas, corpus_texts, final_states  # noqa: E402
from lmdemo.checkpoint import load_model  # noqa: E402

SHIPPED = ("checkpoints/shakespeare-char", "checkpoints/imdb-word", "checkpoints/imdb-bpe")
L2_WEIGHTS = (1e-4, 1e-3, 1e-2, 1e-1)


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        lscpu = ""
    name = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "?")
    return f"{name}, {os.cpu_count()} cores visible, torch {torch.__version__} with {torch.get_num_threads()} thread(s)"


def fit_probe(features: torch.Tensor, labels: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic regression weights and bias on standardised features, by L-BFGS on mean loss + l2 * |w|^2."""
    weights = torch.zeros(features.size(1), dtype=torch.double, requires_grad=True)
    bias = torch.zeros(1, dtype=torch.double, requires_grad=True)
    optimiser = torch.optim.LBFGS([weights, bias], max_iter=500, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimiser.zero_grad()
        value = F.binary_cross_entropy_with_logits(features @ weights + bias, labels) + l2 * weights.square().sum()
        value.backward()
        return value

    optimiser.step(loss)
    return weights.detach(), bias.detach()


def probe_accuracy(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor,
                   test_labels: torch.Tensor) -> tuple[float, float]:
    """(test accuracy, L2 weight chosen) of a logistic regression on every column."""
    mean, spread = train.mean(0), train.std(0).clamp_min(1e-6)
    train, test = ((x.double() - mean) / spread for x in (train, test))
    train_labels, test_labels = train_labels.double(), test_labels.double()
    cut = len(train) * 4 // 5

    def accuracy(weights: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
        return float(((x @ weights + bias > 0).double() == y).double().mean())

    l2 = max(L2_WEIGHTS, key=lambda w: accuracy(*fit_probe(train[:cut], train_labels[:cut], w), train[cut:],
                                                 train_labels[cut:]))
    return accuracy(*fit_probe(train, train_labels, l2), test, test_labels), l2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list(SHIPPED), help="model folders (default: the shipped three)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"command: python bench/atlas.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"machine: {machine()}")
    for source in args.models:
        trained = load_model(source)
        began, cpu = time.perf_counter(), time.process_time()
        build_atlas(trained, *corpus_texts(trained))
        wall, cpu = time.perf_counter() - began, time.process_time() - cpu
        print(f"\n## {source}: `python -m lmdemo atlas` (default: {REVIEWS_PER_PART} rated reviews a part) took "
              f"{wall:.0f} s wall, {cpu:.0f} s CPU (load average {os.getloadavg()[0]:.1f} after)")
        choose, score = corpus_texts(trained, max_reviews=None)
        atlas = build_atlas(trained, choose, score)
        print(f"chosen on {choose.source} ({choose.describe()['tokens']:,} tokens, {len(choose.reviews):,} rated "
              f"reviews), scored on {score.source} ({score.describe()['tokens']:,} tokens, {len(score.reviews):,} "
              f"rated reviews)")
        print("| property | unit | metric | held-out score | random model |\n|---|---|---|---:|---:|")
        for entry in atlas["properties"]:
            print(f"| {entry['property']} | layer {entry['layer']} {entry['quantity']} {entry['unit']} | "
                  f"{entry['metric']} | {entry['score']:.3f} | {entry['baseline']:.3f} |")
        if any(entry["property"] == "sentiment" for entry in atlas["properties"]):
            start_id = trained.tokenizer.start_id
            test_labels = torch.tensor(score.labels)
            accuracy, l2 = probe_accuracy(final_states(trained.model, choose.reviews, start_id),
                                          torch.tensor(choose.labels),
                                          final_states(trained.model, score.reviews, start_id), test_labels)
            majority = max(float(test_labels.double().mean()), 1 - float(test_labels.double().mean()))
            print(f"sentiment on all {len(score.reviews):,} rated test reviews: all-unit probe {accuracy:.3f} "
                  f"(L2 {l2:g}), majority class {majority:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
