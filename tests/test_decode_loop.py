"""The decode loop's own safety (lmdemo.batching): a reader that leaves mid-step moves no rows, a loop that fails
tells every request it holds and starts afresh, nothing waits unbounded, and one address gets only its share of
the reads, the waiting line and the batch's rows."""

from __future__ import annotations

import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conftest import ROOT
from servers import wait_until

from lmdemo import admission, batching
from lmdemo.admission import Admission, Line
from lmdemo.batching import READS, WAITING, Batching, DecodeLoop, PerRequest, generate
from lmdemo.generation import Generator, Sampling

pytestmark = pytest.mark.usefixtures("one_thread")

HANG = 20  # seconds after which a request that has not ended is taken to hang


@pytest.fixture(scope="module")
def shipped() -> Generator:
    """The shipped character model (`checkpoints/shakespeare-char`), whose texts the review quoted."""
    from lmdemo import load_model

    return Generator(load_model(str(ROOT / "checkpoints" / "shakespeare-char")))


def within(seconds: float, function: Callable[[], Any]) -> Any:
    """`function()`'s result (or its exception), failing the test if it runs longer than `seconds`: a hang."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = function()
        except BaseException as error:  # noqa: BLE001 - handed to the test's thread
            box["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"the request was still waiting after {seconds} s", pytrace=False)
    if "error" in box:
        raise box["error"]
    return box["value"]


def texts(samples) -> list[list[int]]:
    return [sample.ids for sample in samples]


def running(loop: DecodeLoop, reading, seed: int, client: str = "", temperatures=(1.0,)) -> Iterator:
    """A request that would run for minutes, already in the batch."""
    stream = loop.stream(reading, Sampling(temperatures=temperatures, max_new_tokens=10**7, seed=seed), client=client)
    within(HANG, lambda: next(stream))
    return stream


def test_busy_is_the_admissions():
    assert batching.Busy is admission.Busy and issubclass(batching.LoopFailed, admission.Busy)


# -- one reading of `cancelled` per step -------------------------------------------------------------------------
A_SEED, B_SEED, C_SEED = 11, 12, 13


def test_a_reader_leaving_between_two_reads_of_the_step_moves_no_rows(shipped, monkeypatch):
    """The review's interleaving, forced: A's reader leaves, and B's reader leaves right after the loop first read
    B's `cancelled` in that step. A loop that reads it twice drops B but keeps B's row, and C goes on from B's
    state (C wrote B's continuation, 'WKING RICHA', where C alone writes 'Why, then I'). Read once, B stays for
    that step and leaves at the next: every request writes what it writes alone."""
    made: dict[int, batching._Stream] = {}

    class Watched(batching._Stream):
        def __init__(self, *args: Any, **kwargs: Any):
            self.reads_since_a_left = 0
            super().__init__(*args, **kwargs)
            made[self.sampling.seed] = self

        @property
        def cancelled(self) -> bool:
            a = made.get(A_SEED)
            if self.sampling.seed == B_SEED and a is not None and a._cancelled:
                self.reads_since_a_left += 1  # B's reader leaves between the loop's first and second look
                return self._cancelled or self.reads_since_a_left > 1
            return self._cancelled

        @cancelled.setter
        def cancelled(self, value: bool) -> None:
            self._cancelled = value

    monkeypatch.setattr(batching, "_Stream", Watched)
    reading = shipped.reading(shipped.prompt("KING RICHARD II:\n").ids)

    def sampling(seed: int, tokens: int) -> Sampling:
        return Sampling(temperatures=(0.8,), max_new_tokens=tokens, seed=seed)

    loop = DecodeLoop(shipped)
    a, b = loop.stream(reading, sampling(A_SEED, 10**7)), loop.stream(reading, sampling(B_SEED, 10**7))
    within(HANG, lambda: next(a))
    within(HANG, lambda: next(b))
    c_started, c_result = threading.Event(), {}

    def run_c() -> None:
        try:
            for samples in loop.stream(reading, sampling(C_SEED, 400)):
                c_started.set()
            c_result["texts"] = texts(samples)
        except Exception as error:  # noqa: BLE001 - the test says what C heard
            c_result["error"] = repr(error)

    c = threading.Thread(target=run_c, daemon=True)
    c.start()
    assert c_started.wait(HANG), "C never joined the batch"
    a.close()  # A leaves at the next step, while B and C are in the batch
    c.join(60)
    b.close()
    assert c_result == {"texts": texts(shipped.generate(reading, sampling(C_SEED, 400)))}, \
        "C did not write what it writes alone"
    for seed in (A_SEED, B_SEED):  # what A and B wrote before they left is what they write alone
        written = made[seed].decoding.samples[0].ids
        assert written == shipped.generate(reading, sampling(seed, len(written)))[0].ids
    wait_until(lambda: loop.batch.active == [], HANG, "a request that left stayed in the batch")
    assert loop.batch.state is None and loop.batch.ids is None


# -- a failing loop tells its requests and starts afresh ------------------------------------------------------
def test_a_failure_in_taking_requests_tells_the_waiting_one_and_the_next_starts_afresh(char_generator):
    loop = DecodeLoop(char_generator)
    reading = char_generator.reading(char_generator.prompt("ROMEO:\n").ids)
    sampling = Sampling(max_new_tokens=8, seed=3)

    def broken() -> list:
        raise RuntimeError("injected: taking the waiting requests failed")

    loop._take = broken
    with pytest.raises(RuntimeError, match="decode loop failed: try again") as refused:
        within(HANG, lambda: list(loop.stream(reading, sampling)))
    assert isinstance(refused.value, batching.Busy) and "injected" in str(refused.value.__cause__)
    assert loop.thread is None and not loop.waiting
    del loop._take
    again = within(HANG, lambda: list(loop.stream(reading, sampling))[-1])
    assert texts(again) == texts(char_generator.generate(reading, sampling))


def test_a_failure_in_a_step_tells_every_request_in_the_batch_and_waiting(char_generator, monkeypatch):
    loop = DecodeLoop(char_generator, max_rows=1)
    reading = char_generator.reading(char_generator.prompt("ROMEO:\n").ids)
    first = running(loop, reading, seed=1)
    heard: dict[str, str] = {}

    def wait() -> None:
        try:
            list(loop.stream(reading, Sampling(max_new_tokens=5)))
        except RuntimeError as error:
            heard["waiting"] = str(error)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    wait_until(lambda: len(loop.waiting) == 1, HANG, "the second request never queued")
    step = char_generator.next_state

    def failing(ids, state):
        raise RuntimeError("injected: the LSTM step failed")

    monkeypatch.setattr(char_generator, "next_state", failing)
    with pytest.raises(RuntimeError, match="decode loop failed: try again"):
        within(HANG, lambda: list(first))
    waiter.join(HANG)
    assert heard == {"waiting": "this model's decode loop failed: try again in a moment"}
    monkeypatch.setattr(char_generator, "next_state", step)
    sampling = Sampling(max_new_tokens=6, seed=5)
    assert texts(within(HANG, lambda: list(loop.stream(reading, sampling))[-1])) == \
        texts(char_generator.generate(reading, sampling))


def test_a_vanished_model_fails_the_loop_instead_of_leaving_it_for_ever(char_generator):
    loop = DecodeLoop(char_generator)
    reading = char_generator.reading(char_generator.prompt("ROMEO:\n").ids)
    first = running(loop, reading, seed=1)
    loop.generator_ref = lambda: None  # what the loop's thread sees once nobody serves the model
    with pytest.raises(RuntimeError, match="decode loop failed"):
        within(HANG, lambda: list(first))
    assert loop.thread is None
    loop.generator_ref = weakref.ref(char_generator)
    sampling = Sampling(max_new_tokens=4, seed=2)
    assert texts(within(HANG, lambda: list(loop.stream(reading, sampling))[-1])) == \
        texts(char_generator.generate(reading, sampling))


def test_a_request_whose_loop_thread_is_gone_ends_instead_of_waiting(char_generator):
    """Should the loop's thread end without a word, a request waiting for it hears so within `WATCH_SECONDS`."""
    loop = DecodeLoop(char_generator)
    reading = char_generator.reading(char_generator.prompt("ROMEO:\n").ids)
    loop._run = lambda: None  # a thread that ends at once, telling nobody
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="decode loop failed"):
        within(HANG, lambda: list(loop.stream(reading, Sampling(max_new_tokens=3))))
    assert time.monotonic() - start < batching.WATCH_SECONDS + 5
    del loop._run
    assert len(within(HANG, lambda: list(loop.stream(reading, Sampling(max_new_tokens=3))))[-1][0].ids) == 3


def test_a_request_waits_for_a_row_at_most_the_wait_limit(char_generator):
    loop = DecodeLoop(char_generator, max_rows=1, wait_limit_s=0.5)
    reading = char_generator.reading(char_generator.prompt("ROMEO:\n").ids)
    first = running(loop, reading, seed=1)
    with pytest.raises(batching.Busy, match=r"no row free for \d+ s"):
        within(HANG, lambda: list(loop.stream(reading, Sampling(max_new_tokens=3))))
    assert not loop.waiting and loop.admission.total(WAITING) == 0
    first.close()


# -- fair shares ------------------------------------------------------------------------------------------------
def test_one_address_flooding_reads_is_refused_past_its_share_while_another_is_admitted(char_generator, monkeypatch):
    loop = DecodeLoop(char_generator, max_rows=4)  # reads: 4 on the server, 2 from one address
    flood, other = "198.51.100.7", "198.51.100.8"
    gate, started = threading.Event(), []
    read = char_generator.reading

    def slow(ids, after=None):
        started.append(ids[0])
        assert gate.wait(HANG)
        return read(ids, after)

    monkeypatch.setattr(char_generator, "reading", slow)
    done: dict[int, int] = {}

    def reader(first_id: int, client: str) -> threading.Thread:
        thread = threading.Thread(target=lambda: done.update({first_id: len(loop.read([first_id, 2], client=client)
                                                                             .scores)}), daemon=True)
        thread.start()
        return thread

    readers = [reader(1, flood)]
    wait_until(lambda: started == [1], HANG, "the first read never started")
    readers.append(reader(3, flood))  # waits for its turn: reads are one at a time per model
    wait_until(lambda: loop.admission.holding(READS, flood) == 2, HANG, "the second read never queued")
    with pytest.raises(batching.Busy, match=r"you already have 2 texts waiting to be read on this server "
                                            r"\(at most 2 texts waiting to be read from one address\)"):
        loop.read([5, 2], client=flood)
    readers.append(reader(4, other))
    wait_until(lambda: loop.admission.holding(READS, other) == 1, HANG, "the other address was not admitted")
    assert started == [1], "a read ran beside another"
    gate.set()
    for thread in readers:
        thread.join(HANG)
    assert done == {1: 2, 3: 2, 4: 2} and sorted(started) == [1, 3, 4] and loop.admission.total(READS) == 0


def test_one_address_holds_at_most_its_share_of_the_rows_and_the_waiting_line(char_generator):
    loop = DecodeLoop(char_generator, max_rows=4)  # one address: 2 rows in the batch, 2 requests waiting
    reading = char_generator.reading(char_generator.prompt("JULIET:\n").ids)
    flood, other = "198.51.100.7", "198.51.100.8"
    rows_seen: list[Counter] = []
    take = loop._take

    def recording() -> list:
        """Each step's rows per address, as the loop's thread sees them (its batch and those joining it)."""
        joining = take()
        rows: Counter = Counter()
        for request in [*loop.batch.active, *joining]:
            rows[request.client] += len(request.rows)
        rows_seen.append(rows)
        return joining

    loop._take = recording
    hogs = [running(loop, reading, seed, flood) for seed in (1, 2)]  # 2 rows: its share
    finished: list[str] = []

    def waiter(client: str, seed: int) -> threading.Thread:
        def wait() -> None:
            list(loop.stream(reading, Sampling(max_new_tokens=5, seed=seed), client=client))
            finished.append(client)
        thread = threading.Thread(target=wait, daemon=True)
        thread.start()
        return thread

    waiters = [waiter(flood, 3), waiter(flood, 4)]
    wait_until(lambda: len(loop.waiting) == 2, HANG, "the flood's requests never queued")
    with pytest.raises(batching.Busy, match=r"you already have 2 requests waiting for a model on this server "
                                            r"\(at most 2 requests waiting for a model from one address\)"):
        next(loop.stream(reading, Sampling(max_new_tokens=5), client=flood))
    waiters.append(waiter(other, 5))  # admitted, and joins at once: two rows are free
    wait_until(lambda: finished == [other], HANG, "the other address's request did not run")
    assert len(loop.waiting) == 2, "the flood's requests took rows beyond its share"
    hogs.pop().close()  # one of its rows frees: its waiting requests go, one at a time
    for thread in waiters:
        thread.join(HANG)
    hogs.pop().close()
    assert finished == [other, flood, flood]
    assert max(rows[flood] for rows in rows_seen) == 2 and max(rows[other] for rows in rows_seen) == 1


def test_a_batching_puts_every_model_under_the_servers_one_admission(char_generator, shipped, monkeypatch):
    servers = Admission([Line(READS, 3, 1.0, "texts being read")])  # the server's own line stands
    decoder = Batching(8, admission=servers)
    loops = [decoder.loop(char_generator), decoder.loop(shipped)]
    assert loops[0] is not loops[1] and all(loop.admission is servers for loop in loops)
    assert servers.lines[READS].capacity == 3 and servers.lines[WAITING].per_client == 4
    ids, sampling = char_generator.prompt("ROMEO:\n").ids, Sampling(max_new_tokens=5, seed=9)
    client, held = "198.51.100.9", []
    alone = texts(generate(PerRequest(), char_generator, ids, sampling, client=client))  # which ignores `client`
    read = char_generator.reading
    monkeypatch.setattr(char_generator, "reading",
                        lambda ids, after=None: held.append(servers.holding(READS, client)) or read(ids, after))
    assert texts(generate(decoder, char_generator, ids, sampling, client=client)) == alone
    assert held == [1] and servers.total(READS) == 0 and servers.total(WAITING) == 0


def test_an_address_with_many_rows_moves_at_the_pace_of_a_fair_share_and_the_others_every_step(char_generator):
    """A step costs more with every row (a large vocabulary's prediction is per row): an address holding 16 rows
    moves on a quarter of the steps (4 rows a step on average) while another's 2 rows move on every step, and each
    request still gets the tokens it gets alone."""
    loop = DecodeLoop(char_generator, max_rows=64)
    loop.usage.floor_s = float("inf")  # the rows' rule alone: the cores' share (below) would also slow the 16 rows
    reading = char_generator.reading(char_generator.prompt("JULIET:\n").ids)
    many, few = "198.51.100.7", "198.51.100.8"
    hog = running(loop, reading, 1, many, temperatures=(1.0,) * 16)
    settings = Sampling(temperatures=(0.8, 1.0), max_new_tokens=40, seed=5)
    started = hog_step = None

    def steps_of(request_client: str) -> int:
        return next(request.step for request in loop.batch.active if request.client == request_client)

    samples = None
    for samples in loop.stream(reading, settings, client=few):
        if started is None:
            started, hog_step = steps_of(few), steps_of(many)
    moved = steps_of(many) - hog_step
    assert samples is not None and len(samples[0].ids) == 40 and 7 <= moved <= 13, moved  # 39 steps of the few
    hog.close()
    alone = PerRequest().stream(char_generator, reading, settings)
    assert texts(samples) == texts(list(alone)[-1])


# -- one fair share of the cores across models and kinds of work ---------------------------------------------------
def test_an_address_over_its_share_of_the_cores_pauses_its_loop_while_another_works_and_goes_on_after(char_generator):
    """Lines bound what an address holds, not how hard its work keeps a core busy: a long generation alone in one
    model's loop would take a core from an address working elsewhere (another model's loop, an Inside view). Its
    loop pauses while that address is at work and it has used more than its share, and goes on after."""
    server = Admission()
    loop = DecodeLoop(char_generator, admission=server)
    reading = char_generator.reading(char_generator.prompt("ROMEO:\n").ids)
    hog = running(loop, reading, 1, "198.51.100.7")

    def hog_steps() -> int:
        return next(request.step for request in loop.batch.active if request.client == "198.51.100.7")

    wait_until(lambda: hog_steps() > 20, HANG, "the long generation moving")
    assert server.usage.yielding() == frozenset(), "alone at work, nobody yields"
    server.usage.charge({"198.51.100.7": 5.0})  # as after seconds of a 1,000-token, 8-row generation
    with server.usage.at_work("198.51.100.8"):
        assert server.usage.yielding() == {"198.51.100.7"}
        time.sleep(0.1)  # a step under way finishes
        paused_at = hog_steps()
        time.sleep(0.5)
        assert hog_steps() - paused_at <= 1, "its loop left the core to the other address"
        settings = Sampling(temperatures=(0.5, 1.0), max_new_tokens=30, seed=3)
        joined = list(loop.stream(reading, settings, client="198.51.100.8"))[-1]  # into the paused batch
        assert texts(joined) == texts(list(PerRequest().stream(char_generator, reading, settings))[-1])
        assert hog_steps() - paused_at <= 2, "it moved its rows alone while the hog's waited"
    resumed_at = hog_steps()
    wait_until(lambda: hog_steps() > resumed_at + 20, HANG, "its loop going on once alone")
    hog.close()
    wait_until(lambda: not loop.batch.active, HANG, "the closed request leaving the batch")


def test_the_cores_time_is_charged_per_address_and_a_heavy_user_yields_only_beside_others():
    usage = admission.Usage(half_life_s=0.5, slack=2.0, floor_s=0.2)
    usage.charge({"a": 2.0, "b": 0.1})
    with usage.at_work("a"):
        assert usage.yielding() == frozenset(), "alone: the cores are never kept idle for nobody"
        with usage.at_work("b"):
            assert usage.yielding() == {"a"}
            with usage.at_work("c"), usage.at_work("d"):  # more at work: a fair share is smaller
                assert usage.yielding() == {"a"}
            time.sleep(0.5)  # half of a's use is forgotten: 1.0 against b's 0.05
            assert usage.yielding() == {"a"}
            time.sleep(1.5)  # 0.125 left
            assert usage.yielding() == frozenset(), "below the floor, nobody yields"
    assert not usage.working, "nothing kept of who was at work"
    started = time.thread_time()
    with usage.charged("e"):
        sum(i * i for i in range(300_000))
    assert 0 < usage.used["e"][0] <= time.thread_time() - started + 1e-6
    small = admission.Usage(addresses=3)
    small.charge({name: 1.0 for name in "vwxyz"})
    assert list(small.used) == ["x", "y", "z"], "at most `addresses` remembered"


def test_a_free_turn_waits_for_an_address_over_its_share_while_another_works():
    turns = admission.Turns(2)
    turns.usage.charge({"flood": 5.0})
    took = threading.Event()

    def flood() -> None:
        with turns.turn("flood"):
            took.set()

    with turns.usage.at_work("honest"):
        thread = threading.Thread(target=flood)
        thread.start()
        assert not took.wait(0.4), "both places were free, yet the flood waited while the honest address worked"
        with turns.turn("honest"):
            pass
    assert took.wait(2), "once alone, it takes its turn"
    thread.join(5)
    assert turns.usage.used["honest"][0] >= 0 and not turns.running and not turns.waiting
