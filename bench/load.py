"""Many users on one small server: simulated users against a real `python app.py` on 127.0.0.1.

    python bench/load.py                       # 16 users, 10 requests each, the shipped models
    python bench/load.py --users 1 4 16 64     # one run per user count, batched and per-request decoding
    python bench/load.py --decode batched      # one path only (a server per path; the default runs both)
    python bench/load.py --users 16 --requests 70 --rss-at 100 1000   # memory after 100 and 1,000
    python bench/load.py --users 4 --requests 40 --training    # idle, then while a Train-tab job trains

Each user is a page of its own (a session, one keep-alive connection, Gradio's queue protocol as a browser
speaks it; all users share one thread of this process) from an address of its own (app.py runs with
--proxy-hops 1, each user's X-Forwarded-For a documentation address) that sends a seeded mix of requests:
"generate" (3 temperatures x 100 new tokens), "next" (next-token bars of its last sample) and
"score" (a long prompt, one new token: the work of colouring the prompt by surprisal); a "generate" or "score"
ends, as on the page, with the /after_generate the page sends when a run is done (its bars and pickers). Prints
requests/s, p50/p95/p99 latency per kind and overall, the time to first token of "generate" (until its first
streamed update reaches the client), errors, the CPU the server and the simulated users used, and the server's
resident memory (peak, and after
the requests counted by --rss-at). With both --decode paths (app.py's --decode: one decode loop per model that
batches every request's steps, or each request decoding alone) the same users and requests run against a server of
each, one after the other, and a last table sets the two side by side.

With --training each user count runs twice: with no training job, then while a visitor's job of the Train
tab (Tiny Shakespeare, the tab's default level and size, through /train like any visitor) trains; the
summary sets the two "generate" p95 latencies side by side, and says how fast the job trained meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"}
PROMPTS = {
    "shakespeare-char": ["ROMEO:\n", "First Citizen:\nBefore we proceed any further, hear me speak.\n\n",
                         "KING RICHARD III:\nNow is the winter of our discontent\n"],
    "imdb-word": ["this movie was", "i have seen a lot of horror films , but", "the acting is"],
}
LONG_PROMPT = {
    "shakespeare-char": ("MENENIUS:\nEither you must confess yourselves wondrous malicious, or be accused of folly. "
                         "I shall tell you a pretty tale: it may be you have heard it; but, since it serves my "
                         "purpose, I will venture to stale 't a little more.\n"),
    "imdb-word": ("i rented this film because the cover looked interesting and a friend of mine said that the "
                  "director had done good work before , but i was disappointed from the very first scene . the "
                  "story makes no sense and the actors seem to know it ."),
}
MIX = {"generate": 0.5, "next": 0.25, "score": 0.25}


@dataclass
class Tally:
    """What every user saw (they all run in one thread)."""
    latencies: dict[str, list[float]] = field(default_factory=lambda: {kind: [] for kind in MIX})
    first_token: list[float] = field(default_factory=list)  # "generate": until its first streamed update
    errors: list[str] = field(default_factory=list)
    done: int = 0

    def add(self, kind: str, seconds: float | None, error: str | None = None) -> int:
        if error is None:
            self.latencies[kind].append(seconds)
        else:
            self.errors.append(f"{kind}: {error}")
        self.done += 1
        return self.done

    def print_latencies(self) -> list[float]:
        """Print p50/p95/p99 per kind and overall; the latencies of every kind together."""
        every = [s for values in self.latencies.values() for s in values]
        print(f"  {'kind':<9}{'count':>6}{'p50 s':>8}{'p95 s':>8}{'p99 s':>8}")
        for kind, values in [*self.latencies.items(), ("all", every)]:
            if values:
                print(f"  {kind:<9}{len(values):>6}{percentile(values, 50):>8.2f}{percentile(values, 95):>8.2f}"
                      f"{percentile(values, 99):>8.2f}")
        return every


def generate_args(model: str, prompt: str, temperatures: str, max_new: int, seed: int) -> list:
    """The /generate endpoint's inputs, in the order app.py declares them (the last: no dial)."""
    return [model, prompt, temperatures, max_new, 0, 1.0, str(seed), "", False, ""]


class Page:
    """What one open page sends, through Gradio's queue as its browser does (join, then read the session's event
    stream until the event completes), on one keep-alive connection. Not gradio_client: that client opens a
    connection and a thread per request and polls, and 16 of them took more CPU (1.1 cores of 2) than the server
    they measured (0.7); these pages all share one thread."""

    def __init__(self, http: httpx.AsyncClient, endpoints: dict[str, tuple[int, list[bool]]]):
        self.http, self.endpoints = http, endpoints
        self.session = uuid.uuid4().hex

    async def call(self, api_name: str, *data: Any, first: list[float] | None = None) -> list:
        """The endpoint's outputs; `first` gets the time its first streamed update came, if any."""
        fn, stateful = self.endpoints[api_name]
        if len(data) != stateful.count(False):
            raise ValueError(f"/{api_name} takes {stateful.count(False)} inputs (got {len(data)})")
        values = iter(data)
        payload = dict(data=[None if state else next(values) for state in stateful], fn_index=fn,
                       session_hash=self.session, event_data=None, trigger_id=None)
        started = time.perf_counter()
        joined = await self.http.post("gradio_api/queue/join", json=payload)
        joined.raise_for_status()
        event = joined.json()["event_id"]
        completed = None
        async with self.http.stream("GET", "gradio_api/queue/data", params={"session_hash": self.session}) as stream:
            async for line in stream.aiter_lines():  # to the server's close_stream, as a page reads: a stream
                if not line.startswith("data:"):     # left early could be handed the next event's messages
                    continue
                message = json.loads(line[5:])
                if message["msg"] == "close_stream":
                    break
                if message.get("event_id") != event:
                    continue
                if message["msg"] == "process_generating" and first is not None and not first:
                    first.append(time.perf_counter() - started)
                if message["msg"] == "process_completed":
                    completed = message
        if completed is None:
            raise RuntimeError("the event stream ended before the event completed")
        if not completed.get("success"):
            raise RuntimeError(completed.get("output", {}).get("error") or "the event failed")
        return completed["output"]["data"]


def endpoints(url: str) -> dict[str, tuple[int, list[bool]]]:
    """Each named endpoint's event number and which of its inputs are session state (the page sends null)."""
    with urllib.request.urlopen(url + "config", timeout=30) as answer:
        config = json.load(answer)
    states = {component["id"] for component in config["components"] if component["type"] == "state"}
    return {event["api_name"]: (event["id"], [block in states for block in event["inputs"]])
            for event in config["dependencies"] if event.get("api_name")}


async def user(url: str, named: dict, model: str, number: int, requests: int, deadline: float, tally: Tally,
               on_count: callable) -> None:
    draw = random.Random(number)
    shown: tuple[int, int] | None = None  # the session's last samples: how many, how many tokens at least
    address = {"X-Forwarded-For": f"203.0.113.{number % 254 + 1}"}  # a visitor's own, as a Space's proxy says
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(300.0), headers=address) as http:
        page = Page(http, named)
        for _ in range(requests):
            if time.monotonic() > deadline:
                return
            kind = draw.choices(list(MIX), weights=list(MIX.values()))[0]
            if kind == "next" and shown is None:
                kind = "generate"
            started = time.perf_counter()
            try:
                if kind == "generate":
                    first: list[float] = []
                    await page.call("generate", *generate_args(model, draw.choice(PROMPTS[model]), "0.5, 0.8, 1.0",
                                                               100, draw.randrange(1000)), first=first)
                    await page.call("after_generate")  # the page asks for the run's bars once it is done
                    tally.first_token += first
                    shown = (3, 20)
                elif kind == "next":
                    await page.call("next_tokens", draw.randrange(shown[0]), draw.randrange(shown[1]), 10)
                else:
                    await page.call("generate", *generate_args(model, LONG_PROMPT[model], "1", 1, 0))
                    await page.call("after_generate")
                    shown = (1, 1)
                count = tally.add(kind, time.perf_counter() - started)
            except Exception as error:  # a benchmark counts failures instead of stopping on them
                count = tally.add(kind, None, f"{type(error).__name__}: {error}"[:200])
            on_count(count)


def rss_kib(pid: int, field_name: str = "VmRSS") -> int:
    """Resident memory of a process in KiB (VmHWM is the peak so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field_name} for process {pid}")


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used (user and system, all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def start_server(port: int, extra: list[str]) -> subprocess.Popen:
    """app.py behind a (pretend) proxy: each simulated user has an address of its own, told by X-Forwarded-For,
    as visitors of a Space do (documentation addresses, 203.0.113.x: they only name users)."""
    command = [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--proxy-hops", "1", *extra]
    # its log goes to a file: a pipe nobody reads fills up with the tracebacks Gradio prints for refused requests,
    # and then every write blocks the server
    log = tempfile.TemporaryFile("w+")
    server = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=log, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            raise SystemExit(f"app.py exited with {server.returncode}: {log.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("app.py did not answer within 180 s")


@dataclass
class Summary:
    """One run's line of the side-by-side table."""
    path: str
    users: int
    rate: float
    p50: float
    p95: float
    p99: float
    first_p50: float
    first_p95: float
    errors: int
    peak_mib: float


def run_load(url: str, pid: int, model: str, users: int, requests: int, seconds: float,
             rss_at: list[int], path: str = "") -> tuple[Tally, Summary]:
    tally = Tally()
    rss_seen: dict[int, int] = {}

    def on_count(count: int) -> None:
        if count in rss_at:
            rss_seen[count] = rss_kib(pid)

    async def everyone() -> None:
        named = endpoints(url)
        await asyncio.gather(*(user(url, named, model, n, requests, deadline, tally, on_count) for n in range(users)))

    deadline = time.monotonic() + seconds
    started, server_cpu, own_cpu = time.perf_counter(), cpu_seconds(pid), sum(os.times()[:2])
    asyncio.run(everyone())
    wall = time.perf_counter() - started
    server_cores, own_cores = (cpu_seconds(pid) - server_cpu) / wall, (sum(os.times()[:2]) - own_cpu) / wall
    print(f"\n{users} user(s): {tally.done} requests in {wall:.1f} s = {tally.done / wall:.2f} requests/s, "
          f"{len(tally.errors)} error(s)")
    every = tally.print_latencies()
    first = tally.first_token or [math.nan]
    print(f"  generate's first token: p50 {percentile(first, 50):.3f} s, p95 {percentile(first, 95):.3f} s")
    for error in tally.errors[:5]:
        print(f"  error: {error}")
    print(f"  CPU: the server {server_cores:.2f} cores, these simulated users {own_cores:.2f}, of {os.cpu_count()}")
    peak = rss_kib(pid, 'VmHWM') / 1024
    print(f"  server memory: now {rss_kib(pid) / 1024:.0f} MiB, peak {peak:.0f} MiB"
          + "".join(f", after {n} requests {kib / 1024:.0f} MiB" for n, kib in sorted(rss_seen.items())))
    every = every or [math.nan]
    return tally, Summary(path, users, tally.done / wall, percentile(every, 50), percentile(every, 95),
                          percentile(every, 99), percentile(first, 50), percentile(first, 95), len(tally.errors), peak)


def print_side_by_side(summaries: list[Summary]) -> None:
    print(f"\n{'users':>5}  {'decode':<12}{'req/s':>7}{'p50 s':>7}{'p95 s':>7}{'p99 s':>7}{'TTFT p50':>9}"
          f"{'TTFT p95':>9}{'errors':>7}{'peak MiB':>9}")
    for s in sorted(summaries, key=lambda s: (s.users, s.path)):
        print(f"{s.users:>5}  {s.path:<12}{s.rate:>7.2f}{s.p50:>7.2f}{s.p95:>7.2f}{s.p99:>7.2f}{s.first_p50:>9.3f}"
              f"{s.first_p95:>9.3f}{s.errors:>7}{s.peak_mib:>9.0f}")


TRAINER_CLIENT = """
import sys, threading, time
from gradio_client import Client
sys.path.insert(0, sys.argv[3])
from lmdemo.web.train_requests import CORPORA, DEFAULT_LEVEL, DEFAULT_SIZE
client = Client(sys.argv[1], verbose=False)
job = client.submit(CORPORA["tinyshakespeare"].read(), DEFAULT_LEVEL, DEFAULT_SIZE, float(sys.argv[2]), api_name="/train")
def stop():
    sys.stdin.readline()
    print("STOPPING", not job.done(), flush=True)
    client.predict(api_name="/stop_training")
threading.Thread(target=stop, daemon=True).start()
seen = 0
while not job.done():
    outputs = job.outputs()
    for update in outputs[seen:]:
        print(update[0].replace("\\n", " "), flush=True)
    seen = len(outputs)
    time.sleep(0.2)
print(job.result()[0], flush=True)
print("ENDED", flush=True)
"""


class Training:
    """A visitor's Train-tab job, through /train like the page's, from a process of its own (as a visitor's
    browser is elsewhere: its updates must not cost the simulated users' process): started, watched, stopped."""

    def __init__(self, url: str, seconds: float):
        self.process = subprocess.Popen([sys.executable, "-c", TRAINER_CLIENT, url, f"{seconds:g}", str(ROOT)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        deadline = time.monotonic() + 120
        while not self.status().startswith("**Training**"):
            if "ENDED" in self.lines or self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the training job did not start: {self.status()}")
            time.sleep(0.2)

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def status(self) -> str:
        shown = [line for line in self.lines if line.startswith("**")]
        return shown[-1] if shown else ""

    def stop(self) -> str:
        self.process.stdin.write("stop\n")
        self.process.stdin.flush()
        self.process.wait(timeout=120)
        self.reader.join(timeout=5)
        running = any(line == "STOPPING True" for line in self.lines)
        return "trained throughout" if running else "ENDED BEFORE THE LOAD DID (raise --train-seconds)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[16], help="simulated users, one run per value")
    parser.add_argument("--requests", type=int, default=10, help="requests per user (default: 10)")
    parser.add_argument("--seconds", type=float, default=300, help="stop sending after this long (default: 300)")
    parser.add_argument("--model", default="shakespeare-char", choices=sorted(PROMPTS), help="model to ask")
    parser.add_argument("--port", type=int, default=7871)
    parser.add_argument("--rss-at", type=int, nargs="*", default=[], help="read the server's memory after N requests")
    parser.add_argument("--training", action="store_true",
                        help="run each user count twice: idle, then while a Train-tab job trains")
    parser.add_argument("--train-seconds", type=float, default=180,
                        help="that job's time budget: longer than a load run (default: 180)")
    parser.add_argument("--decode", nargs="+", choices=("batched", "per-request"), default=["batched", "per-request"],
                        help="app.py's decoding paths to run, a server each (default: both)")
    parser.add_argument("app_args", nargs="*", help="after --: options for app.py (e.g. -- --concurrency 4)")
    args = parser.parse_args(argv)
    app_args = [*args.app_args, "--train-seconds", f"{args.train_seconds:g}"] if args.training else args.app_args
    summaries: list[Summary] = []
    for path in args.decode:
        summaries += run_path(args, [*app_args, "--decode", path], path)
    print_side_by_side(summaries)
    return 0


def run_path(args: argparse.Namespace, app_args: list[str], path: str) -> list[Summary]:
    """Every user count against one server."""
    server = start_server(args.port, app_args)
    url = f"http://127.0.0.1:{args.port}/"
    summaries = []
    try:
        print(f"\n=== app.py {' '.join(app_args)} on 127.0.0.1:{args.port}; model {args.model}; "
              f"{os.cpu_count()} CPU(s); server memory after start {rss_kib(server.pid) / 1024:.0f} MiB")
        for users in args.users:
            idle, summary = run_load(url, server.pid, args.model, users, args.requests, args.seconds, args.rss_at,
                                     path)
            summaries.append(summary)
            if not args.training:
                continue
            training = Training(url, args.train_seconds)
            print(f"\nwhile training: {training.status()}")
            busy, _ = run_load(url, server.pid, args.model, users, args.requests, args.seconds, args.rss_at, path)
            during = training.status()
            print(f"  the job {training.stop()}; its last update during the load: {during}")
            idle_p95, busy_p95 = (percentile(t.latencies["generate"], 95) for t in (idle, busy))
            print(f"\n{users} user(s), generate p95: {idle_p95:.2f} s with no training job, {busy_p95:.2f} s while "
                  f"one trains ({busy_p95 / idle_p95:.2f}×)")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return summaries


if __name__ == "__main__":
    sys.exit(main())
