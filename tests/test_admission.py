"""One fair-share rule for every kind of work (lmdemo.admission) and visitors' uploads (lmdemo.web.uploads)."""

from __future__ import annotations

import threading
import time

import pytest

from lmdemo.admission import Admission, Backoff, Busy, Line, Turns
from lmdemo.web.uploads import Uploads


def test_one_address_holds_at_most_its_share_and_hears_so_while_another_is_admitted():
    admission = Admission([Line("work", capacity=10, share=0.5, what="requests running")])
    mine = [admission.admit("work", "203.0.113.1") for _ in range(5)]
    with pytest.raises(Busy, match="you already have 5 requests running on this server .*wait for one to finish"):
        admission.admit("work", "203.0.113.1")
    others = [admission.admit("work", "203.0.113.2") for _ in range(5)]
    with pytest.raises(Busy, match="the server is busy"):
        admission.admit("work", "203.0.113.3")
    mine[0].release()
    mine[0].release()  # twice is once
    assert admission.holding("work", "203.0.113.1") == 4
    admission.admit("work", "203.0.113.3")
    for hold in mine[1:] + others:
        hold.release()
    assert admission.total("work") == 1 and admission.held["work"] == {"203.0.113.3": 1}, "nothing kept per address"


def test_the_share_is_a_fraction_so_a_class_behind_one_address_gets_several_and_a_tiny_line_one():
    assert Line("events", 96, 0.5, "requests").per_client == 48
    assert Line("training", 9, 0.0, "jobs").per_client == 1
    admission = Admission([Line("bytes", 100_000_000, 0.125, "uploads kept", scale=1e6, shown="MB")])
    admission.admit("bytes", "a", 10_000_000)
    with pytest.raises(Busy, match="you already have 10.0 MB of uploads kept .*at most 12.5 MB of uploads kept"):
        admission.admit("bytes", "a", 5_000_000)
    with pytest.raises(Busy, match="too large"):
        admission.admit("bytes", "b", 20_000_000)


def test_a_free_turn_goes_to_the_waiting_address_running_the_fewest_not_to_the_flood_that_came_first():
    turns = Turns(2)
    releases = {"flood": threading.Event(), "other": threading.Event()}
    order: list[str] = []

    def work(client: str, hold: bool) -> None:
        with turns.turn(client):
            order.append(client)
            if hold:
                releases[client].wait(10)

    busy = [threading.Thread(target=work, args=(client, True)) for client in ("flood", "other")]
    for thread in busy:
        thread.start()
    while turns.running.total() < 2:
        time.sleep(0.01)
    waiters = [threading.Thread(target=work, args=("flood", False)) for _ in range(3)]
    waiters.append(threading.Thread(target=work, args=("honest", False)))
    for count, thread in enumerate(waiters, 1):  # the flood's three come first
        thread.start()
        while len(turns.waiting) < count:
            time.sleep(0.005)
    releases["other"].set()  # one turn frees while the flood still runs one
    while "honest" not in order and len(order) < 3:
        time.sleep(0.005)
    assert order[2] == "honest", order
    releases["flood"].set()
    for thread in busy + waiters:
        thread.join(10)
    assert order.count("flood") == 4 and not turns.running and not turns.waiting


def test_a_wait_for_a_turn_is_bounded():
    turns = Turns(1, wait_limit_s=0.2)
    with turns.turn("a"):
        started = time.monotonic()
        with pytest.raises(Busy, match="the server is busy"):
            with turns.turn("b"):
                pass
        assert time.monotonic() - started < 2
    assert not turns.waiting and not turns.running


def test_uploads_are_each_visitors_own_capped_per_address_and_deleted_when_unused(tmp_path):
    admission = Admission()
    uploads = Uploads(admission, tmp_path, max_files=16, max_bytes=16_000, share=0.25, unused_s=0.2)

    def stored(name: str, content: bytes) -> str:  # what Gradio stores: a folder named by the content's hash
        folder = tmp_path / "sha-of-content"
        folder.mkdir(exist_ok=True)
        (folder / name).write_bytes(content)
        return str(folder / name)

    first = uploads.keep("a", [stored("notes.txt", b"same text")], uploads.admit("a", 100))[0]
    second = uploads.keep("b", [stored("notes.txt", b"same text")], uploads.admit("b", 100))[0]
    assert first != second and open(first).read() == open(second).read() == "same text", "never one path for two"
    for _ in range(3):
        uploads.keep("a", [stored("more.txt", b"x")], uploads.admit("a", 100))
    with pytest.raises(Busy, match="you already have 4 uploaded files kept"):
        uploads.admit("a", 100)
    uploads.admit("c", 100)  # another address is not refused
    assert uploads.claim("session-b", "b", second) and not uploads.claim("session-x", "a", second)
    assert not uploads.usable("session-a", "a", second), "a visitor's upload is never another's to train on"
    time.sleep(0.3)
    uploads.sweep()
    assert [p for p in tmp_path.joinpath("uploads").rglob("*") if p.is_file()] == [tmp_path / second], \
        "unclaimed uploads go after their unused time; a claimed one stays with its session"
    assert admission.holding("uploads", "a") == 0
    uploads.end_session("session-b")
    assert not [p for p in tmp_path.joinpath("uploads").rglob("*") if p.is_file()]
    assert admission.total("uploads") == 1 and admission.total("upload bytes") == 100  # only c's admit, never kept


def test_model_work_computes_one_at_a_time_in_fair_turns_and_a_flood_is_refused_past_its_share():
    from lmdemo.web.gate import Gate, Serving

    gate = Gate(Serving(concurrency=1, queue_size=6, decode="per-request", share=1.0))  # one address ("local")
    computing, overlaps, finished = [0], [], []
    lock = threading.Lock()

    def compute(name: str, seconds: float) -> None:
        with lock:
            computing[0] += 1
            overlaps.append(computing[0])
        time.sleep(seconds)
        with lock:
            computing[0] -= 1

    def long_stream():
        for _ in range(20):
            compute("long", 0.02)
            yield "update"

    def short() -> str:
        compute("short", 0.01)
        finished.append(time.monotonic())
        return "done"

    stream, call = gate.model_work(long_stream), gate.model_work(short)
    updates = []
    streamer = threading.Thread(target=lambda: updates.extend(stream()))
    streamer.start()
    while not overlaps:
        time.sleep(0.001)
    assert call() == "done"
    assert len(updates) < 20, "the short request waited for the whole stream instead of a turn between its updates"
    streamer.join(10)
    assert max(overlaps) == 1 and len(updates) == 20, "two computations ran at once"
    # the model line: 1 running + 6 waiting, at most half of it per address ("local" here): past that, refused
    gate = Gate(Serving(concurrency=1, queue_size=6, decode="per-request", share=0.5))
    call = gate.model_work(short)
    holds = [gate.admission.admit("model work", "local") for _ in range(3)]
    with pytest.raises(Exception, match="you already have 3 model computations running or waiting"):
        call()
    for hold in holds:
        hold.release()
    assert call() == "done"


def test_refusals_of_an_address_that_keeps_asking_come_slower_up_to_a_bound_and_the_memory_is_bounded():
    backoff = Backoff(free=3, step_s=0.1, most_s=0.5, window_s=0.3, addresses=4)
    assert [backoff.delay("198.51.100.1") for _ in range(10)] == pytest.approx([0, 0, 0, 0.1, 0.2, 0.3, 0.4, 0.5,
                                                                                0.5, 0.5])
    assert backoff.delay("203.0.113.1") == 0, "another address is answered at once"
    time.sleep(0.35)
    assert backoff.delay("198.51.100.1") == 0, "a new window starts afresh"
    for address in range(10):
        backoff.delay(f"192.0.2.{address}")
    assert len(backoff.refused) == 4
