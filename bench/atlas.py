"""The cell atlas measured: each property's held-out score beside a random model's, the sentiment unit on every
rated test review against a linear probe on all units, the dial judged by an independent classifier, and how long
`python -m lmdemo atlas` takes.

    python bench/atlas.py                                  # the three shipped models
    python bench/atlas.py checkpoints/imdb-word --threads 2
    python bench/atlas.py checkpoints/imdb-word checkpoints/imdb-bpe --dial-only

For each model: the atlas as the command builds it by default (a sample of the rated reviews), timed; then the
atlas on every rated review (train+valid to choose, test to score: what the shipped atlas.json holds), whose
table is printed; and for a model with rated reviews an all-unit probe: a logistic regression on every unit's
value at the end of each review (h and c of every layer, standardised; its L2 weight chosen on a fifth of the
train+valid reviews held back, then refit on all of them), scored on the test reviews, beside the majority class.

The dial, for a model whose atlas.json gives the sentiment unit a `dial`: samples at T = 0.8 after each of
`DIAL_PROMPTS` with the unit held at the atlas's "positive" value, at its "negative" value, and not held (one seed,
one row per sample, each row its own random stream, the same streams in the three arms), judged by a bag-of-words
logistic regression trained on the rated reviews of the corpus's training split only (the atlas's rating rule,
rating sentences removed; its L2 weight chosen on the rated validation reviews), never by the LSTM. Each arm's
perplexity is that of its sampled tokens under the plain model (no unit held), beside the unheld arm's.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmdemo.atlas import REVIEWS_PER_PART, build_atlas, corpus_texts, final_states, read_atlas  # noqa: E402
from lmdemo.checkpoint import TrainedModel, load_model  # noqa: E402
from lmdemo.corpus import Corpus, clean_html, load_corpus  # noqa: E402
from lmdemo.generation import Generator  # noqa: E402
from lmdemo.properties import SENTIMENT, rating_label, without_ratings  # noqa: E402
from lmdemo.sampling import Dial, Sample, Sampling  # noqa: E402

SHIPPED = ("checkpoints/shakespeare-char", "checkpoints/imdb-word", "checkpoints/imdb-bpe")
L2_WEIGHTS = (1e-4, 1e-3, 1e-2, 1e-1)
JUDGE_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
JUDGE_MIN_REVIEWS = 3  # a word joins the judge's vocabulary when this many rated training reviews hold it
JUDGE_L2_WEIGHTS = (1e-5, 1e-4, 1e-3, 1e-2)
DIAL_PROMPTS = ("this movie was", "i watched this film and", "the acting")
DIAL_TEMPERATURE = 0.8


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


# -- the dial's judge ----------------------------------------------------------------------------
def judge_words(text: str) -> set[str]:
    """The distinct words of a text as the judge reads them: HTML removed, lower-cased, so that a word model's
    lower-cased samples and a BPE model's cased ones read alike."""
    return set(JUDGE_WORD.findall(clean_html(text).lower()))


def rated_reviews(corpus: Corpus, split: str) -> tuple[list[str], list[bool]]:
    """A split's rated reviews, rating sentences removed, and their labels: the atlas's rating rule."""
    rated = [(without_ratings(line), label) for doc in corpus.split(split) for line in doc.split("\n")
             if (label := rating_label(line)) is not None]
    rated = [(review, label) for review, label in rated if judge_words(review)]
    return [review for review, _ in rated], [label for _, label in rated]


@dataclass
class Judge:
    """Sentiment by a bag-of-words logistic regression: which words of a fixed vocabulary a text holds, that
    vector scaled to length 1 (so a 50-token sample and a 300-word review weigh alike)."""

    vocabulary: dict[str, int]
    weights: torch.Tensor
    bias: torch.Tensor
    l2: float

    def features(self, texts: Sequence[str]) -> torch.Tensor:
        """A sparse [texts, vocabulary] matrix: 1 / sqrt(n) for each of the n vocabulary words a text holds."""
        rows, columns, values = [], [], []
        for row, text in enumerate(texts):
            held = sorted(self.vocabulary[word] for word in judge_words(text) if word in self.vocabulary)
            rows += [row] * len(held)
            columns += held
            values += [max(len(held), 1) ** -0.5] * len(held)
        return torch.sparse_coo_tensor(torch.tensor([rows, columns], dtype=torch.long).reshape(2, -1),
                                       torch.tensor(values, dtype=torch.double), (len(texts), len(self.vocabulary)),
                                       check_invariants=True)

    def positive(self, texts: Sequence[str]) -> torch.Tensor:
        """Whether each text is judged positive [N] (bool)."""
        return self.features(texts) @ self.weights + self.bias > 0

    def accuracy(self, texts: Sequence[str], labels: Sequence[bool]) -> float:
        return float((self.positive(texts) == torch.tensor(labels)).double().mean())


def passages(reviews: Sequence[str], labels: Sequence[bool], words: int) -> tuple[list[str], list[bool]]:
    """Each review cut into consecutive passages of `words` words, each labelled as its review."""
    cut = [(" ".join(split[start:start + words]), label) for review, label in zip(reviews, labels)
           for split in [review.split()] for start in range(0, len(split), words)]
    return [text for text, _ in cut], [label for _, label in cut]


def train_judge(corpus: Corpus, words: int) -> Judge:
    """The judge fitted on passages of `words` words (a sample's length) of the rated reviews of the training split,
    its L2 weight the best of `JUDGE_L2_WEIGHTS` on those of the validation split; it never sees the test split
    or any model. Fitted on whole reviews it judged most short negative passages positive."""
    train_reviews, train_labels = rated_reviews(corpus, "train")
    counts = Counter(word for review in train_reviews for word in judge_words(review))
    vocabulary = {word: column for column, word in
                  enumerate(sorted(word for word, count in counts.items() if count >= JUDGE_MIN_REVIEWS))}
    untrained = Judge(vocabulary, torch.zeros(len(vocabulary), dtype=torch.double), torch.zeros(1, dtype=torch.double), 0.0)
    texts, labels = passages(train_reviews, train_labels, words)
    features, targets = untrained.features(texts), torch.tensor(labels).double()
    valid = passages(*rated_reviews(corpus, "valid"), words)
    fits = {l2: Judge(vocabulary, *fit_probe(features, targets, l2), l2) for l2 in JUDGE_L2_WEIGHTS}
    return max(fits.values(), key=lambda judge: judge.accuracy(*valid))


# -- the dial ------------------------------------------------------------------------------------
@dataclass
class Arm:
    """The samples of one setting of the dial (`dial` None: not held), judged and scored by the plain model."""

    name: str
    dial: Dial | None
    texts: list[str]
    positive: float  # share judged positive
    perplexity: float  # of the sampled tokens under the plain model
    tokens: int


def plain_log_likelihood(generator: Generator, prompt: list[int], sample: Sample) -> float:
    """The log-probability of a sample's tokens after its prompt under the plain model (no unit held)."""
    if not sample.ids:
        return 0.0
    log_probs = generator.read([*prompt, *sample.ids])[0]
    rows = torch.arange(len(prompt), len(prompt) + len(sample.ids))
    return float(log_probs[rows, torch.tensor(sample.ids)].sum())


def dial_arms(trained: TrainedModel, entry: dict, judge: Judge, samples: int, tokens: int,
              prompts: Sequence[str] = DIAL_PROMPTS) -> list[Arm]:
    """The atlas entry's unit held at each end of its dial and not held: `samples` samples per arm, spread over
    `prompts`, of at most `tokens` tokens each (fewer when the model ends the review)."""
    generator = Generator(trained)
    rows = max(1, samples // len(prompts))
    settings = [(end, Dial(entry["layer"], entry["unit"], entry["quantity"], value))
                for end, value in entry["dial"].items()] + [("not held", None)]
    arms = []
    for name, dial in settings:
        texts, log_likelihood, count = [], 0.0, 0
        for prompt in prompts:
            ids = generator.prompt(prompt).ids
            sampling = Sampling(temperatures=[DIAL_TEMPERATURE] * rows, max_new_tokens=tokens, seed=0, dial=dial)
            for sample in generator.generate(ids, sampling):
                texts.append(sample.text)
                log_likelihood += plain_log_likelihood(generator, ids, sample)
                count += len(sample.ids)
        positive = float(judge.positive(texts).double().mean())
        arms.append(Arm(name, dial, texts, positive, math.exp(-log_likelihood / max(count, 1)), count))
    return arms


def print_dial(source: str, arms: list[Arm]) -> None:
    plain = arms[-1].perplexity
    print(f"\n### {source}: the sentiment dial, judged by the bag-of-words judge")
    print("| unit held at | samples | mean tokens | judged positive | judged negative | perplexity (plain model) "
          "| × not held |\n|---|---:|---:|---:|---:|---:|---:|")
    for arm in arms:
        held = "not held" if arm.dial is None else f"{arm.name} ({arm.dial})"
        print(f"| {held} | {len(arm.texts)} | {arm.tokens / len(arm.texts):.1f} | {arm.positive:.0%} | "
              f"{1 - arm.positive:.0%} | {arm.perplexity:.1f} | {arm.perplexity / plain:.2f} |")
    for arm in arms:
        print(f"{arm.name}, first sample: {arm.texts[0].strip()[:160]!r}")


def print_judge(judge: Judge, corpus: Corpus, words: int) -> None:
    """The judge's own accuracy on the rated test reviews: whole, on their first `words` words, and on all their
    passages of `words` words, with its recall of each class there."""
    reviews, labels = rated_reviews(corpus, "test")
    first = [" ".join(review.split()[:words]) for review in reviews]
    texts, truths = passages(reviews, labels, words)
    truth, judged = torch.tensor(truths), judge.positive(texts)
    print(f"\njudge: bag-of-words logistic regression on {len(judge.vocabulary):,} words (in >= {JUDGE_MIN_REVIEWS} "
          f"of the rated training reviews), fitted on their passages of {words} words, L2 {judge.l2:g} (chosen on the "
          f"rated validation reviews); accuracy on the {len(reviews):,} rated test reviews: whole "
          f"{judge.accuracy(reviews, labels):.3f}, first {words} words {judge.accuracy(first, labels):.3f}, "
          f"all {len(texts):,} passages of {words} words {float((judged == truth).double().mean()):.3f} (of the "
          f"positive reviews' judged positive {float(judged[truth].double().mean()):.3f}, of the negative ones' judged "
          f"negative {float((~judged[~truth]).double().mean()):.3f})")


def print_atlas(source: str, trained: TrainedModel) -> None:
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
    if any(entry["property"] == SENTIMENT.name for entry in atlas["properties"]):
        start_id = trained.tokenizer.start_id
        test_labels = torch.tensor(score.labels)
        accuracy, l2 = probe_accuracy(final_states(trained.model, choose.reviews, start_id),
                                      torch.tensor(choose.labels),
                                      final_states(trained.model, score.reviews, start_id), test_labels)
        majority = max(float(test_labels.double().mean()), 1 - float(test_labels.double().mean()))
        print(f"sentiment on all {len(score.reviews):,} rated test reviews: all-unit probe {accuracy:.3f} "
              f"(L2 {l2:g}), majority class {majority:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list(SHIPPED), help="model folders (default: the shipped three)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--dial-only", action="store_true", help="measure only the dial, not the atlas")
    parser.add_argument("--dial-samples", type=int, default=60,
                        help=f"samples per dial setting, spread over {len(DIAL_PROMPTS)} prompts (default: 60; 0: none)")
    parser.add_argument("--dial-tokens", type=int, default=50, help="tokens per dial sample (default: 50)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"command: python bench/atlas.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"machine: {machine()}")
    judges: dict[str, Judge] = {}
    for source in args.models:
        trained = load_model(source)
        if not args.dial_only:
            print_atlas(source, trained)
        entry = next((entry for entry in (read_atlas(trained.folder) or {}).get("properties", [])
                      if entry["property"] == SENTIMENT.name and "dial" in entry), None)
        if entry is None or args.dial_samples <= 0:
            continue
        data = trained.config.data
        if data not in judges:
            corpus = load_corpus(trained.config.replace(clean_html=False))
            judges[data] = train_judge(corpus, args.dial_tokens)
            print_judge(judges[data], corpus, args.dial_tokens)
        print_dial(source, dial_arms(trained, entry, judges[data], args.dial_samples, args.dial_tokens))
    return 0

if __name__ == "__main__":
    sys.exit(main())
