"""How the vocabulary size trades against `<unk>`: the share of test tokens a word model cannot name.

    python bench/vocab_coverage.py                                   # IMDB, the imdb-word preset's tokenisation
    python bench/vocab_coverage.py --data ../shared/data/wikitext-2 --sizes 5000 10000 30000

A model's perplexity counts `<unk>` as one word, so a smaller vocabulary folds more of the rarest
(hardest) words into one easy token: perplexities are comparable only at the same `<unk>` rate.
Prints, for each vocabulary size (the most frequent training words kept), the `<unk>` share of the
test split's words.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmdemo.config import Config, preset  # noqa: E402
from lmdemo.corpus import load_corpus  # noqa: E402
from lmdemo.tokenizer import Tokenizer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "imdb"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[2_000, 5_000, 10_000, 20_000, 30_000, 50_000])
    args = parser.parse_args(argv)
    config = Config(**{**preset("imdb-word"), "data": args.data, "valid_split": "valid", "max_vocab": None})
    corpus = load_corpus(config)
    tokenizer = Tokenizer.build(corpus.train, "word", config.min_freq, None, config.lowercase)
    ids = tokenizer.encode_documents(corpus.split("test"))
    words = ids[ids != tokenizer.eos_id]  # <eos> is always known: leave it out of the shares
    known = tokenizer.vocab_size - 2
    print(f"{args.data}: {words.numel():,} test words; {known:,} training words seen >= {config.min_freq} times "
          f"(ids are in frequency order)")
    print(f"{'vocabulary':>12}{'<unk> share of test words':>29}")
    for size in [s for s in args.sizes if s < known] + [known]:
        unknown = (words == tokenizer.unk_id) | (words >= size + 2)
        print(f"{size:>12,}{unknown.double().mean().item():>29.2%}")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
