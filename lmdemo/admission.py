"""Who may start what: one fair-share rule for every kind of work a public server does for strangers.

Each kind of work is a `Line` with a capacity (everyone's requests together) and a share: one client address
holds at most `share` of the capacity (never less than one, so anyone may always ask once, and a class behind one
school address still gets several requests through: the share is a fraction, not one). `Admission` keeps, for
every line, what each address holds now; past its share an address alone hears one line that says so, and past
the capacity everyone hears that the server is busy. Nothing waits unbounded: a `Turns` hands out a fixed number of
places to the holders that wait, the address with the fewest places first, within a time limit.

The web demo's lines (built in `lmdemo.web.page`): the events a page or script has in Gradio's queue, model work
(the Inside tab, per-request sampling), texts waiting for the decode loop's reader, requests waiting to join a
decode batch and the batch's rows, training jobs, and uploads (files and bytes). The library's decode loop
(`lmdemo.batching`) takes its own lines from here; it knows nothing of the web.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
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


class Admission:
    """Every line's holdings per client address, under one lock: `admit` or refuse (`Busy`)."""

    def __init__(self, lines: Iterable[Line] = ()):
        self.lines: dict[str, Line] = {}
        self.held: dict[str, Counter[str]] = {}
        self.lock = threading.Lock()
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
    places goes first (among equals, the first to come). Who may wait at all is a `Line`'s business; how long,
    `WAIT_LIMIT_S`."""

    def __init__(self, places: int, wait_limit_s: float = WAIT_LIMIT_S, per_client: int | None = None):
        self.places, self.wait_limit_s = places, wait_limit_s
        self.per_client = places if per_client is None else max(1, per_client)
        self.condition = threading.Condition()
        self.running: Counter[str] = Counter()
        self.waiting: list[tuple[str, int]] = []  # (client, ticket) in arrival order
        self.tickets = 0

    @contextmanager
    def turn(self, client: str) -> Iterator[None]:
        """Wait for a place, fairly; `Busy` after `wait_limit_s`."""
        self._acquire(client)
        try:
            yield
        finally:
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
                    self.condition.wait(left)
            except BaseException:
                self.waiting.remove(me)
                self.condition.notify_all()
                raise
            self.waiting.remove(me)
            self.running[client] += 1
            self.condition.notify_all()

    def _next(self) -> tuple[str, int] | None:
        """The first waiter of the clients running the fewest, among those below `per_client`."""
        allowed = [waiter for waiter in self.waiting if self.running[waiter[0]] < self.per_client]
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
