"""Watching a training job: what the Train tab shows of it, every two seconds, as plain values and HTML.

`watch` turns a job into `TrainUpdate`s: its curve points, read with `lmdemo.metrics` (the one reader),
samples from the best weights so far (at most every 6 s) at two temperatures with one fixed seed (so what
changes between updates is the learning, not luck), tokens per second, the time left of its budget (counted
from its start, the visitor's click when no job is ahead, as the trainer counts it, so it never goes up) and, once
it ends, why (the run's `end` record). Samples are drawn
through the server's decoder (batched with the other sampling requests) and inside `compute` (a slot of the
server's model computations when they are not batched), like every other request that runs a model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

import pandas as pd

from lmdemo.atlas import ATLAS_FILE
from lmdemo.batching import Decoder, PerRequest, generate
from lmdemo.checkpoint import MODEL_DIR, WEIGHTS_FILE, ModelLoadError, load_model
from lmdemo.generation import Generator, Sample, Sampling
from lmdemo.metrics import Run, bits, load_run
from lmdemo.run_scores import why_it_ended
from lmdemo.runs import curve_frame
from lmdemo.tokenizer import level_unit
from lmdemo.web import render
from lmdemo.web.jobs import (
    CANCELLED,
    FINISHED,
    STARTING,
    STOPPED,
    STOPPING,
    TRAINING,
    WAITING,
    Job,
    TrainingLine,
    SessionModel,
)
from lmdemo.web.train_requests import CORPORA, SIZES, TrainRequest

SAMPLE_TEMPERATURES = (0.5, 1.0)
SAMPLE_SEED = 0
SAMPLE_TOKENS = {"char": 240, "word": 50, "bpe": 70}
UPDATE_EVERY_S = 2.0
SAMPLE_EVERY_S = 6.0  # samples are drawn again at most this often (and when the run ends): they cost the server
WAITING_EVERY_S = 1.0
VISIBLE_SPACES = {" ": "·", "\t": "→"}  # a run of two or more blanks in a sample, drawn so it can be seen (and wrap)


def watch(training: TrainingLine, job: Job, every: float = UPDATE_EVERY_S, poll: float = 0.25,
          compute: Callable[[], AbstractContextManager] = nullcontext,
          decoder: Decoder | None = None, client: str = "") -> Iterator[TrainUpdate]:
    """Updates on `job` until it ends: its place in line while it waits, then every `every` seconds
    the curves, samples (re-drawn when the best model changes), speed and time left; the last update
    has `done` set. If the watcher goes away (the stream is closed), the job is stopped."""
    view = _View(job, compute, decoder or PerRequest(), client)
    last = -math.inf
    try:
        while True:
            finished = job.done.wait(poll)
            now = time.monotonic()
            period = WAITING_EVERY_S if job.state == WAITING else every
            if finished or now - last >= period:
                last = now
                update = view.update(training.position(job), finished)
                training.sessions.touch(job.session.owner)  # once the update is ready: drawing samples takes a while
                yield update
            if finished:
                return
    finally:
        if not job.done.is_set():
            training.stop_job(job, "session")


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
    seconds_left: float | None = None  # of its budget, from its start: never goes up
    elapsed: float = 0.0  # since the job started (or was submitted, while it waits)
    ending: dict[str, Any] | None = None  # the run's `end` record: why it ended
    best: dict[str, Any] | None = None  # the best validation record so far
    samples: list[Sample] = field(default_factory=list)
    sampled_at: dict[str, Any] | None = None  # the validation record of the weights the samples come from
    error: str | None = None
    model: SessionModel | None = None
    done: bool = False


class _View:
    """A job's log and best model as last read: samples are drawn again only when the model changes."""

    def __init__(self, job: Job, compute: Callable[[], AbstractContextManager], decoder: Decoder, client: str):
        self.job, self.compute, self.decoder, self.client = job, compute, decoder, client
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
        if state != WAITING and not done:
            update.seconds_left = max(0.0, job.request.seconds - elapsed)
        if state == WAITING or not job.metrics_path.exists():
            return update
        run = self._run()
        update.frame = curve_frame([run])
        start = run.metrics.last("start") or {}
        update.step_budget = start.get("step_budget")
        update.ending = run.metrics.last("end")
        trains = run.metrics.events("train")
        if trains:
            update.step, update.tokens_per_sec = trains[-1].get("step"), trains[-1].get("tokens_per_sec")
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
        with self.compute():
            self.samples = generate(self.decoder, generator, generator.prompt("").ids, sampling, self.client)
        self.sampled_at = trained.metrics.best("val_loss") if trained.metrics else None


# -- what the tab shows --------------------------------------------------------------------------------
def status_markdown(update: TrainUpdate) -> str:
    """Where the job stands, in one line."""
    request = update.request
    what = f"a {request.level}-level {SIZES[request.size].label} model on *{render.escape(_source_title(request.source))}*"
    best = _loss_text(update.best, request.level) if update.best else None
    if update.state == WAITING:
        ahead = update.position
        return (f"**Waiting** to train {what}: {ahead} job{'s' if ahead != 1 else ''} ahead of yours "
                f"(one training job runs at a time on this server) · waited {update.elapsed:.0f} s")
    if update.state == STARTING or (update.state in (TRAINING, STOPPING) and update.step is None):
        return (f"**Starting** {what}: reading the text, building the vocabulary and timing a few steps to fit "
                f"{request.seconds:g} s… ({_time_left(update)})")
    if update.state in (TRAINING, STOPPING):
        parts = [f"step {update.step:,}" + (f" of {update.step_budget:,}" if update.step_budget else "")]
        if update.tokens_per_sec:
            parts.append(f"{update.tokens_per_sec:,.0f} {level_unit(request.level).plural}/s")
        parts.append(_time_left(update))
        if best:
            parts.append(f"best validation {best}")
        state = "Stopping" if update.state == STOPPING else "Training"
        note = " (saving; the best model so far is kept)" if update.state == STOPPING else ""
        return f"**{state}**{note} {what}: " + " · ".join(parts)
    if update.state in (FINISHED, STOPPED) and update.model is not None:
        verb = "Done" if update.state == FINISHED else "Stopped"
        ending = update.ending or {}
        why = render.escape(update.error or (why_it_ended(ending) if ending else ""))  # the server's reason first (a deadline)
        steps = f"{update.step:,} steps in {update.elapsed:.0f} s" if update.step else f"{update.elapsed:.0f} s"
        longer = (" Validation still improved at the end: a longer time budget would likely help."
                  if ending.get("improving") and ending.get("reason") == "budget" else "")
        atlas = ", with its own cell atlas in the Inside tab" if (update.model.run / MODEL_DIR / ATLAS_FILE).is_file() \
            else ""
        return (f"**{verb}**{f' ({why})' if why else ''}: {steps}, best validation {best or '—'}.{longer} Your model "
                f"**{render.escape(update.model.name)}** is now in the Sample, Inside and Compare pickers and drawn in the "
                f"Training curves tab (for this session only){atlas}, and **Download** gives its folder as a zip.")
    if update.state == CANCELLED:
        return f"**Cancelled**: {render.escape(update.error or 'the job left the line')}."
    if update.state == STOPPED:
        return f"**Stopped**: {render.escape(update.error or 'no model was kept')}."
    return f"**Training failed**: {render.escape(update.error or 'the trainer ended without a model')}."


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
                       f"<small>{len(sample.ids):,} {level_unit(update.request.level).plural}</small>"
                       f'</header><div class="lm-text{" mono" if update.request.level == "char" else ""}">'
                       f"{render.coloured_tokens(visible_blanks(sample.pieces), sample.tokens, sample.probabilities)}"
                       f"</div></section>")
    caption = (f'<div class="lm-note">Sampled from {render.escape(where)}, the model Download gives you; seed '
               f"{SAMPLE_SEED} every time, so what changes between updates is the learning, not luck.</div>")
    return caption + render.legend() + f'<div class="lm-samples">{"".join(columns)}</div>'


def visible_blanks(pieces: Sequence[str]) -> list[str]:
    """`pieces` with every blank (space, tab) of a run of two or more drawn as VISIBLE_SPACES: a young model's sample
    of 240 spaces is a line of dots that wraps in its column, not an empty bar running out of it. Single spaces
    between words stay spaces; pieces that hold more than blanks (a newline, a word) are left alone."""
    shown: list[str] = []
    for blank, run in groupby(pieces, key=lambda piece: bool(piece) and all(ch in VISIBLE_SPACES for ch in piece)):
        run = list(run)
        if blank and sum(map(len, run)) >= 2:
            run = ["".join(VISIBLE_SPACES[ch] for ch in piece) for piece in run]
        shown += run
    return shown


def _time_left(update: TrainUpdate) -> str:
    """The budget's countdown from the job's start; past it, the run is finishing (its validation and saving)."""
    if update.seconds_left is None:
        return f"{update.elapsed:.0f} s"
    if update.seconds_left >= 1:
        return f"about {update.seconds_left:.0f} s left of {update.request.seconds:g} s"
    return f"finishing ({update.elapsed:.0f} s of {update.request.seconds:g} s)"


def loss_unit(update: TrainUpdate) -> str:
    """The loss axis: nats per character, word or subword token."""
    return f"Loss (nats/{level_unit(update.request.level).short})"


def curve_title(update: TrainUpdate) -> str:
    return f"{loss_unit(update)}: training (dashed, smoothed) and validation (solid)"


def _loss_text(record: dict[str, Any], level: str) -> str:
    loss = record.get("val_loss")
    if loss is None:
        return "—"
    if level == "char":
        return f"{loss:.3f} nats/{level_unit(level).short} ({bits(loss):.2f} bits/char)"
    bpc = record.get("val_bpc")
    return f"{loss:.3f} nats/{level_unit(level).short}" + (f" ({bpc:.2f} bits/char)" if bpc else "")


def _source_title(source: str) -> str:
    if source in CORPORA:
        return CORPORA[source].title
    return "your text" if source == "pasted" else f"{source}.txt"


