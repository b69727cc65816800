"""What Gradio keeps for each page (session), bounded: a few pages per address, small, and gone once idle.

A session id is the client's to choose, and Gradio keeps two things per session: a `SessionState` until 10,000
newer sessions push it out, and the session's message queue in a cache of 2,000, where a script making new
sessions pushes out the queues of other visitors' waiting requests (their event streams then break). Gradio's
`SessionState` copies every component's config at a page's first request: 286 KB and 41 ms of the server's time
for this app (measured in-process, tracemalloc and timeit), for deep links only. So:

- `PageState` keeps what a page's events change and no copies (12 KB, a config's shallow copy);
  `lean_pages` makes the server's Gradio keep its pages as those;
- `PageStates` lets one address have at most `per_address` pages (sessions seen within `ttl_s`); a new one past
  that is refused at the door, before Gradio makes anything for it (`lmdemo.web.gate.PageDoor`, in front of every
  route that makes a page: a request without one, an API call, gets a page of its own, forgotten soon after);
- and forgets a page idle for `ttl_s` with no event running or waiting (Gradio's state of it goes; a page that
  comes back later starts afresh, as its `gr.State`s, with the same time to live, would have anyway).
"""

from __future__ import annotations

import datetime
import gc
import os
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from copy import copy
from typing import Any

import gradio as gr
from gradio.state_holder import SessionState, StateHolder

from lmdemo.admission import counted
from lmdemo.web.allocator import release_free_memory

PAGES_PER_ADDRESS = 32  # a class behind one school address
CALL_TTL_S = 30.0  # an API call's own page (the door names one when the call names none) is forgotten this long idle


class PageStates:
    """The pages of one app by address, swept on a timer (`start`)."""

    def __init__(self, ttl_s: float, per_address: int = PAGES_PER_ADDRESS):
        self.ttl_s, self.per_address = ttl_s, per_address
        self.app: Any = None  # the Blocks; its `state_holder` exists once it is launched
        self.by_address: dict[str, OrderedDict[str, float]] = {}  # address -> page -> last seen (monotonic)
        self.working: Counter[str] = Counter()  # page -> its events running now
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.with_pages: list[Callable[[float], None]] = []  # what else forgets what idle pages used (`also_forget`)
        self.uncollected = False  # pages were forgotten since the last full collection (`sweep`)
        self.calls: set[str] = set()  # pages the door named for one API call each: forgotten after CALL_TTL_S

    def start(self, app: Any, every_s: float | None = None) -> None:
        self.app = app
        every = every_s if every_s is not None else max(1.0, min(30.0, self.ttl_s / 4))
        threading.Thread(target=self._sweep_forever, args=(every,), name="lmdemo-page-states", daemon=True).start()

    def also_forget(self, forget_idle: Callable[[float], None]) -> None:
        """At every sweep, also `forget_idle(ttl_s)`: a cache of what visitors' pages asked for."""
        self.with_pages.append(forget_idle)

    def arrive(self, page: str, address: str, call: bool = False) -> str | None:
        """A request of `page` from `address` (`call`: a page the door named for one API call): why it is refused
        (one line), or None and the page is fresh."""
        with self.lock:
            pages = self.by_address.setdefault(address, OrderedDict())
            if page not in pages and len(pages) >= self.per_address:
                return (f"you already have {len(pages)} pages or API calls open on this server (at most "
                        f"{self.per_address} from one address): use one of them, or come back in a few minutes")
            if call:
                self.calls.add(page)
            pages[page] = time.monotonic()
            pages.move_to_end(page)
            return None

    @contextmanager
    def event(self, page: str | None, address: str) -> Iterator[None]:
        """An event of `page` (from `address`) runs: the page is not idle until it ends."""
        if not page:
            yield
            return
        try:
            with counted(self.working, page, self.lock):
                yield
        finally:
            with self.lock:
                pages = self.by_address.get(address)
                if pages is not None and page in pages:
                    pages[page] = time.monotonic()
                    pages.move_to_end(page)

    def sweep(self) -> None:
        """Forget the pages idle for `ttl_s` (an API call's, `CALL_TTL_S`) with no event running or waiting: ours by
        their last request, the others (pages Gradio named for calls the door saw) as calls, by Gradio's own
        last use."""
        now, idle, call_ttl = time.monotonic(), [], min(CALL_TTL_S, self.ttl_s)
        queue = getattr(self.app, "_queue", None)
        waiting = queue.pending_event_ids_session if queue is not None else {}
        with self.lock:
            for address, pages in list(self.by_address.items()):
                for page, seen in list(pages.items()):
                    ttl = call_ttl if page in self.calls else self.ttl_s
                    if now - seen > ttl and page not in self.working and not waiting.get(page):
                        del pages[page]
                        self.calls.discard(page)
                        idle.append(page)
                if not pages:
                    del self.by_address[address]
            known = {page for pages in self.by_address.values() for page in pages} | set(self.working)
        holder = getattr(self.app, "state_holder", None)
        if holder is not None:  # only an API call's page comes in unseen (a v2 call: Gradio names it)
            wall = time.time()
            with holder.lock:
                idle += [page for page, when in holder.time_last_used.items()
                         if page not in known and not waiting.get(page)
                         and wall - when.timestamp() > call_ttl]
        for page in idle:
            self.forget(page)
        for forget_idle in self.with_pages:
            forget_idle(self.ttl_s)
        with self.lock:
            quiet = not self.working
            self.uncollected = self.uncollected or bool(idle)
            collect = quiet and self.uncollected
            if collect:
                self.uncollected = False
        if collect:  # what forgotten pages held in reference cycles goes now, not at Python's next full collection
            gc.collect()
        if idle or quiet:  # what pages freed, and what their work freed after (a decode loop's end, a trainer's)
            release_free_memory()

    def forget(self, page: str) -> None:
        """Drop Gradio's state of `page` (its `gr.State`s' delete callbacks run) and, when no event of it is
        pending, its message queue (a page that went away mid-stream leaves there every update it never read)."""
        queue = getattr(self.app, "_queue", None)
        if queue is not None and not queue.pending_event_ids_session.get(page):
            queue.pending_messages_per_session.pop(page, None)
        holder = getattr(self.app, "state_holder", None)
        if holder is None or page not in holder:
            return
        holder.delete_state(page)
        with holder.lock:
            holder.session_data.pop(page, None)
            holder.time_last_used.pop(page, None)

    def _sweep_forever(self, every: float) -> None:
        while not self.stopped.wait(every):
            self.sweep()


class PageState(SessionState):
    """Gradio's state of one page without the copy of every component's config it makes for deep links (this
    server makes none: `PageDoor` refuses the route): what the page's events set (its `gr.State`s, updated
    components) is kept as Gradio keeps it. Mirrors `SessionState`'s `__init__` and `__setitem__` but for those
    copies (tests/test_memory.py checks the attributes against Gradio's)."""

    def __init__(self, blocks: Any):  # noqa: D107 - not SessionState's: the copies are what it leaves out
        self.blocks_config = copy(blocks.default_config)
        self.config_values: dict[int, Any] = {}  # deep links' copies: none kept
        self.state_data: dict[int, Any] = {}
        self._state_ttl: dict[int, Any] = {}
        self.is_closed = False
        self.STATE_TTL_WHEN_CLOSED = 1 if os.getenv("GRADIO_IS_E2E_TEST", None) else 3600

    def __setitem__(self, key: int, value: Any) -> None:
        """As Gradio's (a `gr.State`'s value with its time to live, or a component an event updated), without
        computing the deep-link copy of its config (41 ms for the app's 179 components: ~0.2 ms each), which
        Gradio does at every update of a component's properties in a streamed event."""
        block = self.blocks_config.blocks.get(key)
        if isinstance(block, gr.State):
            self._state_ttl[key] = (block.time_to_live, datetime.datetime.now())
            self.state_data[key] = value
        else:
            self.blocks_config.blocks[key] = value

    def _update_config(self, key: int) -> None:
        """Gradio's deep-link copy of a component's config after an event: not kept."""

    def _update_value_in_config(self, key: int, value: Any) -> None:
        """Gradio's deep-link copy of a component's value after an event: not kept."""


class PageStateHolder(StateHolder):
    """Gradio's holder of pages, making `PageState`s."""

    def __getitem__(self, session_id: str) -> SessionState:
        if session_id not in self.session_data:
            self.session_data[session_id] = PageState(self.blocks)
        return super().__getitem__(session_id)


@asynccontextmanager
async def lean_pages(app: Any) -> AsyncIterator[None]:
    """A lifespan for Gradio's FastAPI `app` (`launch(app_kwargs=dict(lifespan=...))`): before the first request,
    its pages are kept in a `PageStateHolder`."""
    holder = PageStateHolder()
    holder.set_blocks(app.get_blocks())
    app.state_holder = holder
    yield
