"""Decode-step speed: Generator.step against the model's own nn.LSTM forward, one token at a time.

    python bench/decode.py                      # a random 2x512 character model (emb 128, vocab 65)
    python bench/decode.py --model checkpoints/shakespeare-char --threads 2
    python bench/decode.py --model checkpoints/imdb-word --dial 2:19:h=-0.9   # the request also with a dial
    python bench/decode.py --model checkpoints/shakespeare-char --batches 1 16 32 64   # what rows cost together

Prints ms per step at batch 1 and 5 (or --batches) for both, their ratio, and the end-to-end time of one
request for 5 temperatures x 200 new tokens (and with `--dial`, the same request holding that unit).
Timings are medians of torch.utils.benchmark runs; end-to-end times are the best of 3.
"""

from __future__ import annotations

import argparse
import string
import sys
import time
from pathlib import Path

import torch
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmdemo.checkpoint import TrainedModel, load_model  # noqa: E402
from lmdemo.config import Config  # noqa: E402
from lmdemo.generation import Dial, Generator, Sampling  # noqa: E402
from lmdemo.model import LSTMLanguageModel  # noqa: E402
from lmdemo.tokenizer import Tokenizer  # noqa: E402

TEMPERATURES = (0.2, 0.5, 0.8, 1.0, 1.3)


def random_char_model(vocab: int = 65, emb: int = 128, hidden: int = 512, layers: int = 2) -> TrainedModel:
    """A model of the reference character shape with random weights and a `vocab`-token alphabet."""
    alphabet = (string.ascii_letters + string.digits + " \n.,;:!?'-&$")[: vocab - 2]
    tokenizer = Tokenizer.build([alphabet], level="char", lowercase=False)
    config = Config(level="char", emb_size=emb, hidden_size=hidden, num_layers=layers, dropout=0.0,
                    tie_weights=False, vocab_size=tokenizer.vocab_size)
    torch.manual_seed(0)  # a benchmark fixture, not a request: the weights only need to be fixed
    return TrainedModel(LSTMLanguageModel(config).eval(), tokenizer, "random", Path("."), None)


def ms_per_call(statement: str, scope: dict, min_run_time: float) -> float:
    timer = benchmark.Timer(statement, globals=scope, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder or Hub repo id (default: random 2x512 char model)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, as the app uses)")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per measurement (default: 1)")
    parser.add_argument("--dial", help="also time the request holding this unit: LAYER:UNIT:QUANTITY=VALUE")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 5], help="rows per step to time (default: 1 5)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    trained = load_model(args.model) if args.model else random_char_model()
    model, generator = trained.model.eval(), Generator(trained)
    config = model.config
    print(f"model: {trained.source}: {config.level}, {config.num_layers}x{config.hidden_size}, emb {config.emb_size}, "
          f"vocab {config.vocab_size}; torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"{'batch':>5} {'Generator.step ms':>18} {'nn.LSTM step ms':>16} {'speed-up':>9}")
    for batch in args.batches:
        ids = torch.randint(config.vocab_size, (batch,))
        zeros = torch.zeros(config.num_layers, batch, config.hidden_size)
        scope = dict(torch=torch, generator=generator, model=model, ids=ids, state=(zeros, zeros.clone()))
        with torch.no_grad():
            fast = ms_per_call("generator.step(ids, state)", scope, args.min_run_time)
            plain = ms_per_call("model(ids.unsqueeze(1), state)", scope, args.min_run_time)
        print(f"{batch:>5} {fast:>18.3f} {plain:>16.3f} {plain / fast:>8.1f}x")
    prompt = generator.prompt("ROMEO:\n").ids
    dials = [None] + ([Dial.parse(args.dial)] if args.dial else [])
    for dial in dials:
        sampling = Sampling(temperatures=TEMPERATURES, max_new_tokens=200, seed=1, stop_at_eos=False, dial=dial)
        generator.generate(prompt, sampling)  # warm-up
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            generator.generate(prompt, sampling)
            runs.append(time.perf_counter() - start)
        best = min(runs)
        print(f"end to end{f' with the dial {dial}' if dial else ''}: {len(TEMPERATURES)} temperatures x "
              f"{sampling.max_new_tokens} tokens in {best * 1e3:.0f} ms "
              f"({best * 1e3 / sampling.max_new_tokens:.2f} ms per step with sampling; best of 3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
