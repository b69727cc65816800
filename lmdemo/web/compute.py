"""The server's model computations, bounded in one place whichever tab, endpoint or job asks.

Gradio's concurrency group bounds the events that run a model; the Train tab's samples are drawn inside a
long-lived stream of another group, so they take a slot here too, and every model event takes one as well.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


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
