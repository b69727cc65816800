"""Many requests on one model at once: a decode loop per model that moves every waiting request on together.

An LSTM step for 16 rows costs little more than for one (the matrices are small; the time is per-step
overhead), so requests that each ran their own loop waited for one another for nothing. Here one thread per
model (`DecodeLoop`, started by the first request, ended after `IDLE_SECONDS` without one) takes requests from a
bounded line and, at every step:

- joins the new samples to the batch (an LSTM request's whole state is its `(h, c)` rows: a row copy), their
  first token drawn from their reading as `Generator.stream` draws it;
- advances every row one token in one LSTM call and one prediction, holds each request's dial on that
  request's rows only, and lets each request's `Decoding` pick its rows' tokens with its own settings and its
  own random streams (lmdemo.sampling), so a request's text depends on its own inputs and seed, not on who else
  is in the batch;
- drops the rows that are done (max tokens, end of text, stop string) and those of requests whose reader went
  away (a closed stream: a closed page, a Stop), so the next request takes their place.

Texts (a prompt, or a sample's tokens after its prompt for the next-token bars) are read by a second thread
of the model, one at a time, each alone as a request on its own would read it (batching an `nn.LSTM` read
rounds each row's floats differently): a long prompt takes tens of milliseconds, which the batch's rows would
otherwise wait through, and the two threads' matrix work (outside Python's lock) shares the machine's cores.

Same tokens as alone, not the same floats: a matrix product over B rows may round a row's sums differently
than over one row (MKL/oneDNN pick kernels by shape), so probabilities can differ in the last bits between batch
sizes. A sample's tokens differ only when two tokens' odds are that close at a step; the per-request path has
the same caveat between one temperature and several.

`--max-batch-rows` bounds the rows one step advances and the requests waiting to join; a request that would
wait beyond that is refused at once (`Busy`) rather than queued for longer than anyone waits. Fair to everyone:
one address holds at most half of that line, and of the waiting requests, those of the client with the fewest
rows in the batch join first (a class behind one school address still fits; one script cannot starve others).
`PerRequest` is the old path (each request decodes alone in its caller's thread), kept for measuring.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Protocol

import torch

from lmdemo.generation import Generator, Reading, Sample, Sampling, SettingsError
from lmdemo.model import State
from lmdemo.sampling import ChoiceRule, Decoding

DEFAULT_MAX_ROWS = 64
IDLE_SECONDS = 10.0  # a loop with nothing to do for this long ends its thread; the next request starts one
# Page updates per second shared by everyone watching one model: each update costs the server's one Python thread
# far more than a decode step, so with many watchers each is shown its tokens less often (first token at once).
UPDATES_PER_SECOND = 40.0


class Busy(RuntimeError):
    """The model's line is full: the request was not queued, and can simply be sent again in a moment."""


class Decoder(Protocol):
    """How the web demo's sampling requests run a model: batched (`Batching`) or each alone (`PerRequest`)."""

    def reading(self, generator: Generator, ids: Sequence[int], after: Reading | None = None) -> Reading: ...

    def stream(self, generator: Generator, reading: Reading, sampling: Sampling,
               every: float = 0.0, client: str = "") -> Iterator[list[Sample]]: ...


class _Stream:
    """One request's samples in the batch: its `Decoding`, which of its samples still have rows there (in
    batch order), its step count, and what its reader is told. The loop writes under `lock`; readers copy."""

    def __init__(self, reading: Reading, sampling: Sampling, generator: Generator, client: str = ""):
        self.reading, self.sampling = reading, sampling
        self.client: object = client or self  # whose request: an address; a request of nobody's is its own
        self.decoding = Decoding(sampling, generator.tokenizer, [score.id for score in reading.scores])
        self.rows = list(range(len(self.decoding.samples)))
        self.step = 0
        self.lock = threading.Lock()
        self.changed, self.ended = threading.Event(), threading.Event()
        self.cancelled = False
        self.error: BaseException | None = None

    def finish(self, error: BaseException | None = None) -> None:
        self.error = error
        self.ended.set()
        self.changed.set()

    def snapshot(self) -> tuple[int, list[Sample]]:
        """The step reached and copies of the samples so far (the loop goes on writing the originals)."""
        with self.lock:
            if self.ended.is_set():
                return self.step, self.decoding.samples
            return self.step, [replace(s, ids=list(s.ids), tokens=list(s.tokens), probabilities=list(s.probabilities),
                                       pieces=list(s.pieces)) for s in self.decoding.samples]


class DecodeLoop:
    """The decode loop of one model: `read` and `stream` queue work for its thread (see the module's docstring)."""

    def __init__(self, generator: Generator, max_rows: int = DEFAULT_MAX_ROWS, idle_seconds: float = IDLE_SECONDS):
        self.generator_ref = weakref.ref(generator)  # a model nobody serves any more can go, with its loop
        self.max_rows, self.idle_seconds = max_rows, idle_seconds
        self.condition = threading.Condition()
        self.waiting: deque[_Stream] = deque()
        self.thread: threading.Thread | None = None
        self.reader = ThreadPoolExecutor(1, thread_name_prefix="read-texts")
        self.reads = 0  # texts waiting to be read or being read
        self.watchers = 0  # streams being shown as they grow: they share UPDATES_PER_SECOND
        # the batch, touched by the loop's thread only: the requests in batch order, each one's rows together
        self.active: list[_Stream] = []
        self.state: State | None = None
        self.ids: torch.Tensor | None = None  # each row's last token

    def read(self, ids: Sequence[int], after: Reading | None = None) -> Reading:
        """`Generator.reading(ids, after)`, read by the loop's reader; `Busy` when its line is full. Nothing to read
        after a reading (the bars right after a prompt) is that reading, without waiting."""
        if after is not None and not ids:
            return after
        with self.condition:
            if self.reads >= self.max_rows:
                raise Busy("the server is busy: try again in a moment")
            self.reads += 1
        try:
            return self.reader.submit(self.generator_ref().reading, ids, after).result()
        finally:
            with self.condition:
                self.reads -= 1

    def stream(self, reading: Reading, sampling: Sampling, every: float = 0.0, client: str = ""
               ) -> Iterator[list[Sample]]:
        """The samples of `sampling` after `reading`, as `Generator.stream` gives them, at most every `every`
        seconds, or less often while many streams share `UPDATES_PER_SECOND` (the last yield is the finished
        samples); `Busy` when the line is full, or when `client` (an address) already holds half of it. Closing
        the iterator takes the request's rows out of the batch at the next step."""
        generator = self.generator_ref()
        generator.check_dial(sampling.dial)
        if len(sampling.temperatures) > self.max_rows:
            raise SettingsError(f"at most {self.max_rows} temperatures at once on this server "
                                f"(got {len(sampling.temperatures)})")
        request = _Stream(reading, sampling, generator, client)
        del generator
        self._queue(request)
        shown, last = 0, -math.inf
        watching = not math.isinf(every)
        with self.condition:
            self.watchers += watching
        try:
            while True:
                request.changed.wait()
                elapsed = time.monotonic() - last
                interval = max(every, self.watchers / UPDATES_PER_SECOND)
                if elapsed < interval:
                    request.ended.wait(None if math.isinf(interval) else interval - elapsed)
                request.changed.clear()
                step, samples = request.snapshot()
                if request.error is not None:
                    raise request.error
                if request.ended.is_set():
                    yield samples
                    return
                if step > shown:
                    shown, last = step, time.monotonic()
                    yield samples
        finally:
            request.cancelled = True  # read by the loop at its next step; harmless once the request ended
            with self.condition:
                self.watchers -= watching

    def _queue(self, job: _Stream) -> None:
        with self.condition:
            if len(self.waiting) >= self.max_rows:
                raise Busy("the server is busy: try again in a moment")
            mine = sum(waiting.client == job.client for waiting in self.waiting)
            if mine >= max(1, self.max_rows // 2):
                raise Busy(f"{mine} requests from your address are already waiting for this model: try again "
                           f"when one is done")
            self.waiting.append(job)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="decode-loop", daemon=True)
                self.thread.start()
            self.condition.notify()

    def _run(self) -> None:
        while True:
            with self.condition:
                if not self.active and not self.waiting:
                    self.condition.wait(self.idle_seconds)
                    if not self.waiting:
                        self.thread = None
                        return
                joining = self._take()
            generator = self.generator_ref()
            if generator is None:  # cannot happen while a request holds its generator; ends the thread if it does
                return
            self._step(generator, joining)
            del generator

    def _take(self) -> list[_Stream]:
        """The waiting requests whose rows fit, fairly: the client holding the fewest rows in the batch goes first,
        in the order they came among equals, so one address's many requests do not keep others waiting. A
        request that does not fit holds the ones behind it, so a large request is not passed over for ever."""
        free = self.max_rows - sum(len(request.rows) for request in self.active)
        held: dict[object, int] = {}
        for request in self.active:
            held[request.client] = held.get(request.client, 0) + len(request.rows)
        waiting = [job for job in self.waiting if not job.cancelled]  # a cancelled one: its reader went away
        joining: list[_Stream] = []
        while waiting:
            job = min(waiting, key=lambda waiter: held.get(waiter.client, 0))  # the first of the least served
            if len(job.rows) > free:
                break
            waiting.remove(job)
            joining.append(job)
            free -= len(job.rows)
            held[job.client] = held.get(job.client, 0) + len(job.rows)
        self.waiting = deque(waiting)
        return joining

    def _step(self, generator: Generator, joining: list[_Stream]) -> None:
        try:
            with torch.inference_mode():  # the batch's tensors never leave the loop: ~8 % off a step, measured
                self._advance(generator, joining)
        except Exception as error:  # noqa: BLE001 - every request in the step is told; the loop goes on
            for request in [*self.active, *joining]:
                request.finish(error)
            self.active, self.state, self.ids = [], None, None

    def _advance(self, generator: Generator, joining: list[_Stream]) -> None:
        """One step: the batch's rows advance one token, the joining requests' rows join with their first."""
        self._keep([not request.cancelled for request in self.active for _ in request.rows])
        states: list[State] = []
        logits: list[torch.Tensor] = []
        if self.active:
            state = generator.next_state(self.ids, self.state)
            for request, rows in self._slices(self.active):
                if request.sampling.dial is not None:
                    state = request.sampling.dial.hold(state, rows)
            states.append(state)
            logits.append(generator.predict(state))
        for request in joining:
            count, dial = len(request.rows), request.sampling.dial
            state = tuple(part.expand(-1, count, -1).contiguous() for part in request.reading.state)
            if dial is None:
                logits.append(request.reading.next_log_probs.expand(count, -1))
            else:  # the first token already feels the dial, as alone
                state = dial.hold(state)
                logits.append(generator.predict(state))
            states.append(state)
        if not states:
            return
        self.active += joining
        self.state = (torch.cat([s[0] for s in states], 1), torch.cat([s[1] for s in states], 1))
        ids, probabilities = self._choose(torch.cat(logits))
        tokens, going_on = ids.tolist(), []
        for request, rows in self._slices(self.active):
            with request.lock:
                decoding, index = request.decoding, request.step
                decoding.record(request.rows, tokens[rows], probabilities[rows], index)
                request.step = index + 1
                more = request.step < request.sampling.max_new_tokens
                going_on += [more and not decoding.samples[row].finished for row in request.rows]
                request.rows = [row for row in request.rows if more and not decoding.samples[row].finished]
            if request.rows:
                request.changed.set()
            else:
                request.finish()
        self.ids = ids
        self._keep(going_on, rows_known=True)

    def _choose(self, logits: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
        """Every row's next token [B] and its probability, with one `choose_next` call per `ChoiceRule` in the
        batch (usually one): a call costs the loop about as much for 60 rows as for one, and the rows' own
        temperatures and draws keep each request's tokens its own."""
        groups: dict[ChoiceRule, tuple[list[int], list[float], list[float]]] = {}
        for request, rows in self._slices(self.active):
            positions, temperatures, uniforms = groups.setdefault(request.decoding.rule, ([], [], []))
            row_temperatures, row_uniforms = request.decoding.draws(request.rows, request.step)
            positions += range(rows.start, rows.stop)
            temperatures += row_temperatures
            uniforms += row_uniforms
        if len(groups) == 1:
            (rule, (_, temperatures, uniforms)), = groups.items()
            ids, probabilities = rule.choose(logits, temperatures, uniforms)
            return ids, probabilities.tolist()
        ids = torch.empty(logits.size(0), dtype=torch.long)
        chosen = torch.empty(logits.size(0))
        for rule, (positions, temperatures, uniforms) in groups.items():
            index = torch.tensor(positions)
            ids[index], chosen[index] = rule.choose(logits[index], temperatures, uniforms)
        return ids, chosen.tolist()

    def _keep(self, keep: list[bool], rows_known: bool = False) -> None:
        """Only the rows marked in `keep`; requests left without rows leave the batch (unless `rows_known`, their
        `rows` are emptied here: a cancelled request's)."""
        if all(keep):
            return
        if not rows_known:
            for request in self.active:
                if request.cancelled:
                    request.rows = []
        self.active = [request for request in self.active if request.rows]
        if not self.active:
            self.state, self.ids = None, None
            return
        index = torch.tensor([position for position, kept in enumerate(keep) if kept])
        self.state = (self.state[0][:, index], self.state[1][:, index])
        self.ids = self.ids[index]

    @staticmethod
    def _slices(requests: list[_Stream]) -> list[tuple[_Stream, slice]]:
        """Each request with where its rows are in the batch (read before a step changes them)."""
        slices, start = [], 0
        for request in requests:
            slices.append((request, slice(start, start + len(request.rows))))
            start += len(request.rows)
        return slices


class Batching:
    """The batched path: a `DecodeLoop` per model, made on its first request."""

    def __init__(self, max_rows: int = DEFAULT_MAX_ROWS, idle_seconds: float = IDLE_SECONDS):
        self.max_rows, self.idle_seconds = max_rows, idle_seconds
        self.loops: weakref.WeakKeyDictionary[Generator, DecodeLoop] = weakref.WeakKeyDictionary()
        self.lock = threading.Lock()

    def loop(self, generator: Generator) -> DecodeLoop:
        with self.lock:
            loop = self.loops.get(generator)
            if loop is None:
                loop = self.loops[generator] = DecodeLoop(generator, self.max_rows, self.idle_seconds)
            return loop

    def reading(self, generator: Generator, ids: Sequence[int], after: Reading | None = None) -> Reading:
        return self.loop(generator).read(ids, after)

    def stream(self, generator: Generator, reading: Reading, sampling: Sampling,
               every: float = 0.0, client: str = "") -> Iterator[list[Sample]]:
        return self.loop(generator).stream(reading, sampling, every, client)


class PerRequest:
    """The per-request path: each request reads and decodes alone, in its caller's thread."""

    def reading(self, generator: Generator, ids: Sequence[int], after: Reading | None = None) -> Reading:
        return generator.reading(ids, after)

    def stream(self, generator: Generator, reading: Reading, sampling: Sampling,
               every: float = 0.0, client: str = "") -> Iterator[list[Sample]]:
        """`Generator.stream`, at most every `every` seconds; the last yield is the finished samples. (`client` is
        not used: these requests wait in Gradio's queue, first come first served.)"""
        last, held = -math.inf, None
        for samples in generator.stream(reading, sampling):
            now = time.monotonic()
            if now - last >= every:
                last, held = now, None
                yield samples
            else:
                held = samples
        if held is not None:
            yield held


def generate(decoder: Decoder, generator: Generator, ids: Sequence[int], sampling: Sampling) -> list[Sample]:
    """The finished samples of `sampling` after the text `ids`, through `decoder`."""
    samples: list[Sample] = []
    for samples in decoder.stream(generator, decoder.reading(generator, ids), sampling, every=math.inf):
        pass
    return samples
