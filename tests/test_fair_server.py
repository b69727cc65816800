"""A real `python app.py` behind a (pretend) proxy, one fair share per address: uploads, floods, page memory."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from servers import free_port, serving, wait_until
from test_app import ENV, ROOT


@pytest.fixture(scope="module")
def small_server(char_model, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A server with small lines (1 model turn, 2 waiting, 4 batch rows) so a flood is a few requests; sessions and
    unused uploads go after 6 s."""
    port, root = free_port(), tmp_path_factory.mktemp("train-root")
    url = f"http://127.0.0.1:{port}/"
    command = [sys.executable, "app.py", "--port", str(port), "--model", str(char_model), "--checkpoints",
               str(tmp_path_factory.mktemp("no-checkpoints")), "--proxy-hops", "1", "--concurrency", "1",
               "--queue-size", "2", "--max-batch-rows", "4", "--session-ttl", "6", "--train-root", str(root)]
    with serving(command, url, tmp_path_factory.mktemp("fair") / "app.log", cwd=ROOT, env=ENV):
        yield url, root


def upload(url: str, address: str, content: bytes, name: str = "notes.txt") -> httpx.Response:
    return httpx.post(url + "gradio_api/upload", files={"files": (name, content)},
                      headers={"X-Forwarded-For": address}, timeout=30)


def uploaded_files(root: Path) -> list[Path]:
    """Files in upload folders under `root`; os.walk passes over a folder the sweep deletes while it looks."""
    return [Path(folder) / name for folder, _, names in os.walk(root) if Path(folder).parent.name == "uploads"
            for name in names]


def test_uploads_are_capped_per_address_never_shared_and_gone_when_unused(small_server):
    url, root = small_server
    first = upload(url, "203.0.113.1", b"the same text\n" * 10)
    second = upload(url, "203.0.113.2", b"the same text\n" * 10)
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert first.json() != second.json(), "two visitors' uploads of one file share one path"
    for _ in range(7):  # 8 files per address (1/8 of 64)
        assert upload(url, "203.0.113.1", uuid.uuid4().bytes * 100).status_code == 200
    refused = upload(url, "203.0.113.1", b"one more")
    assert refused.status_code == 429 and "you already have 8 uploaded files kept" in refused.text
    assert upload(url, "203.0.113.3", b"another visitor").status_code == 200, "another address is not refused"
    assert len(uploaded_files(root)) == 10
    # nobody claimed them: gone after the unused time (the session time to live here), the caps with them
    wait_until(lambda: not uploaded_files(root), 30, lambda: f"uploads left: {uploaded_files(root)}")
    assert upload(url, "203.0.113.1", b"after the sweep").status_code == 200


def test_one_address_flooding_model_work_is_refused_past_its_share_while_another_is_served(small_server):
    from gradio_client import Client

    url, _ = small_server
    speech = "ROMEO:\n" + "What light through yonder window breaks? " * 60
    flood = [Client(url, verbose=False, headers={"X-Forwarded-For": "198.51.100.66"}) for _ in range(4)]
    jobs = [client.submit("shakespeare-tiny", speech, 0, 2, "c", "variable", 64, "", "", api_name="/inside")
            for client in flood]
    honest = Client(url, verbose=False, headers={"X-Forwarded-For": "203.0.113.9"})
    status = honest.predict("shakespeare-tiny", "ROMEO:\n", 0, 1, "h", "variable", 8, "", "", api_name="/inside")[0]
    assert status.startswith("**shakespeare-tiny**")
    outcomes = []
    for job in jobs:
        try:
            outcomes.append(job.result(timeout=120)[0][:20])
        except Exception as error:  # noqa: BLE001 - a refusal comes back as the page's error
            outcomes.append(str(error))
    # refused by the gate (its line in the error) or, once the flood holds its share, at the door before Gradio
    # queues it (HTTP 429 with the same line, which gradio_client reports by its status only)
    refused = [outcome for outcome in outcomes if "you already have" in outcome or "429 Too Many Requests" in outcome]
    assert refused and len(refused) < len(outcomes), outcomes  # half of 1 turn + 2 waiting: one at a time


def test_the_page_state_of_an_idle_session_goes(small_server):
    """Gradio keeps every session's page state until 10,000 newer ones; here one idle for the session time to
    live goes. Seen through the run it kept: the bars of a run need it."""
    from gradio_client import Client

    url, _ = small_server
    client = Client(url, verbose=False, headers={"X-Forwarded-For": "203.0.113.20"})
    client.predict("shakespeare-tiny", "ROMEO:\n", "1", 5, 0, 1.0, "1", "", False, api_name="/generate")
    assert client.predict(0, 1, 3, api_name="/next_tokens")  # the run is there
    time.sleep(6 + 1 + 1)  # idle is the condition itself: any request would refresh it (ttl, sweep, a margin)
    with pytest.raises(Exception, match="Generate some text first"):
        client.predict(0, 1, 3, api_name="/next_tokens")


def test_a_script_that_keeps_asking_past_its_share_is_answered_slower_and_others_at_once(small_server):
    """Refusals at the door cost the server's one event loop: an address refused again and again waits longer for
    each answer (up to 2 s), while another address's first refusal comes at once."""
    url, _ = small_server
    for _ in range(8):  # 8 files: the share of uploads
        assert upload(url, "198.51.100.90", b"x").status_code == 200
    waits = []
    for _ in range(12):
        started = time.monotonic()
        assert upload(url, "198.51.100.90", b"x").status_code == 429
        waits.append(time.monotonic() - started)
    assert waits[-1] > waits[0] + 0.4, waits
    for _ in range(8):
        assert upload(url, "198.51.100.91", b"y").status_code == 200
    started = time.monotonic()
    assert upload(url, "198.51.100.91", b"y").status_code == 429
    assert time.monotonic() - started < waits[-1] - 0.3


def server_rss_mb(url: str) -> float:
    """The resident memory of the `python app.py` serving `url` (found by its --port)."""
    port = url.rstrip("/").rsplit(":", 1)[1]
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            command = (status.parent / "cmdline").read_bytes().split(b"\0")
            if b"app.py" in command and port.encode() in command:
                return next(int(line.split()[1]) for line in status.read_text().splitlines()
                            if line.startswith("VmRSS")) / 1024
        except OSError:
            continue
    pytest.fail(f"no app.py process serves {url}")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's memory from /proc")
def test_every_route_that_makes_a_page_counts_it_and_pages_are_small(small_server):
    """Gradio makes a page's state for a queue join, an API call (`/run/`, `/call/`: a page of its own when it names
    none), a component's server request and a page's heartbeat: the door counts each against its address's share
    of pages (32), so a script cannot hold thousands (~286 KB each, in Gradio's form: 1,000 `/run/` calls from one
    address raised a server by 384 MB); another address is served meanwhile. Deep links, which write a copy of a
    page's values to disk at each ask, are not made. Pages are small: 200 addresses' pages raise the server by a
    few MB (Gradio's own pages are 286 KB each: tests/test_memory.py)."""
    url, _ = small_server
    config = httpx.get(url + "config", timeout=30).json()
    seed = next(event["id"] for event in config["dependencies"] if event.get("api_name") == "random_seed")

    def headers(address: str) -> dict:
        return {"X-Forwarded-For": address}

    def new_page(address: str, route: str) -> int:
        page = uuid.uuid4().hex[:12]
        if route == "heartbeat":
            with httpx.stream("GET", url + f"gradio_api/heartbeat/{page}", headers=headers(address),
                              timeout=30) as beat:
                return beat.status_code
        asked = {"join": ("gradio_api/queue/join", {"data": [], "fn_index": seed, "session_hash": page}),
                 "run": ("gradio_api/run/random_seed", {"data": [], "session_hash": page}),
                 "call": ("gradio_api/call/random_seed", {"data": []}),
                 "component": ("gradio_api/component_server",
                               {"session_hash": page, "component_id": seed, "fn_name": "ls", "data": None})}
        path, body = asked[route]
        return httpx.post(url + path, json=body, headers=headers(address), timeout=30).status_code

    routes = ["join", "run", "call", "component", "heartbeat"]
    answers = [new_page("203.0.113.60", routes[number % len(routes)]) for number in range(36)]
    # served (a component's server request for a function the button lacks: Gradio's own 404), then refused
    assert answers[:32] == [404 if number % len(routes) == 3 else 200 for number in range(32)], answers
    assert answers[32:] == [429] * 4, answers
    assert new_page("203.0.113.61", "run") == 200, "another address is refused"
    deep = httpx.get(url + "gradio_api/deep_link", params={"session_hash": "x"}, headers=headers("203.0.113.61"))
    assert deep.status_code == 404 and "deep links" in deep.text

    before = server_rss_mb(url)
    for number in range(200):
        assert new_page(f"198.51.100.{number + 1}", "run") == 200
    grown = server_rss_mb(url) - before
    assert grown < 20, f"200 pages raised the server by {grown:.0f} MB"
