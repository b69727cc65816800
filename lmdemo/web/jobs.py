"""The Train tab's jobs: one training slot, a bounded line, and every visitor's session, as plain Python.

A visitor's text becomes a job folder trained by a child process (`lmdemo.web.trainer_process`). One job
runs at a time server-wide; the others wait in a bounded line. What one stranger may take is bounded per
client address (`lmdemo.web.clients`): one job running or waiting, and a number of training seconds per
hour. The training folder is bounded in size. Nothing a visitor gives outlives its purpose: the text is
deleted once the trainer has read it (its model keeps a few of its openings as its example prompts), a run that
keeps no model is deleted when it ends, and a session's folders (its models), zips and uploads go when it ends:
its page closes, it goes `session_ttl_s` without a request or heartbeat (checked on a timer), or the server stops.
"""

from __future__ import annotations

import atexit
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from lmdemo.checkpoint import MODEL_DIR, WEIGHTS_FILE, ModelLoadError, load_model
from lmdemo.generation import Generator
from lmdemo.metrics import METRICS_FILE
from lmdemo.web import trainer_process
from lmdemo.admission import Admission, Busy, Hold, Line
from lmdemo.web.clients import Charge, TrainingBudget
from lmdemo.web.registry import Models
from lmdemo.web.allocator import release_free_memory
from lmdemo.web.sessions import Session, SessionModel, Sessions, inside
from lmdemo.web.uploads import Uploads
from lmdemo.web.train_requests import TrainInputError, TrainLimits, TrainRequest, bytes_needed

STOP_GRACE_S = 20.0  # after a stop request, how long the trainer gets to save and finish
# a job is stopped past 1.25 x its budget + fixed seconds for its start-up (reading, timing) and, once trained, its
# cell atlas (about 1-4 s for the default model on a busy 2-core machine)
STARTUP_S, OVERRUN = 40.0, 1.25
KEPT_FILES = (METRICS_FILE, MODEL_DIR)  # what a finished run keeps: its log (the curves) and its model
WAITING, STARTING, TRAINING, STOPPING = "waiting", "starting", "training", "stopping"
FINISHED, STOPPED, FAILED, CANCELLED = "finished", "stopped", "failed", "cancelled"
ENDED = (FINISHED, STOPPED, FAILED, CANCELLED)
TRAINING_LINE = "training"  # the admission's line of training jobs


@dataclass
class Job:
    """One training request, from the line to its model. The request's text is dropped once it is on disk."""

    session: Session
    request: TrainRequest
    folder: Path  # the child's working folder: the text, the trainer's output and the run folder
    reserved: int  # bytes of the disk cap held for it until it ends
    charge: Charge  # its entry in the client's training budget
    place: Hold  # its address's place in the admission's training line, until it ends
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
        """The run folder, named as the model is everywhere (`SessionModel`): char-tiny-1 for a session's first."""
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


class TrainingLine:
    """The server's training slot and the line waiting for it, and what may join it.

    One lock guards the line and the sessions (`Sessions`); a job's own thread starts its process, waits for it
    and hands the slot to the next job, so no two training processes ever run at once. `cache` is the folder the
    web server serves downloads from and stores uploads in (Gradio's): see `lmdemo.web.sessions`.
    """

    def __init__(self, models: Models, limits: TrainLimits = TrainLimits(), root: str | Path | None = None,
                 cache: str | Path | None = None, command: Callable[[TrainRequest, str], list[str]] | None = None,
                 sweep_every: float | None = None, admission: Admission | None = None, uploads: Uploads | None = None):
        self.models, self.limits = models, limits
        # one job running or waiting per address (share 0: the floor of one), out of the slot and its line
        self.admission = admission or Admission()
        self.admission.add(Line(TRAINING_LINE, 1 + limits.max_waiting, 0.0, "training jobs running or waiting"))
        self.command = command or trainer_process.train_command
        self.root = trainer_process.make_training_folder(root)
        self.cache = Path(cache) if cache is not None else self.root / "cache"
        self.cache.mkdir(parents=True, exist_ok=True)
        self.budget = TrainingBudget(limits.budget_per_hour_s)
        self.waiting: list[Job] = []
        self.running: Job | None = None
        self.lock = threading.RLock()
        self.uploads = uploads or Uploads(self.admission, self.cache, unused_s=min(300.0, limits.session_ttl_s),
                                          max_file_bytes=limits.max_upload_bytes)
        self.sessions = Sessions(self.root, self.cache, models, limits.session_ttl_s, limits.max_session_models,
                                 self.lock, self.uploads)
        self.closed = threading.Event()
        every = sweep_every if sweep_every is not None else min(30.0, limits.session_ttl_s / 4)
        threading.Thread(target=self._sweep_forever, args=(every,), name="lmdemo-sessions", daemon=True).start()
        atexit.register(self.close)

    # -- requests ---------------------------------------------------------------------------------
    def submit(self, owner: str, client: str, request: TrainRequest) -> Job:
        """Queue a job for `owner`'s session, coming from `client`'s address, or refuse it with one line saying
        why and when to come back. The text is on disk before the job joins the line, and only there."""
        with self.lock:
            if self.closed.is_set():
                raise TrainInputError("the server is shutting down: try again in a minute")
            place = self._admit(owner, client, request)
            try:
                reserved = self._reserve_disk(request)
            except TrainInputError:
                place.release()
                raise
            session = self.sessions.open(owner, client)
            session.count += 1
            while f"{request.run_name}-{session.count}" in self.models.names:  # one name, never a served model's
                session.count += 1
            job = Job(session, replace(request, text=""), session.folder / str(session.count), reserved,
                      self.budget.charge(client, request.seconds), place)
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
                self.advance()
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
            job = self._active_job(owner)
            self.sessions.touch(owner)
            if job is None:
                return "No training job of yours is running."
            return self.stop_job(job, "stop")

    def end_session(self, owner: str) -> None:
        """The visitor left: stop its job, forget its models and delete its folders, zips and uploads."""
        def stop_its_job(session: Session) -> bool:
            job = self._active_job(session.owner)
            if job is not None:
                self.stop_job(job, "session")
            return job is not None and job is self.running

        if self.sessions.end(owner, keep_folder=stop_its_job) is not None:
            release_free_memory()

    def _active_job(self, owner: str) -> Job | None:
        """`owner`'s job that runs or waits, if any."""
        with self.lock:
            return next((job for job in (self.running, *self.waiting) if job and job.session.owner == owner), None)

    def disk_bytes(self) -> int:
        """Bytes on disk now: the training folder and the sessions' zips (uploads have a cap of their own)."""
        uploads = trainer_process.folder_bytes(self.uploads.folder) if inside(self.uploads.folder, self.root) else 0
        return trainer_process.folder_bytes(self.root) - uploads + self.sessions.downloads_bytes()

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
        if running is not None and running.process is not None:
            trainer_process.end(running.process, grace=5.0)
            running.done.wait(10)
        for owner in self.sessions:
            self.end_session(owner)
        self.uploads.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- inside the lock --------------------------------------------------------------------------
    def _admit(self, owner: str, client: str, request: TrainRequest) -> Hold:
        """The client's place in the training line (one job running or waiting per session and per address, the
        line bounded), within its hourly budget; else one line that says why and when to come back."""
        active = [job for job in (self.running, *self.waiting) if job is not None]
        mine = next((job for job in active if job.session.owner == owner), None)
        try:
            if mine is not None:
                raise Busy("one job per session")
            place = self.admission.admit(TRAINING_LINE, client)
        except Busy:
            raise _refused(self, active, mine, owner, client) from None
        refusal = self.budget.refusal(client, request.seconds)
        if refusal:
            place.release()
            raise TrainInputError(refusal)
        return place

    def _reserve_disk(self, request: TrainRequest) -> int:
        """The bytes a job may write, held until it ends; refused past the disk cap."""
        needed = bytes_needed(request, self.limits.max_symbols)
        reserved = sum(job.reserved for job in (self.running, *self.waiting) if job is not None)
        cap = int(self.limits.disk_mb * 1e6)
        if self.disk_bytes() + reserved + needed > cap:
            raise TrainInputError(f"the server's training space is full ({cap / 1e6:,.0f} MB for everyone's texts "
                                  f"and models): try again in a few minutes, when other visitors' sessions have ended")
        return needed

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
        job.place.release()
        self.budget.settle(job.charge, 0.0)
        shutil.rmtree(job.folder, ignore_errors=True)
        job.done.set()

    def advance(self) -> None:
        """Start the next waiting job if the slot is free."""
        if self.running is not None or not self.waiting or self.closed.is_set():
            return
        job = self.waiting.pop(0)
        self.running = job
        job.state, job.started = STARTING, time.monotonic()
        threading.Thread(target=JobThread(self, job).run, name=f"lmdemo-train-{job.session.count}", daemon=True).start()

    def _sweep_forever(self, every: float) -> None:
        while not self.closed.wait(every):
            self.sweep()

    def sweep(self) -> None:
        """End the sessions that went `session_ttl_s` without a request or heartbeat (a page closed without a
        goodbye, or a script's session), and clear what nobody claimed in the cache."""
        for owner in self.sessions.idle():
            self.end_session(owner)
        self.uploads.sweep()
        self.sessions.sweep_cache()

def _refused(line: TrainingLine, active: list[Job], mine: Job | None, owner: str, client: str) -> TrainInputError:
    """Why a job of `client` (page `owner`) cannot join `line`: its own job is already there (`mine`, or another
    page's of the same address), or the slot and its line are full (and when to come back)."""
    theirs = mine or next((job for job in active if job.session.client == client), None)
    if theirs is not None:
        where = "running" if theirs is line.running else f"waiting, {line.position(theirs)} ahead of it"
        whose = "you already have" if theirs.session.owner == owner else "your address already has"
        return TrainInputError(f"{whose} a training job ({where}); one per visitor: wait for it to end, or press Stop "
                               f"before training again")
    ahead = sum(job.request.seconds for job in active) / 60
    queued = f"{len(line.waiting)} wait, the most this server queues" if line.limits.max_waiting else \
        "this server queues none"
    return TrainInputError(f"the training slot is busy and {queued}: try again in about {max(1, round(ahead))} "
                           f"minute{'s' if round(ahead) > 1 else ''}")


class JobThread:
    """A job's own thread: runs the trainer, stops it when asked or when it overruns, keeps its model and passes
    the slot on. On Linux the parent-death signal is tied to the thread that started the child, so this thread
    outlives its process."""

    def __init__(self, line: TrainingLine, job: Job):
        self.line, self.job = line, job

    def run(self) -> None:
        job = self.job
        try:
            with self.line.admission.usage.at_work(job.place.client):  # the trainer's CPU time is its address's
                process = trainer_process.start(self.line.command(job.request, job.run.name), job.folder,
                                                job.log_path)
                with self.line.lock:
                    job.process = process
                    if job.stop_reason is not None:
                        trainer_process.send(process, signal.SIGINT)
                self._wait(process)
            job.returncode = process.returncode
            self._finish()
        except Exception as error:  # noqa: BLE001 - a failed job must still free the slot
            job.state, job.error = FAILED, f"training could not run: {trainer_process.public(str(error))}"
        finally:
            with self.line.lock:
                if job.state not in ENDED:
                    job.state = FAILED
                job.ended = time.monotonic()
                job.place.release()
                self.line.budget.settle(job.charge, job.ended - (job.started or job.ended))
                self.line.running = None
                if job.session.ended:  # its session went while the process ran: the folder is this thread's to delete
                    shutil.rmtree(job.session.folder, ignore_errors=True)
                elif job.model is None:
                    shutil.rmtree(job.folder, ignore_errors=True)
                job.done.set()
                self.line.advance()

    def _wait(self, process: subprocess.Popen) -> None:
        # The trainer turns the budget into steps from a speed it measures once; when the machine gets busier
        # (sampling requests come first), the steps take longer, and past this it is stopped (the best model kept).
        # Its CPU time is charged to its address as it goes (`Admission.usage`): at nice 19 it gets a core only when
        # the server leaves one, and an address over its share of the cores leaves one while a visitor trains.
        job = self.job
        deadline = time.monotonic() + STARTUP_S + OVERRUN * job.request.seconds
        stop_sent: float | None = None
        charged = 0.0
        while True:
            try:
                process.wait(timeout=0.25)
                return
            except subprocess.TimeoutExpired:
                pass
            used = trainer_process.cpu_seconds(process)
            if used > charged:
                self.line.admission.usage.charge({job.place.client: used - charged})
                charged = used
            now = time.monotonic()
            if job.state == STARTING and job.metrics_path.exists():
                with self.line.lock:
                    if job.state == STARTING:
                        job.state = TRAINING
                job.text_path.unlink(missing_ok=True)  # the trainer has read it: the visitor's text leaves the disk
            if now > deadline and job.stop_reason is None:
                self.line.stop_job(job, "deadline")
            if job.stop_reason is not None and stop_sent is None:
                stop_sent = now
            if stop_sent is not None and now - stop_sent > STOP_GRACE_S:
                trainer_process.end(process, grace=5.0)
                return

    def _finish(self) -> None:
        """Keep the job's model (registered privately for its session), or say why there is none."""
        job = self.job
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
        try:
            generator = Generator(load_model(job.model_folder))
            job.model = self.line.sessions.keep_model(job.session, job.run, job.model_folder, generator)
        except (ModelLoadError, OSError) as error:
            job.state = FAILED
            job.error = f"the trained model could not be read back: {trainer_process.public(str(error))}"
