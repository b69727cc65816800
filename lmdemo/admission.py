"""Who may start what: one fair-share rule for every kind of work a public server does for strangers.

Each kind of work is a `Line` with a capacity (everyone's requests together) and a share: one client address
holds at most `share` of the capacity (never less than one, so anyone may always ask once, and a class behind one
school address still gets several requests through: the share is a fraction, not one). `Admission` keeps, for
every line, what each address holds now; past its share an address alone hears one line that says so, and past
the capacity everyone hears that the server is busy. Nothing waits unbounded: a `Turns` hands out a fixed number of
places to the holders that wait, the address with the fewest places first, within a time limit.

A line bounds what an address holds, not how hard what it holds works the cores: the operating system shares
them per thread, and one address's long generations on three models and an Inside view keep four threads busy. So
every computation also charges its thread's CPU time to its address (`Usage`), and while other addresses are at
work, one that used more than its share of the cores lately yields them: its turns wait, its rows in a decode
batch wait a step.

The web demo's lines (built in `lmdemo.web.page`): the events a page or script has in Gradio's queue, model work
(the Inside tab, per-request sampling), texts waiting for the decode loop's reader, requests waiting to join a
decode batch and the batch's rows, training jobs, and uploads (files and bytes). The library's decode loop
(`lmdemo.batching`) takes its own lines from here; it knows nothing of the web.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

WAIT_LIMIT_S = 120.0  # the longest anyone waits for a turn before hearing the server is busy


class Busy(RuntimeError):
    """Refused now, in one line a visitor can act on: their share is taken, or the server's line is full. Nothing
    was queued; the same request can simply be sent again later."""


@dataclass(frozen=True)
class Line:
    """One kind of work: at most `capacity` held by everyone, at most `share` of it by one address (at least 1).
    `what` names one held unit in the plural for messages ("model computations running or waiting")."""

    name: str
    capacity: int
    share: float
    what: str
    scale: float = 1.0  # units per shown unit in messages (bytes shown as MB: 1e6)
    shown: str = ""  # the shown unit ("MB"), when scaled

    @property
    def per_client(self) -> int:
        return max(1, int(self.capacity * self.share))

    def amount(self, held: float) -> str:
        return f"{held / self.scale:,.1f} {self.shown} of {self.what}" if self.shown else f"{held:,.0f} {self.what}"


class Hold:
    """What one request holds of one line until `release` (idempotent; also a context manager)."""

    def __init__(self, admission: Admission, line: Line, client: str, amount: int):
        self.admission, self.line, self.client, self.amount = admission, line, client, amount
        self.released = False

    def release(self) -> None:
        self.admission._release(self)

    def __enter__(self) -> Hold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextmanager
def counted(counter: Counter[str], key: str, lock: threading.Lock) -> Iterator[None]:
    """`counter[key]` one higher for the block's life, under `lock`; a key back at zero leaves the counter (nothing
    kept per address once it is done)."""
    with lock:
        counter[key] += 1
    try:
        yield
    finally:
        with lock:
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]


class Usage:
    """The cores' time each address used lately, for one fair share of them across every kind of work.

    Computations charge their thread's CPU seconds to their address (`charged`, `charge`), half of which is
    forgotten every `half_life_s`. While two or more addresses are at work (`at_work`: waiting for or doing a
    computation), an address that used more than `slack` times the average of the others at work, and more than
    `floor_s`, is `yielding`: it waits until its use has decayed, so the others' work takes the cores. Visitors
    using the cores alike never yield to one another, and alone nobody yields: the cores are never kept idle for a
    visitor who is not there. At most `addresses` are remembered, the longest uncharged forgotten first."""

    FRESH_S = 0.01

    def __init__(self, half_life_s: float = 4.0, slack: float = 2.0, floor_s: float = 0.5, addresses: int = 4096):
        self.half_life_s, self.slack, self.floor_s, self.addresses = half_life_s, slack, floor_s, addresses
        self.lock = threading.Lock()
        self.used: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address -> (CPU seconds, when charged)
        self.working: Counter[str] = Counter()
        self.answered: tuple[float, frozenset[str]] = (-math.inf, frozenset())  # when `yielding` last answered, what

    def at_work(self, client: str) -> AbstractContextManager:
        """`client` waits for or does a computation for the block's life: the addresses at work share the cores."""
        return counted(self.working, client, self.lock)

    @contextmanager
    def charged(self, client: str) -> Iterator[None]:
        """The calling thread's CPU time in the block, charged to `client` (torch's work runs in the caller's thread
        when it has one thread, as the web demo's computations do)."""
        started = time.thread_time()
        try:
            yield
        finally:
            self.charge({client: time.thread_time() - started})

    def charge(self, seconds: Mapping[str, float]) -> None:
        """Add each address's CPU `seconds`."""
        now = time.monotonic()
        with self.lock:
            for client, spent in seconds.items():
                self.used[client] = (self._used(client, now) + spent, now)
                self.used.move_to_end(client)
            while len(self.used) > self.addresses:
                self.used.popitem(last=False)

    def yielding(self) -> frozenset[str]:
        """The addresses at work that used more than their share of the cores lately, while others are at work
        (the answer of the last `FRESH_S` stands: every decode step and every waiting turn asks)."""
        now = time.monotonic()
        with self.lock:
            if len(self.working) < 2:
                return frozenset()
            if now - self.answered[0] < self.FRESH_S:
                return self.answered[1]
            used = {client: self._used(client, now) for client in self.working}
            total, others = sum(used.values()), len(used) - 1
            self.answered = (now, frozenset(client for client, value in used.items()
                                            if value > max(self.floor_s, self.slack * (total - value) / others)))
            return self.answered[1]

    def _used(self, client: str, now: float) -> float:
        value, charged = self.used.get(client, (0.0, now))
        return value * 0.5 ** ((now - charged) / self.half_life_s)


class Admission:
    """Every line's holdings per client address, under one lock: `admit` or refuse (`Busy`); and the cores' time
    each address used lately (`usage`), which every computation charges."""

    def __init__(self, lines: Iterable[Line] = ()):
        self.lines: dict[str, Line] = {}
        self.held: dict[str, Counter[str]] = {}
        self.lock = threading.Lock()
        self.usage = Usage()
        for line in lines:
            self.add(line)

    def add(self, line: Line) -> Line:
        with self.lock:
            self.lines[line.name] = line
            self.held.setdefault(line.name, Counter())
        return line

    def admit(self, name: str, client: str, amount: int = 1) -> Hold:
        """Hold `amount` of line `name` for `client`, or raise `Busy` saying whose limit it met."""
        with self.lock:
            refusal = self._refusal(name, client, amount)
            if refusal:
                raise Busy(refusal)
            self.held[name][client] += amount
        return Hold(self, self.lines[name], client, amount)

    def refusal(self, name: str, client: str, amount: int = 1) -> str | None:
        """What `admit` would say now, holding nothing: a door can turn a request away before it costs anything."""
        with self.lock:
            return self._refusal(name, client, amount)

    def _refusal(self, name: str, client: str, amount: int) -> str | None:
        line, held = self.lines[name], self.held[name]
        mine = held[client]
        if mine + amount > line.per_client and mine > 0:
            return (f"you already have {line.amount(mine)} on this server (at most {line.amount(line.per_client)} "
                    f"from one address): wait for one to finish")
        if amount > line.per_client:
            return f"too large: {line.amount(amount)} asked, at most {line.amount(line.per_client)} from one address"
        if held.total() + amount > line.capacity:
            return f"the server is busy ({line.amount(held.total())}): try again in a moment"
        return None

    def holding(self, name: str, client: str) -> int:
        with self.lock:
            return self.held[name][client]

    def total(self, name: str) -> int:
        with self.lock:
            return self.held[name].total()

    def _release(self, hold: Hold) -> None:
        with self.lock:
            if hold.released:
                return
            hold.released = True
            held = self.held[hold.line.name]
            held[hold.client] -= hold.amount
            if held[hold.client] <= 0:
                del held[hold.client]


class Turns:
    """`places` things done at once (model computations, texts read), at most `per_client` of them by one address
    (a core left for everyone else); the others wait, and when a place frees the waiting client with the fewest
    places goes first (among equals, the first to come), unless it is `usage.yielding` (it used more than its share
    of the cores lately while others work). Each turn's CPU time is charged to its client. Who may wait at all is a
    `Line`'s business; how long, `WAIT_LIMIT_S`."""

    RECHECK_S = 0.05  # a waiter held back by its use looks again this often (use decays; nothing notifies)

    def __init__(self, places: int, wait_limit_s: float = WAIT_LIMIT_S, per_client: int | None = None,
                 usage: Usage | None = None):
        self.places, self.wait_limit_s = places, wait_limit_s
        self.per_client = places if per_client is None else max(1, per_client)
        self.usage = usage or Usage()
        self.condition = threading.Condition()
        self.running: Counter[str] = Counter()
        self.waiting: list[tuple[str, int]] = []  # (client, ticket) in arrival order
        self.tickets = 0

    @contextmanager
    def turn(self, client: str) -> Iterator[None]:
        """Wait for a place, fairly; `Busy` after `wait_limit_s`."""
        with self.usage.at_work(client):
            self._acquire(client)
            try:
                with self.usage.charged(client):
                    yield
            finally:
                self._release(client)

    def _release(self, client: str) -> None:
        with self.condition:
            self.running[client] -= 1
            if self.running[client] <= 0:
                del self.running[client]
            self.condition.notify_all()

    def _acquire(self, client: str) -> None:
        deadline = time.monotonic() + self.wait_limit_s
        with self.condition:
            self.tickets += 1
            me = (client, self.tickets)
            self.waiting.append(me)
            try:
                while not (self.running.total() < self.places and self._next() == me):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise Busy("the server is busy: nothing freed up for two minutes; try again later")
                    self.condition.wait(min(left, self.RECHECK_S))
            except BaseException:
                self.waiting.remove(me)
                self.condition.notify_all()
                raise
            self.waiting.remove(me)
            self.running[client] += 1
            self.condition.notify_all()

    def _next(self) -> tuple[str, int] | None:
        """The first waiter of the clients running the fewest, among those below `per_client` and not yielding."""
        yielding = self.usage.yielding()
        allowed = [waiter for waiter in self.waiting
                   if self.running[waiter[0]] < self.per_client and waiter[0] not in yielding]
        return min(allowed, key=lambda waiter: (self.running[waiter[0]], waiter[1])) if allowed else None


class Backoff:
    """How long to hold a refusal's answer. A visitor's occasional refusal is answered at once; an address refused
    again and again within `window_s` (a script retrying at once) waits `step_s` longer for each refusal past the
    first `free`, up to `most_s`, so it cannot keep the server's one event loop busy answering it. Bounded: at most
    `addresses` are remembered, the longest unrefused forgotten first."""

    def __init__(self, free: int = 5, step_s: float = 0.1, most_s: float = 2.0, window_s: float = 10.0,
                 addresses: int = 4096):
        self.free, self.step_s, self.most_s, self.window_s, self.addresses = free, step_s, most_s, window_s, addresses
        self.lock = threading.Lock()
        self.refused: OrderedDict[str, tuple[float, int]] = OrderedDict()  # address -> (window's start, refusals)

    def delay(self, client: str) -> float:
        """Count one more refusal of `client`; the seconds to wait before answering it."""
        now = time.monotonic()
        with self.lock:
            start, count = self.refused.pop(client, (now, 0))
            if now - start > self.window_s:
                start, count = now, 0
            self.refused[client] = (start, count + 1)
            while len(self.refused) > self.addresses:
                self.refused.popitem(last=False)
        return min(self.most_s, self.step_s * max(0, count + 1 - self.free))
