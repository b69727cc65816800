"""What Gradio keeps for each page, bounded: gone once the page is idle, and a few per address.

Gradio keeps a `SessionState` per session id (a copy of every component's config, about 240 KB for this page,
measured: 400 new sessions raised a server's memory by 95 MiB) until 10,000 newer sessions push it out; it
drops a closed page's `gr.State` values after an hour but never the session itself. A session id is the
client's to choose, so one script could make thousands. `PageStates` forgets a session that went
`ttl_s` without an event (a page that is still open and comes back gets a fresh one: its `gr.State`s have
the same time to live, so nothing it shows is lost that was not already), and keeps at most
`per_address` sessions per client address, dropping that address's least recently used beyond.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any


class PageStates:
    """Gradio's per-session page state of one app, swept on a timer (`start`) and trimmed per address."""

    def __init__(self, ttl_s: float, per_address: int = 32):
        self.ttl_s, self.per_address = ttl_s, per_address
        self.app: Any = None  # the Blocks; its `state_holder` exists once it is launched
        self.by_address: dict[str, OrderedDict[str, float]] = {}  # address -> session -> last event (monotonic)
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def start(self, app: Any, every_s: float | None = None) -> None:
        self.app = app
        every = every_s if every_s is not None else max(1.0, min(30.0, self.ttl_s / 4))
        threading.Thread(target=self._sweep_forever, args=(every,), name="lmdemo-page-states", daemon=True).start()

    def seen(self, session: str | None, address: str) -> None:
        """An event of `session` from `address`: it is fresh; that address's oldest beyond `per_address` go."""
        if not session:
            return
        with self.lock:
            sessions = self.by_address.setdefault(address, OrderedDict())
            sessions[session] = time.monotonic()
            sessions.move_to_end(session)
            dropped = [sessions.popitem(last=False)[0] for _ in range(len(sessions) - self.per_address)]
        for old in dropped:
            self.forget(old)

    def sweep(self) -> None:
        """Forget the sessions idle for `ttl_s`: ours by their last event, Gradio's by its own last use."""
        now = time.monotonic()
        with self.lock:
            idle = []
            for address, sessions in list(self.by_address.items()):
                while sessions and now - next(iter(sessions.values())) > self.ttl_s:
                    idle.append(sessions.popitem(last=False)[0])
                if not sessions:
                    del self.by_address[address]
        holder = getattr(self.app, "state_holder", None)
        if holder is not None:
            wall = time.time()
            with holder.lock:
                idle += [session for session, when in holder.time_last_used.items()
                         if wall - when.timestamp() > self.ttl_s]
        for session in idle:
            self.forget(session)

    def forget(self, session: str) -> None:
        """Drop Gradio's state of `session` (its `gr.State`s' delete callbacks run)."""
        holder = getattr(self.app, "state_holder", None)
        if holder is None or session not in holder:
            return
        holder.delete_state(session)
        with holder.lock:
            holder.session_data.pop(session, None)
            holder.time_last_used.pop(session, None)

    def sessions(self) -> int:
        holder = getattr(self.app, "state_holder", None)
        return len(holder.session_data) if holder is not None else 0

    def _sweep_forever(self, every: float) -> None:
        while not self.stopped.wait(every):
            self.sweep()
