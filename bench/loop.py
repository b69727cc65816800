"""The decode loop's own ceiling: bench/load.py's users and requests, with no web server.

    python bench/loop.py                     # 16 users, 25 requests each, the shipped Shakespeare model
    python bench/loop.py --users 1 16 --requests 40

Each user is a thread of this process that calls lmdemo.web.demo's `Demo` directly, through the batched decoder
(`Batching`, as app.py's default --decode), with bench/load.py's seeded mix of "generate", "next" and "score",
each user under an address of its own, and the bars after a run as the page asks for them. Nothing else runs: no
Gradio, no HTTP, no page updates to build. What it gives is therefore what the decode loop and the reads could give
a server on this machine at best: when a latency target is out of reach here, no change to the web layer can
reach it. Prints requests/s, p50/p95/p99 latency per kind and overall, the time to a generate's first update and
the cores this process used.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from load import LONG_PROMPT, MIX, PROMPTS, Tally, percentile  # noqa: E402

from lmdemo.batching import Batching  # noqa: E402
from lmdemo.generation import Sampling  # noqa: E402
from lmdemo.web.demo import Demo  # noqa: E402
from lmdemo.web.registry import Models  # noqa: E402


def user(demo: Demo, model: str, number: int, requests: int, tally: Tally, lock: threading.Lock) -> None:
    """bench/load.py's `user`, as calls: the same seeded draws, kinds and arguments."""
    draw = random.Random(number)
    last = None
    address = f"203.0.113.{number % 254 + 1}"
    for _ in range(requests):
        kind = draw.choices(list(MIX), weights=list(MIX.values()))[0]
        if kind == "next" and last is None:
            kind = "generate"
        started = time.perf_counter()
        first: list[float] = []
        if kind == "generate":
            sampling = Sampling(temperatures=(0.5, 0.8, 1.0), max_new_tokens=100, seed=draw.randrange(1000))
            for progress in demo.generate(model, draw.choice(PROMPTS[model]), sampling, client=address):
                if not first:
                    first.append(time.perf_counter() - started)
            demo.next_tokens(progress, 0, 0)  # the bars after the prompt, which /after_generate draws
            last, shown = progress, (3, 20)
        elif kind == "next":
            demo.next_tokens(last, draw.randrange(shown[0]), draw.randrange(shown[1]))
        else:
            sampling = Sampling(temperatures=(1.0,), max_new_tokens=1)
            for progress in demo.generate(model, LONG_PROMPT[model], sampling, client=address):
                pass
            demo.next_tokens(progress, 0, 0)
            last, shown = progress, (1, 1)
        with lock:
            tally.add(kind, time.perf_counter() - started)
            tally.first_token += first


def run(demo: Demo, model: str, users: int, requests: int) -> None:
    tally, lock = Tally(), threading.Lock()
    threads = [threading.Thread(target=user, args=(demo, model, n, requests, tally, lock)) for n in range(users)]
    started, cpu = time.perf_counter(), sum(os.times()[:2])
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    cores = (sum(os.times()[:2]) - cpu) / wall
    print(f"\n{users} user(s): {tally.done} requests in {wall:.1f} s = {tally.done / wall:.2f} requests/s; "
          f"this process used {cores:.2f} cores of {os.cpu_count()}")
    tally.print_latencies()
    if tally.first_token:
        print(f"  generate's first update: p50 {percentile(tally.first_token, 50):.3f} s, "
              f"p95 {percentile(tally.first_token, 95):.3f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[16], help="simulated users, one run per value")
    parser.add_argument("--requests", type=int, default=25, help="requests per user (default: 25)")
    parser.add_argument("--model", default="shakespeare-char", choices=sorted(PROMPTS), help="model to ask")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, as app.py uses on 2 cores)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    demo = Demo(Models({args.model: str(ROOT / "checkpoints" / args.model)}), decoder=Batching())
    for _ in demo.generate(args.model, PROMPTS[args.model][0], Sampling(max_new_tokens=20)):
        pass  # the first call's one-off costs stay out of the figures
    for users in args.users:
        run(demo, args.model, users, args.requests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
