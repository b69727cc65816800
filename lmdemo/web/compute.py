"""The server's model computations, bounded in one place whichever tab, endpoint or job asks.

Gradio's concurrency group bounds the events that run a model; the Train tab's samples are drawn inside a
long-lived stream of another group, so they take a slot here too, and every model event takes one as well.
Sampling requests (`Lane`) are the exception when they are batched: the model's decode loop (lmdemo.batching)
runs them all at once, bounded by its own line, so they take no slot.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from lmdemo.batching import Batching, Decoder

DECODE_QUEUE = "decode"  # the concurrency group of batched sampling requests


class ComputeSlots:
    """At most `slots` model computations at once."""

    def __init__(self, slots: int):
        self.semaphore = threading.BoundedSemaphore(slots)

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self.semaphore:
            yield

    def guard(self, function: Callable) -> Callable:
        """`function` (plain or a generator, as Gradio events are) run inside a slot; a generator holds it
        between its updates only, so a slow reader never keeps a slot."""
        if inspect.isgeneratorfunction(function):
            @functools.wraps(function)
            def stream(*args: Any, **kwargs: Any) -> Iterator[Any]:
                updates = function(*args, **kwargs)
                while True:
                    with self.semaphore:
                        try:
                            update = next(updates)
                        except StopIteration:
                            return
                    yield update
            return stream

        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            with self.semaphore:
                return function(*args, **kwargs)
        return call


@dataclass(frozen=True)
class Lane:
    """How the sampling requests run (Sample, Compare, the next-token bars, the Train tab's samples): through
    `decoder`, in the Gradio concurrency group `events`, their event functions wrapped by `guard` and any other
    call of theirs inside `compute`."""

    decoder: Decoder
    events: dict[str, Any]
    guard: Callable[[Callable], Callable]
    compute: Callable[[], AbstractContextManager]

    @classmethod
    def of(cls, decoder: Decoder, slots: ComputeSlots, heavy: dict[str, Any]) -> Lane:
        """Batched: a group of their own without a limit or a slot, as the loop's line bounds them (a request beyond
        it hears `Busy` at once rather than waiting in Gradio's queue); else the model group and its slots."""
        if isinstance(decoder, Batching):
            return cls(decoder, dict(concurrency_id=DECODE_QUEUE, concurrency_limit=None),
                       lambda function: function, nullcontext)
        return cls(decoder, heavy, slots.guard, slots.slot)
