"""What one abusive client can take from the Train tab: a real `python app.py` on 127.0.0.1, attacked by a script.

    python bench/abuse.py                        # this checkout's app.py
    python bench/abuse.py --app /tmp/old/app.py  # another checkout's, same attacks (options it lacks are left out)

Every request is a raw HTTP call, as a script would make it (its own session ids, no heartbeat). Clients are
told apart by the X-Forwarded-For a proxy would set (the server runs with --proxy-hops 1; documentation
addresses 203.0.113.x, which only name clients, no traffic goes there). Bounded in requests and time.
Phases, each followed by the server's disk (training folder and web cache) and resident memory:

1. many sessions: one client opens --sessions session ids and asks each to train; how many were accepted.
2. submit/stop: one client submits and stops --rounds times in one session; the run folders left behind.
3. an honest visitor behind the abuser: the abuser trains and keeps asking from new sessions; how long the
   honest visitor (another address) waits for its job to start.
4. oversized and malformed requests: a text over the limit, lists and objects where strings belong, a huge
   budget, bad levels; all refused, the server still answers.
5. raw sessions that never close: --raw clients train and walk away; the disk and memory once their
   sessions expire (--session-ttl).
6. served files: every file under the training folder while a job trains, asked for at /gradio_api/file=
   and /file=.
7. the hourly budget: one client trains back to back until refused; the seconds it was granted.
8. junk uploads: one client uploads 1 MB files until refused; another client's upload; one file uploaded by two
   clients (one path or two); the disk once the uploads went unused for --session-ttl.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"}
TEXT = (ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:60_000]
SECONDS = 12  # every job's budget, and the server's cap


class Stream:
    """One raw /train call: joined with its own session id, its events read in a thread."""

    def __init__(self, server: Server, client: str, data: list, session: str | None = None):
        self.server, self.session = server, session or uuid.uuid4().hex
        self.headers = {"X-Forwarded-For": client}
        self.events: list[dict] = []
        self.started, self.ended = time.monotonic(), None
        response = httpx.post(server.url + "gradio_api/queue/join", headers=self.headers, timeout=30,
                              json={"data": data, "fn_index": server.fn("train"), "session_hash": self.session})
        response.raise_for_status()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            with httpx.stream("GET", self.server.url + f"gradio_api/queue/data?session_hash={self.session}",
                              headers=self.headers, timeout=300) as stream:
                for line in stream.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(json.loads(line[6:]))
                        if self.events[-1].get("msg") == "process_completed":
                            self.ended = time.monotonic()
                            return
        except httpx.HTTPError as error:
            self.events.append({"msg": "process_completed", "success": False, "output": {"error": str(error)}})

    def status(self) -> str:
        """The last status line the job streamed, or its error. Gradio streams a value whole the first time,
        then as edits of the last one ([["replace", [], text]], [["append", [], text]])."""
        text = ""
        for event in self.events:
            output = event.get("output") or {}
            if event.get("msg") == "process_completed" and not event.get("success"):
                return "refused: " + str(output.get("error"))
            value = (output.get("data") or [None])[0]
            if isinstance(value, str):
                text = value
            elif isinstance(value, list):
                for action, path, change in (edit for edit in value if isinstance(edit, list) and len(edit) == 3):
                    if path == [] and action == "replace":
                        text = str(change)
                    elif path == [] and action == "append":
                        text += str(change)
        return text

    def wait(self, condition, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition(self):
                return True
            time.sleep(0.05)
        return False

    @property
    def took(self) -> float:
        return self.ended - self.started if self.ended else float("nan")

    @property
    def done(self) -> bool:
        return any(event.get("msg") == "process_completed" for event in self.events)

    @property
    def refused(self) -> bool:
        return self.status().startswith("refused")

    @property
    def running(self) -> bool:
        return self.status().startswith(("**Starting", "**Training"))

    def stop(self) -> None:
        httpx.post(self.server.url + "gradio_api/queue/join", headers=self.headers, timeout=30,
                   json={"data": [], "fn_index": self.server.fn("stop_training"), "session_hash": self.session})


class Server:
    def __init__(self, app: Path, port: int, work: Path, ttl: float, budget: float):
        self.url, self.work = f"http://127.0.0.1:{port}/", work
        self.base = work / "train-root"
        offered = subprocess.run([sys.executable, str(app), "--help"], capture_output=True, text=True,
                                 cwd=app.parent, env=ENV).stdout
        proxy = {"--proxy-hops": ["1"]} if "--proxy-hops" in offered else {"--behind-proxy": []}  # older apps: a switch
        wanted = {**proxy, "--session-ttl": [str(ttl)], "--train-budget-per-hour": [str(budget)]}
        extra = [part for flag, value in wanted.items() if flag in offered for part in (flag, *value)]
        self.missing = [flag for flag in wanted if flag not in offered]
        env = dict(ENV)
        if "--session-ttl" in self.missing:  # an app that keeps Gradio's shared cache: give it a folder to measure
            env["GRADIO_TEMP_DIR"] = str(work / "gradio-cache")
        self.cache = Path(env["GRADIO_TEMP_DIR"]) if "GRADIO_TEMP_DIR" in env else None
        self.log = (work / "app.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, str(app), "--port", str(port), "--train-seconds", str(SECONDS), "--train-root",
             str(self.base), *extra], cwd=app.parent, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while True:
            try:
                self.config = httpx.get(self.url + "config", timeout=2).json()
                break
            except (httpx.HTTPError, ValueError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server did not start: {(work / 'app.log').read_text()[-2000:]}")
                time.sleep(0.5)

    def fn(self, api_name: str) -> int:
        return next(i for i, d in enumerate(self.config["dependencies"]) if d.get("api_name") == api_name)

    def disk_mb(self) -> float:
        folders = [self.base] + ([self.cache] if self.cache else [])
        return sum(p.stat().st_size for folder in folders if folder.exists() for p in folder.rglob("*")
                   if p.is_file()) / 1e6

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def run_folders(self) -> tuple[int, int]:
        """Job folders on disk (training folder / session / job, in this app and the one before it) and, of those,
        the ones that keep a trained model (a session keeps its models while it lasts)."""
        jobs, models = set(), set()
        for path in self.base.rglob("*"):
            parts = path.relative_to(self.base).parts
            if path.is_file() and len(parts) > 4 - (parts[-1].endswith(".txt")) and parts[1] != "cache":
                jobs.add(parts[:3])
                if path.name == "model.safetensors":
                    models.add(parts[:3])
        return len(jobs), len(models)

    def report(self, phase: str) -> None:
        jobs, models = self.run_folders()
        print(f"  after {phase}: disk {self.disk_mb():.1f} MB, server RSS {self.rss_mb():.0f} MiB, "
              f"job folders {jobs} ({models} keeping a trained model, {jobs - models} without)", flush=True)

    def wait_idle(self, timeout: float = 120) -> None:
        """Until no trainer runs (no child process of the server is left), and a second for its job to wrap up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _children(self.process.pid):
            time.sleep(0.2)
        time.sleep(1.0)


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def many_sessions(server: Server, sessions: int) -> None:
    streams = [Stream(server, "203.0.113.66", [TEXT, "char", "tiny", SECONDS]) for _ in range(sessions)]
    for stream in streams:
        stream.wait(lambda s: s.running or s.refused or s.status().startswith("**Waiting"), 30)
    accepted = [s for s in streams if not s.refused]
    print(f"1. many sessions: one client, {sessions} session ids -> {len(accepted)} jobs accepted "
          f"(running or waiting), {sessions - len(accepted)} refused")
    if accepted:
        print(f"   refusal seen: {next((s.status() for s in streams if s.refused), '-')[:160]}")
    for stream in accepted:
        stream.stop()
    server.wait_idle()
    server.report("phase 1")


def submit_stop(server: Server, rounds: int) -> None:
    session = uuid.uuid4().hex
    started = time.monotonic()
    accepted = 0
    for _ in range(rounds):
        stream = Stream(server, "203.0.113.77", [TEXT, "char", "tiny", SECONDS], session)
        stream.wait(lambda s: s.running or s.refused or s.done, 30)
        accepted += not stream.refused
        stream.stop()
        stream.wait(lambda s: s.done, 60)
    server.wait_idle()
    print(f"2. submit/stop: {rounds} rounds in one session ({accepted} accepted) in {time.monotonic() - started:.0f} s")
    server.report("phase 2 (the session still open)")


def honest_visitor(server: Server) -> None:
    abuser = Stream(server, "203.0.113.88", [TEXT, "char", "tiny", SECONDS])
    abuser.wait(lambda s: s.running or s.refused, 30)
    more = [Stream(server, "203.0.113.88", [TEXT, "char", "tiny", SECONDS]) for _ in range(4)]
    honest = Stream(server, "203.0.113.99", [TEXT[::-1], "char", "tiny", SECONDS])
    honest.wait(lambda s: s.running or s.done, 120)
    waited = time.monotonic() - honest.started
    for stream in more:
        stream.wait(lambda s: s.running or s.done or s.status().startswith("**Waiting"), 30)
    ahead = [s for s in [abuser, *more] if not s.refused]
    abuser.wait(lambda s: s.done, 60)
    print(f"3. honest visitor: waited {waited:.1f} s for its job to start; the abuser had {len(ahead)} job(s) "
          f"accepted from 5 sessions (each {SECONDS} s of training; its first took {abuser.took:.1f} s from submit "
          f"to result)")
    first_seen = next((event["output"]["data"][0] for event in honest.events if (event.get("output") or {}).get("data")),
                      "-")
    print(f"   the honest visitor first saw: {first_seen[:110]}")
    print(f"   the abuser's other sessions: {'; '.join(s.status()[:70] for s in more)}")
    honest.wait(lambda s: s.done, 120)
    server.wait_idle()
    server.report("phase 3")


def malformed(server: Server) -> None:
    bad = [["x" * 3_000_000, "char", "tiny", SECONDS], [TEXT, ["char"], "tiny", SECONDS],
           [TEXT, "char", {"size": 1}, SECONDS], [TEXT, "char", "tiny", 1e12], [TEXT, "chars", "tiny", SECONDS],
           [["a", "list"], "char", "tiny", SECONDS], [TEXT[:40], "word", "tiny", SECONDS],
           ["\n".join("w%d x y z" % i for i in range(3)), "word", "tiny", SECONDS]]
    streams = [Stream(server, f"203.0.113.{110 + i}", data) for i, data in enumerate(bad)]
    for stream in streams:
        stream.wait(lambda s: s.done or s.running, 60)
    refused = sum(s.refused for s in streams)
    for stream in streams:
        if not stream.refused:
            stream.stop()
    server.wait_idle()
    answers = httpx.get(server.url, timeout=10).status_code
    print(f"4. malformed: {refused} of {len(bad)} refused before queueing; the page still answers ({answers})")
    for stream in streams:
        print(f"   {stream.status()[:150]}")
    server.report("phase 4")


def raw_sessions(server: Server, count: int, ttl: float) -> None:
    idle_rss = server.rss_mb()
    for i in range(count):
        stream = Stream(server, f"203.0.113.{150 + i}", [TEXT, "char", "tiny", SECONDS])
        stream.wait(lambda s: s.done, 120)
    server.report(f"phase 5 ({count} raw sessions trained, never closed)")
    time.sleep(ttl + 5)
    print(f"5. raw sessions: RSS before {idle_rss:.0f} MiB")
    server.report(f"phase 5 (after --session-ttl {ttl:g} s and the sweep)")


def served_files(server: Server) -> None:
    stream = Stream(server, "203.0.113.200", [TEXT, "char", "tiny", SECONDS])
    stream.wait(lambda s: s.running or s.done, 60)
    time.sleep(2)
    files = [p for p in server.base.rglob("*") if p.is_file()]
    served = [p for p in files for route in ("gradio_api/file=", "file=")
              if httpx.get(server.url + route + str(p), timeout=10).status_code == 200]
    print(f"6. served files: {len(set(served))} of {len(files)} files under the training folder answered 200 "
          f"({', '.join(sorted({p.name for p in served})) or 'none'})")
    stream.stop()
    stream.wait(lambda s: s.done, 60)
    server.wait_idle()


def hourly_budget(server: Server, budget: float) -> None:
    held, jobs = 0.0, 0
    started = time.monotonic()
    while time.monotonic() - started < budget * 3:
        stream = Stream(server, "203.0.113.222", [TEXT, "char", "tiny", SECONDS])
        stream.wait(lambda s: s.done, 120)
        if stream.refused:
            print(f"7. hourly budget {budget:g} s: {jobs} jobs of {SECONDS} s granted (the slot held {held:.0f} s, "
                  f"start-up and final scoring included) before the refusal: {stream.status()[9:170]}")
            return
        jobs += 1
        held += stream.took
    print(f"7. hourly budget {budget:g} s: {jobs} jobs granted, never refused within {budget * 3:g} s")


def junk_uploads(server: Server, ttl: float) -> None:
    """One address uploads 1 MB of junk at a time until refused (or 64 MB); another then uploads a small file, and
    both upload the same file; the disk once the uploads go unused for the session time to live."""
    before, accepted, refusal = server.disk_mb(), 0, "-"
    junk = os.urandom(1_000_000)
    for _ in range(64):
        answer = _upload(server, "198.51.100.13", junk + uuid.uuid4().bytes)
        if answer.status_code != 200:
            refusal = f"{answer.status_code} {answer.text[:120]}"
            break
        accepted += 1
    full = server.disk_mb()
    other = _upload(server, "198.51.100.14", b"an honest visitor's notes\n" * 100)
    same = [_upload(server, address, b"one file, two visitors\n").text for address in ("198.51.100.15", "198.51.100.16")]
    print(f"8. junk uploads: one address, 1 MB each: {accepted} accepted, then {refusal}; disk {before:.1f} -> "
          f"{full:.1f} MB")
    print(f"   another address's upload: {other.status_code}; the same file from two addresses: "
          f"{'two paths' if len(set(same)) == 2 else 'ONE PATH: ' + same[0]}")
    time.sleep(ttl + 5)
    server.report(f"phase 8 (after --session-ttl {ttl:g} s unused)")


def _upload(server: Server, address: str, content: bytes) -> httpx.Response:
    return httpx.post(server.url + "gradio_api/upload", files={"files": ("notes.txt", content)},
                      headers={"X-Forwarded-For": address}, timeout=60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", type=Path, default=ROOT / "app.py")
    parser.add_argument("--port", type=int, default=7875)
    parser.add_argument("--sessions", type=int, default=9)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--raw", type=int, default=3)
    parser.add_argument("--session-ttl", type=float, default=20.0)
    parser.add_argument("--budget", type=float, default=60.0, help="the server's --train-budget-per-hour")
    parser.add_argument("--phases", default="12345678", help="which phases to run, by number (default: all)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lmdemo-abuse-") as work:
        server = Server(args.app.resolve(), args.port, Path(work), args.session_ttl, args.budget)
        try:
            print(f"server: {args.app} (options it lacks: {', '.join(server.missing) or 'none'})")
            server.report("start")
            phases = {"1": lambda: many_sessions(server, args.sessions), "2": lambda: submit_stop(server, args.rounds),
                      "3": lambda: honest_visitor(server), "4": lambda: malformed(server),
                      "5": lambda: raw_sessions(server, args.raw, args.session_ttl), "6": lambda: served_files(server),
                      "7": lambda: hourly_budget(server, args.budget),
                      "8": lambda: junk_uploads(server, args.session_ttl)}
            for number in args.phases:
                phases[number]()
        finally:
            server.process.terminate()
            server.process.wait(30)
            server.log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
