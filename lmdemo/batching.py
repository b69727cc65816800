"""Many requests on one model at once: a decode loop per model that moves every waiting request on together.

An LSTM step for 16 rows costs little more than for one (the matrices are small; the time is per-step
overhead), so requests that each ran their own loop waited for one another for nothing. Here one thread per
model (`DecodeLoop`, started by the first request, ended after `IDLE_SECONDS` without one) takes requests from a
bounded line and, at every step (`_Batch.step`):

- reads once whether each request's reader went away (a closed stream: a closed page, a Stop), and drops those
  requests and their rows from that one reading, so the rows kept and the requests that own them always agree;
- joins the new samples to the batch (an LSTM request's whole state is its `(h, c)` rows: a row copy), their
  first token drawn from their reading as `Generator.stream` draws it;
- advances the rows one token in one LSTM call and one prediction (every row, unless addresses share the batch
  and one holds more than `FAIR_ROWS`: its rows then move on some steps only, `_Batch._moving`), holds each
  request's dial on that request's rows only, and lets each request's `Decoding` pick its rows' tokens with its own settings and its
  own random streams (lmdemo.sampling), so a request's text depends on its own inputs and seed, not on who else
  is in the batch;
- drops the rows that are done (max tokens, end of text, stop string), so the next request takes their place.

Texts (a prompt, or a sample's tokens after its prompt for the next-token bars) are read in the caller's own
thread, one at a time per model, each alone as a request on its own would read it (batching an `nn.LSTM` read
rounds each row's floats differently): a long prompt takes tens of milliseconds, which the batch's rows would
otherwise wait through, and the reader's and the loop's matrix work (outside Python's lock) share the cores.
Whose text is read next is a fair turn (`Turns(1)`: the client with the fewest reads in progress first).

Same tokens as alone, not the same floats: a matrix product over B rows may round a row's sums differently
than over one row (MKL/oneDNN pick kernels by shape), so probabilities can differ in the last bits between batch
sizes. A sample's tokens differ only when two tokens' odds are that close at a step; the per-request path has
the same caveat between one temperature and several.

Fair to everyone, through the server's one `Admission` (lmdemo.admission): texts waiting for or being read
(`READS`) and requests waiting to join a batch (`WAITING`) are lines of `--max-batch-rows` places each, server-wide,
of which one address holds at most its share (half by default; a quarter in the web demo,
`lmdemo.web.gate.Serving`); past it, or past the line's capacity, a request
hears `Busy` at once rather than queueing for longer than anyone waits. In the batch itself one address has at
most that share of its rows (a class behind one school address still fits; one script cannot take every row): a
request whose address is at its share waits until its own rows free, and among the others those of the client
with the fewest rows in the batch join first. Every step's CPU time is charged to the addresses whose rows it
computed (`Admission.usage`, with the reads' and the server's other computations): while other addresses work, the
rows of one that used more than its share of the cores lately wait a step, and a loop holding only such rows pauses,
so one address's generations on several models cannot keep every core from the others.

Nothing waits unbounded. If anything in the loop's thread fails, every request it held or that waited for it
hears `LoopFailed` (try again), and the next request starts a fresh thread; a request whose loop thread is gone
finds out within `WATCH_SECONDS`, and one that waited `WAIT_LIMIT_S` for a row hears `Busy`.
`PerRequest` is the old path (each request decodes alone in its caller's thread), kept for measuring.
"""

from __future__ import annotations

import itertools
import math
import sys
import threading
import time
import traceback
import weakref
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Protocol

import torch

from lmdemo.admission import WAIT_LIMIT_S, Admission, Busy, Hold, Line, Turns
from lmdemo.generation import Generator, Reading, Sample, Sampling, SettingsError
from lmdemo.model import State
from lmdemo.sampling import ChoiceRule, Decoding

__all__ = ["DEFAULT_MAX_ROWS", "IDLE_SECONDS", "READS", "ROWS", "SHARE", "UPDATES_PER_SECOND", "WAITING",
           "WATCH_SECONDS", "Batching", "Busy", "DecodeLoop", "Decoder", "LoopFailed", "PerRequest", "add_lines",
           "generate"]

DEFAULT_MAX_ROWS = 64
SHARE = 0.5  # of each line, and of a batch's rows, the most one address holds
IDLE_SECONDS = 10.0  # a loop with nothing to do for this long ends its thread; the next request starts one
# Page updates per second shared by everyone watching one model: each update costs the server's one Python thread
# far more than a decode step, so with many watchers each is shown its tokens less often (first token at once).
UPDATES_PER_SECOND = 40.0
# Rows one address moves every step whoever else is in the batch (a page's few temperatures); past it an address
# with more rows moves on some steps only (`_Batch._moving`).
FAIR_ROWS = 4
YIELD_SECONDS = 0.02  # a loop whose every row yields the cores (`_Batch._moving`) looks again after this long
WATCH_SECONDS = 1.0  # how often a waiting request looks whether its loop's thread is still there

READS = "reads"  # the admission's line of texts waiting for or being read, every model's together
WAITING = "decode waiting"  # the admission's line of requests waiting to join a batch, every model's together
ROWS = "decode rows"  # a batch's rows: each model's batch has its own, so this line is the loop's, not the server's


class LoopFailed(Busy):
    """The model's decode loop failed: the request was ended (with the loop's error as its cause) and the loop
    reset, so the same request can simply be sent again."""

    def __init__(self, cause: BaseException | None = None):
        super().__init__("this model's decode loop failed: try again in a moment")
        self.__cause__ = cause


def add_lines(admission: Admission, max_rows: int, share: float = SHARE) -> Admission:
    """The decode loops' server-wide lines (`READS`, `WAITING`), each `max_rows` places, added to `admission` unless
    the server already made them (then theirs stand)."""
    for line in (Line(READS, max_rows, share, "texts waiting to be read"),
                 Line(WAITING, max_rows, share, "requests waiting for a model")):
        if line.name not in admission.lines:
            admission.add(line)
    return admission


_unnamed = itertools.count()


def _whose(client: str) -> str:
    """`client` (an address), or for a request of nobody's a key of its own: it shares with no one."""
    return client or f"<request {next(_unnamed)}>"


class Decoder(Protocol):
    """How the web demo's sampling requests run a model: batched (`Batching`) or each alone (`PerRequest`)."""

    def reading(self, generator: Generator, ids: Sequence[int], after: Reading | None = None,
                client: str = "") -> Reading: ...

    def stream(self, generator: Generator, reading: Reading, sampling: Sampling,
               every: float = 0.0, client: str = "") -> Iterator[list[Sample]]: ...


class _Stream:
    """One request's samples in the batch: its `Decoding`, which of its samples still have rows there (in
    batch order), its step count, and what its reader is told. The loop writes under `lock`; readers copy."""

    def __init__(self, reading: Reading, sampling: Sampling, generator: Generator, client: str):
        self.reading, self.sampling = reading, sampling
        self.client = client
        self.decoding = Decoding(sampling, generator.tokenizer, [score.id for score in reading.scores])
        self.rows = list(range(len(self.decoding.samples)))
        self.step = 0
        self.lock = threading.Lock()
        self.changed, self.ended = threading.Event(), threading.Event()
        self.cancelled = False  # set by the reader's `finally`; the loop reads it once per step (`_Batch.step`)
        self.error: BaseException | None = None
        self.hold: Hold | None = None  # its place in the `WAITING` line, until it joins the batch
        self.deadline = math.inf  # when it stops waiting to join

    def finish(self, error: BaseException | None = None) -> None:
        """Tell the reader the request ended (with `error`, if it failed); the first word stands."""
        if self.ended.is_set():
            return
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


class _Batch:
    """The rows one step advances and who owns them: the requests in batch order (each one's rows together), their
    `(h, c)` rows and each row's last token. Only the loop's thread touches it; a failed loop drops it whole."""

    def __init__(self) -> None:
        self.active: list[_Stream] = []
        self.state: State | None = None
        self.ids: torch.Tensor | None = None  # each row's last token
        self.credit: dict[str, float] = {}  # each address's steps owed when it holds many rows (`_moving`)

    def rows_by_client(self) -> Counter[str]:
        """The rows each client holds in the batch (those of requests about to leave too: they are still there)."""
        held: Counter[str] = Counter()
        for request in self.active:
            held[request.client] += len(request.rows)
        return held

    def step(self, generator: Generator, joining: list[_Stream], yielding: frozenset[str] = frozenset()
             ) -> Counter[str]:
        """One step: requests whose readers left go, the others' rows advance one token (not those of `yielding`
        addresses while others' move), and the joining requests' rows join with their first. Returns the rows each
        address had computed."""
        # Each request's `cancelled` is read here once: its reader may set it at any moment, and a second reading
        # that disagreed would drop a request but keep its rows, which the next request would then take as its own.
        gone = [request.cancelled for request in self.active]
        if any(gone):
            for request, left in zip(self.active, gone, strict=True):
                if left:
                    request.finish()
            self._keep([[] if left else request.rows for request, left in zip(self.active, gone, strict=True)])
        slices = self._slices()
        moving = self._moving(slices, yielding)
        index = None if len(moving) == len(slices) else torch.tensor(
            [row for _, rows in moving for row in range(rows.start, rows.stop)], dtype=torch.long)
        states: list[State] = []
        logits: list[torch.Tensor] = []
        if moving:
            ids = self.ids if index is None else self.ids[index]
            state = self.state if index is None else (self.state[0][:, index], self.state[1][:, index])
            state = generator.next_state(ids, state)
            for request, rows in _packed([request for request, _ in moving]):
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
            return Counter()
        taking = _packed([*(request for request, _ in moving), *joining])
        ids, probabilities = self._choose(torch.cat(logits), taking)
        moved = sum(len(request.rows) for request, _ in moving)
        if index is not None:  # the rows that waited this step keep their state and last token
            if moving:
                self.state[0][:, index], self.state[1][:, index] = states[0]
                self.ids[index] = ids[:moved]
                states[0] = self.state
            else:
                states.insert(0, self.state)
            ids = torch.cat([self.ids, ids[moved:]])
        self.active += joining
        self.state = (torch.cat([s[0] for s in states], 1), torch.cat([s[1] for s in states], 1))
        tokens, going_on = ids.tolist(), {}
        offsets = {id(request): rows.start for request, rows in self._slices()}
        for request, rows in taking:
            batch_rows = slice(offsets[id(request)], offsets[id(request)] + len(request.rows))
            with request.lock:
                decoding, step = request.decoding, request.step
                decoding.record(request.rows, tokens[batch_rows], probabilities[rows], step)
                request.step = step + 1
                more = request.step < request.sampling.max_new_tokens
                going_on[id(request)] = [row for row in request.rows if more and not decoding.samples[row].finished]
            if going_on[id(request)]:
                request.changed.set()
            else:
                request.finish()
        self.ids = ids
        self._keep([going_on.get(id(request), request.rows) for request in self.active])
        computed: Counter[str] = Counter()
        for request, rows in taking:
            computed[request.client] += rows.stop - rows.start
        return computed

    def _moving(self, slices: list[tuple[_Stream, slice]], yielding: frozenset[str] = frozenset()
                ) -> list[tuple[_Stream, slice]]:
        """The active requests that take a token this step. The rows of addresses `yielding` the cores (they used
        more than their share lately, `lmdemo.admission.Usage`) wait while others' move. And a step's cost grows with
        its rows (a large vocabulary's prediction is per row), so an address holding many rows would slow everyone
        else's every token: each address moves at most `max(FAIR_ROWS, the fewest rows any address holds)` rows a
        step on average (an address with more moves on some steps only, by credit), so the others' tokens come at
        the pace of a batch without it. Alone, or within that many rows, every request moves every step."""
        if yielding:
            slices = [(request, rows) for request, rows in slices if request.client not in yielding]
        held: Counter[str] = Counter()
        for request, rows in slices:
            held[request.client] += rows.stop - rows.start
        if len(held) < 2 or max(held.values()) <= FAIR_ROWS:
            self.credit = {}
            return slices
        quantum = max(FAIR_ROWS, min(held.values()))
        credit = {client: self.credit.get(client, 0.0) + min(1.0, quantum / count) for client, count in held.items()}
        moving = {client for client, value in credit.items() if value >= 1.0 - 1e-9}
        self.credit = {client: value - (client in moving) for client, value in credit.items()}
        return [(request, rows) for request, rows in slices if request.client in moving]

    def _choose(self, logits: torch.Tensor, taking: list[tuple[_Stream, slice]]) -> tuple[torch.Tensor, list[float]]:
        """Every row's next token [B] and its probability, with one `choose_next` call per `ChoiceRule` in the
        batch (usually one): a call costs the loop about as much for 60 rows as for one, and the rows' own
        temperatures and draws keep each request's tokens its own."""
        groups: dict[ChoiceRule, tuple[list[int], list[float], list[float]]] = {}
        for request, rows in taking:
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

    def _keep(self, kept: list[list[int]]) -> None:
        """Each active request (in batch order) keeps only its samples in `kept` (none: it leaves the batch). The
        tensor rows kept and each request's `rows` come from this one list, so they cannot disagree."""
        positions, start = [], 0
        for request, rows in zip(self.active, kept, strict=True):
            staying = set(rows)
            positions += [start + i for i, row in enumerate(request.rows) if row in staying]
            start += len(request.rows)
            request.rows = [row for row in request.rows if row in staying]
        self.active = [request for request in self.active if request.rows]
        if not self.active:
            self.state, self.ids = None, None
        elif len(positions) < start:
            index = torch.tensor(positions)
            self.state = (self.state[0][:, index], self.state[1][:, index])
            self.ids = self.ids[index]

    def _slices(self) -> list[tuple[_Stream, slice]]:
        """Each request with where its rows are in the batch (read before a step changes them)."""
        return _packed(self.active)


def _packed(requests: Sequence[_Stream]) -> list[tuple[_Stream, slice]]:
    """Each request with where its rows are when `requests`' rows lie one after another."""
    slices, start = [], 0
    for request in requests:
        slices.append((request, slice(start, start + len(request.rows))))
        start += len(request.rows)
    return slices


class DecodeLoop:
    """The decode loop of one model: `read` reads texts in turn, `stream` queues requests for its thread (see the
    module's docstring). `admission` is the server's (one for every kind of work); a loop of its own otherwise."""

    def __init__(self, generator: Generator, max_rows: int = DEFAULT_MAX_ROWS, idle_seconds: float = IDLE_SECONDS,
                 admission: Admission | None = None, share: float = SHARE, wait_limit_s: float = WAIT_LIMIT_S):
        self.generator_ref = weakref.ref(generator)  # a model nobody serves any more can go, with its loop
        self.max_rows, self.idle_seconds, self.wait_limit_s = max_rows, idle_seconds, wait_limit_s
        self.admission = add_lines(Admission() if admission is None else admission, max_rows, share)
        self.rows_line = Line(ROWS, max_rows, share, "samples in one batch")  # counted by the loop, per batch
        self.usage = self.admission.usage  # the cores' time each address used lately, server-wide
        self.turns = Turns(1, wait_limit_s, usage=self.usage)  # texts are read one at a time, fairly
        self.condition = threading.Condition()  # reentrant: `_fail` runs under it from `_queue` and `_watch` too
        self.waiting: deque[_Stream] = deque()
        self.thread: threading.Thread | None = None
        # streams being shown as they grow, by address: all share UPDATES_PER_SECOND, one address at most its share
        self.watchers: Counter[object] = Counter()
        self.share = share
        self.batch = _Batch()

    def read(self, ids: Sequence[int], after: Reading | None = None, client: str = "") -> Reading:
        """`Generator.reading(ids, after)`, in the caller's thread when its turn comes; `Busy` when `client` (an
        address) already has its share of the `READS` line, or the line is full. Nothing to read after a reading
        (the bars right after a prompt) is that reading, without waiting."""
        if after is not None and not ids:
            return after
        whose = _whose(client)
        with self.admission.admit(READS, whose), self.turns.turn(whose):
            return self._generator().reading(ids, after)

    def stream(self, reading: Reading, sampling: Sampling, every: float = 0.0, client: str = ""
               ) -> Iterator[list[Sample]]:
        """The samples of `sampling` after `reading`, as `Generator.stream` gives them, at most every `every`
        seconds, or less often while many streams share `UPDATES_PER_SECOND` (the last yield is the finished
        samples); `Busy` when `client` (an address) already has its share of the `WAITING` line or the line is full,
        or when it waited `wait_limit_s` for rows; `LoopFailed` if the loop fails. Closing the iterator takes the
        request's rows out of the batch at the next step."""
        generator = self._generator()
        generator.check_dial(sampling.dial)
        if len(sampling.temperatures) > self.rows_line.per_client:
            raise SettingsError(f"at most {self.rows_line.per_client} temperatures at once on this server "
                                f"(got {len(sampling.temperatures)})")
        request = _Stream(reading, sampling, generator, _whose(client))
        del generator
        with self.usage.at_work(request.client):
            self._queue(request)
            watching = not math.isinf(every)
            with self.condition:
                self.watchers[request.client] += watching
            try:
                yield from self._updates(request, every)
            finally:
                request.cancelled = True  # read by the loop at its next step; harmless once the request ended
                with self.condition:
                    self.watchers[request.client] -= watching
                    if self.watchers[request.client] <= 0:
                        del self.watchers[request.client]
                    if request in self.waiting:
                        self.waiting.remove(request)
                request.hold.release()

    def _updates(self, request: _Stream, every: float) -> Iterator[list[Sample]]:
        shown, last = 0, -math.inf
        while True:
            self._wait(request, request.changed, math.inf)
            elapsed, interval = time.monotonic() - last, self._update_interval(request, every)
            if elapsed < interval:  # shown too recently: wait for the rest of the interval, or the end
                self._wait(request, request.ended, interval - elapsed)
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

    def _update_interval(self, request: _Stream, every: float) -> float:
        """Seconds between two updates of `request`: an update costs the server's one Python thread far more than
        a step, so every watcher shares `UPDATES_PER_SECOND`, and one address's watchers at most its share of it."""
        with self.condition:
            everyone, mine = self.watchers.total(), self.watchers[request.client]
        return max(every, everyone / UPDATES_PER_SECOND, mine / (UPDATES_PER_SECOND * self.share))

    def _wait(self, request: _Stream, event: threading.Event, seconds: float) -> None:
        """Wait up to `seconds` (inf: no limit) for `event`, looking every `WATCH_SECONDS` that the request still
        has a loop to wait for (`_watch` ends it otherwise, which sets the event)."""
        deadline = time.monotonic() + seconds
        while not event.wait(max(0.0, min(WATCH_SECONDS, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                return
            self._watch(request)

    def _watch(self, request: _Stream) -> None:
        """End a request that waits for nothing: its loop's thread is gone (`LoopFailed`), or it waited its time
        for rows to free (`Busy`)."""
        with self.condition:
            if request.ended.is_set():
                return
            if not self._running():
                self._fail(RuntimeError("the decode loop's thread ended without telling its requests"), [request])
            elif request in self.waiting and time.monotonic() > request.deadline:
                self.waiting.remove(request)
                request.hold.release()
                request.finish(Busy(f"the server is busy: this model had no row free for {self.wait_limit_s:.0f} s; "
                                    f"try again later"))

    def _queue(self, request: _Stream) -> None:
        """Admit `request` to the `WAITING` line (`Busy` past its share) and have a running thread take it."""
        request.hold = self.admission.admit(WAITING, request.client)
        with self.condition:
            if self.thread is not None and not self.thread.is_alive():  # it died without a word: start afresh
                self._fail(RuntimeError("the decode loop's thread ended without telling its requests"))
            request.deadline = time.monotonic() + self.wait_limit_s
            self.waiting.append(request)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="decode-loop", daemon=True)
                self.thread.start()
            self.condition.notify()

    def _running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def _run(self) -> None:
        """The loop's thread: take the requests that fit, step, until idle. Anything that fails here fails every
        request the loop holds or that waits for it, and resets the loop (`_fail`)."""
        joining: list[_Stream] = []
        try:
            while True:
                with self.condition:
                    if not self.batch.active and not self.waiting:
                        self.condition.wait(self.idle_seconds)
                        if not self.waiting:
                            self.thread = None
                            return
                    joining = self._take()
                generator = self._generator()
                started = time.thread_time()
                with torch.inference_mode():  # the batch's tensors never leave the loop: ~8 % off a step, measured
                    computed = self.batch.step(generator, joining, self.usage.yielding())
                joining = []
                del generator
                if computed:  # the step's CPU time, shared out by rows
                    spent = (time.thread_time() - started) / computed.total()
                    self.usage.charge({client: spent * rows for client, rows in computed.items()})
                else:  # every address in the batch yields the cores to others' work for now
                    with self.condition:
                        self.condition.wait(YIELD_SECONDS)
        except BaseException as error:  # noqa: BLE001 - every request is told; the next one starts a fresh loop
            self._fail(error, joining)

    def _fail(self, error: BaseException, also: Sequence[_Stream] = ()) -> None:
        """End every request of the loop (in the batch, joining it, waiting for it, and `also`) with `LoopFailed`,
        and reset the loop so that the next request starts a fresh thread. Runs under the condition, so no request
        can join the dropped batch or wait for the old thread meanwhile."""
        with self.condition:
            told = [*self.batch.active, *also, *self.waiting]
            self.batch, self.waiting, self.thread = _Batch(), deque(), None
            for request in told:
                if request.hold is not None:
                    request.hold.release()
                request.finish(LoopFailed(error))
        print(f"lmdemo.batching: a decode loop failed; its {len(set(map(id, told)))} requests were told to try again",
              file=sys.stderr)
        traceback.print_exception(error, file=sys.stderr)

    def _take(self) -> list[_Stream]:
        """The waiting requests whose rows fit, fairly: the client holding the fewest rows in the batch goes first,
        in the order they came among equals, so one address's many requests do not keep others waiting. A client
        at its share of the batch's rows waits for its own rows to free (its requests stay in the line, in their
        order); a request that does not fit the free rows holds the ones behind it, so it is not passed over for
        ever."""
        held = self.batch.rows_by_client()
        free = self.max_rows - held.total()
        candidates = list(self.waiting)
        joining: list[_Stream] = []
        while candidates:
            job = min(candidates, key=lambda waiter: held[waiter.client])  # the first of the least served
            if held[job.client] + len(job.rows) > self.rows_line.per_client:
                candidates = [waiter for waiter in candidates if waiter.client != job.client]
                continue
            if len(job.rows) > free:
                break
            job.hold.release()  # first: should it fail, the request is still in the line, where `_fail` finds it
            candidates.remove(job)
            self.waiting.remove(job)
            joining.append(job)
            free -= len(job.rows)
            held[job.client] += len(job.rows)
        return joining

    def _generator(self) -> Generator:
        generator = self.generator_ref()
        if generator is None:  # cannot happen while a request holds its generator; fails the loop if it does
            raise RuntimeError("the model of this decode loop is no longer served")
        return generator


class Batching:
    """The batched path: a `DecodeLoop` per model, made on its first request, all under one `admission` (the
    server's, for every kind of work; one of its own otherwise), to which it adds the loops' lines if absent."""

    def __init__(self, max_rows: int = DEFAULT_MAX_ROWS, idle_seconds: float = IDLE_SECONDS,
                 admission: Admission | None = None, share: float = SHARE):
        self.max_rows, self.idle_seconds, self.share = max_rows, idle_seconds, share
        self.admission = add_lines(Admission() if admission is None else admission, max_rows, share)
        self.loops: weakref.WeakKeyDictionary[Generator, DecodeLoop] = weakref.WeakKeyDictionary()
        self.lock = threading.Lock()

    def loop(self, generator: Generator) -> DecodeLoop:
        with self.lock:
            loop = self.loops.get(generator)
            if loop is None:
                loop = self.loops[generator] = DecodeLoop(generator, self.max_rows, self.idle_seconds,
                                                          self.admission, self.share)
            return loop

    def reading(self, generator: Generator, ids: Sequence[int], after: Reading | None = None,
                client: str = "") -> Reading:
        return self.loop(generator).read(ids, after, client)

    def stream(self, generator: Generator, reading: Reading, sampling: Sampling,
               every: float = 0.0, client: str = "") -> Iterator[list[Sample]]:
        return self.loop(generator).stream(reading, sampling, every, client)


class PerRequest:
    """The per-request path: each request reads and decodes alone, in its caller's thread. (`client` is not used:
    these requests wait in Gradio's queue, first come first served.)"""

    def reading(self, generator: Generator, ids: Sequence[int], after: Reading | None = None,
                client: str = "") -> Reading:
        return generator.reading(ids, after)

    def stream(self, generator: Generator, reading: Reading, sampling: Sampling,
               every: float = 0.0, client: str = "") -> Iterator[list[Sample]]:
        """`Generator.stream`, at most every `every` seconds; the last yield is the finished samples."""
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


def generate(decoder: Decoder, generator: Generator, ids: Sequence[int], sampling: Sampling,
             client: str = "") -> list[Sample]:
    """The finished samples of `sampling` after the text `ids`, through `decoder`, as `client`'s request."""
    samples: list[Sample] = []
    for samples in decoder.stream(generator, decoder.reading(generator, ids, client=client), sampling,
                                  every=math.inf, client=client):
        pass
    return samples
