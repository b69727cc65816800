"""Training in the web demo, watched live: the Train tab as plain Python.

A visitor's text becomes an ordinary run folder, trained by `python -m lmdemo train` in a child process:
the same code as the command line, with one torch thread and a lower CPU priority, so it never takes a
core from sampling; SIGINT stops it cleanly (validate, save, keep the best model). `LiveTraining` runs
at most one such job at a time server-wide; the others wait in line and are told their place. `watch`
turns a job into `TrainUpdate`s every 2 seconds: its curve points, read with `lmdemo.metrics` (the
one reader), samples from the best weights so far (at most every 6 s) at two temperatures with one fixed seed (so what
changes between updates is the learning, not luck), tokens per second and the time left. A finished
model joins the `Models` registry as a private model that only its session knows by name, and a
session's run folders are deleted when it ends (and a session's oldest model when it trains one
too many).
"""

from __future__ import annotations

import atexit
import gzip
import html
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lmdemo import render
from lmdemo.checkpoint import MODEL_DIR, WEIGHTS_FILE, ModelLoadError, load_model
from lmdemo.generation import Generator, Sample, Sampling, SettingsError
from lmdemo.metrics import METRICS_FILE, Run, bits, load_run
from lmdemo.registry import Models
from lmdemo.runs import curve_frame

PACKAGE = Path(__file__).resolve().parent
CORPORA_DIR = PACKAGE / "corpora"
LEVELS = {"char": "characters", "word": "words", "bpe": "subwords (byte-level BPE)"}
SAMPLE_TEMPERATURES = (0.5, 1.0)
SAMPLE_SEED = 0
SAMPLE_TOKENS = {"char": 240, "word": 50, "bpe": 70}
UPDATE_EVERY_S = 2.0
SAMPLE_EVERY_S = 6.0  # samples are drawn again at most this often (and when the run ends): they cost the server
WAITING_EVERY_S = 1.0
NICENESS = 19  # the trainer yields a core to sampling requests whenever both want it
STOP_GRACE_S = 20.0  # after a stop request, how long the trainer gets to validate and save
STARTUP_S, OVERRUN = 30.0, 1.25  # a job is stopped past start-up + 1.25 x its budget
LOG_EVERY_S, EVAL_EVERY_S = 1.0, 4.0  # how often a job logs and validates, from its size's measured speed
CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")  # control characters other than \t \n \f \r
UNITS = {"char": "characters", "word": "words", "bpe": "tokens"}


class TrainInputError(SettingsError):
    """A training request the service refuses; the message says why in words a visitor can act on."""


@dataclass(frozen=True)
class Size:
    """A named model size for the Train tab, and its measured speed (steps per second at 1 thread,
    characters) that sets how often a job logs and validates."""

    name: str
    num_layers: int
    hidden_size: int
    emb_size: int
    dropout: float
    steps_per_second: float

    @property
    def label(self) -> str:
        return f"{self.name} ({self.num_layers}×{self.hidden_size})"


# Measured on one core of a 2-core AMD EPYC (bf16): tiny trains Tiny Shakespeare at ~115k characters/s and is
# below 2.0 nats/char after ~320 steps; small (8x the parameters) at ~12k characters/s is not, in 60 s.
SIZES = {size.name: size for size in (
    Size("tiny", 1, 128, 64, 0.0, 50.0),
    Size("small", 2, 256, 128, 0.1, 5.0),
)}
LEVEL_SPEED = {"char": 1.0, "word": 0.1, "bpe": 0.3}  # steps per second relative to characters (softmax, windows)
DEFAULT_SIZE = "tiny"
DEFAULT_LEVEL = "char"


@dataclass(frozen=True)
class Corpus:
    """A text bundled with the app (lmdemo/corpora), offered in the Train tab."""

    key: str
    title: str
    file: str
    about: str

    def read(self) -> str:
        with gzip.open(CORPORA_DIR / self.file, "rt", encoding="utf-8") as f:
            return f.read()


CORPORA = {corpus.key: corpus for corpus in (
    Corpus("tinyshakespeare", "Tiny Shakespeare", "tinyshakespeare.txt.gz",
           "40,000 lines of Shakespeare's plays, 1.1 M characters (Karpathy's char-rnn corpus; public domain)"),
    Corpus("imdb", "IMDB reviews (a slice)", "imdb-reviews.txt.gz",
           "the first 794 reviews of the IMDB training set, one a line, 1 M characters, HTML tags removed "
           "(Maas et al. 2011)"),
)}


@dataclass(frozen=True)
class TrainLimits:
    """What one training request may ask for, and how many may wait: the operator's knobs."""

    max_seconds: float = 180.0  # the cap on a job's time budget
    default_seconds: float = 60.0
    min_seconds: float = 10.0
    max_chars: int = 2_000_000  # characters of text (Tiny Shakespeare has 1.1 M)
    max_upload_bytes: int = 8_000_000
    max_symbols: int = 1_000  # distinct characters a character-level model may have to learn
    max_waiting: int = 8  # jobs waiting for the one training slot; more are turned away
    max_session_models: int = 3  # a session's trained models kept; training one more drops the oldest
    session_ttl_s: float = 3 * 3600.0  # a session idle this long (no heartbeat ended it) is cleaned up

    def __post_init__(self) -> None:
        if not 0 < self.min_seconds <= self.default_seconds <= self.max_seconds:
            raise ValueError(f"the training time limits must satisfy 0 < min ({self.min_seconds:g}) <= default "
                             f"({self.default_seconds:g}) <= max ({self.max_seconds:g}) seconds")


# -- reading a request ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainRequest:
    """A checked training request."""

    text: str
    level: str
    size: str
    seconds: float
    source: str  # what the text is, for file names and messages ("tinyshakespeare", "pasted", an upload's stem)

    @property
    def run_name(self) -> str:
        return f"{self.level}-{self.size}"


# the recipe every job shares: cosine over the budget, AdamW, windows short enough for many steps
RECIPE = dict(batch_size=32, lr=3e-3, optimizer="adamw", weight_decay=0.01, clip=1.0, schedule="cosine",
              warmup_steps=20, early_stop=8, eval_tokens=20_000, eval_batch_size=16, eval_bptt=128,
              valid_fraction=0.1, test_fraction=0.0, save_every=1e9, seed=1234)
BPTT = {"char": 64, "word": 32, "bpe": 48}
LEVEL_OPTIONS = {"char": dict(no_tie_weights=True), "word": dict(max_vocab=5000), "bpe": dict(max_vocab=1000)}
# tokens per character, roughly, to refuse a text shorter than a batch before a process is started
TOKENS_PER_CHAR = {"char": 1.0, "word": 0.2, "bpe": 0.3}


def parse_level(value: Any) -> str:
    if value not in LEVELS:
        raise TrainInputError(f"level must be one of {', '.join(LEVELS)} (got {str(value)[:40]!r})")
    return value


def parse_size(value: Any) -> str:
    if value not in SIZES:
        raise TrainInputError(f"size must be one of {', '.join(SIZES)} (got {str(value)[:40]!r})")
    return value


def parse_seconds(value: Any, limits: TrainLimits) -> float:
    """A time budget in seconds, from `limits.min_seconds` to the operator's cap."""
    if value is None or value == "":
        return limits.default_seconds
    try:
        seconds = float(str(value)[:40]) if not isinstance(value, (int, float)) or isinstance(value, bool) \
            else float(value)
    except (ValueError, OverflowError):
        raise TrainInputError(f"the time budget must be a number of seconds (got {str(value)[:40]!r})") from None
    if not math.isfinite(seconds) or not limits.min_seconds <= seconds <= limits.max_seconds:
        raise TrainInputError(f"the time budget must be from {limits.min_seconds:g} to {limits.max_seconds:g} seconds "
                              f"on this server (got {seconds:g})")
    return seconds


def read_upload(path: Any, limits: TrainLimits) -> tuple[str, str]:
    """An uploaded file's text and a name for it: UTF-8 text only, refused before reading when too large."""
    if not path:
        raise TrainInputError("no file uploaded: choose a .txt file, or another source of text")
    path = Path(str(path))
    try:
        size = path.stat().st_size
    except OSError:
        raise TrainInputError("the uploaded file could not be read: upload it again") from None
    if size > limits.max_upload_bytes:
        raise TrainInputError(f"the file has {size / 1e6:,.1f} MB; at most {limits.max_upload_bytes / 1e6:g} MB "
                              f"of text is accepted")
    data = path.read_bytes()
    if b"\x00" in data[:1_000_000]:
        raise TrainInputError("the file is not text (it holds NUL bytes: a binary file?): upload a UTF-8 .txt file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise TrainInputError(f"the file is not UTF-8 text (byte {error.start:,} cannot be read: a binary file, or "
                              f"another encoding?): save it as UTF-8 and upload it again") from None
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", path.stem).strip("-")[:40] or "upload"
    return text, stem


def check_text(text: Any, level: str, limits: TrainLimits) -> str:
    """The text to train on, with newlines made plain, or a refusal saying what is wrong with it."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise TrainInputError(f"the text must be a string (got {type(text).__name__})")
    if len(text) > limits.max_chars:
        raise TrainInputError(f"the text has {len(text):,} characters; at most {limits.max_chars:,} are accepted")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise TrainInputError("the text is empty: paste some text, upload a .txt file or pick a bundled corpus")
    control = len(CONTROL.findall(text))
    if "\x00" in text or control > len(text) // 100:
        raise TrainInputError(f"the text is not plain text ({control:,} control characters: a binary file?)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise TrainInputError("the text holds unpaired surrogate code points: it is not valid Unicode text") from None
    symbols = set(text)
    visible = {ch for ch in symbols if not ch.isspace()}
    if len(visible) < 2:
        shown = next(iter(visible))
        raise TrainInputError(f"the text is one character ({shown!r}) repeated: there is nothing to learn; "
                              f"give a real text")
    if level == "char" and len(symbols) > limits.max_symbols:
        raise TrainInputError(f"the text has {len(symbols):,} different characters; a character-level model here "
                              f"learns at most {limits.max_symbols:,}: choose the word or subword level")
    if level == "word" and len(set(text.lower().split())) < 2:
        raise TrainInputError("the text is one word repeated: there is nothing to learn; give a real text")
    needed = minimum_characters(level)
    if len(text) < needed:
        batch = RECIPE["batch_size"] * BPTT[level]
        raise TrainInputError(f"the text is too short: {len(text):,} characters, but one training batch alone is "
                              f"{RECIPE['batch_size']} streams × {BPTT[level]} {LEVELS[level]} = {batch:,} "
                              f"{LEVELS[level]}; give at least {needed:,} characters")
    return text


def minimum_characters(level: str) -> int:
    """Characters a text needs at this level: two batches of windows for training plus its validation share."""
    tokens = 2 * RECIPE["batch_size"] * BPTT[level]
    return math.ceil(tokens / TOKENS_PER_CHAR[level] / (1 - RECIPE["valid_fraction"]))


def read_request(text: Any, level: Any, size: Any, seconds: Any, limits: TrainLimits,
                 source: str = "pasted") -> TrainRequest:
    """A request from form or API values, the cheap checks first."""
    level, size = parse_level(level), parse_size(size)
    budget = parse_seconds(seconds, limits)
    return TrainRequest(check_text(text, level, limits), level, size, budget, source)


def read_source(source: Any, text: Any, upload: Any, limits: TrainLimits) -> tuple[str, str]:
    """The Train tab's text: a bundled corpus, the pasted text or an uploaded file; and its name."""
    if source in CORPORA:
        return CORPORA[source].read(), source
    if source == "upload":
        return read_upload(upload, limits)
    if source == "paste":
        return text, "pasted"
    raise TrainInputError(f"text source must be one of {', '.join([*CORPORA, 'paste', 'upload'])} "
                          f"(got {str(source)[:40]!r})")


# -- the trainer, as a child process -------------------------------------------------------------------
# The child dies with the server (Linux: the parent-death signal, a clean stop), lowers its priority and then
# runs the command line itself, so its start record reads `python -m lmdemo train ...` like any run's.
BOOTSTRAP = """import ctypes, os, signal, sys
parent, niceness = int(sys.argv.pop(1)), int(sys.argv.pop(1))
try:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != parent:
    sys.exit(1)
os.nice(niceness)
from lmdemo.cli import main
sys.exit(main(sys.argv[1:]))
"""


def train_arguments(request: TrainRequest, data: Path, out: Path) -> list[str]:
    """`python -m lmdemo train` options for a request: its size and level on the shared recipe, a time budget,
    one thread, logging and validating every few seconds."""
    size = SIZES[request.size]
    options: dict[str, Any] = dict(RECIPE, **LEVEL_OPTIONS[request.level])
    speed = size.steps_per_second * LEVEL_SPEED[request.level]
    log_every = max(1, round(speed * LOG_EVERY_S))
    options.update(level=request.level, emb_size=size.emb_size, hidden_size=size.hidden_size,
                   num_layers=size.num_layers, dropout=size.dropout, bptt=BPTT[request.level],
                   max_minutes=request.seconds / 60, epochs=100_000, log_every=log_every,
                   eval_every=max(log_every, round(speed * EVAL_EVERY_S)), threads=1)
    arguments = ["train", "--data", str(data), "--out", str(out), "--quiet"]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        arguments += [flag] if value is True else [flag, f"{value:.6g}" if isinstance(value, float) else str(value)]
    return arguments


def train_command(request: TrainRequest, data: Path, out: Path, niceness: int = NICENESS) -> list[str]:
    return [sys.executable, "-c", BOOTSTRAP, str(os.getpid()), str(niceness), *train_arguments(request, data, out)]


# -- jobs, sessions and the one training slot ----------------------------------------------------------
WAITING, STARTING, TRAINING, STOPPING = "waiting", "starting", "training", "stopping"
FINISHED, STOPPED, FAILED, CANCELLED = "finished", "stopped", "failed", "cancelled"
ENDED = (FINISHED, STOPPED, FAILED, CANCELLED)


@dataclass
class SessionModel:
    """A model a session trained: its private name in the registry, what the pickers call it, its files."""

    key: str
    label: str
    run: Path  # the run folder (its metrics.jsonl is the whole log)
    archive: Path  # the model folder as a zip


@dataclass
class Session:
    """One visitor (a Gradio session): its folder, its job, its models."""

    owner: str
    folder: Path
    models: list[SessionModel] = field(default_factory=list)
    job: Job | None = None
    count: int = 0
    last_used: float = field(default_factory=time.monotonic)
    ended: bool = False


@dataclass
class Job:
    """One training request, from the queue to its model."""

    session: Session
    request: TrainRequest
    run: Path
    state: str = WAITING
    process: subprocess.Popen | None = None
    stop_requested: bool = False
    returncode: int | None = None
    error: str | None = None
    model: SessionModel | None = None
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    ended: float | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def metrics_path(self) -> Path:
        return self.run / METRICS_FILE

    @property
    def model_folder(self) -> Path:
        return self.run / MODEL_DIR


class LiveTraining:
    """The server's training slot, the line waiting for it, and every session's models and folders.

    One lock guards the queue and the sessions; a job's own thread starts its process, waits for it and
    hands the slot to the next job, so no two training processes ever run at once.
    """

    def __init__(self, models: Models, limits: TrainLimits = TrainLimits(), root: str | Path | None = None,
                 niceness: int = NICENESS):
        self.models, self.limits, self.niceness = models, limits, niceness
        base = Path(root) if root is not None else Path(tempfile.gettempdir()) / "lmdemo-train"
        _remove_stale(base)
        self.root = base / f"{os.getpid()}-{secrets.token_hex(4)}"
        self.root.mkdir(parents=True)
        self.waiting: list[Job] = []
        self.running: Job | None = None
        self.sessions: dict[str, Session] = {}
        self.lock = threading.RLock()
        self.closed = False
        atexit.register(self.close)

    # -- requests ---------------------------------------------------------------------------------
    def submit(self, owner: str, request: TrainRequest) -> Job:
        """Queue a job for `owner`'s session; refused when it already has one or the line is full.

        The text is written to the run folder before the job joins the line, so it is there when it starts."""
        with self.lock:
            if self.closed:
                raise TrainInputError("the server is shutting down")
            self._sweep()
            session = self._session(owner)
            current = session.job
            if current is not None and current.state not in ENDED:
                where = "running" if current is self.running else \
                    f"waiting, {self.position(current)} ahead of it"
                raise TrainInputError(f"you already have a training job ({where}): wait for it, or press Stop "
                                      f"before training again")
            if len(self.waiting) >= self.limits.max_waiting:
                raise TrainInputError(f"{len(self.waiting)} training jobs are already waiting, the most this server "
                                      f"queues: try again in a few minutes")
            session.count += 1
            job = Job(session, request, session.folder / f"{request.run_name}-{session.count}")
            session.job = job
        try:
            job.run.mkdir(parents=True)
            (job.run / f"{request.source}.txt").write_text(request.text, encoding="utf-8")
        except OSError as error:
            with self.lock:
                self._drop_waiting(job, FAILED, f"the text could not be stored: {error.strerror or error}")
            return job
        with self.lock:
            if job.state != WAITING:  # stopped while its text was being written
                pass
            elif session.ended or self.closed:
                self._drop_waiting(job, CANCELLED, "the session ended before the job could wait for its turn")
            else:
                self.waiting.append(job)
                self._advance()
        return job

    def position(self, job: Job) -> int:
        """Jobs ahead of `job`: 0 once it runs (or ended), else the running one and those before it in line."""
        with self.lock:
            if job not in self.waiting:
                return 0
            return self.waiting.index(job) + (self.running is not None)

    def stop(self, owner: str) -> str:
        """Stop `owner`'s job: a waiting one leaves the line, a running one ends at its next log interval
        keeping its best model. Returns what happened, in words."""
        with self.lock:
            session = self.sessions.get(owner)
            job = session.job if session else None
            if job is None or job.state in ENDED:
                return "No training job of yours is running."
            session.last_used = time.monotonic()
            return self._stop(job)

    def end_session(self, owner: str) -> None:
        """The visitor left: stop its job, forget its models and delete its folders."""
        with self.lock:
            session = self.sessions.pop(owner, None)
            if session is None:
                return
            session.ended = True
            job = session.job
            if job is not None and job.state not in ENDED:
                self._stop(job)
            for model in session.models:
                self.models.remove_private(model.key)
            busy = job is not None and job is self.running
        if not busy:  # else the job's thread deletes the folder once its process has exited
            shutil.rmtree(session.folder, ignore_errors=True)

    def session_models(self, owner: str) -> list[SessionModel]:
        with self.lock:
            session = self.sessions.get(owner)
            return list(session.models) if session else []

    def close(self) -> None:
        """End every job now (the server is stopping) and delete every folder."""
        with self.lock:
            self.closed = True
            for job in list(self.waiting):
                self._drop_waiting(job, CANCELLED, "the server stopped")
            running = self.running
        if running is not None and running.process is not None:
            _end_process(running.process, grace=5.0)
            running.done.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- inside the lock --------------------------------------------------------------------------
    def _session(self, owner: str) -> Session:
        session = self.sessions.get(owner)
        if session is None:
            session = Session(owner, self.root / secrets.token_hex(8))
            self.sessions[owner] = session
        session.last_used = time.monotonic()
        return session

    def _sweep(self) -> None:
        """End sessions idle for longer than the limits allow (a client that vanished without a goodbye)."""
        now = time.monotonic()
        for owner, session in list(self.sessions.items()):
            idle = session.job is None or session.job.state in ENDED
            if idle and now - session.last_used > self.limits.session_ttl_s:
                self.end_session(owner)

    def _stop(self, job: Job) -> str:
        if job.state == WAITING:
            self._drop_waiting(job, CANCELLED, "stopped while waiting")
            return "Your job left the line before it started."
        if job.stop_requested:  # a second signal would abort the trainer rather than stop it cleanly
            return "Already stopping: the best model so far is kept."
        job.stop_requested = True
        if job.state in (STARTING, TRAINING):
            job.state = STOPPING
        if job.process is not None and job.process.poll() is None:
            _signal(job.process, signal.SIGINT)
        return "Stopping at the next log interval: the best model so far is kept."

    def _drop_waiting(self, job: Job, state: str, why: str) -> None:
        if job in self.waiting:
            self.waiting.remove(job)
        job.state, job.error, job.ended = state, why, time.monotonic()
        job.done.set()
        if job.session.ended:
            shutil.rmtree(job.run, ignore_errors=True)

    def _advance(self) -> None:
        """Start the next waiting job if the slot is free."""
        if self.running is not None or not self.waiting or self.closed:
            return
        job = self.waiting.pop(0)
        self.running = job
        job.state, job.started = STARTING, time.monotonic()
        threading.Thread(target=self._run, args=(job,), name=f"lmdemo-train-{job.run.name}", daemon=True).start()

    # -- a job's thread ---------------------------------------------------------------------------
    def _run(self, job: Job) -> None:
        """Run the trainer, wait for it (stopping it when asked or when it overruns), then keep its model
        and pass the slot on. The process is started here and this thread outlives it: on Linux the
        parent-death signal is tied to the thread that started the child."""
        request = job.request
        log_path = job.run.parent / f"{job.run.name}.log"
        try:
            with open(log_path, "wb") as log:
                env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1",
                       "PYTHONPATH": os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")])}
                process = subprocess.Popen(
                    train_command(request, job.run / f"{request.source}.txt", job.run, self.niceness),
                    cwd=PACKAGE.parent, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            with self.lock:
                job.process = process
                if job.stop_requested:
                    _signal(process, signal.SIGINT)
            self._wait(job, process)
            job.returncode = process.returncode
            self._finish(job, log_path)
        except Exception as error:  # noqa: BLE001 - a failed job must still free the slot
            job.state, job.error = FAILED, f"training could not run: {error}"
        finally:
            with self.lock:
                if job.state not in ENDED:
                    job.state = FAILED
                job.ended = time.monotonic()
                self.running = None
                ended = job.session.ended
                job.done.set()
                self._advance()
            if ended:
                shutil.rmtree(job.session.folder, ignore_errors=True)
            log_path.unlink(missing_ok=True)

    def _wait(self, job: Job, process: subprocess.Popen) -> None:
        # The trainer turns the budget into steps from a speed it measures once; when the machine gets busier
        # (sampling requests come first), the steps take longer, and past this it is stopped (the best model kept).
        deadline = time.monotonic() + STARTUP_S + OVERRUN * job.request.seconds
        stop_sent: float | None = None
        while True:
            try:
                process.wait(timeout=0.25)
                return
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if job.state == STARTING and job.metrics_path.exists():
                with self.lock:
                    if job.state == STARTING:
                        job.state = TRAINING
            if job.stop_requested and stop_sent is None:
                stop_sent = now
            if now > deadline and stop_sent is None:
                _signal(process, signal.SIGINT)
                stop_sent = now
            if stop_sent is not None and now - stop_sent > STOP_GRACE_S:
                _end_process(process, grace=5.0)
                return

    def _finish(self, job: Job, log_path: Path) -> None:
        """Keep the job's model (registered privately for its session), or say why there is none."""
        code, has_model = job.returncode, (job.model_folder / WEIGHTS_FILE).is_file()
        if code == 0 and has_model:
            job.state = STOPPED if job.stop_requested else FINISHED
        elif has_model and job.stop_requested:
            job.state = STOPPED
        else:
            job.state = STOPPED if job.stop_requested else FAILED
            job.error = "stopped before the first validation: there is no model to keep" if job.stop_requested \
                else _trainer_error(log_path, code)
            return
        if job.session.ended:
            return
        name = job.run.name
        key = f"{name}-{secrets.token_hex(4)}"
        try:
            generator = Generator(load_model(job.model_folder))
            archive = job.run.parent / f"{name}.zip"
            _zip_folder(job.model_folder, archive, name)
        except (ModelLoadError, OSError) as error:
            job.state, job.error = FAILED, f"the trained model could not be read back: {error}"
            return
        model = SessionModel(key, f"yours: {name}", job.run, archive)
        with self.lock:
            if job.session.ended:
                return
            self.models.add_private(key, generator, owner=job.session.owner)
            job.session.models.append(model)
            job.model = model
            while len(job.session.models) > self.limits.max_session_models:
                dropped = job.session.models.pop(0)
                self.models.remove_private(dropped.key)
                shutil.rmtree(dropped.run, ignore_errors=True)
                dropped.archive.unlink(missing_ok=True)

    # -- watching ---------------------------------------------------------------------------------
    def watch(self, job: Job, every: float = UPDATE_EVERY_S, poll: float = 0.25) -> Iterator[TrainUpdate]:
        """Updates on `job` until it ends: its place in line while it waits, then every `every` seconds
        the curves, samples (re-drawn when the best model changes), speed and time left; the last update
        has `done` set. If the watcher goes away (the stream is closed), the job is stopped."""
        view = _View(job)
        last = -math.inf
        try:
            while True:
                finished = job.done.wait(poll)
                now = time.monotonic()
                period = WAITING_EVERY_S if job.state == WAITING else every
                if finished or now - last >= period:
                    last = now
                    with self.lock:
                        job.session.last_used = now
                        position = self.position(job)
                    yield view.update(position, finished)
                if finished:
                    return
        finally:
            if not job.done.is_set():
                with self.lock:
                    self._stop(job)


@dataclass
class TrainUpdate:
    """What the Train tab shows at one moment of a job."""

    state: str
    request: TrainRequest
    position: int  # jobs ahead while waiting
    frame: pd.DataFrame  # the run's curve points (lmdemo.runs.curve_frame)
    step: int | None = None
    step_budget: int | None = None
    tokens_per_sec: float | None = None
    seconds_left: float | None = None
    elapsed: float = 0.0  # since the job started (or was submitted, while it waits)
    best: dict[str, Any] | None = None  # the best validation record so far
    samples: list[Sample] = field(default_factory=list)
    sampled_at: dict[str, Any] | None = None  # the validation record of the weights the samples come from
    error: str | None = None
    model: SessionModel | None = None
    done: bool = False


class _View:
    """A job's log and best model as last read: samples are drawn again only when the model changes."""

    def __init__(self, job: Job):
        self.job = job
        self.model_stamp: tuple[int, int] | None = None
        self.samples: list[Sample] = []
        self.sampled_at: dict[str, Any] | None = None
        self.sampled_when = -math.inf

    def update(self, position: int, done: bool) -> TrainUpdate:
        job = self.job
        state = job.state
        now = time.monotonic()
        elapsed = (job.ended or now) - (job.started or job.submitted)
        update = TrainUpdate(state, job.request, position, curve_frame([]), elapsed=elapsed, error=job.error,
                             model=job.model, done=done)
        if state == WAITING or not job.metrics_path.exists():
            return update
        run = self._run()
        update.frame = curve_frame([run])
        start = run.metrics.last("start") or {}
        update.step_budget = start.get("step_budget")
        trains = run.metrics.events("train")
        if trains:
            last = trains[-1]
            update.step, update.tokens_per_sec = last.get("step"), last.get("tokens_per_sec")
            if len(trains) >= 2 and update.step_budget and not done:
                (a, b) = trains[-2], trains[-1]
                rate = (b["step"] - a["step"]) / max(b["time"] - a["time"], 1e-9)
                update.seconds_left = max(0.0, (update.step_budget - b["step"]) / rate) if rate > 0 else None
        steps = [r["step"] for r in run.metrics.records if r.get("event") in ("train", "val") and "step" in r]
        update.step = max(steps, default=update.step)
        update.best = run.metrics.best("val_loss")
        if done or now - self.sampled_when >= SAMPLE_EVERY_S:
            self._sample()
        update.samples, update.sampled_at = self.samples, self.sampled_at
        return update

    def _run(self) -> Run:
        return load_run(self.job.run, name=self.job.run.name)

    def _sample(self) -> None:
        """Samples from the best model so far, drawn again when its weights file changed."""
        weights = self.job.model_folder / WEIGHTS_FILE
        try:
            stat = weights.stat()
        except OSError:
            return
        stamp = (stat.st_ino, stat.st_mtime_ns)
        if stamp == self.model_stamp:
            return
        try:
            trained = load_model(self.job.model_folder)
        except (ModelLoadError, OSError):  # being replaced right now: the next poll reads it
            return
        self.model_stamp, self.sampled_when = stamp, time.monotonic()
        generator = Generator(trained)
        level = trained.config.level
        sampling = Sampling(temperatures=SAMPLE_TEMPERATURES, max_new_tokens=SAMPLE_TOKENS.get(level, 100),
                            seed=SAMPLE_SEED, stop_at_eos=False)
        self.samples = generator.generate(generator.prompt("").ids, sampling)
        self.sampled_at = trained.metrics.best("val_loss") if trained.metrics else None


# -- what the tab shows --------------------------------------------------------------------------------
def status_markdown(update: TrainUpdate) -> str:
    """Where the job stands, in one line."""
    request = update.request
    what = f"a {request.level}-level {SIZES[request.size].label} model on *{_source_title(request.source)}*"
    best = _loss_text(update.best, request.level) if update.best else None
    if update.state == WAITING:
        ahead = update.position
        return (f"**Waiting** to train {what}: {ahead} job{'s' if ahead != 1 else ''} ahead of yours "
                f"(one training job runs at a time on this server) · waited {update.elapsed:.0f} s")
    if update.state == STARTING or (update.state in (TRAINING, STOPPING) and update.step is None):
        return (f"**Starting** {what}: reading the text, building the vocabulary and timing a few steps to fit "
                f"{request.seconds:g} s… ({update.elapsed:.0f} s)")
    if update.state in (TRAINING, STOPPING):
        parts = [f"step {update.step:,}" + (f" of {update.step_budget:,}" if update.step_budget else "")]
        if update.tokens_per_sec:
            parts.append(f"{update.tokens_per_sec:,.0f} {UNITS[request.level]}/s")
        if update.seconds_left is not None:
            parts.append(f"about {update.seconds_left:.0f} s left")
        if best:
            parts.append(f"best validation {best}")
        state = "Stopping" if update.state == STOPPING else "Training"
        note = " (validating and saving the best model)" if update.state == STOPPING else ""
        return f"**{state}**{note} {what}: " + " · ".join(parts)
    if update.state in (FINISHED, STOPPED) and update.model is not None:
        verb = "Done" if update.state == FINISHED else "Stopped"
        steps = f"{update.step:,} steps in {update.elapsed:.0f} s" if update.step else f"{update.elapsed:.0f} s"
        return (f"**{verb}**: {steps}, best validation {best or '—'}. Your model **{update.model.key}** is now in "
                f"the Sample, Inside and Compare pickers and the Training curves tab (for this session only), and "
                f"**Download** gives its folder as a zip.")
    if update.state == CANCELLED:
        return f"**Cancelled**: {update.error or 'the job left the line'}."
    if update.state == STOPPED:
        return f"**Stopped**: {update.error or 'no model was kept'}."
    return f"**Training failed**: {update.error or 'the trainer ended without a model'}."


def samples_html(update: TrainUpdate) -> str:
    """The samples of the best weights so far, one column per temperature, coloured by surprisal."""
    if not update.samples:
        if update.state in (WAITING, STARTING) or update.step is None:
            return '<div class="lm-empty">Samples from the model appear here after its first validation.</div>'
        return '<div class="lm-empty">No samples yet: the first validation saves the first model.</div>'
    at = update.sampled_at or {}
    where = (f"the best weights so far (step {at['step']:,}, validation {_loss_text(at, update.request.level)})"
             if at.get("step") is not None else "the best weights so far")
    columns = []
    for sample in update.samples:
        columns.append(f'<section class="lm-col"><header><b>T = {sample.temperature:g}</b>'
                       f"<small>{len(sample.ids):,} {UNITS[update.request.level]}</small>"
                       f'</header><div class="lm-text{" mono" if update.request.level == "char" else ""}">'
                       f"{render.coloured_tokens(sample.pieces, sample.tokens, sample.probabilities)}</div></section>")
    caption = (f'<div class="lm-note">Sampled from {html.escape(where)}, the model Download gives you; seed '
               f"{SAMPLE_SEED} every time, so what changes between updates is the learning, not luck.</div>")
    return caption + render.legend() + f'<div class="lm-samples">{"".join(columns)}</div>'


def loss_unit(update: TrainUpdate) -> str:
    """The loss axis: nats per character, word or subword token."""
    per = {"char": "char", "word": "word", "bpe": "token"}[update.request.level]
    return f"Loss (nats/{per})"


def curve_title(update: TrainUpdate) -> str:
    return f"{loss_unit(update)}: training (dashed, smoothed) and validation (solid)"


def _loss_text(record: dict[str, Any], level: str) -> str:
    loss = record.get("val_loss")
    if loss is None:
        return "—"
    if level == "char":
        return f"{loss:.3f} nats/char ({bits(loss):.2f} bits/char)"
    bpc = record.get("val_bpc")
    return f"{loss:.3f} nats/{'word' if level == 'word' else 'token'}" + (f" ({bpc:.2f} bits/char)" if bpc else "")


def _source_title(source: str) -> str:
    if source in CORPORA:
        return CORPORA[source].title
    return "your text" if source == "pasted" else f"{source}.txt"


# -- helpers -------------------------------------------------------------------------------------------
def _trainer_error(log_path: Path, code: int | None) -> str:
    """The trainer's one-line error (exit 2), else the end of its output."""
    try:
        lines = [line for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    for line in reversed(lines):
        if line.startswith("lmdemo: error: "):
            message = line.removeprefix("lmdemo: error: ")
            if "too few for batch size" in message:
                return f"the text is too short for a training batch ({message})"
            return message
    tail = lines[-1] if lines else "no output"
    return f"the trainer exited with code {code}: {tail[:300]}"


def _zip_folder(folder: Path, archive: Path, name: str) -> None:
    """The model folder as `name/<file>` entries, written beside and renamed into place."""
    partial = archive.with_suffix(".zip.partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for path in sorted(folder.iterdir()):
            if path.is_file():
                zipped.write(path, f"{name}/{path.name}")
    os.replace(partial, archive)


def _signal(process: subprocess.Popen, number: int) -> None:
    try:
        process.send_signal(number)
    except (ProcessLookupError, OSError):
        pass


def _end_process(process: subprocess.Popen, grace: float) -> None:
    """Abort a trainer: a second SIGINT aborts it at once; SIGKILL if it still runs after `grace` seconds."""
    _signal(process, signal.SIGINT)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _remove_stale(base: Path) -> None:
    """Delete run folders left by servers that are gone (killed before they could clean up)."""
    if not base.is_dir():
        return
    for folder in base.iterdir():
        pid = folder.name.split("-", 1)[0]
        if folder.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
