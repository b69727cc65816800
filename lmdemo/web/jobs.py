"""The Train tab's jobs: one training slot, a bounded line, and every visitor's session, as plain Python.

A visitor's text becomes a job folder trained by a child process (`lmdemo.web.trainer_process`). One job
runs at a time server-wide; the others wait in a bounded line. What one stranger may take is bounded per
client address (`lmdemo.web.clients`): one job running or waiting, and a number of training seconds per
hour. The training folder is bounded in size. Nothing a visitor gives outlives its purpose: the text is
deleted once the trainer has read it, a run that keeps no model is deleted when it ends, and a session's
folders, zips and uploads go when it ends: its page closes, it goes `session_ttl_s` without a request or
heartbeat (checked on a timer), or the server stops.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from lmdemo.checkpoint import MODEL_DIR, WEIGHTS_FILE, ModelLoadError, load_model
from lmdemo.generation import Generator
from lmdemo.metrics import METRICS_FILE
from lmdemo.web import trainer_process
from lmdemo.web.clients import TrainingBudget
from lmdemo.web.registry import Models
from lmdemo.web.train_requests import LEVEL_OPTIONS, SIZES, TrainInputError, TrainLimits, TrainRequest

STOP_GRACE_S = 20.0  # after a stop request, how long the trainer gets to save and finish
STARTUP_S, OVERRUN = 30.0, 1.25  # a job is stopped past start-up + 1.25 x its budget
KEPT_FILES = (METRICS_FILE, MODEL_DIR)  # what a finished run keeps: its log (the curves) and its model
WAITING, STARTING, TRAINING, STOPPING = "waiting", "starting", "training", "stopping"
FINISHED, STOPPED, FAILED, CANCELLED = "finished", "stopped", "failed", "cancelled"
ENDED = (FINISHED, STOPPED, FAILED, CANCELLED)


@dataclass
class SessionModel:
    """A model a session trained: its private name in the registry, what the pickers call it, its files."""

    key: str
    label: str
    run: Path  # the run folder: its log and its model
    archive: Path  # the model folder as a zip, in the session's download folder


@dataclass
class Session:
    """One visitor's page (a Gradio session) and the client address it came from."""

    owner: str
    client: str
    folder: Path
    downloads: Path
    models: list[SessionModel] = field(default_factory=list)
    uploads: set[Path] = field(default_factory=set)
    job: Job | None = None
    count: int = 0
    last_used: float = field(default_factory=time.monotonic)
    ended: bool = False


@dataclass
class Job:
    """One training request, from the line to its model. The request's text is dropped once it is on disk."""

    session: Session
    request: TrainRequest
    folder: Path  # the child's working folder: the text, the trainer's output and the run folder
    reserved: int  # bytes of the disk cap held for it until it ends
    charge: list[float]  # its entry in the client's training budget
    state: str = WAITING
    process: subprocess.Popen | None = None
    stop_reason: str | None = None  # "stop", "deadline", "session" or "server"
    returncode: int | None = None
    error: str | None = None
    model: SessionModel | None = None
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    ended: float | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def run(self) -> Path:
        return self.folder / f"{self.request.run_name}-{self.folder.name}"

    @property
    def metrics_path(self) -> Path:
        return self.run / METRICS_FILE

    @property
    def model_folder(self) -> Path:
        return self.run / MODEL_DIR

    @property
    def text_path(self) -> Path:
        return self.folder / self.request.text_name

    @property
    def log_path(self) -> Path:
        return self.folder / "trainer.log"


class LiveTraining:
    """The server's training slot, the line waiting for it, and every session's models and folders.

    One lock guards the line and the sessions; a job's own thread starts its process, waits for it and hands
    the slot to the next job, so no two training processes ever run at once. `cache` is the folder the web
    server serves downloads from and stores uploads in (Gradio's): a session's zips are written there, in a
    folder of its own, and its uploads there are deleted with it.
    """

    def __init__(self, models: Models, limits: TrainLimits = TrainLimits(), root: str | Path | None = None,
                 cache: str | Path | None = None, command: Callable[[TrainRequest, str], list[str]] | None = None,
                 sweep_every: float | None = None):
        self.models, self.limits = models, limits
        self.command = command or trainer_process.train_command
        self.root = trainer_process.make_training_folder(root)
        self.cache = Path(cache) if cache is not None else self.root / "cache"
        self.cache.mkdir(parents=True, exist_ok=True)
        self.budget = TrainingBudget(limits.budget_per_hour_s)
        self.waiting: list[Job] = []
        self.running: Job | None = None
        self.sessions: dict[str, Session] = {}
        self.lock = threading.RLock()
        self.closed = threading.Event()
        every = sweep_every if sweep_every is not None else min(30.0, limits.session_ttl_s / 4)
        self._sweeper = threading.Thread(target=self._sweep_forever, args=(every,), name="lmdemo-sessions",
                                         daemon=True)
        self._sweeper.start()
        atexit.register(self.close)

    # -- requests ---------------------------------------------------------------------------------
    def submit(self, owner: str, client: str, request: TrainRequest) -> Job:
        """Queue a job for `owner`'s session, coming from `client`'s address, or refuse it with one line saying
        why and when to come back. The text is on disk before the job joins the line, and only there."""
        with self.lock:
            if self.closed.is_set():
                raise TrainInputError("the server is shutting down: try again in a minute")
            self._refuse_unfair(owner, client, request)
            reserved = self._reserve_disk(request)
            session = self._session(owner, client)
            session.count += 1
            job = Job(session, replace(request, text=""), session.folder / str(session.count), reserved,
                      self.budget.charge(client, request.seconds))
            session.job = job
        try:
            job.folder.mkdir(parents=True)
            job.text_path.write_text(request.text, encoding="utf-8")
        except OSError as error:
            with self.lock:
                self._end_waiting(job, FAILED, f"the text could not be stored ({error.strerror or 'disk error'})")
            return job
        with self.lock:
            if job.state != WAITING:  # stopped while its text was being written
                pass
            elif session.ended or self.closed.is_set():
                self._end_waiting(job, CANCELLED, "the session ended before the job could wait for its turn")
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
            if session is not None:
                session.last_used = time.monotonic()
            if job is None or job.state in ENDED:
                return "No training job of yours is running."
            return self.stop_job(job, "stop")

    def touch(self, owner: str | None) -> None:
        """A request or heartbeat from `owner`'s page: its session lives `session_ttl_s` more."""
        with self.lock:
            session = self.sessions.get(owner) if owner else None
            if session is not None:
                session.last_used = time.monotonic()

    def keep_upload(self, owner: str, path: str | Path) -> None:
        """An upload of `owner`'s page, deleted with its session (or when it is read) unless it is outside the cache."""
        path = Path(path)
        if not _inside(path, self.cache):
            return
        with self.lock:
            session = self.sessions.get(owner)
            if session is None:
                session = self._session(owner, "")
            session.uploads.add(path)

    def discard_upload(self, owner: str | None, path: str | Path | None) -> None:
        """Delete an upload (and its folder in the cache, when empty) once its text has been read."""
        if not path:
            return
        path = Path(path)
        with self.lock:
            session = self.sessions.get(owner) if owner else None
            if session is not None:
                session.uploads.discard(path)
        if _inside(path, self.cache):
            _delete_upload(path, self.cache)

    def end_session(self, owner: str) -> None:
        """The visitor left: stop its job, forget its models and delete its folders, zips and uploads."""
        with self.lock:
            session = self.sessions.pop(owner, None)
            if session is None:
                return
            session.ended = True
            job = session.job
            if job is not None and job.state not in ENDED:
                self.stop_job(job, "session")
            for model in session.models:
                self.models.remove_private(model.key)
            session.models.clear()
            busy = job is not None and job is self.running
            uploads, session.uploads = set(session.uploads), set()
        for path in uploads:
            _delete_upload(path, self.cache)
        shutil.rmtree(session.downloads, ignore_errors=True)
        if not busy:  # else the job's thread deletes the folder once its process has exited
            shutil.rmtree(session.folder, ignore_errors=True)

    def session_models(self, owner: str) -> list[SessionModel]:
        with self.lock:
            session = self.sessions.get(owner)
            return list(session.models) if session else []

    def disk_bytes(self) -> int:
        """Bytes on disk now: the training folder and the sessions' zips."""
        with self.lock:
            downloads = [session.downloads for session in self.sessions.values()]
        total = trainer_process.folder_bytes(self.root)
        return total + sum(trainer_process.folder_bytes(d) for d in downloads if not _inside(d, self.root))

    def close(self) -> None:
        """End every session and job now (the server is stopping) and delete every folder."""
        with self.lock:
            if self.closed.is_set() and not self.root.exists():
                return
            self.closed.set()
            for job in list(self.waiting):
                self._end_waiting(job, CANCELLED, "the server stopped")
            running = self.running
            if running is not None:
                running.stop_reason = running.stop_reason or "server"
            owners = list(self.sessions)
        if running is not None and running.process is not None:
            trainer_process.end(running.process, grace=5.0)
            running.done.wait(10)
        for owner in owners:
            self.end_session(owner)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- inside the lock --------------------------------------------------------------------------
    def _refuse_unfair(self, owner: str, client: str, request: TrainRequest) -> None:
        """One job running or waiting per client address, a bounded line, and the client's hourly budget."""
        active = [job for job in (self.running, *self.waiting) if job is not None]
        for job in active:
            if job.session.owner == owner or job.session.client == client:
                where = "running" if job is self.running else f"waiting, {self.position(job)} ahead of it"
                whose = "you already have" if job.session.owner == owner else "your address already has"
                raise TrainInputError(f"{whose} a training job ({where}); one per visitor: wait for it to end, or "
                                      f"press Stop before training again")
        if self.running is not None and len(self.waiting) >= self.limits.max_waiting:
            ahead = sum(job.request.seconds for job in active) / 60
            line = f"{len(self.waiting)} wait, the most this server queues" if self.limits.max_waiting else \
                "this server queues none"
            raise TrainInputError(f"the training slot is busy and {line}: try again in about {max(1, round(ahead))} "
                                  f"minute{'s' if round(ahead) > 1 else ''}")
        refusal = self.budget.refusal(client, request.seconds)
        if refusal:
            raise TrainInputError(refusal)

    def _reserve_disk(self, request: TrainRequest) -> int:
        """The bytes a job may write (its text, weights, optimiser state and zip), refused past the disk cap."""
        size = SIZES[request.size]
        vocab = min(len(set(request.text)), self.limits.max_symbols) + 2 if request.level == "char" else \
            LEVEL_OPTIONS[request.level]["max_vocab"] + 2
        weights = 4 * size.parameters(vocab, tied=request.level != "char")
        needed = 2 * len(request.text.encode("utf-8")) + 6 * weights + 1_000_000
        reserved = sum(job.reserved for job in (self.running, *self.waiting) if job is not None)
        cap = int(self.limits.disk_mb * 1e6)
        if self.disk_bytes() + reserved + needed > cap:
            raise TrainInputError(f"the server's training space is full ({cap / 1e6:,.0f} MB for everyone's texts "
                                  f"and models): try again in a few minutes, when other visitors' sessions have ended")
        return needed

    def _session(self, owner: str, client: str) -> Session:
        session = self.sessions.get(owner)
        if session is None:
            session = Session(owner, client, self.root / secrets.token_hex(8),
                              Path(tempfile.mkdtemp(prefix="lmdemo-", dir=self.cache)))
            self.sessions[owner] = session
        session.client = client or session.client
        session.last_used = time.monotonic()
        return session

    def stop_job(self, job: Job, reason: str) -> str:
        """Ask `job` to end: it leaves the line, or its trainer stops cleanly (saves, keeps the best model) at its next log
        interval."""
        with self.lock:
            if job.state == WAITING:
                self._end_waiting(job, CANCELLED, "stopped while waiting")
                return "Your job left the line before it started."
            if job.stop_reason is not None:  # a second signal would abort the trainer rather than stop it cleanly
                return "Already stopping: the best model so far is kept."
            job.stop_reason = reason
            if job.state in (STARTING, TRAINING):
                job.state = STOPPING
            if job.process is not None and job.process.poll() is None:
                trainer_process.send(job.process, signal.SIGINT)
            return "Stopping at the next log interval: the best model so far is kept."

    def _end_waiting(self, job: Job, state: str, why: str) -> None:
        """A job that never ran: out of the line, its folder deleted, its budget given back."""
        if job in self.waiting:
            self.waiting.remove(job)
        job.state, job.error, job.ended = state, why, time.monotonic()
        self.budget.settle(job.charge, 0.0)
        shutil.rmtree(job.folder, ignore_errors=True)
        job.done.set()

    def _advance(self) -> None:
        """Start the next waiting job if the slot is free."""
        if self.running is not None or not self.waiting or self.closed.is_set():
            return
        job = self.waiting.pop(0)
        self.running = job
        job.state, job.started = STARTING, time.monotonic()
        threading.Thread(target=self._run, args=(job,), name=f"lmdemo-train-{job.session.count}", daemon=True).start()

    def _sweep_forever(self, every: float) -> None:
        while not self.closed.wait(every):
            self.sweep()

    def sweep(self) -> None:
        """End the sessions that went `session_ttl_s` without a request or heartbeat (a page closed without
        a goodbye, or a script's session)."""
        now = time.monotonic()
        with self.lock:
            idle = [owner for owner, session in self.sessions.items()
                    if now - session.last_used > self.limits.session_ttl_s]
        for owner in idle:
            self.end_session(owner)
        if _inside(self.cache, self.root):  # the web server's cache is this server's own: uploads nobody used go
            with self.lock:
                kept = {session.downloads.resolve() for session in self.sessions.values()}
            for entry in self.cache.iterdir():
                try:
                    idle_s = time.time() - entry.lstat().st_mtime
                except OSError:
                    continue
                if entry.resolve() not in kept and idle_s > self.limits.session_ttl_s:
                    shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)

    # -- a job's thread ---------------------------------------------------------------------------
    def _run(self, job: Job) -> None:
        """Run the trainer, wait for it (stopping it when asked or when it overruns), then keep its model
        and pass the slot on. The process is started here and this thread outlives it: on Linux the
        parent-death signal is tied to the thread that started the child."""
        try:
            process = trainer_process.start(self.command(job.request, job.run.name), job.folder, job.log_path)
            with self.lock:
                job.process = process
                if job.stop_reason is not None:
                    trainer_process.send(process, signal.SIGINT)
            self._wait(job, process)
            job.returncode = process.returncode
            self._finish(job)
        except Exception as error:  # noqa: BLE001 - a failed job must still free the slot
            job.state, job.error = FAILED, f"training could not run: {trainer_process.public(str(error))}"
        finally:
            with self.lock:
                if job.state not in ENDED:
                    job.state = FAILED
                job.ended = time.monotonic()
                self.budget.settle(job.charge, job.ended - (job.started or job.ended))
                self.running = None
                ended = job.session.ended
                if job.model is None:
                    shutil.rmtree(job.folder, ignore_errors=True)
                job.done.set()
                self._advance()
            if ended:
                shutil.rmtree(job.session.folder, ignore_errors=True)

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
                job.text_path.unlink(missing_ok=True)  # the trainer has read it: the visitor's text leaves the disk
            if now > deadline and job.stop_reason is None:
                self.stop_job(job, "deadline")
            if job.stop_reason is not None and stop_sent is None:
                stop_sent = now
            if stop_sent is not None and now - stop_sent > STOP_GRACE_S:
                trainer_process.end(process, grace=5.0)
                return

    def _finish(self, job: Job) -> None:
        """Keep the job's model (registered privately for its session), or say why there is none."""
        job.text_path.unlink(missing_ok=True)
        has_model = (job.model_folder / WEIGHTS_FILE).is_file()
        if not has_model or (job.returncode != 0 and job.stop_reason is None):
            job.state = STOPPED if job.stop_reason is not None else FAILED
            job.error = "stopped before the first validation: there is no model to keep" if job.stop_reason \
                else trainer_process.trainer_error(job.log_path, job.returncode)
            return
        job.state = FINISHED if job.stop_reason is None else STOPPED
        if job.stop_reason == "deadline":
            job.error = "the time budget ran out (the machine was busier than when the job was timed)"
        if job.session.ended:
            return
        for path in job.run.iterdir():  # what a model in the app needs; the rest (optimiser state) goes
            if path.name not in KEPT_FILES:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        job.log_path.unlink(missing_ok=True)
        name = job.run.name
        key = f"{name}-{secrets.token_hex(3)}"
        try:
            generator = Generator(load_model(job.model_folder))
            archive = job.session.downloads / f"{name}.zip"
            _zip_folder(job.model_folder, archive, name)
        except (ModelLoadError, OSError) as error:
            job.state, job.error = FAILED, f"the trained model could not be read back: {trainer_process.public(str(error))}"
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
                shutil.rmtree(dropped.run.parent, ignore_errors=True)
                dropped.archive.unlink(missing_ok=True)


def _zip_folder(folder: Path, archive: Path, name: str) -> None:
    """The model folder as `name/<file>` entries, written beside and renamed into place."""
    partial = archive.with_suffix(".zip.partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for path in sorted(folder.iterdir()):
            if path.is_file():
                zipped.write(path, f"{name}/{path.name}")
    os.replace(partial, archive)


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve()) and path.resolve() != folder.resolve()
    except OSError:
        return False


def _delete_upload(path: Path, cache: Path) -> None:
    """An upload and the folder the web server made for it, up to (never including) the cache folder."""
    path.unlink(missing_ok=True)
    parent = path.parent
    while _inside(parent, cache):
        try:
            parent.rmdir()
        except OSError:
            return
        parent = parent.parent
