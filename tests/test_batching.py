"""The decode loop (lmdemo.batching): batched requests get what they get alone, leave when cancelled, and a full
line answers "busy"; then a real `python app.py` that batches, over the API and in a browser."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from browser import chromium_page
from servers import app_serving, wait_until

from lmdemo.batching import READS, Batching, Busy, DecodeLoop, PerRequest, generate
from lmdemo.generation import Dial, Generator, Sampling, SettingsError

ROOT = Path(__file__).resolve().parents[1]
ENV = {key: value for key, value in os.environ.items() if key != "LMDEMO_MODELS"} | {
    "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")


def batch_sizes(generator: Generator, monkeypatch) -> list[int]:
    """Record the rows of every step the loop takes on `generator`."""
    sizes: list[int] = []
    step = generator.next_state
    monkeypatch.setattr(generator, "next_state", lambda ids, state: sizes.append(ids.numel()) or step(ids, state))
    return sizes


def requests(generator: Generator, count: int, seed: int) -> list[tuple[list[int], Sampling]]:
    """Requests that differ in everything a request can ask for."""
    draw = random.Random(seed)
    prompts = ["ROMEO:\n", "First Citizen:\nBefore we proceed", "the company said", ""]
    made = []
    for _ in range(count):
        temperatures = tuple(draw.choice([0, 0.5, 0.8, 1.0, 1.3]) for _ in range(draw.randint(1, 4)))
        sampling = Sampling(temperatures=temperatures, max_new_tokens=draw.randint(1, 120), seed=draw.randrange(1000),
                            top_k=draw.choice([0, 5]), top_p=draw.choice([1.0, 0.9]),
                            stop=draw.choice([None, "e", "\n\n", "the"]), avoid_unk=draw.random() < 0.3,
                            dial=draw.choice([None, None, Dial(1, 3, "h", 0.9), Dial(2, 0, "c", -2.0)]))
        made.append((generator.prompt(draw.choice(prompts)).ids, sampling))
    return made


def run_together(decoder: Batching, generator: Generator, made: list, cancel_after: dict[int, int]) -> dict:
    """Every request in a thread of its own; request i's reader goes away after `cancel_after[i]` updates."""
    results: dict[int, list[list[int]] | str] = {}

    def run(i: int) -> None:
        ids, sampling = made[i]
        if i not in cancel_after:
            results[i] = [s.ids for s in generate(decoder, generator, ids, sampling)]
            return
        stream = decoder.stream(generator, decoder.reading(generator, ids), sampling)
        for _ in range(cancel_after[i]):
            next(stream)
        stream.close()
        results[i] = "cancelled"

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(made))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.parametrize("kind", ["char", "word"])
def test_batched_requests_get_the_tokens_they_get_alone(kind, char_generator, word_generator, monkeypatch):
    """Different temperatures, lengths, top-k/p, stop strings, dials, prompts and seeds, some cancelled midway:
    each finished request has the tokens it has alone, though it shared steps with the others."""
    generator = char_generator if kind == "char" else word_generator
    made = requests(generator, 24, seed=1 if kind == "char" else 2)
    alone = [[s.ids for s in generate(PerRequest(), generator, ids, sampling)] for ids, sampling in made]
    sizes = batch_sizes(generator, monkeypatch)
    cancel_after = {3: 1, 10: 2, 17: 1}
    together = run_together(Batching(64), generator, made, cancel_after)
    assert max(sizes) >= 10, f"the requests never shared a step: {max(sizes)} rows at most"
    assert {i: together[i] for i in cancel_after} == {i: "cancelled" for i in cancel_after}
    assert [together[i] for i in range(len(made)) if i not in cancel_after] == \
        [alone[i] for i in range(len(made)) if i not in cancel_after]


def test_the_stream_yields_growing_samples_and_ends_with_the_finished_ones(char_generator):
    reading = char_generator.reading(char_generator.prompt("ROMEO:\n").ids)
    sampling = Sampling(temperatures=(0.5, 1.0), max_new_tokens=60, seed=4)
    updates = [[len(s.ids) for s in samples] for samples in Batching().stream(char_generator, reading, sampling)]
    assert updates == sorted(updates) and updates[-1] == [60, 60]
    first_and_last = Batching().stream(char_generator, reading, sampling, every=float("inf"))
    shown = [[len(s.ids) for s in samples] for samples in first_and_last]  # the first: what the loop had by then
    assert len(shown) <= 2 and shown[0][0] >= 1 and shown[-1] == [60, 60], shown


def long_request(loop: DecodeLoop, generator: Generator, temperatures: tuple[float, ...] = (1.0,)) -> Iterator:
    """A request that would run for minutes, already streaming."""
    reading = generator.reading(generator.prompt("ROMEO:\n").ids)
    stream = loop.stream(reading, Sampling(temperatures=temperatures, max_new_tokens=10**7, seed=1))
    next(stream)
    return stream


def test_a_cancelled_request_frees_its_rows_for_the_next(char_generator):
    loop = DecodeLoop(char_generator, max_rows=2, share=1.0)  # one request may take both rows
    first = long_request(loop, char_generator, (0.5, 1.0))
    reading = char_generator.reading(char_generator.prompt("JULIET:\n").ids)
    finished = threading.Event()

    def waiting() -> None:
        for _ in loop.stream(reading, Sampling(temperatures=(1.0,), max_new_tokens=20)):
            pass
        finished.set()

    thread = threading.Thread(target=waiting, daemon=True)
    thread.start()
    wait_until(lambda: len(loop.waiting) == 1, 30, "the second request never queued")
    assert not finished.wait(0.5), "the second request ran although the first held every row"
    first.close()
    assert finished.wait(60), "the cancelled request's rows were never freed"
    thread.join()
    wait_until(lambda: loop.batch.active == [], 30, "the finished request stayed in the batch")  # it leaves after its end is told


def test_a_full_line_answers_busy_and_too_many_rows_are_refused(char_generator):
    loop = DecodeLoop(char_generator, max_rows=1)
    running = long_request(loop, char_generator)
    reading = char_generator.reading(char_generator.prompt("JULIET:\n").ids)
    queued = loop.stream(reading, Sampling(max_new_tokens=5))
    waiter = threading.Thread(target=lambda: list(queued), daemon=True)
    waiter.start()
    wait_until(lambda: len(loop.waiting) == 1, 30, "the second request never queued")
    with pytest.raises(Busy, match=r"the server is busy \(1 requests waiting for a model\): try again in a moment"):
        next(loop.stream(reading, Sampling(max_new_tokens=5)))
    with pytest.raises(SettingsError, match="at most 1 temperatures at once"):
        next(loop.stream(reading, Sampling(temperatures=(0.5, 1.0))))
    long_read = threading.Thread(target=lambda: loop.read([1] * 10_000), daemon=True)  # texts have a line too
    long_read.start()
    wait_until(lambda: loop.admission.total(READS) == 1, 30, "the long read never started")
    with pytest.raises(Busy, match=r"the server is busy \(1 texts waiting to be read\)"):
        loop.read([1, 2, 3])
    running.close()
    waiter.join(60)
    long_read.join(60)
    assert not waiter.is_alive() and loop.read([]).state[0].shape[1] == 1


def test_the_line_is_fair_between_addresses(char_generator):
    """A freed row goes first to the client with the fewest rows in the batch, even one that came later; an address
    at its share of the rows (half of them) waits for its own rows to free."""
    loop = DecodeLoop(char_generator, max_rows=8)  # one address: at most 4 rows
    reading = char_generator.reading(char_generator.prompt("JULIET:\n").ids)
    greedy, polite, brief, late = "203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4"

    def running(client: str, temperatures: tuple[float, ...], seed: int) -> Iterator:
        stream = loop.stream(reading, Sampling(temperatures=temperatures, max_new_tokens=10**7, seed=seed),
                             client=client)
        next(stream)
        return stream

    hog = running(greedy, (0.5, 0.8, 1.0), 1)  # 3 rows
    other = running(polite, (0.5, 0.8, 1.0, 1.3), 2)  # 4: its share
    filler = running(brief, (1.0,), 3)  # the 8th: the batch is full
    short = Sampling(max_new_tokens=5, seed=3)

    finished: list[str] = []

    def waiter(client: str) -> threading.Thread:
        def wait() -> None:
            list(loop.stream(reading, short, client=client))
            finished.append(client)
        thread = threading.Thread(target=wait, daemon=True)
        thread.start()
        return thread

    waiters = [waiter(greedy), waiter(greedy)]
    wait_until(lambda: len(loop.waiting) == 2, 30, "the greedy address's requests never queued")
    waiters.append(waiter(late))
    wait_until(lambda: len(loop.waiting) == 3, 30, "the late request never queued")
    filler.close()  # one row frees: the late address (no rows) takes it before the greedy one's earlier requests
    for thread in waiters:  # then the greedy address's, one at a time: with 3 rows running it is at 4, its share
        thread.join(60)
    hog.close()
    other.close()
    assert finished == [late, greedy, greedy] and not loop.waiting


def test_the_loop_stops_when_idle_and_starts_again(char_generator):
    loop = DecodeLoop(char_generator, idle_seconds=0.2)
    reading = char_generator.reading(char_generator.prompt("ROMEO:\n").ids)
    sampling = Sampling(max_new_tokens=10, seed=3)
    first = list(loop.stream(reading, sampling))[-1]
    wait_until(lambda: loop.thread is None, 30, "the idle loop never stopped")
    again = list(loop.stream(reading, sampling))[-1]
    assert [s.ids for s in again] == [s.ids for s in first] and len(first[0].ids) == 10


# -- a real server that batches ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def narrow(char_model, tmp_path_factory) -> Iterator[str]:
    """A `python app.py --max-batch-rows 1`: one sample per step, one request waiting; requests may be long."""
    with app_serving([char_model], tmp_path_factory, "--max-batch-rows", "1", "--max-new-tokens", "1000000",
                     name="narrow") as url:
        yield url


def generate_job(url: str, max_new: int, temperatures: str = "1"):
    from gradio_client import Client

    return Client(url, verbose=False).submit("shakespeare-tiny", "ROMEO:\n", temperatures, max_new, 0, 1.0, "1", "",
                                             False, api_name="/generate")


def test_the_server_answers_busy_when_full_and_a_closed_request_frees_its_row(narrow):
    from gradio_client.exceptions import AppError

    running = generate_job(narrow, 1_000_000)
    wait_until(running.outputs, 120, "the long generation never streamed")
    queued = generate_job(narrow, 20)
    refused = generate_job(narrow, 20)
    with pytest.raises(AppError, match="busy|from one address"):
        refused.result(timeout=120)
    assert not queued.done(), "the queued request ran although the long one held the only row"
    running.cancel()  # what a closed page or Stop does: its row leaves the batch at the next step
    assert queued.result(timeout=120)[2].startswith("**Done**")


@pytest.mark.browser
def test_the_page_streams_tokens_as_they_come(narrow):
    """The samples grow on the page while the status says it is still generating."""
    with chromium_page(narrow) as page:
        page.get_by_label("Temperatures", exact=False).fill("1")
        box = page.locator("input[type=number][aria-label*='Max new tokens']")
        box.fill("100000")
        box.press("Enter")
        page.get_by_role("button", name="Generate").click()
        tokens = page.locator("#samples .lm-col .tok")
        wait_until(lambda: tokens.count() > 0, 120, "no token reached the page")
        seen = tokens.count()
        wait_until(lambda: tokens.count() > seen + 50, 120, "the page stopped growing")
        assert not page.get_by_text("Done").count(), "the request ended: the test needs a longer one"
        page.get_by_role("button", name="Stop").click()
        assert not page.elsewhere, f"the page fetched from other hosts: {page.elsewhere}"
