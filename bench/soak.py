"""A day of strangers, compressed: a real `python app.py` soaked by thousands of short visits and one abuser.

    python bench/soak.py                                   # 2,000 sessions, 20 minutes, 200 addresses, an abuser
    python bench/soak.py --sessions 300 --minutes 3 --session-ttl 30      # a short look
    python bench/soak.py --no-abuser -- --concurrency 3    # after --: options for app.py

The server runs behind a pretend proxy (`--proxy-hops 1`, or `--behind-proxy` for an app.py that predates it):
every visitor is told apart by the X-Forwarded-For it sends, a documentation address (203.0.113.x, 198.51.100.x,
192.0.2.x: they only name visitors). Its training folder (`--train-root`), Gradio's cache inside it and its
temporary files (TMPDIR) lie in a folder of this run's own, which is what "disk" measures.

Every session is a page: a session id of its own, the page's HTML, then Gradio's queue protocol as a browser
speaks it (bench/load.py's `Page`: join, then read the session's event stream), with a few seconds' thought
between clicks. The mix: short prompts on the three shipped models at the page's settings, reviews of up to
1,000 words pasted into imdb-word, the next-token bars, the Inside tab (atlas, a unit over the text, units,
span search), Compare, the dial, uploads (POST /gradio_api/upload, then the Train tab's upload event that
claims the file), and a few Train jobs (1 in --train-every sessions, 10 s budgets, through /train, then a
sample of the model). Half the pages close: they hold Gradio's heartbeat stream (/gradio_api/heartbeat/<session>)
open from the start and drop it at the end, as a closing tab does, which runs the page's unload event; some of
those close in the middle of a generation. The other half just go away: no heartbeat, no goodbye; only the
server's --session-ttl ends them. Each address visits one page at a time (a person); 1 in 5 of them comes back
more often than the rest.

Phases: a warm-up (one page of each kind), the honest visitors alone (half the sessions, half the minutes),
the same mix again while one abusive address floods every endpoint from its own process (new session ids all
the time, --abuser-inflight requests in flight: 8-temperature generations of 1,000 tokens after long prompts,
Compare likewise, Inside and span search over 3,000 characters, the atlas, bars, Train at the server's cap, and
uploads of junk it never claims), then nothing: the run waits for the work the sessions asked for to end (the
server under 5 % of a core; what it keeps is then what their pages hold, within their time to live), then for
every session to expire (--session-ttl, the server's sweep, a finite time_to_live of Gradio's State) and samples
the server a last time.

Every --sample-every seconds it samples the server process (the python app.py process alone: VmRSS from
/proc/PID/status, threads, open file descriptors in /proc/PID/fd; its trainer children's RSS beside it) and the
disk of its folders, and prints them every --print-every samples. At the end: honest latencies (p50/p95 per phase
and per kind), refusals and errors per phase (honest and abuser apart), memory and disk against the warm level
(and where the resident memory lies, by kind of mapping in /proc/PID/smaps), and a verdict table, PASS or FAIL for
each target of the soak. A failed request whose message starts "you already have", "your address already has",
"the server is busy" (or Gradio's queue being full, an upload over the cap) is a refusal; anything else that
fails is an error.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from load import (
    ENV,
    LONG_PROMPT,
    PROMPTS,
    Page,
    cpu_seconds,
    endpoints,
    generate_args,
    percentile,
)

MB, MIB = 10**6, 2**20
MODELS = ("shakespeare-char", "imdb-word", "imdb-bpe")
SHORT_PROMPTS = {**PROMPTS, "imdb-bpe": PROMPTS["imdb-word"]}
PAGE_TEMPERATURES = "0.2, 0.5, 0.8, 1, 1.3"  # the Sample tab's defaults, and its 200 new tokens
PAGE_TOKENS = 200
# honest sessions by kind (train is 1 in --train-every, on top of these)
KINDS = {"short": 30, "review": 15, "bars": 10, "inside": 15, "compare": 10, "dial": 10, "upload": 10}
REFUSALS = ("you already have", "your address already has", "the server is busy", "the training slot is busy",
            "you have trained", "too large", "queue is full", "the server's training space is full")
JUNK = "soak-junk"  # the abuser's uploads are named so: they can be found on disk
ABUSER_ADDRESS, LAST_VISITOR = "192.0.2.254", "192.0.2.253"  # outside the honest ones
HONEST_PREFIXES = ("203.0.113.", "198.51.100.", "192.0.2.")
TRAIN_BUDGET_S = 10  # an honest Train job's budget (the least the server allows)
# A pooled connection idle this long is not reused: below the server's keep-alive (uvicorn's 5 s), so a visitor never
# sends on a connection the server is closing (httpx's default, 5 s, races it: a ReadError a browser would retry).
KEEPALIVE = httpx.Limits(keepalive_expiry=4.0)
STATE_WAIT_S = 600  # a gr.State time_to_live longer than this is not waited for (the report says so)


def corpus(name: str) -> str:
    with gzip.open(ROOT / "lmdemo" / "corpora" / name, "rt", encoding="utf-8") as text:
        return text.read()


SHAKESPEARE = corpus("tinyshakespeare.txt.gz")
REVIEWS = [line for line in corpus("imdb-reviews.txt.gz").splitlines() if len(line.split()) >= 20]


def honest_addresses(count: int) -> list[str]:
    every = [f"{prefix}{n}" for prefix in HONEST_PREFIXES for n in range(1, 251)]
    if not 1 <= count <= len(every):
        raise SystemExit(f"--addresses must be from 1 to {len(every)} (got {count})")
    return every[:count]


# -- outcomes ---------------------------------------------------------------------------------------------------

def classify(error: BaseException) -> tuple[str, str]:
    """("refused" or "error", the message): a refusal is the server saying no in words a visitor can act on."""
    status = None
    if isinstance(error, httpx.HTTPStatusError):
        status = error.response.status_code
        try:
            detail = error.response.json().get("detail", error.response.text)
        except (ValueError, AttributeError):
            detail = error.response.text
        text, message = str(detail), f"HTTP {status}: {detail}"
    else:
        text = str(error) or type(error).__name__
        message = text if isinstance(error, RuntimeError) else f"{type(error).__name__}: {text}"
    said = text.strip().lstrip("*_ ").lower()
    refused = (said.startswith(REFUSALS) or "from your address are already" in said  # (the old per-address words)
               or status in (413, 429) or (status == 503 and "queue" in said))
    return ("refused" if refused else "error"), " ".join(message.split())[:300]


@dataclass
class Ledger:
    """Every request's outcome: (who, phase, kind) -> latencies of the successful ones, refusals, errors."""

    seconds: dict[tuple[str, str, str], list[float]] = field(default_factory=lambda: defaultdict(list))
    refused: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    messages: dict[tuple[str, str], Counter] = field(default_factory=lambda: defaultdict(Counter))  # (who, outcome)
    abandoned: Counter = field(default_factory=Counter)  # (who, phase): requests left by a closing page

    def ok(self, who: str, phase: str, kind: str, seconds: float) -> None:
        self.seconds[who, phase, kind].append(seconds)

    def failed(self, who: str, phase: str, kind: str, error: BaseException) -> str:
        outcome, message = classify(error)
        (self.refused if outcome == "refused" else self.errors)[who, phase, kind] += 1
        self.messages[who, outcome][f"{kind}: {message}"] += 1
        return outcome


class Failed(Exception):
    """A request of a visit failed (already counted): the visit ends there, as a visitor would give up."""


# -- the honest visitors ----------------------------------------------------------------------------------------

class Visit:
    """One page: its session, its address, its requests (timed and counted under the phase they started in)."""

    def __init__(self, soak: Soak, http: httpx.AsyncClient, draw: random.Random):
        self.soak, self.http, self.draw = soak, http, draw
        self.page = SoakPage(http, soak.named)

    async def act(self, kind: str, call) -> Any:
        phase = self.soak.phase
        started = time.perf_counter()
        try:
            result = await call()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self.soak.ledger.failed("honest", phase, kind, error)
            raise Failed from error
        self.soak.ledger.ok("honest", phase, kind, time.perf_counter() - started)
        return result

    async def think(self) -> None:
        await asyncio.sleep(self.draw.uniform(0.3, 1.7) * self.soak.args.think)

    async def open(self) -> None:
        async def load() -> None:
            answer = await self.http.get("/")
            answer.raise_for_status()
        await self.act("page", load)

    async def generate(self, kind: str, model: str, prompt: str, temperatures: str = PAGE_TEMPERATURES,
                       tokens: int = PAGE_TOKENS, dial: str = "") -> int:
        """Generate, then the page's /after_generate (timed together); the longest sample's length, for the bars."""
        async def both() -> int:
            data = generate_args(model, prompt, temperatures, tokens, self.draw.randrange(10_000))
            data[-1] = dial
            await self.page.call("generate", *data)
            after = await self.page.call("after_generate")
            shown = after[1] if len(after) > 1 and isinstance(after[1], dict) else {}
            return int(shown.get("maximum") or 20)
        return await self.act(kind, both)

    async def bars(self, samples: int, longest: int, times: int) -> None:
        for _ in range(times):
            await self.think()
            await self.act("bars", lambda: self.page.call("next_tokens", self.draw.randrange(samples),
                                                          self.draw.randrange(longest + 1), 10))

    def settings(self) -> tuple[str, int]:
        """Most visitors keep the page's settings; some ask for less."""
        return (PAGE_TEMPERATURES, PAGE_TOKENS) if self.draw.random() < 0.7 else ("0.5, 1", 100)

    # the kinds of visit
    async def short(self) -> None:
        model = self.draw.choice(MODELS)
        await self.act("info", lambda: self.page.call("model_info", model))  # the visitor picks a model
        await self.think()
        temperatures, tokens = self.settings()
        longest = await self.generate("generate", model, self.draw.choice(SHORT_PROMPTS[model]), temperatures, tokens)
        await self.bars(temperatures.count(",") + 1, longest, self.draw.randrange(3))

    async def review(self) -> None:
        review = self.draw.choice(REVIEWS).split()
        words = min(len(review), self.draw.choice((30, 80, 200, 500, 1000)))
        await self.act("info", lambda: self.page.call("model_info", "imdb-word"))
        await self.think()
        longest = await self.generate("review", "imdb-word", " ".join(review[:words]), "0.5, 1", 100)
        await self.bars(2, longest, 1)

    async def bars_visit(self) -> None:
        model = self.draw.choice(MODELS)
        longest = await self.generate("generate", model, self.draw.choice(SHORT_PROMPTS[model]))
        await self.bars(5, longest, self.draw.randint(3, 6))

    async def inside(self) -> None:
        model = self.draw.choice(MODELS)
        prompt = self.draw.choice(SHORT_PROMPTS[model])
        await self.generate("generate", model, prompt, "0.5, 1", 100)
        await self.think()
        atlas = await self.act("atlas", lambda: self.page.call("atlas", model))
        choices = (atlas[2] or {}).get("choices") if len(atlas) > 2 and isinstance(atlas[2], dict) else None
        if choices:
            chosen = self.draw.choice(choices)[1]
            await self.think()
            await self.act("atlas_unit", lambda: self.page.call("atlas_unit", model, prompt, 0, chosen))
        await self.think()
        text = self.draw.randrange(3)  # the prompt, or the prompt and one of the two samples
        await self.act("inside", lambda: self.page.call("inside", model, prompt, text, 1, "h", "variable", 16, "",
                                                        ""))
        await self.think()
        # a span of the prompt and its first sample (a prompt alone may be 3 tokens long)
        await self.act("find_units", lambda: self.page.call("find_units", model, prompt, 1, 1, "c", "1", "4", 5, ""))

    async def compare(self) -> None:
        prompt = self.draw.choice(SHORT_PROMPTS["imdb-word"])
        await self.act("compare", lambda: self.page.call("compare", "imdb-word", "imdb-bpe", prompt, "0.5, 1", 200, 0,
                                                         1.0, str(self.draw.randrange(10_000))))

    async def dial(self) -> None:
        await self.act("info", lambda: self.page.call("model_info", "imdb-word"))
        await self.think()
        value = round(self.draw.uniform(-0.8, 0.8), 2)
        dialled = await self.act("dial", lambda: self.page.call("on_dial", "imdb-word", True, value))
        await self.think()
        await self.generate("generate", "imdb-word", self.draw.choice(SHORT_PROMPTS["imdb-word"]), "0.5, 1", 100,
                            dial=dialled[0] if dialled and isinstance(dialled[0], str) else "")

    async def upload(self) -> None:
        start = self.draw.randrange(len(SHAKESPEARE) - 60_000)
        text = SHAKESPEARE[start:start + self.draw.randrange(5_000, 50_000)].encode()
        name = f"notes-{self.draw.randrange(1000)}.txt"

        async def send() -> list:
            answer = await self.http.post("gradio_api/upload", files={"files": (name, text, "text/plain")})
            answer.raise_for_status()
            return answer.json()

        paths = await self.act("upload", send)
        file = {"path": paths[0], "orig_name": name, "size": len(text), "mime_type": "text/plain",
                "meta": {"_type": "gradio.FileData"}}
        await self.act("claim", lambda: self.page.call_fn(self.soak.upload_event, file))

    async def train(self) -> None:
        start = self.draw.randrange(len(SHAKESPEARE) - 200_000)

        async def job() -> str:
            done = await self.page.call("train", SHAKESPEARE[start:start + 200_000], "char", "tiny", TRAIN_BUDGET_S)
            name = final_text(done[-1]) if done else ""
            if not name:  # the job ended without a model: the visitor got nothing for its wait
                status = final_text(done[0]) if done else ""
                raise RuntimeError(f"ended without a model: {' '.join(status.split())[:200]}")
            return name

        name = await self.act("train", job)
        self.soak.trained.append(name)
        await self.think()
        await self.generate("own model", name, "ROMEO:\n", "0.5, 1", 100)


def final_text(value: Any) -> str:
    """A streamed output's final text: whole, or as Gradio's edits of the last value ([[op, path, text], ...])."""
    if isinstance(value, str):
        return value
    text = ""
    for edit in value if isinstance(value, list) else []:
        if isinstance(edit, list) and len(edit) == 3 and edit[1] == [] and edit[0] in ("replace", "append"):
            text = str(edit[2]) if edit[0] == "replace" else text + str(edit[2])
    return text


class SoakPage(Page):
    """bench/load.py's page, with an event called by number too (the upload event has no API name)."""

    async def call_fn(self, fn: int, *data: Any) -> list:
        name = f"#{fn}"
        self.endpoints.setdefault(name, (fn, [False] * len(data)))
        return await self.call(name, *data)


async def hold_heartbeat(http: httpx.AsyncClient, session: str) -> None:
    """An open tab's heartbeat stream; cancelling it drops the connection, as closing the tab does."""
    async with http.stream("GET", f"gradio_api/heartbeat/{session}", timeout=httpx.Timeout(None)) as stream:
        async for _ in stream.aiter_raw():
            pass


# -- the abuser (a process of its own: its work must not slow the honest visitors' client) -------------------------

ATTACKS = ("generate", "compare", "inside", "find_units", "atlas_unit", "bars", "train", "upload")


def abuse_main(url: str, inflight: int, seed: int, train_seconds: float, junk_kb: int) -> int:
    """Flood every endpoint from ABUSER_ADDRESS until stdin says "stop" (or closes); "pause-uploads" stops the junk.
    Prints its tally as one JSON line."""
    os.nice(10)  # its own client work yields to the server and the honest visitors
    stop, no_uploads = threading.Event(), threading.Event()

    def listen() -> None:
        for line in sys.stdin:
            if line.strip() == "pause-uploads":
                no_uploads.set()
            elif line.strip() == "stop":
                break
        stop.set()

    threading.Thread(target=listen, daemon=True).start()
    ledger, sent = Ledger(), Counter()
    started, cpu = time.monotonic(), sum(os.times()[:2])
    asyncio.run(flood(url, inflight, seed, train_seconds, junk_kb, stop, no_uploads, ledger, sent))
    counts = {kind: {"sent": sent[kind], "ok": len(ledger.seconds.get(("abuser", "x", kind), [])),
                     "refused": ledger.refused["abuser", "x", kind], "errors": ledger.errors["abuser", "x", kind]}
              for kind in sent}
    print(json.dumps({"counts": counts, "seconds": time.monotonic() - started,
                      "cores": (sum(os.times()[:2]) - cpu) / max(1e-9, time.monotonic() - started),
                      "refusals": ledger.messages["abuser", "refused"].most_common(4),
                      "errors": ledger.messages["abuser", "error"].most_common(6)}), flush=True)
    return 0


async def flood(url: str, inflight: int, seed: int, train_seconds: float, junk_kb: int, stop: threading.Event,
                no_uploads: threading.Event, ledger: Ledger, sent: Counter) -> None:
    named = endpoints(url)
    long_word = " ".join(" ".join(REVIEWS[i].split()) for i in range(40))[:9_000]
    long_char = SHAKESPEARE[:9_000]
    inside_text = SHAKESPEARE[20_000:23_000]
    eight = "0.2, 0.5, 0.8, 1, 1.3, 1.6, 2, 3"

    async def hit(kind: str, call) -> Any:
        sent[kind] += 1
        started = time.perf_counter()
        try:
            result = await call()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - counted, whatever it is
            ledger.failed("abuser", "x", kind, error)
            return None
        ledger.ok("abuser", "x", kind, time.perf_counter() - started)
        return result

    async def attack(kind: str, page: Page, http: httpx.AsyncClient, draw: random.Random) -> None:
        if kind == "generate":
            model, prompt = draw.choice((("imdb-word", long_word), ("shakespeare-char", long_char)))
            if await hit(kind, lambda: page.call("generate", *generate_args(model, prompt, eight, 1000, 1))):
                await hit("after_generate", lambda: page.call("after_generate"))
        elif kind == "compare":
            await hit(kind, lambda: page.call("compare", "imdb-word", "imdb-bpe", long_word, eight, 1000, 0, 1.0, "1"))
        elif kind == "inside":
            await hit(kind, lambda: page.call("inside", "shakespeare-char", inside_text, 0, 1, "c", "variable", 64,
                                              "", ""))
        elif kind == "find_units":
            # the tab reads the last 1,000 tokens and shows the last 300 (700 to 999): a span among them
            await hit(kind, lambda: page.call("find_units", "shakespeare-char", inside_text, 0, 2, "h", "800", "900",
                                              64, ""))
        elif kind == "atlas_unit":
            await hit(kind, lambda: page.call("atlas_unit", "imdb-word", long_word[:3_000], 0, "sentiment"))
        elif kind == "bars":
            prompt = LONG_PROMPT["shakespeare-char"]
            if await hit("generate", lambda: page.call("generate", *generate_args("shakespeare-char", prompt, eight,
                                                                                   100, 2))):
                for _ in range(4):
                    await hit(kind, lambda: page.call("next_tokens", draw.randrange(8), draw.randrange(100), 50))
        elif kind == "train":
            await hit(kind, lambda: page.call("train", SHAKESPEARE, "char", "small", train_seconds))
        elif kind == "upload" and not no_uploads.is_set():
            name = f"{JUNK}-{uuid.uuid4().hex[:8]}.txt"
            junk = os.urandom(draw.randint(junk_kb // 4, junk_kb) * 1024)

            async def send() -> None:
                answer = await http.post("gradio_api/upload", files={"files": (name, junk, "text/plain")})
                answer.raise_for_status()
            await hit(kind, send)

    async def worker(number: int) -> None:
        draw = random.Random(seed * 1000 + number)
        headers = {"X-Forwarded-For": ABUSER_ADDRESS}
        async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(300.0), headers=headers, limits=KEEPALIVE) as http:
            turn = number
            while not stop.is_set():
                turn += 1
                await attack(ATTACKS[turn % len(ATTACKS)], SoakPage(http, named), http, draw)  # a new session each
                await asyncio.sleep(0.01)

    workers = [asyncio.create_task(worker(n)) for n in range(inflight)]
    while not stop.is_set():
        await asyncio.sleep(0.2)
    for task in workers:
        task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)


class Abuser:
    """The abuser's process: started, told to stop, its tally read."""

    def __init__(self, url: str, args: argparse.Namespace, train_seconds: float, log: Path):
        self.log_path, self.log = log, log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--abuse", url, "--abuser-inflight", str(args.abuser_inflight), "--seed",
             str(args.seed), "--train-seconds", f"{train_seconds:g}", "--junk-kb", str(args.junk_kb)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=ENV)
        self.lock = threading.Lock()
        self.paused = False

    def say(self, line: str) -> None:
        with self.lock:
            try:
                self.process.stdin.write(line + "\n")
                self.process.stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                pass

    def pause_uploads(self) -> None:
        if not self.paused:
            self.paused = True
            self.say("pause-uploads")

    def stop(self) -> dict:
        self.say("stop")
        try:
            out, _ = self.process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        self.log.close()
        lines = [line for line in (out or "").splitlines() if line.startswith("{")]
        if lines:
            return json.loads(lines[-1])
        said = " ".join(self.log_path.read_text(errors="replace").split()[-40:])
        return {"counts": {"(its process)": {"sent": 0, "ok": 0, "refused": 0, "errors": 1}}, "refusals": [],
                "errors": [[f"the abuser ended with {self.process.returncode} and no tally: {said}", 1]]}


# -- the server and its samples ---------------------------------------------------------------------------------

def proxy_flags(app_args: list[str]) -> list[str]:
    """`--proxy-hops 1` when this app.py has it, else `--behind-proxy` (one hop); none if the caller gave one."""
    if any(arg.startswith(("--proxy-hops", "--behind-proxy")) for arg in app_args):
        return []
    shown = subprocess.run([sys.executable, str(ROOT / "app.py"), "--help"], capture_output=True, text=True, cwd=ROOT,
                           env=ENV, check=False).stdout
    return ["--proxy-hops", "1"] if "--proxy-hops" in shown else ["--behind-proxy"]


class Server:
    """app.py with its training folder, Gradio's cache and its temporary files in `work` (bench/load.py's
    `start_server` keeps them where the environment says, and its log in an unnamed file)."""

    def __init__(self, port: int, work: Path, app_args: list[str]):
        self.url, self.work = f"http://127.0.0.1:{port}/", work
        self.folders = [work / "train-root", work / "tmp"]
        for folder in self.folders:
            folder.mkdir()
        env = {key: value for key, value in ENV.items() if key != "GRADIO_TEMP_DIR"}  # the cache: in the train root
        env["TMPDIR"] = str(work / "tmp")
        self.command = [sys.executable, str(ROOT / "app.py"), "--port", str(port), *proxy_flags(app_args),
                        "--train-root", str(self.folders[0]), *app_args]
        self.log_path = work / "app.log"
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(self.command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.process.pid
        deadline = time.monotonic() + 180
        while True:
            try:
                self.config = httpx.get(self.url + "config", timeout=5).json()
                return
            except (httpx.HTTPError, ValueError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise SystemExit(f"app.py did not start: {self.log_path.read_text()[-3000:]}")
                time.sleep(0.5)

    def upload_event(self) -> int:
        """The Train tab's upload event (private: no API name), by its trigger."""
        for number, event in enumerate(self.config["dependencies"]):
            if any(trigger[1] == "upload" for trigger in event.get("targets", [])):
                return event.get("id", number)
        raise SystemExit("app.py has no upload event (--no-train?): the soak needs the Train tab")

    def state_ttl(self) -> float:
        """The longest finite time_to_live of the page's gr.State (0 without one)."""
        ttls = [(c.get("props") or {}).get("time_to_live") for c in self.config["components"] if c["type"] == "state"]
        return max([float(t) for t in ttls if isinstance(t, (int, float))] or [0.0])

    def descendants(self) -> list[int]:
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            try:
                children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
            except OSError:
                children = []
            found += children
            todo += children
        return found

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.terminate()  # app.py ends like Ctrl-C: its sessions and folders are cleaned up
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        self.log.close()
        return self.process.returncode

    def log_tracebacks(self) -> tuple[int, Counter]:
        """Tracebacks in the server's log, and their last lines (the exceptions) counted."""
        text = self.log_path.read_text(errors="replace")
        ends = Counter(line[:160] for line in text.splitlines()
                       if re.match(r"[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Busy)\b", line))
        return text.count("Traceback (most recent call last)"), ends


def status_kib(pid: int, name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def wait_for_idle(pid: int, limit_s: float = 120.0, quiet: float = 0.05) -> float:
    """Wait until the server used under `quiet` of a core for two seconds running, at most `limit_s`: the work the
    sessions asked for has ended (the abuser's last 1,000-token generations outlive its connections). Returns the
    seconds waited."""
    started, calm, last = time.monotonic(), 0, cpu_seconds(pid)
    while calm < 2 and time.monotonic() - started < limit_s:
        time.sleep(1.0)
        now = cpu_seconds(pid)
        calm, last = (calm + 1 if now - last < quiet else 0), now
    return time.monotonic() - started


def memory_map(pid: int) -> Counter:
    """The server's resident memory (MiB) by kind of mapping (/proc/PID/smaps): what grows tells glibc's heaps
    (the main one and its other arenas') from other anonymous mappings (Python's object arenas, large blocks) and
    from files mapped in (libraries, models)."""
    kinds: Counter = Counter()
    kind = ""
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return kinds
    for line in lines:
        fields = line.split()
        if "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's header: address range, perms, ..., path
            start = int(fields[0].split("-")[0], 16)
            path = fields[5] if len(fields) > 5 else ""
            if path == "[heap]":
                kind = "glibc main heap"
            elif path.startswith("["):
                kind = path
            elif path:
                kind = "libraries" if ".so" in Path(path).name else f"file {Path(path).suffix or Path(path).name}"
            elif start % (64 << 20) == 0:  # glibc's other arenas: 64 MiB-aligned heaps
                kind = "anon: glibc arena heaps"
            else:  # Python's 1 MiB arenas (merged when adjacent), blocks glibc mapped alone, thread stacks
                kind = "anon: other mappings"
        elif fields[0] == "Rss:":
            kinds[kind] += int(fields[1]) / 1024
    return kinds


def disk_usage(folders: list[Path]) -> tuple[int, int, list[str]]:
    """Bytes and files under `folders` (file sizes, as written), and the paths of the abuser's junk among them."""
    size, files, junk = 0, 0, []
    for folder in folders:
        for parent, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(parent, name)
                try:
                    size += os.lstat(path).st_size
                except OSError:
                    continue
                files += 1
                if JUNK in path:
                    junk.append(path)
    return size, files, junk


@dataclass
class Sample:
    elapsed: float
    phase: str
    done: int
    open: int
    rss: float  # MiB, the server process
    children: float  # MiB, its trainer processes
    threads: int
    fds: int
    disk: float  # MB
    files: int
    junk: int


class Sampler(threading.Thread):
    """The server's figures every `every` seconds, a row printed every `print_every` samples (and at each phase)."""

    HEADER = (f"{'elapsed':>8} {'phase':<15}{'done':>6}{'open':>6}{'RSS MiB':>9}{'+kids':>7}{'threads':>8}{'fds':>6}"
              f"{'disk MB':>9}{'files':>7}")

    def __init__(self, soak: Soak, every: float, print_every: int):
        super().__init__(daemon=True)
        self.soak, self.every, self.print_every = soak, every, print_every
        self.samples: list[Sample] = []
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.printed_phase = ""

    def take(self) -> Sample:
        server = self.soak.server
        pid = server.pid
        try:
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            fds = 0
        size, files, junk = disk_usage(server.folders)
        children = sum(status_kib(child, "VmRSS") for child in server.descendants()) / 1024
        sample = Sample(time.monotonic() - self.soak.t0, self.soak.phase, self.soak.done, self.soak.open,
                        status_kib(pid, "VmRSS") / 1024, children, status_kib(pid, "Threads"), fds, size / MB, files,
                        len(junk))
        with self.lock:
            self.samples.append(sample)
            due = (len(self.samples) - 1) % self.print_every == 0 or sample.phase != self.printed_phase
            if due:
                self.printed_phase = sample.phase
                print(f"{sample.elapsed:>7.0f}s {sample.phase:<15}{sample.done:>6}{sample.open:>6}{sample.rss:>9.0f}"
                      f"{sample.children:>7.0f}{sample.threads:>8}{sample.fds:>6}{sample.disk:>9.1f}{sample.files:>7}",
                      flush=True)
        abuser = self.soak.abuser
        if abuser is not None and sample.disk > self.soak.args.disk_guard_mb and not abuser.paused:
            print(f"  (disk {sample.disk:.0f} MB > --disk-guard-mb {self.soak.args.disk_guard_mb:g}: the abuser's "
                  f"uploads are paused)", flush=True)
            abuser.pause_uploads()
        return sample

    def run(self) -> None:
        while not self.halt.wait(self.every):
            self.take()

    def level(self, count: int = 3, gap: float = 1.0) -> Sample:
        """`count` fresh samples `gap` apart; their median RSS, the last's other figures."""
        taken = []
        for i in range(count):
            taken.append(self.take())
            if i < count - 1:
                time.sleep(gap)
        last = taken[-1]
        return Sample(last.elapsed, last.phase, last.done, last.open, statistics.median(s.rss for s in taken),
                      last.children, last.threads, last.fds, last.disk, last.files, last.junk)


# -- the soak ---------------------------------------------------------------------------------------------------

class Soak:
    def __init__(self, args: argparse.Namespace, server: Server):
        self.args, self.server = args, server
        self.named = endpoints(server.url)
        self.upload_event = server.upload_event()
        self.ledger = Ledger()
        self.phase, self.done, self.open = "start", 0, 0
        self.t0 = time.monotonic()
        self.abuser: Abuser | None = None
        self.trained: list[str] = []
        self.addresses = honest_addresses(args.addresses)
        self.free = list(self.addresses)
        self.frequent = set(self.addresses[:max(1, len(self.addresses) // 5)])
        self.used: set[str] = set()
        self.kinds: Counter = Counter()
        self.endings: Counter = Counter()
        self.draw = random.Random(args.seed)

    def take_address(self, draw: random.Random) -> str:
        """A free address (a person visits one page at a time), the frequent visitors 4 times as likely."""
        if not self.free:
            return draw.choice(self.addresses)
        weights = [4 if address in self.frequent else 1 for address in self.free]
        address = draw.choices(self.free, weights=weights)[0]
        self.free.remove(address)
        self.used.add(address)
        return address

    def give_address(self, address: str) -> None:
        if address not in self.free:
            self.free.append(address)

    async def visit(self, number: int, kind: str, at: float, counted: bool) -> None:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        draw = random.Random(self.args.seed * 100_003 + number)
        address = self.take_address(draw)
        closes = draw.random() < 0.5
        leaves_mid = closes and kind in ("short", "bars", "review") and draw.random() < 0.2
        self.kinds[kind] += 1
        self.endings["closed mid-generate" if leaves_mid else "closed" if closes else "went away"] += 1
        self.open += 1
        headers = {"X-Forwarded-For": address}
        try:
            async with httpx.AsyncClient(base_url=self.server.url, timeout=httpx.Timeout(300.0), limits=KEEPALIVE,
                                         headers=headers) as http:
                visit = Visit(self, http, draw)
                heartbeat = asyncio.create_task(hold_heartbeat(http, visit.page.session)) if closes else None
                try:
                    await visit.open()
                    await visit.think()
                    script = {"bars": visit.bars_visit}.get(kind) or getattr(visit, kind)
                    if leaves_mid:
                        await self.leave_mid_generate(visit, script, draw)
                    else:
                        await script()
                except Failed:
                    pass
                finally:
                    if heartbeat is not None:
                        heartbeat.cancel()  # the tab closes: the server hears it as the heartbeat's end
                        await asyncio.gather(heartbeat, return_exceptions=True)
        finally:
            self.open -= 1
            self.give_address(address)
            if counted:
                self.done += 1

    async def leave_mid_generate(self, visit: Visit, script, draw: random.Random) -> None:
        """The visitor closes the tab while its first generation streams: the request is left, not timed."""
        phase = self.phase
        task = asyncio.create_task(script())
        await asyncio.sleep(draw.uniform(0.3, 1.5))
        if not task.done():
            task.cancel()
            self.ledger.abandoned["honest", phase] += 1
        await asyncio.gather(task, return_exceptions=True)

    def session_kinds(self, first: int, count: int) -> list[str]:
        """The kinds of sessions `first`.. `first + count - 1` of the run: a Train job 1 in --train-every."""
        kinds = []
        for number in range(first, first + count):
            if self.args.train_every and number % self.args.train_every == self.args.train_every // 2:
                kinds.append("train")
            else:
                kinds.append(self.draw.choices(list(KINDS), weights=list(KINDS.values()))[0])
        return kinds

    async def phase_of(self, name: str, first: int, count: int, seconds: float) -> None:
        self.phase = name
        print(f"-- {name}: {count} sessions over {seconds:.0f} s", flush=True)
        start = time.monotonic()
        arrivals = sorted(start + self.draw.uniform(0, seconds) for _ in range(count))
        kinds = self.session_kinds(first, count)
        await asyncio.gather(*(self.visit(first + i, kinds[i], at, True) for i, at in enumerate(arrivals)))

    async def last_visitor(self) -> None:
        """One request after the quiet: Gradio's worker threads (anyio's) are pruned when idle 10 s, but only when
        the next call comes, so the thread count is read after one."""
        async with httpx.AsyncClient(base_url=self.server.url, timeout=60, limits=KEEPALIVE,
                                     headers={"X-Forwarded-For": LAST_VISITOR}) as http:
            try:
                await SoakPage(http, self.named).call("random_seed")
            except Exception as error:  # noqa: BLE001 - said, whatever it is
                print(f"  the last visitor's /random_seed failed: {classify(error)[1]}", flush=True)
        await asyncio.sleep(1.0)

    async def warm_up(self) -> None:
        self.phase = "warm-up"
        kinds = list(KINDS) + (["train"] if self.args.train_every and self.args.sessions >= self.args.train_every
                               else [])
        print(f"-- warm-up: one session of each kind ({', '.join(kinds)})", flush=True)
        await asyncio.gather(*(self.visit(-1 - i, kind, time.monotonic() + i, False) for i, kind in enumerate(kinds)))


def run_soak(args: argparse.Namespace, server: Server, work: Path) -> int:
    soak = Soak(args, server)
    sampler = Sampler(soak, args.sample_every, args.print_every)
    started_cpu = (cpu_seconds(server.pid), sum(os.times()[:2]))
    train_seconds = train_cap(args.app_args)
    print(f"server: {' '.join(server.command[1:])}\n  pid {server.pid}; its folders under {work}; "
          f"{os.cpu_count()} CPU(s)", flush=True)
    print(Sampler.HEADER, flush=True)
    start = sampler.level(1)
    sampler.start()
    half = args.sessions // 2
    seconds = args.minutes * 60 / 2
    marks: dict[str, Sample] = {"start": start}
    maps: dict[str, Counter] = {}
    abuser_tally: dict | None = None
    try:
        asyncio.run(soak.warm_up())
        time.sleep(2)
        marks["warm"] = sampler.level()
        maps["warm"] = memory_map(server.pid)
        asyncio.run(soak.phase_of("honest", 0, half, seconds))
        marks["honest end"] = sampler.level(1)
        second = "honest+abuser" if args.abuser else "honest, again"
        if args.abuser:
            soak.abuser = Abuser(server.url, args, train_seconds, work / "abuser.log")
            time.sleep(1.0)  # its workers connect
        try:
            asyncio.run(soak.phase_of(second, half, args.sessions - half, seconds))
        finally:
            if soak.abuser is not None:
                soak.phase = "abuser stops"
                abuser_tally = soak.abuser.stop()
        soak.phase = "sessions over"
        marks["sent"] = sampler.level()
        maps["sent"] = memory_map(server.pid)
        soak.phase = "work drains"
        waited = wait_for_idle(server.pid)
        marks["drained"] = sampler.level()
        maps["drained"] = memory_map(server.pid)
        print(f"-- the server's work drained in {waited:.0f} s (under 5 % of a core for 2 s)", flush=True)
        state_ttl = server.state_ttl() if server.state_ttl() <= STATE_WAIT_S else 0.0
        wait = max(args.session_ttl + min(30.0, args.session_ttl / 4) + state_ttl + 2 * args.sample_every + 5, 12)
        soak.phase = "expiry"
        print(f"-- expiry: nothing sent for {wait:.0f} s (--session-ttl {args.session_ttl:g} s, the server's sweep, "
              f"gr.State time_to_live {state_ttl:g} s, idle worker threads)", flush=True)
        time.sleep(wait)
        soak.phase = "expired"
        asyncio.run(soak.last_visitor())
        marks["expired"] = sampler.level()
        maps["expired"] = memory_map(server.pid)
    finally:
        sampler.halt.set()
        sampler.join(timeout=args.sample_every + 30)
    wall = time.monotonic() - soak.t0
    cores = ((cpu_seconds(server.pid) - started_cpu[0]) / wall, (sum(os.times()[:2]) - started_cpu[1]) / wall)
    report(soak, sampler, marks, abuser_tally, cores, server)
    report_memory_map(maps)
    return 0


def train_cap(app_args: list[str]) -> float:
    """The server's --train-seconds, as this run passes it."""
    for i, arg in enumerate(app_args):
        if arg == "--train-seconds" and i + 1 < len(app_args):
            return float(app_args[i + 1])
        if arg.startswith("--train-seconds="):
            return float(arg.split("=", 1)[1])
    return 180.0


# -- the report -------------------------------------------------------------------------------------------------

def interactive(kind: str) -> bool:
    return kind != "train"  # a Train job's time is its budget, not a wait


def report(soak: Soak, sampler: Sampler, marks: dict[str, Sample], abuser: dict | None, cores: tuple[float, float],
           server: Server) -> None:
    args, ledger = soak.args, soak.ledger
    phases = ["warm-up", "honest", "honest+abuser" if args.abuser else "honest, again"]
    print(f"\n{soak.done} sessions ({dict(soak.kinds)}; {dict(soak.endings)}) from {len(soak.used)} addresses; "
          f"{len(soak.trained)} Train job(s) gave a model ({', '.join(soak.trained) or 'none'}); CPU: the server "
          f"{cores[0]:.2f} cores, the honest visitors' client {cores[1]:.2f}"
          + (f", the abuser's {abuser.get('cores', 0):.2f}" if abuser else "") + f", of {os.cpu_count()}")

    print("\nhonest visitors, seconds per request (a generate includes its /after_generate):")
    print(f"  {'phase':<15}{'kind':<12}{'count':>6}{'p50 s':>8}{'p95 s':>8}{'refused':>9}{'errors':>8}")
    p95: dict[str, float] = {}
    for phase in phases:
        kinds = sorted({kind for (who, ph, kind) in [*ledger.seconds, *ledger.refused, *ledger.errors]
                        if who == "honest" and ph == phase})
        every: list[float] = []
        for kind in [*kinds, "all"]:
            if kind == "all":
                values, refused, errors = every, sum_of(ledger.refused, phase), sum_of(ledger.errors, phase)
            else:
                values = ledger.seconds.get(("honest", phase, kind), [])
                refused, errors = ledger.refused["honest", phase, kind], ledger.errors["honest", phase, kind]
                every += values if interactive(kind) else []
            shown = f"{percentile(values, 50):>8.2f}{percentile(values, 95):>8.2f}" if values else f"{'-':>8}{'-':>8}"
            print(f"  {phase:<15}{kind + (' *' if not interactive(kind) else ''):<12}{len(values):>6}{shown}"
                  f"{refused:>9}{errors:>8}")
            if kind == "all" and values:
                p95[phase] = percentile(values, 95)
        abandoned = ledger.abandoned["honest", phase]
        if abandoned:
            print(f"  {phase:<15}({abandoned} generation(s) left mid-stream by a closing page, not timed)")
    print("  * not in 'all': a Train job lasts its budget")
    for outcome in ("refused", "error"):
        for message, count in ledger.messages["honest", outcome].most_common(5):
            print(f"  honest {outcome} x{count}: {message}")

    if abuser is not None:
        print(f"\nthe abuser ({ABUSER_ADDRESS}, {args.abuser_inflight} requests in flight, a new session each):")
        print(f"  {'kind':<15}{'sent':>7}{'ok':>7}{'refused':>9}{'errors':>8}")
        for kind, counts in sorted(abuser.get("counts", {}).items()):
            print(f"  {kind:<15}{counts['sent']:>7}{counts['ok']:>7}{counts['refused']:>9}{counts['errors']:>8}")
        for outcome in ("refusals", "errors"):
            for message, count in abuser.get(outcome, []):
                print(f"  abuser {outcome[:-1] if outcome == 'errors' else 'refusal'} x{count}: {message}")

    warm, sent, drained, expired, start = (marks["warm"], marks["sent"], marks["drained"], marks["expired"],
                                           marks["start"])
    after_warm = [s for s in sampler.samples if s.elapsed >= warm.elapsed and s.elapsed <= sent.elapsed]
    peak = max((s.rss for s in after_warm), default=sent.rss)
    print("\nthe server (python app.py alone; +kids: its trainers):")
    print(f"  {'when':<28}{'RSS MiB':>9}{'threads':>8}{'fds':>6}{'disk MB':>9}{'files':>7}")
    for name, sample in (("start", start), ("warm (after the warm-up)", warm),
                         ("end of the honest phase", marks.get("honest end", warm)), ("all sessions done", sent),
                         ("their work drained", drained),
                         ("after expiry", expired)):
        print(f"  {name:<28}{sample.rss:>9.0f}{sample.threads:>8}{sample.fds:>6}{sample.disk:>9.1f}{sample.files:>7}")
    print(f"  peak RSS after the warm-up {peak:.0f} MiB; peak threads {max(s.threads for s in sampler.samples)}, "
          f"fds {max(s.fds for s in sampler.samples)}, disk {max(s.disk for s in sampler.samples):.1f} MB")
    _, _, junk_left = disk_usage(server.folders)
    left = [str(p.relative_to(server.work)) for folder in server.folders for p in folder.rglob("*") if p.is_file()]
    if expired.files > start.files:
        print(f"  files left after expiry ({expired.files} now, {start.files} at the start): "
              f"{', '.join(sorted(left)[:8])}")
    if not 0 < server.state_ttl() <= STATE_WAIT_S:
        print(f"  note: the page's gr.State has no time_to_live within {STATE_WAIT_S} s ({server.state_ttl():g}; 0: "
              f"none), not waited for: Gradio drops a closed page's State after 1 h, a page that went away's after its "
              f"time_to_live, and keeps every session's SessionState (its page config) until 10,000 sessions")

    honest_refused = sum(count for (who, _, _), count in ledger.refused.items() if who == "honest")
    honest_errors = sum(count for (who, _, _), count in ledger.errors.items() if who == "honest")
    abuser_errors = sum(counts["errors"] for counts in abuser.get("counts", {}).values()) if abuser else 0
    grown = (drained.rss - warm.rss) * MIB / MB
    back = (expired.rss - warm.rss) * MIB / MB
    rows = [
        ("full size: >= 2,000 sessions, >= 20 min, >= 200 addresses",
         args.sessions >= 2000 and args.minutes >= 20 and len(soak.used) >= 200,
         f"{soak.done} sessions, {args.minutes:g} min, {len(soak.used)} addresses"),
        ("RSS growth over the sessions <= 200 MB (work drained)", grown <= 200,
         f"{grown:+.0f} MB ({warm.rss:.0f} -> {drained.rss:.0f} MiB; {sent.rss:.0f} as the last ended, peak "
         f"{peak:.0f})"),
        ("RSS after expiry within 50 MB of warm", back <= 50, f"{back:+.0f} MB ({expired.rss:.0f} MiB)"),
        ("threads flat (after expiry <= warm + 2)", expired.threads <= warm.threads + 2,
         f"{warm.threads} -> {expired.threads} (peak {max(s.threads for s in sampler.samples)})"),
        ("open files flat (after expiry <= warm + 2)", expired.fds <= warm.fds + 2,
         f"{warm.fds} -> {expired.fds} (peak {max(s.fds for s in sampler.samples)})"),
        ("disk back to the start (no more files, <= +0.01 MB)",
         expired.files <= start.files and expired.disk <= start.disk + 0.01,
         f"{start.disk:.2f} -> {expired.disk:.2f} MB, {start.files} -> {expired.files} files"),
    ]
    if args.abuser:
        alone, flooded = p95.get("honest"), p95.get("honest+abuser")
        ratio = flooded / alone if alone and flooded else float("nan")
        rows += [
            ("honest p95 with the abuser <= 3x without", ratio <= 3,
             f"{flooded or float('nan'):.2f} s vs {alone or float('nan'):.2f} s ({ratio:.2f}x)"),
            ("0 honest refusals", honest_refused == 0, f"{honest_refused}"),
            ("0 errors (honest and abuser)", honest_errors + abuser_errors == 0,
             f"{honest_errors} honest, {abuser_errors} abuser"),
            ("nothing of the abuser's on disk after expiry", not junk_left, f"{len(junk_left)} junk file(s) left"),
        ]
    else:
        rows += [("0 honest refusals", honest_refused == 0, f"{honest_refused}"),
                 ("0 errors", honest_errors == 0, f"{honest_errors}")]
    print("\nverdict:")
    print(f"  {'target':<60}{'':<6}measured")
    for target, passed, measured in rows:
        print(f"  {target:<60}{'PASS' if passed else 'FAIL':<6}{measured}")
    tracebacks, ends = server.log_tracebacks()
    print(f"  (server log: {tracebacks} traceback(s)" + ("; last lines: " if ends else "") +
          "; ".join(f"{line} x{count}" for line, count in ends.most_common(3)) + ")", flush=True)


def report_memory_map(maps: dict[str, Counter]) -> None:
    """Where the server's resident memory lies at the warm level, as the last session ended, once their work drained
    and after expiry."""
    moments = [name for name in ("warm", "sent", "drained", "expired") if name in maps]
    kinds = sorted({kind for name in moments for kind in maps[name]}, key=lambda k: -maps[moments[-1]][k])
    print("\nthe server's resident memory by mapping (MiB, /proc/PID/smaps):")
    print(f"  {'kind':<30}" + "".join(f"{name:>10}" for name in moments))
    for kind in kinds:
        if max(maps[name][kind] for name in moments) >= 1:
            print(f"  {kind:<30}" + "".join(f"{maps[name][kind]:>10.0f}" for name in moments))


def sum_of(counter: Counter, phase: str) -> int:
    return sum(count for (who, ph, _), count in counter.items() if who == "honest" and ph == phase)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=2000, help="honest sessions after the warm-up (default: 2000)")
    parser.add_argument("--minutes", type=float, default=20, help="over this long, half without and half with the "
                                                                  "abuser (default: 20)")
    parser.add_argument("--addresses", type=int, default=200, help="honest visitors' addresses (default: 200)")
    parser.add_argument("--abuser", action=argparse.BooleanOptionalAction, default=True,
                        help="one abusive address floods every endpoint in the second half (default: on)")
    parser.add_argument("--abuser-inflight", type=int, default=60, help="its requests in flight (default: 60)")
    parser.add_argument("--junk-kb", type=int, default=1024, help="its junk uploads, up to this many KB each "
                                                                   "(default: 1024)")
    parser.add_argument("--disk-guard-mb", type=float, default=3000,
                        help="pause the abuser's uploads past this much disk (default: 3000)")
    parser.add_argument("--port", type=int, default=7877)
    parser.add_argument("--session-ttl", type=float, default=60, help="the server's --session-ttl (default: 60)")
    parser.add_argument("--train-every", type=int, default=200, help="1 session in this many trains (default: "
                                                                      "200; 0: none)")
    parser.add_argument("--think", type=float, default=3.0, help="a visitor's mean pause between clicks, seconds "
                                                                 "(default: 3)")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples (default: 5)")
    parser.add_argument("--print-every", type=int, default=6, help="print every N-th sample (default: 6)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server-log", type=Path, help="keep the server's log (its output) in this file")
    parser.add_argument("app_args", nargs="*", help="after --: options for app.py (e.g. -- --concurrency 3)")
    parser.add_argument("--abuse", help=argparse.SUPPRESS)  # the abuser's own process
    parser.add_argument("--train-seconds", type=float, default=30, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.abuse:
        return abuse_main(args.abuse, args.abuser_inflight, args.seed, args.train_seconds, args.junk_kb)
    if args.sessions < 2 or args.minutes <= 0 or args.session_ttl <= 0 or args.sample_every <= 0:
        parser.error("--sessions must be at least 2, --minutes, --session-ttl and --sample-every positive")
    honest_addresses(args.addresses)
    if train_cap(args.app_args) == 180.0 and not any(a.startswith("--train-seconds") for a in args.app_args):
        args.app_args = [*args.app_args, "--train-seconds", "30"]  # the abuser's jobs hold the slot 30 s at most
    app_args = ["--session-ttl", f"{args.session_ttl:g}", *args.app_args]
    work = Path(tempfile.mkdtemp(prefix="lmdemo-soak-"))
    server = None
    try:
        server = Server(args.port, work, app_args)
        return run_soak(args, server, work)
    finally:
        stopped = ""
        if server is not None:
            family = [server.pid, *server.descendants()]  # its trainers too, if any is still running
            code = server.stop()
            alive = [pid for pid in family if Path(f"/proc/{pid}").exists()]
            stopped = f"server stopped: pid {server.pid}, exit code {code}" + (f"; STILL RUNNING: {alive}" if alive
                                                                               else "")
            if args.server_log:
                shutil.copyfile(server.log_path, args.server_log)
        shutil.rmtree(work, ignore_errors=True)
        if stopped:
            print(stopped, flush=True)


if __name__ == "__main__":
    sys.exit(main())
