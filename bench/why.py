""""Why this token?" measured: how long one explanation takes on each shipped model, and whether imdb-word's sentiment
unit is among the units that decide its strongly positive and negative words.

    python bench/why.py                         # both, every rated test review
    python bench/why.py --reviews 200 --threads 2

Timing: for each model, a sample of `SAMPLE_TOKENS` tokens at T = 0.8 (seed 0) after its first example prompt, and
`lmdemo.why.explain` of tokens spread over the sample, each read with the prompt and the sample up to it, as a click on
a sampled token would ask: as it comes (the units shown held from the token on), and with one more unit asked about,
which is also held from the text's start (a step per token); the median and the slowest, wall time, after a warm-up.

Sentiment: the words the dial's bag-of-words judge (bench/atlas.py's `train_judge`, fitted on the rated training
reviews only) weighs most positive and most negative, `STRONG_WORDS` of each that are words of imdb-word's vocabulary;
on the rated test reviews the atlas scores its sentiment unit on (`corpus_texts`, every rated review, rating sentences
removed), each occurrence of such a word is explained as the next token there, and the figure is how often the unit
of atlas.json's sentiment row is among the `TOP_UNITS` units of largest |share|. Beside it: the same for every
`OTHER_EVERY`-th other word of those reviews, and chance (`TOP_UNITS` of the top layer's units).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

# bench/atlas.py, beside this script: the shipped models, the machine's description and the dial's judge
from atlas import SHIPPED, machine, train_judge

from lmdemo.atlas import corpus_texts, read_atlas
from lmdemo.checkpoint import TrainedModel, load_model
from lmdemo.corpus import load_corpus
from lmdemo.generation import Dial, Generator, Sampling
from lmdemo.properties import SENTIMENT
from lmdemo.why import attribute, explain, next_log_probs, read_text, row_shares

SAMPLE_TOKENS, TIMED = 60, 20
HELD_UNIT = "1:0:c=0"  # a unit asked about: the bottom layer's first cell, held at 0
STRONG_WORDS, TOP_UNITS, OTHER_EVERY = 100, 5, 25
JUDGE_PASSAGE_WORDS = 50  # the judge is fitted on passages of this many words, as bench/atlas.py fits it for the dial


def time_explanations(generator: Generator, hold: list[Dial]) -> tuple[float, float, float, int]:
    """Median and slowest wall seconds of `explain` (holding `hold` too) over `TIMED` tokens of a sample, the median CPU
    seconds (near the wall time on an idle core: one thread) and the longest text read."""
    prompt = generator.prompt(generator.trained.examples[0]).ids
    sample = generator.generate(prompt, Sampling(temperatures=[0.8], max_new_tokens=SAMPLE_TOKENS, seed=0))[0]
    text = [*prompt, *sample.ids]
    positions = [len(prompt) + index * len(sample.ids) // TIMED for index in range(TIMED)]
    explain(generator, text[:positions[0] + 1], positions[0], hold=hold)  # warm-up: oneDNN builds its kernels
    wall, cpu = [], []
    for position in positions:
        began, began_cpu = time.perf_counter(), time.process_time()
        explain(generator, text[:position + 1], position, hold=hold).as_json()
        wall.append(time.perf_counter() - began)
        cpu.append(time.process_time() - began_cpu)
    return statistics.median(wall), max(wall), statistics.median(cpu), positions[-1] + 1


def strong_words(trained: TrainedModel, weights: torch.Tensor, vocabulary: dict[str, int]) -> dict[int, bool]:
    """The judge's `STRONG_WORDS` most positive and most negative words that are tokens of the model: id -> positive."""
    tokenizer, words = trained.tokenizer, {column: word for word, column in vocabulary.items()}
    strong: dict[int, bool] = {}
    for positive in (True, False):
        kept = 0
        for column in weights.argsort(descending=positive).tolist():
            token = tokenizer.hf.token_to_id(words[column])
            if token is not None and token != tokenizer.unk_id:
                strong[token], kept = positive, kept + 1
            if kept == STRONG_WORDS:
                break
    return strong


def sentiment_in_top_units(trained: TrainedModel, max_reviews: int) -> None:
    """How often the sentiment unit is among the top units for the judge's strong words, and for other words."""
    entry = next(entry for entry in read_atlas(trained.folder)["properties"] if entry["property"] == SENTIMENT.name)
    model, start_id = trained.model.eval(), trained.tokenizer.start_id
    if entry["layer"] != model.config.num_layers or entry["quantity"] != "h":
        print(f"the sentiment unit ({entry['layer']}:{entry['unit']}:{entry['quantity']}) is not the top layer's h: "
              f"it has no share of the logits")
        return
    began = time.perf_counter()
    judge = train_judge(load_corpus(trained.config.replace(clean_html=False)), JUDGE_PASSAGE_WORDS)
    strong = strong_words(trained, judge.weights, judge.vocabulary)
    reviews = corpus_texts(trained, max_reviews=None)[1].reviews
    if max_reviews:
        reviews = [reviews[index * len(reviews) // max_reviews] for index in range(min(max_reviews, len(reviews)))]
    hits = {"positive": [], "negative": [], "other": []}
    for review in reviews:
        rows = [index for index, token in enumerate(review) if token in strong or index % OTHER_EVERY == 0]
        if not rows:
            continue
        hidden = read_text(model, review, start_id)[0][rows]  # the state each row's token is predicted from
        tokens = torch.tensor([review[index] for index in rows])
        shares = row_shares(attribute(model, hidden, next_log_probs(model, hidden), tokens), len(rows))
        in_top = (shares.abs().topk(TOP_UNITS, 1).indices == entry["unit"]).any(1).tolist()
        for token, hit in zip(tokens.tolist(), in_top):
            hits["other" if token not in strong else "positive" if strong[token] else "negative"].append(hit)
    words = {positive: [trained.tokenizer.tokens([token])[0] for token, side in strong.items() if side == positive]
             for positive in (True, False)}
    print(f"\n## imdb-word's sentiment unit (layer {entry['layer']} h {entry['unit']}) among the top {TOP_UNITS} "
          f"units by |share|, on {len(reviews):,} rated test reviews ({time.perf_counter() - began:.0f} s)")
    print(f"strong words: the judge's {STRONG_WORDS} most positive ({', '.join(words[True][:8])}, ...) and "
          f"{STRONG_WORDS} most negative ({', '.join(words[False][:8])}, ...)")
    print("| words explained | occurrences | sentiment unit in the top 5 |\n|---|---:|---:|")
    strong_hits = hits["positive"] + hits["negative"]
    for label, found in (("strongly positive", hits["positive"]), ("strongly negative", hits["negative"]),
                         ("strong, both", strong_hits), (f"every {OTHER_EVERY}th other word", hits["other"])):
        print(f"| {label} | {len(found):,} | {sum(found) / max(len(found), 1):.1%} |")
    print(f"chance: {TOP_UNITS} of {model.config.hidden_size} units, {TOP_UNITS / model.config.hidden_size:.1%}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default: 1, as app.py serves on 2 cores: cores / concurrency)")
    parser.add_argument("--reviews", type=int, default=0,
                        help="rated test reviews read for the sentiment figure, spread evenly (default: 0, all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"command: python bench/why.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"machine: {machine()}")
    print(f"\n## one explanation (`explain`, {TIMED} tokens of a {SAMPLE_TOKENS}-token sample each; load average "
          f"{os.getloadavg()[0]:.1f} before): as shown, and with one unit asked about ({HELD_UNIT}, held from the "
          f"text's start too)\n| model | median | slowest | median CPU time | with a unit held: median | slowest | "
          f"longest text |\n|---|---:|---:|---:|---:|---:|---:|")
    for source in SHIPPED:
        generator = Generator(load_model(BENCH.parent / source))
        median, slowest, cpu, tokens = time_explanations(generator, [])
        held_median, held_slowest, _, _ = time_explanations(generator, [Dial.parse(HELD_UNIT)])
        print(f"| {Path(source).name} | {median * 1000:.0f} ms | {slowest * 1000:.0f} ms | {cpu * 1000:.0f} ms | "
              f"{held_median * 1000:.0f} ms | {held_slowest * 1000:.0f} ms | {tokens} tokens |")
    sentiment_in_top_units(load_model(BENCH.parent / "checkpoints" / "imdb-word"), args.reviews)
    return 0


if __name__ == "__main__":
    sys.exit(main())
