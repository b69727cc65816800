"""The Train tab is safe to open to strangers: in-process against `TrainingLine` with a stand-in trainer (a
small script that writes a log and a real model, fails, or ignores SIGINT), then one real server whose run
files are never served and whose visitors' texts leave the disk when their sessions expire and when it stops.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from conftest import DATA
from servers import free_port, wait_until
from test_app import ENV

from lmdemo.admission import Turns
from lmdemo.web import jobs as jobs_module
from lmdemo.web import trainer_process
from lmdemo.web.clients import TrainingBudget, client_address
from lmdemo.web.jobs import CANCELLED, ENDED, FAILED, FINISHED, STOPPED, WAITING, TrainingLine
from lmdemo.web.registry import Models
from lmdemo.web.train_requests import TrainInputError, TrainLimits, read_request
from lmdemo.web.train_view import watch

ROOT = Path(__file__).resolve().parents[1]
TEXT = (DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:20_000]

# The stand-in trainer: argv = mode, model folder to copy, run folder (relative, as the real one gets it).
STAND_IN = r"""
import json, os, shutil, signal, sys, time
mode, model, out = sys.argv[1:4]
text = open([name for name in os.listdir('.') if name.endswith('.txt')][0], encoding='utf-8').read()
os.makedirs(out)
with open('env.json', 'w') as f:
    json.dump({k: os.environ.get(k) for k in ('TOKENIZERS_PARALLELISM', 'RAYON_NUM_THREADS', 'OMP_NUM_THREADS')}, f)
if mode == 'fail':
    print('lmdemo: error: ' + os.path.abspath('pasted.txt') + ' holds 3 tokens, too few', flush=True)
    sys.exit(2)
stopped = []
signal.signal(signal.SIGINT, (lambda *a: None) if mode == 'stubborn' else (lambda *a: stopped.append(1)))
log = open(os.path.join(out, 'metrics.jsonl'), 'w')
log.write(json.dumps({'event': 'start', 'step_budget': 100}) + '\n'); log.flush()
if mode != 'no-model':
    shutil.copytree(model, os.path.join(out, 'model'))
    log.write(json.dumps({'event': 'val', 'step': 1, 'val_loss': 2.0, 'time': 0.1}) + '\n'); log.flush()
open(os.path.join(out, 'state.safetensors'), 'wb').write(b'optimiser state')
while mode in ('slow', 'stubborn', 'no-model') and not stopped:
    time.sleep(0.05)
while mode == 'busy' and not stopped:  # a trainer at work on its core
    sum(range(10_000))
"""


def stand_in(mode: str, model: Path):
    return lambda request, out: [sys.executable, "-c", STAND_IN, mode, str(model), out]


def alive(job) -> bool:
    return job.process is not None and Path(f"/proc/{job.process.pid}").exists() and job.process.poll() is None


@pytest.fixture
def service(char_model, tmp_path):
    """A factory of `TrainingLine`s over a stand-in trainer, each closed at the end of the test."""
    made = []

    def make(mode: str = "quick", **limits) -> TrainingLine:
        training = TrainingLine(Models({"char": str(char_model)}), TrainLimits(**limits), tmp_path / "base",
                                command=stand_in(mode, char_model), sweep_every=0.05)
        made.append(training)
        return training

    yield make
    for training in made:
        training.close()


def request(seconds: float = 10, source: str = "pasted"):
    return read_request(TEXT, "char", "tiny", seconds, TrainLimits(), source)


def files_under(folder: Path) -> list[Path]:
    """The files under a folder as they are now; a folder the server deletes while it is walked is skipped (os.walk
    ignores what vanishes, where Path.rglob raises)."""
    return [Path(top) / name for top, _, names in os.walk(folder) for name in names]


# -- private by construction ---------------------------------------------------------------------------
def test_a_failed_run_is_deleted_at_once_and_its_message_names_no_server_path(service):
    training = service("fail")
    job = training.submit("alice", "203.0.113.1", request())
    assert job.done.wait(30)
    assert job.state == FAILED and "holds 3 tokens, too few" in job.error
    assert "pasted.txt" in job.error and str(training.root) not in job.error and "/" not in job.error
    assert not job.folder.exists(), "a failed run was kept"


def test_the_text_leaves_memory_when_queued_and_the_disk_once_the_trainer_read_it(service):
    training = service("slow")
    job = training.submit("alice", "203.0.113.1", request())
    assert job.request.text == "" and job.request.level == "char"
    wait_until(lambda: job.state == "training", 30, "the job never started training")
    wait_until(lambda: not job.text_path.exists(), 10, "the text stayed on disk while the job trained")
    training.stop("alice")
    assert job.done.wait(30) and job.state == STOPPED and job.model is not None
    assert sorted(path.name for path in job.run.iterdir()) == ["metrics.jsonl", "model"]  # no optimiser state
    assert not any(TEXT[:200] in path.read_text(errors="replace") for path in files_under(training.root))


def test_the_child_runs_every_library_on_one_thread(service):
    training = service("slow")
    job = training.submit("alice", "203.0.113.1", request())
    wait_until(lambda: (job.folder / "env.json").exists(), 30, "the stand-in never started")
    time.sleep(0.2)  # the stand-in writes it in one go; give it the moment to close the file
    assert json.loads((job.folder / "env.json").read_text()) == {
        "TOKENIZERS_PARALLELISM": "false", "RAYON_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


# -- nothing outlives its purpose ----------------------------------------------------------------------
def test_stopped_without_a_model_and_cancelled_jobs_leave_nothing(service):
    training = service("no-model")
    first = training.submit("alice", "203.0.113.1", request())
    waiting = training.submit("bob", "203.0.113.2", request())
    assert waiting.state == WAITING and training.position(waiting) == 1
    assert training.stop("bob") == "Your job left the line before it started."
    assert waiting.state == CANCELLED and not waiting.folder.exists()
    wait_until(lambda: first.state == "training", 30, "the first job never started training")
    training.stop("alice")
    assert first.done.wait(30) and first.state == STOPPED and "no model to keep" in first.error
    assert not first.folder.exists()
    assert not any(path.suffix == ".txt" for path in files_under(training.root))


def test_a_session_without_requests_expires_on_a_timer_with_its_models_zips_and_uploads(service, tmp_path):
    training = service("quick", session_ttl_s=1.0)
    stored = training.cache / "0123abcd" / "diary.txt"  # where Gradio stores an upload; UploadDoor moves it
    stored.parent.mkdir(parents=True)
    stored.write_text(TEXT)
    upload = Path(training.uploads.keep("203.0.113.1", [str(stored)], training.uploads.admit("203.0.113.1", 100))[0])
    assert training.uploads.claim("alice", "203.0.113.1", upload)  # the page shows it: its session's now
    job = training.submit("alice", "203.0.113.1", request())
    assert job.done.wait(30) and job.state == FINISHED and job.model.archive.is_file()
    key, folders = job.model.name, (job.session.folder, job.session.downloads)
    assert training.models.generator(key) is not None
    # no request and no heartbeat from here on: a raw API caller that went away
    wait_until(lambda: "alice" not in training.sessions, 10, "the idle session was not ended")
    wait_until(lambda: not any(folder.exists() for folder in (*folders, upload.parent)), 10,
               "the ended session's folders, zip or upload were kept")
    with pytest.raises(ValueError, match="unknown model"):
        training.models.generator(key)


def test_requests_and_heartbeats_keep_a_session(service):
    training = service("quick", session_ttl_s=0.5)
    job = training.submit("alice", "203.0.113.1", request())
    assert job.done.wait(30)
    for _ in range(10):
        training.sessions.touch("alice")
        time.sleep(0.1)
    assert "alice" in training.sessions
    wait_until(lambda: "alice" not in training.sessions, 10, "the session outlived its last heartbeat")


def test_a_job_cut_at_its_deadline_is_stopped_keeps_its_model_and_leaves_no_process(service, monkeypatch):
    monkeypatch.setattr(jobs_module, "STARTUP_S", 0.5)
    monkeypatch.setattr(jobs_module, "OVERRUN", 0.0)
    monkeypatch.setattr(jobs_module, "STOP_GRACE_S", 0.5)
    training = service("stubborn")  # ignores SIGINT: killed after the grace
    job = training.submit("alice", "203.0.113.1", request())
    assert job.done.wait(30)
    assert job.state == STOPPED and job.model is not None and "time budget ran out" in job.error
    assert not alive(job) and job.returncode != 0


@pytest.mark.parametrize("ending", ["stop", "end_session", "close"])
def test_every_way_of_ending_a_running_job_ends_its_process(service, ending):
    training = service("slow")
    job = training.submit("alice", "203.0.113.1", request())
    wait_until(lambda: alive(job), 30, "the trainer never started")
    {"stop": lambda: training.stop("alice"), "end_session": lambda: training.end_session("alice"),
     "close": training.close}[ending]()
    assert job.done.wait(30) and job.state in ENDED
    wait_until(lambda: not alive(job), 10, "the trainer outlived its job")
    if ending != "stop":
        assert not job.session.folder.exists() and not job.session.downloads.exists()
    if ending == "close":
        assert not training.root.exists()


def test_a_training_address_is_at_work_and_charged_its_trainers_cpu_time(service):
    """The trainer is a visitor's work too: while it runs, its address is at work and its CPU time is that address's,
    so another address over its share of the cores yields them (lmdemo.admission.Usage) rather than starving it."""
    training = service("busy")
    usage = training.admission.usage
    job = training.submit("alice", "203.0.113.1", request())
    wait_until(lambda: usage.working["203.0.113.1"] and usage.used.get("203.0.113.1", (0.0, 0.0))[0] > 0.3, 30,
               "the running trainer's address was not at work, or not charged its CPU time")
    training.stop("alice")
    assert job.done.wait(30) and job.state == STOPPED
    assert "203.0.113.1" not in usage.working, "an ended job's address is no longer at work"


def test_only_marked_folders_of_dead_servers_are_swept(tmp_path):
    base = tmp_path / "base"
    operators = base / "2023-results"
    operators.mkdir(parents=True)
    (operators / "keep.txt").write_text("an operator's results")
    dead, reused = base / "whatever-name", base / "lmdemo-train-reused"
    for folder, owner in ((dead, "999999999 12345"), (reused, f"{os.getpid()} 1")):  # a pid now someone else's
        folder.mkdir()
        (folder / trainer_process.MARKER).write_text(owner)
    mine = trainer_process.make_training_folder(base)
    assert operators.exists() and not dead.exists() and not reused.exists()
    assert stat.S_IMODE(mine.stat().st_mode) == 0o700
    assert trainer_process.make_training_folder(base).exists() and mine.exists()  # a live server's folder stays


# -- a fair share for strangers --------------------------------------------------------------------------
def test_one_job_per_client_address_whatever_its_sessions(service):
    training = service("slow")
    training.submit("session-1", "203.0.113.1", request())
    for owner in ("session-1", "session-2", "session-3"):
        with pytest.raises(TrainInputError, match="a training job \\(running\\); one per visitor"):
            training.submit(owner, "203.0.113.1", request())
    assert training.submit("session-9", "203.0.113.9", request()).state == WAITING


def test_an_hourly_budget_per_client(service):
    training = service("quick", budget_per_hour_s=30)
    first = training.submit("a", "203.0.113.1", request(20))
    with pytest.raises(TrainInputError, match="one per visitor"):
        training.submit("b", "203.0.113.1", request(20))
    assert first.done.wait(30)
    used = training.budget.used("203.0.113.1")
    assert used < 20, "what a job did not use is given back"
    if used + 20 > 30:
        with pytest.raises(TrainInputError, match="fits in about \\d+ minutes?; a budget of at most \\d+ s fits now"):
            training.submit("c", "203.0.113.1", request(20))
    budget = TrainingBudget(30)
    budget.charge("x", 25)
    assert "fits in about 60 minutes" in budget.refusal("x", 10, now=time.monotonic() + 1)
    assert budget.refusal("x", 10, now=time.monotonic() + 3601) is None


def test_a_queue_of_zero_runs_a_job_when_the_slot_is_free_and_refuses_when_busy(service):
    training = service("slow", max_waiting=0)
    first = training.submit("a", "203.0.113.1", request())
    assert first.state != WAITING or training.running is first
    with pytest.raises(TrainInputError, match="the training slot is busy and this server queues none: try again in "
                                              "about 1 minute"):
        training.submit("b", "203.0.113.2", request())


def test_the_disk_cap_refuses_a_job_before_anything_is_written(service):
    training = service("quick", disk_mb=0.5)
    with pytest.raises(TrainInputError, match="the server's training space is full"):
        training.submit("a", "203.0.113.1", request())
    assert not list(training.sessions) and files_under(training.root) == [training.root / trainer_process.MARKER]


def test_the_client_address_trusts_as_many_x_forwarded_for_entries_as_there_are_proxies():
    headers = {"x-forwarded-for": "198.51.100.7, 203.0.113.5"}
    assert client_address("127.0.0.1", headers, proxy_hops=0) == "127.0.0.1"  # no proxy: the header is the client's
    assert client_address("10.1.2.3", headers, proxy_hops=1) == "203.0.113.5"  # the one proxy's own entry
    assert client_address("127.0.0.1", {}, proxy_hops=1) == "127.0.0.1"
    # two proxies: the outer one wrote the client, the inner one wrote the outer proxy (the same for everyone)
    two = {"x-forwarded-for": "6.6.6.6, 198.51.100.7, 10.0.0.2"}
    assert client_address("10.0.0.3", two, proxy_hops=2) == "198.51.100.7"
    assert client_address("10.0.0.3", two, proxy_hops=1) == "10.0.0.2", "one hop keys every visitor as the proxy"


def test_an_ipv6_address_is_keyed_by_its_64_block():
    one = client_address("2001:db8:1:2:aaaa::1", {}, proxy_hops=0)
    assert one == client_address("2001:db8:1:2:ffff:1234:5678:9abc", {}, proxy_hops=0) == "2001:db8:1:2::/64"
    assert one != client_address("2001:db8:1:3::1", {}, proxy_hops=0)
    assert client_address("::ffff:203.0.113.9", {}, proxy_hops=0) == "203.0.113.9"
    assert client_address("10.0.0.1", {"x-forwarded-for": "[2001:db8::5]"}, proxy_hops=1) == "2001:db8::/64"


def test_the_train_tabs_samples_take_a_model_turn_when_each_request_decodes_alone(service):
    training = service("quick")
    job = training.submit("alice", "203.0.113.1", request())
    turns = Turns(1)
    held = []

    @contextmanager
    def turn():
        with turns.turn("203.0.113.1"):
            held.append(turns.running.total())
            yield

    updates = list(watch(training, job, every=0.1, poll=0.05, compute=turn))
    assert updates[-1].done and updates[-1].samples and held == [1] * len(held) and held


# -- a real server ---------------------------------------------------------------------------------------
def test_no_run_file_is_served_and_no_text_outlives_its_session_or_the_server(char_model, tmp_path):
    root, port = tmp_path / "train-root", free_port()
    url = f"http://127.0.0.1:{port}/"
    marker = f"diary-{uuid.uuid4().hex}"
    text = "\n".join(f"{marker} day {i}: " + TEXT[i * 50:(i + 1) * 50].replace("\n", " ") for i in range(400))
    command = [sys.executable, "app.py", "--port", str(port), "--model", str(char_model), "--checkpoints",
               str(tmp_path / "none"), "--train-root", str(root), "--train-seconds", "10", "--session-ttl", "4"]
    log = (tmp_path / "app.log").open("w")
    server = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: server.poll() is not None or _answers(url), 120, "the server never answered")
        assert server.poll() is None, (tmp_path / "app.log").read_text()
        events = _raw_train(url, text)  # a script's session: no heartbeat, never closed
        wait_until(lambda: any(b'"process_generating"' in e for e in events), 60, lambda: str(events[-3:]))
        holders = _holding(root, marker)
        assert holders, "the text was never on disk while its job waited or trained"
        run_files = files_under(root)
        for path in run_files:
            for route in ("gradio_api/file=", "file="):
                response = httpx.get(url + route + str(path), timeout=10)
                assert response.status_code in (403, 404), f"{path} was served at /{route}"
        wait_until(lambda: any(b'"process_completed"' in e for e in events), 90, "the job never ended")
        assert b'"success":true' in events[-1] and all(marker.encode() not in e for e in events)
        # the text leaves once read; only its model's example prompts (a few openings) stay, until the session ends
        wait_until(lambda: {path.name for path in _holding(root, marker)} <= {"examples.json", "char-tiny-1.zip"}, 10,
                   lambda: f"the text outlived its job: {_holding(root, marker)}")
        assert any(path.suffix == ".zip" for path in files_under(root)), "the job kept no model"
        wait_until(lambda: files_under(root) == [next(root.iterdir()) / trainer_process.MARKER], 30,
                   lambda: f"the expired session left {files_under(root)}")
        events = _raw_train(url, text)
        wait_until(lambda: _holding(root, marker), 30, lambda: f"the second text never reached the disk: {events}")
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
        assert not any(root.iterdir()), f"left behind: {list(root.rglob('*'))}"
    finally:
        if server.poll() is None:
            server.kill()
        log.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _holding(root: Path, marker: str) -> list[Path]:
    return [path for path in files_under(root) if marker.encode() in _bytes_if_there(path)]


def _bytes_if_there(path: Path) -> bytes:
    """A file's bytes, or none where the server deleted it after it was listed."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _raw_train(url: str, text: str) -> list[bytes]:
    """POST /train the way a script would (its own session id, no heartbeat) and collect the stream's events
    in a thread; the list fills as they come."""
    import threading

    session = uuid.uuid4().hex
    config = httpx.get(url + "config", timeout=10).json()
    fn = next(i for i, d in enumerate(config["dependencies"]) if d.get("api_name") == "train")
    httpx.post(url + "gradio_api/queue/join", json={"data": [text, "char", "tiny", 10], "fn_index": fn,
                                                     "session_hash": session}, timeout=30).raise_for_status()
    events: list[bytes] = []

    def read() -> None:
        try:
            with httpx.stream("GET", url + f"gradio_api/queue/data?session_hash={session}", timeout=120) as stream:
                for line in stream.iter_lines():
                    events.append(line.encode())
                    if b'"process_completed"' in line.encode():
                        return
        except httpx.HTTPError as error:  # the server stopped mid-stream
            events.append(f"closed: {error}".encode())

    threading.Thread(target=read, daemon=True).start()
    return events
