"""Starting real servers for tests: a free loopback port, a process polled until it answers, and waiting for
events by polling them."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition: Callable[[], Any], timeout: float, what: str | Callable[[], str],
               every: float = 0.05) -> Any:
    """Poll `condition` until it returns something true and return that: tests wait for events, never for a
    fixed time. Fails saying `what` did not happen (a callable is asked then, e.g. for a log) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what() if callable(what) else what} (waited {timeout:.0f} s)", pytrace=False)
        time.sleep(every)
    return result


@contextmanager
def serving(command: list[str], health_url: str, log: Path, timeout: float = 120, **popen) -> Iterator[None]:
    """Run `command` until `health_url` answers 200 (failing with its log otherwise); stop it on exit."""
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, **popen)

        def answers() -> bool:
            if process.poll() is not None:
                pytest.fail(f"{command[1]} exited with {process.returncode}: {log.read_text()}")
            try:
                with urllib.request.urlopen(health_url, timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        try:
            wait_until(answers, timeout, lambda: f"{command[1]} did not answer: {log.read_text()}", every=0.3)
            yield
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
