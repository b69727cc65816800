"""Starting real servers for tests: a free loopback port, a process polled until it answers, and waiting for
events by polling them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
# a server's environment: offline, no telemetry, and only the models a test names
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1",
       "PYTHONUNBUFFERED": "1"}
ENV.pop("LMDEMO_MODELS", None)


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


@contextmanager
def app_serving(models: Sequence[Any], tmp_path_factory: Any, *options: str, name: str = "app") -> Iterator[str]:
    """`python app.py` on `models` alone (never the shipped checkpoints), with `options`, on a free port until the
    test module ends; yields its URL. Its log is `app.log` in a folder named `name`."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    command = [sys.executable, "app.py", "--port", str(port), *(part for model in models for part in ("--model",
                                                                                                       str(model))),
               "--checkpoints", str(tmp_path_factory.mktemp("no-checkpoints")), *options]
    with serving(command, url, tmp_path_factory.mktemp(name) / "app.log", cwd=ROOT, env=ENV):
        yield url
