"""The web demo's side of `lmdemo.admission`: who asks, and the events they may start.

Gradio's own queue bounds events by concurrency group, first come first served, with one `max_size` shared by
everyone: one script could fill it. So no event here has a Gradio concurrency limit: the queue hands every event
to a worker at once, and the `Gate` admits it there, by the asking client's address:

- every event that does work holds one place of the `events` line while it runs or waits (Gradio's queue places);
- model work (the Inside tab's views, and sampling when each request decodes alone) also holds a place of the
  `model work` line and runs in one of `concurrency` turns, the address with the fewest turns first;
- batched sampling requests run through the decode loops (`lmdemo.batching`), whose lines the same admission
  keeps (texts waiting to be read, requests waiting to join, rows in a batch); training has its own line
  (`lmdemo.web.jobs`) and uploads theirs (`lmdemo.web.uploads`), in the same admission.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from lmdemo.admission import Admission, Backoff, Busy, Line, Turns
from lmdemo.batching import DEFAULT_MAX_ROWS, Batching, Decoder, PerRequest
from lmdemo.web import render
from lmdemo.web.clients import request_address
from lmdemo.web.page_states import PageStates

EVENTS_LINE, MODEL_LINE = "events", "model work"
# Gradio's routes that make a page's state (`PageDoor`), by kind; `api` names an event, `page` a session
PAGE_ROUTES = re.compile(r"/gradio_api/(?:(?P<join>queue/join)|(?P<call>(?:call/(?P<v2>v2/)?|run/|api/)(?P<api>[^/]+))"
                         r"|(?P<component>component_server)|(?P<heartbeat>heartbeat/(?P<page>[^/]+))"
                         r"|(?P<deep_link>deep_link))/?$")
GATED = "lmdemo_gated"  # marks an event function the gate wraps
UNLIMITED = dict(concurrency_limit=None)  # every event starts at once: the gate admits it (see the module docstring)


@dataclass(frozen=True)
class Serving:
    """How the server shares itself: `python app.py`'s options for it."""

    concurrency: int = 2  # model computations at once (one per core), besides batched sampling
    queue_size: int = 32  # model computations that may wait for a turn
    decode: str = "batched"  # "batched": one decode loop per model; "per-request": each request decodes alone
    max_batch_rows: int = DEFAULT_MAX_ROWS
    proxy_hops: int = 0  # trusted proxies that append to X-Forwarded-For (lmdemo.web.clients)
    share: float = 0.25  # of every line, the most one address may hold
    session_ttl_s: float = 900.0  # what a page keeps between events is dropped this long after its last use

    @property
    def events(self) -> int:
        """Events that may be in the server at once: every model computation and every batched request."""
        return self.concurrency + self.queue_size + (self.max_batch_rows if self.decode == "batched" else 0)


class Gate:
    """The server's one admission and what the web events need of it: the asking address, the sampling decoder,
    and wrappers that hold an event's places."""

    def __init__(self, serving: Serving = Serving(), admission: Admission | None = None):
        self.serving = serving
        self.admission = admission or Admission()
        self.admission.add(Line(EVENTS_LINE, serving.events, serving.share, "requests running or waiting"))
        self.admission.add(Line(MODEL_LINE, serving.concurrency + serving.queue_size, serving.share,
                                "model computations running or waiting"))
        self.turns = Turns(serving.concurrency, per_client=int(serving.concurrency * serving.share),
                           usage=self.admission.usage)
        self.decoder: Decoder = (Batching(serving.max_batch_rows, admission=self.admission, share=serving.share)
                                 if serving.decode == "batched" else PerRequest())
        self.batched = isinstance(self.decoder, Batching)
        self.pages = PageStates(serving.session_ttl_s)  # Gradio's state of each page: bounded per address
        self.backoff = Backoff()  # the doors' refusals of an address that keeps asking come slower
        self.app: Any = None  # the Blocks, once built (`start`)

    def client(self, request: Any) -> str:
        """The address of `request` (a Gradio or Starlette request); none (a test calling a function) is "local"."""
        return request_address(request, self.serving.proxy_hops) if request is not None else "local"

    def start(self, app: Any) -> None:
        """`app` is built: the door can tell its gated events apart, and its pages are swept."""
        self.app = app
        self.pages.start(app)

    async def refuse(self, send: Any, client: str, status: int, message: str) -> None:
        """A door's refusal of `client`, answered after its `backoff` wait (none for an occasional one)."""
        await asyncio.sleep(self.backoff.delay(client))
        await answer(send, status, message)

    def at_the_door(self, client: str, page: str | None, fn_index: Any, call: bool = False) -> str | None:
        """Why a request that makes a page's state is turned away before Gradio makes anything for it (one line),
        or None: a new page (`call`: one the door named for an API call) past its address's share of pages, or a
        gated event from an address already holding its share of events (it would be refused anyway, after
        costing the server a queue entry and a worker)."""
        refusal = self.pages.arrive(page, client, call) if page else None
        function = getattr(self.app.fns.get(fn_index), "fn", None) if self.app is not None else None
        if refusal is None and getattr(function, GATED, False):
            refusal = self.admission.refusal(EVENTS_LINE, client)
        return refusal

    def api_function(self, api_name: str) -> int | None:
        """The index of the event that `api_name` names, if any."""
        functions = self.app.fns.items() if self.app is not None else ()
        return next((index for index, function in functions if function.api_name == api_name), None)

    def _asking(self) -> tuple[str, str | None]:
        """The address and page of the event being handled."""
        from gradio.context import LocalContext

        request = LocalContext.request.get(None)
        return self.client(request), getattr(request, "session_hash", None)

    def event(self, function: Callable) -> Callable:
        """`function` (plain or a generator, as Gradio events are) holding a place of the events line for its life."""
        return self._wrap(function, lambda client: self.admission.admit(EVENTS_LINE, client), None)

    def model_work(self, function: Callable) -> Callable:
        """`function` holding an event's place and a place of the model line, computing in a fair turn; a generator
        takes its turn between its updates only, so a slow reader never keeps one."""
        def places(client: str) -> AbstractContextManager:
            stack = ExitStack()
            stack.enter_context(self.admission.admit(EVENTS_LINE, client))
            stack.enter_context(self.admission.admit(MODEL_LINE, client))
            return stack
        return self._wrap(function, places, self.turns.turn)

    def sampling(self, function: Callable) -> Callable:
        """A sampling event: batched, only its event's place (the decode loop keeps its own lines); decoding
        alone, model work."""
        return self.event(function) if self.batched else self.model_work(function)

    def compute(self, client: str) -> AbstractContextManager:
        """A model computation inside a long event (the Train tab's samples): a fair turn when sampling decodes
        alone; batched, the decode loop's lines bound it."""
        return self.turns.turn(client) if not self.batched else nullcontext()

    def _wrap(self, function: Callable, places: Callable[[str], AbstractContextManager],
              turn: Callable[[str], AbstractContextManager] | None) -> Callable:
        """`function` inside `places(client)` for its life and inside `turn(client)` while it computes; a refusal
        is the page's one-line error."""
        def turn_of(client: str) -> AbstractContextManager:
            return turn(client) if turn else nullcontext()

        if inspect.isgeneratorfunction(function):
            @functools.wraps(function)
            def stream(*args: Any, **kwargs: Any) -> Iterator[Any]:
                client, page = self._asking()
                with _refused_as_error(), self.pages.event(page, client), places(client):
                    updates = function(*args, **kwargs)
                    try:
                        while True:
                            with turn_of(client):
                                try:
                                    update = next(updates)
                                except StopIteration:
                                    return
                            yield update
                    finally:
                        updates.close()  # a closed page: the request's own clean-up runs now, not when collected
            setattr(stream, GATED, True)
            return stream

        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            client, page = self._asking()
            with _refused_as_error(), self.pages.event(page, client), places(client), turn_of(client):
                return function(*args, **kwargs)
        setattr(call, GATED, True)
        return call


class PageDoor:
    """ASGI middleware in front of every Gradio route that makes a page's state (see lmdemo.web.page_states): a
    request the gate would refuse is answered 429 with its one line before Gradio makes anything for it
    (`Gate.at_the_door`). An API call that names no page (`/call/`, `/run/`) gets one of its own, forgotten soon
    after. Deep links, which would write a copy of a page's every value to disk at each ask, are not made here.
    Every other request passes."""

    def __init__(self, app: Any, gate: Gate):
        self.app, self.gate = app, gate

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        route = PAGE_ROUTES.search(scope["path"]) if scope["type"] == "http" else None
        kind = route and route.lastgroup
        if kind == "deep_link":
            await answer(send, 404, "this server does not make deep links: use the page's own links")
            return
        if kind == "heartbeat" and scope["method"] == "GET":
            await self._enter(scope, receive, send, route.group("page"), None)
            return
        if kind not in ("join", "call", "component") or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks, more = [], True  # a join carries its inputs: up to a 2,000,000-character text to train on
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            asked = json.loads(body)
            page, function = asked.get("session_hash"), asked.get("fn_index")
        except (ValueError, AttributeError):
            asked, page, function = None, None, None  # Gradio answers a malformed request itself
        if kind == "component" and not isinstance(page, str):
            await answer(send, 400, "a component's request names its page (session_hash) in a JSON body")
            return
        call = kind == "call" and isinstance(asked, dict) and not page
        if call:  # Gradio would make a page for it, named by no one: the door names it, and counts it
            page = f"call-{secrets.token_hex(8)}"
            if not route.group("v2"):  # a v2 call's body is its named inputs: Gradio names its page (swept alike)
                asked["session_hash"] = page
                body = json.dumps(asked).encode()
        if kind == "call":
            function = self.gate.api_function(route.group("api"))
        await self._enter(scope, _replay(body, receive), send, page if isinstance(page, str) else None, function,
                          call)

    async def _enter(self, scope: dict, receive: Any, send: Any, page: str | None, function: Any,
                     call: bool = False) -> None:
        from starlette.requests import Request

        client = self.gate.client(Request(scope))
        refusal = self.gate.at_the_door(client, page, function, call)
        if refusal:
            await self.gate.refuse(send, client, 429, refusal)
            return
        await self.app(scope, receive, send)


def _replay(body: bytes, receive: Any) -> Any:
    """`receive` for the app behind a door that read the request's `body`: the body first, then what comes."""
    replayed = False

    async def replay() -> dict:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay


async def answer(send: Any, status: int, message: str) -> None:
    """A plain-text answer: a door's refusal."""
    body = message.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


@contextmanager
def _refused_as_error() -> Iterator[None]:
    try:
        yield
    except Busy as error:
        raise render.refused(str(error), "Busy") from None
