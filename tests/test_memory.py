"""Memory per visitor is bounded by construction: what a page keeps between events (a finished run in its
`gr.State`) holds no view into a large matrix and nothing whose size grows with the vocabulary times the prompt,
and the Inside tab's cache lets an ended session's model go."""

from __future__ import annotations

import ctypes.util
import gc
import os
import subprocess
import sys
import time
import types
import weakref
from pathlib import Path

import gradio as gr
import pytest
import torch

from conftest import DATA, ROOT
from lmdemo.batching import PerRequest
from lmdemo.checkpoint import TrainedModel, save_model
from lmdemo.config import Config
from lmdemo.generation import Generator, Sampling
from lmdemo.model import LSTMLanguageModel
from lmdemo.tokenizer import Tokenizer
from lmdemo.web import inside as inside_module
from lmdemo.web.demo import Demo
from lmdemo.web.inside import Inside
from lmdemo.web.registry import Models

pytestmark = pytest.mark.usefixtures("one_thread")

# a finished run may grow with its prompt only by its per-token Python records (the prompt's ids and pieces, each
# token's score for the colouring): at most this many bytes a prompt token, against 145 kB a token (V floats) before
PER_TOKEN_BYTES = 300  # measured: about 200 (a 1,000-token review's run holds 202 kB of Python objects)
MB = 10**6


def kept_bytes(kept: object) -> tuple[int, int]:
    """What `kept` holds: (the bytes of every tensor storage reachable from it, a view counting its whole storage
    and a storage shared by several tensors once; the bytes of the other Python objects reachable from it). Types,
    modules and functions are not what an object keeps; a model or a `Generator` is, and fails the measure."""
    storages: dict[int, int] = {}
    seen: set[int] = set()
    python = 0
    stack = [kept]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            storages[storage.data_ptr() or id(item)] = storage.nbytes()
            continue
        if isinstance(item, (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)):
            continue
        if isinstance(item, (Generator, torch.nn.Module, Tokenizer)):
            raise AssertionError(f"a kept object holds a {type(item).__name__}")
        python += sys.getsizeof(item)
        stack.extend(gc.get_referents(item))
    return sum(storages.values()), python


def review(words: int) -> str:
    """An IMDB test review of about `words` words (the first one between `words` and 1.2 x `words`)."""
    with open(DATA / "imdb" / "test.txt", encoding="utf-8") as lines:
        return next(line.strip() for line in lines if words <= len(line.split()) <= 1.2 * words)


@pytest.fixture(scope="module")
def imdb_word() -> Models:
    """The shipped word model: 36,358 words, where a [tokens, V] matrix of a long prompt is 145 MB."""
    return Models({"imdb-word": str(ROOT / "checkpoints" / "imdb-word")})


def test_a_reading_of_a_long_prompt_keeps_no_view_of_its_whole_distribution(imdb_word):
    """Before: `Reading.next_log_probs` was `log_probs[-1]`, a view pinning the [n+1, V] matrix: 145.6 MB kept for
    a 1,000-token prompt. Now the [V] vector it needs (145 kB) and the state."""
    generator = imdb_word.generator("imdb-word")
    assert generator.tokenizer.vocab_size == 36_358
    prompt = generator.prompt(review(1000), 1000)
    assert len(prompt.ids) == 1000
    reading = PerRequest().reading(generator, prompt.ids)
    tensors, _ = kept_bytes(reading)
    assert reading.next_log_probs.shape == (36_358,)
    assert tensors < 1 * MB, f"a reading keeps {tensors / MB:.1f} MB of tensors"
    # reading on from it (the bars inside a sample) keeps no more either
    later = generator.reading(prompt.ids[:50], after=reading)
    assert kept_bytes(later)[0] < 1 * MB


def test_a_reading_scores_a_long_review_without_a_matrix_of_every_word(imdb_word, monkeypatch):
    """A reading needs each read token's probability and the distribution after the last: the adaptive softmax
    gives the first from the head and the tokens' own clusters, so every word is scored at one position only (the
    last), where before each of the 1,001 positions made [n, V] matrices of 145 MB apiece; the same probabilities
    as the full matrix (`Generator.read`)."""
    generator = imdb_word.generator("imdb-word")
    prompt = generator.prompt(review(1000), 1000)
    model = generator.trained.model
    scored_rows = []
    every_word = model.logits
    monkeypatch.setattr(model, "logits", lambda features: scored_rows.append(features[..., 0].numel()) or
                        every_word(features))
    reading = generator.reading(prompt.ids)
    assert scored_rows == [1]
    later = generator.reading(prompt.ids[:300], after=reading)
    assert scored_rows == [1, 1]
    log_probs, _ = generator.read(prompt.ids + prompt.ids[:300])
    ids = torch.tensor(prompt.ids + prompt.ids[:300])
    expected = log_probs[torch.arange(len(ids)), ids].exp()
    got = torch.tensor([score.probability for score in reading.scores + later.scores])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(later.next_log_probs, log_probs[-1], atol=1e-5, rtol=1e-5)


def test_a_finished_run_keeps_the_same_size_for_a_short_and_a_long_prompt(imdb_word):
    """The run a page keeps (the last `Progress` of `Demo.generate`, one new token) holds the same tensor storage
    for a 10-token and a 1,000-token prompt, and grows only by its per-token records (ids, pieces, scores)."""
    demo = Demo(imdb_word, decoder=PerRequest())
    measured = {}
    for words in (6, 1000):
        progress = None
        for progress in demo.generate("imdb-word", review(words), Sampling((1.0,), max_new_tokens=1, seed=1)):
            pass
        measured[len(progress.prompt.ids)] = kept_bytes(progress)
        del progress
    (short, (short_tensors, short_python)), (long, (long_tensors, long_python)) = sorted(measured.items())
    assert short <= 12 and long == 1000
    assert long_tensors == short_tensors < 1 * MB, measured
    assert long_python - short_python <= PER_TOKEN_BYTES * (long - short), measured


# -- the Inside tab's cache ---------------------------------------------------------------------------------------
TEXT = "ROMEO:\nWhat say you?\n\nJULIET:\nNothing.\n"


def _random_model(seed: int) -> TrainedModel:
    torch.manual_seed(seed)
    tokenizer = Tokenizer.build([TEXT], "char")
    config = Config(level="char", emb_size=6, hidden_size=10, num_layers=2, dropout=0.0, vocab_size=tokenizer.vocab_size)
    return TrainedModel(LSTMLanguageModel(config).eval(), tokenizer, "random", Path("."), None)


def test_an_ended_sessions_model_goes_after_an_inside_read(tmp_path, monkeypatch):
    """Before: a module-wide `lru_cache` keyed by the generator kept an ended session's model (and its decode loop)
    until 8 newer reads pushed it out (the generator stayed alive: referred to by the cache's dict and key tuple).
    Now the cache holds its models weakly: the generator goes, and its cached text with it."""
    served = _random_model(1)
    models = Models({"served": str(save_model(tmp_path / "served", served.model, served.tokenizer))})
    inside = Inside(models)
    reads = []
    real_read = inside_module.read_internals
    monkeypatch.setattr(inside_module, "read_internals", lambda *args: reads.append(args[1]) or real_read(*args))

    private = Generator(_random_model(2))
    models.add_private("mine", private, owner=None)
    text = inside.text(None, "mine", TEXT, 0)
    first = inside.units(text, 1, "h", "unit", 4)
    again = inside.units(text, 2, "c", "active", 4)  # the same text, another layer: no second read
    assert len(reads) == 1 and first.tokens == again.tokens
    kept_bytes(first)  # what the page is given holds no model (kept_bytes fails on one)

    gone = weakref.ref(private)
    models.remove_private("mine")
    del private, first, again, text
    gc.collect()
    assert gone() is None, [type(r).__name__ for r in gc.get_referrers(gone())]
    assert len(inside.internals) == 0  # its cached text went with it


def test_an_inside_read_is_cached_per_model_and_text(tmp_path, monkeypatch):
    served = _random_model(1)
    models = Models({"served": str(save_model(tmp_path / "served", served.model, served.tokenizer))})
    inside = Inside(models)
    reads = []
    real_read = inside_module.read_internals
    monkeypatch.setattr(inside_module, "read_internals", lambda *args: reads.append(tuple(args[1])) or real_read(*args))
    text = inside.text(None, "served", TEXT, 0)
    other = inside.text(None, "served", TEXT[:20], 0)
    for shown in (text, other, text, other):
        inside.units(shown, 1, "h", "variable", 3)
    assert reads == [tuple(text.ids), tuple(other.ids)]
    for texts in inside.internals.texts.values():
        for internals in texts.values():
            kept_bytes(internals)  # the cached internals hold no model (kept_bytes fails on one)
    # a second model reading the same text has its own entry
    models.add_private("mine", Generator(_random_model(2)), owner=None)
    inside.units(inside.text(None, "mine", TEXT, 0), 1, "h", "unit", 3)
    assert len(reads) == 3 and len(inside.internals) == 3
    # at most INTERNALS_CACHE texts, all models together: the least recently used goes first
    for end in range(5, 5 + inside_module.INTERNALS_CACHE - 2):
        inside.units(inside.text(None, "served", TEXT[:end], 0), 1, "h", "unit", 3)
    assert len(inside.internals) == inside_module.INTERNALS_CACHE
    inside.units(other, 1, "h", "unit", 3)  # used again: now the most recent
    inside.units(inside.text(None, "served", TEXT[:2], 0), 1, "h", "unit", 3)  # pushes out the oldest, `text`
    assert len(inside.internals) == inside_module.INTERNALS_CACHE
    before = len(reads)
    inside.units(other, 1, "h", "unit", 3)
    assert len(reads) == before
    inside.units(text, 1, "h", "unit", 3)
    assert reads[-1] == tuple(text.ids) and len(reads) == before + 1


RSS_MB = """
def rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024
"""

FREED_BLOCKS = RSS_MB + """
import resource, sys, torch
from lmdemo.web.allocator import release_free_memory, tune_malloc
if sys.argv[1] == "tuned":
    tune_malloc()
torch.set_num_threads(1)
kept = [torch.ones(64) + 1]  # torch's first allocations
def faulted_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt * resource.getpagesize() / 2**20
lstm = torch.nn.LSTM(128, 512, 2, batch_first=True)  # shakespeare-char's: oneDNN copies its 1-4 MB matrices
prompt = torch.randn(1, 60, 128)
with torch.no_grad():
    lstm(prompt)  # the first reading: oneDNN's kernels and caches
    start = rss_mb()
    for _ in range(2):
        lstm(prompt)  # prompts' readings
    faulted = faulted_mb()
    lstm(prompt)  # the next reading
refaulted = faulted_mb() - faulted
before = rss_mb()
for size in (32, 24, 16, 12):  # MB, as a long prompt's matrices, a large batch's logits; small blocks kept between
    block = torch.ones(size * 2**18)
    kept.append(torch.ones(64))
    del block
large = rss_mb() - before
release_free_memory()  # the page sweep's, when the server is quiet
print(refaulted, large, rss_mb() - start)
"""


@pytest.mark.parametrize("tuned", [True, False])
def test_glibcs_malloc_reuses_a_readings_blocks_and_hands_large_ones_back_at_once(tuned):
    """`tune_malloc` (app.py calls it first; it matters where jemalloc is not installed): blocks under 5 MB (oneDNN's copies of an LSTM's weights at every
    reading, 1-4 MB on the shipped models) are reused from the heap, not faulted in afresh at each reading; a freed
    block of 5 MB or more goes back to the system at once, where glibc's default would raise its threshold for
    mapping blocks apart and keep them; and the quiet server's trim hands the rest back (the untuned run shows the
    test tells the settings apart)."""
    refaulted, large, after_trim = map(float, subprocess.run(
        [sys.executable, "-c", FREED_BLOCKS, "tuned" if tuned else "default"], cwd=ROOT, env=GLIBC_ENV,
        capture_output=True, text=True, check=True).stdout.split())
    if tuned:
        assert refaulted < 1, f"a reading faulted {refaulted:.1f} MB in afresh"
        assert large < 1, f"{large:.1f} MB of freed large blocks stayed resident"
        assert after_trim < 2, f"{after_trim:.1f} MB stayed resident after the trim"
    else:
        assert large >= 1, f"glibc's default kept only {large:.1f} MB: this test would not notice a lost setting"


def test_a_quiet_server_hands_back_what_its_work_freed_at_every_sweep(monkeypatch):
    """Pages' memory goes back when they are forgotten; what their work frees later (a decode loop's end, an Inside
    read's cache) goes back at the next sweep that finds no event running, not while one runs."""
    from lmdemo.web import page_states

    trims = []
    monkeypatch.setattr(page_states, "release_free_memory", lambda: trims.append(time.monotonic()))
    pages = page_states.PageStates(ttl_s=60)
    assert pages.arrive("page", "203.0.113.1") is None
    with pages.event("page", "203.0.113.1"):
        pages.sweep()
        assert trims == []
    pages.sweep()
    assert len(trims) == 1



def test_a_quiet_sweep_after_forgotten_pages_frees_their_reference_cycles(monkeypatch):
    """What a forgotten page held in a reference cycle (a run and its callbacks) goes at the next sweep that finds
    no event running, not at Python's next full collection, which a busy server may not reach for hours."""
    from lmdemo.web import page_states

    class Held:
        pass

    monkeypatch.setattr(page_states, "release_free_memory", lambda: None)
    pages = page_states.PageStates(ttl_s=0.01)
    assert pages.arrive("page", "203.0.113.1") is None
    cycle = Held()
    cycle.itself = cycle
    alive = weakref.ref(cycle)
    gc.disable()
    try:
        del cycle
        with pages.event("other", "203.0.113.2"):
            time.sleep(0.02)
            pages.sweep()  # forgets the idle page, but another page's event runs: no collection now
            assert alive() is not None
        pages.sweep()
        assert alive() is None
    finally:
        gc.enable()

SCATTERED_SURVIVORS = RSS_MB + """
import sys
from lmdemo.web.allocator import release_free_memory, restart_with_returning_allocator
restart_with_returning_allocator()
before = rss_mb()
objects = [float(number) for number in range(2_000_000)]  # ~64 MB of small objects, as a busy phase makes
survivors = objects[::4096]  # one in 4,096 outlives it (a cache entry, a log line): one every 128 kB
del objects
release_free_memory()
jemalloc = any("jemalloc" in line for line in open("/proc/self/maps"))
print(rss_mb() - before, "jemalloc" if jemalloc else "other")
"""
JEMALLOC_INSTALLED = ctypes.util.find_library("jemalloc") is not None
# this test run's own allocators stay out of the subprocesses that choose theirs
GLIBC_ENV = {key: value for key, value in os.environ.items() if key not in ("PYTHONMALLOC", "LD_PRELOAD", "MALLOC_CONF")}


@pytest.mark.parametrize("chosen", [None, "malloc", "pymalloc"])
def test_the_server_keeps_small_objects_where_freed_pages_go_back(chosen):
    """`restart_with_returning_allocator` (app.py's first call) restarts the interpreter with its small objects in
    malloc, jemalloc's where it is installed (CI installs it): the freed pages between the few small objects that
    outlive a busy phase go back; Python's own arenas stay while one object in them lives. An allocator the
    environment chose stands (glibc's malloc as it is where jemalloc is not installed; pymalloc shows the test tells
    the allocators apart)."""
    env = dict(GLIBC_ENV)
    if chosen:
        env["PYTHONMALLOC"] = chosen
    kept, allocator = subprocess.run([sys.executable, "-c", SCATTERED_SURVIVORS], cwd=ROOT, env=env,
                                     capture_output=True, text=True, check=True).stdout.split()
    assert allocator == ("jemalloc" if chosen is None and JEMALLOC_INSTALLED else "other")
    if chosen == "pymalloc":
        assert float(kept) >= 32, f"Python's allocator kept only {kept} MB: this test would not notice a lost restart"
    else:
        assert float(kept) < 16, f"{float(kept):.0f} MB stayed resident for 2 MB of survivors ({allocator})"


@pytest.mark.parametrize("restart", [True, False])
def test_a_server_on_glibcs_malloc_says_how_to_run_on_jemalloc(restart):
    """app.py prints `without_jemalloc()`'s line at its start: where jemalloc runs nothing, on glibc what to do."""
    script = ("from lmdemo.web.allocator import restart_with_returning_allocator, without_jemalloc\n"
              + ("restart_with_returning_allocator()\n" if restart else "") + "print(without_jemalloc())")
    env = dict(GLIBC_ENV) if restart else {**GLIBC_ENV, "PYTHONMALLOC": "malloc"}
    line = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True).stdout.strip()
    if restart and JEMALLOC_INSTALLED:
        assert line == "None"
    else:
        assert "apt-get install libjemalloc2" in line and "PYTHONMALLOC" in line


FREED_AT_ONCE = RSS_MB + """
import sys
from lmdemo.web.allocator import release_free_memory, restart_with_returning_allocator
restart_with_returning_allocator()
before = rss_mb()
blocks = [bytearray(64 * 1024) for _ in range(4096)]  # 256 MB in blocks of 64 kB, freed as a busy minute ends
del blocks
if sys.argv[1] == "release":
    release_free_memory()
print(rss_mb() - before)
"""


@pytest.mark.skipif(not JEMALLOC_INSTALLED, reason="jemalloc is not installed (Debian: apt-get install libjemalloc2)")
@pytest.mark.parametrize("release", [True, False])
def test_the_page_sweeps_release_hands_jemallocs_free_pages_back(release):
    """jemalloc keeps freed pages for reuse (the server's settings: no timer of its own); the page sweep
    (`release_free_memory`) hands them back, so what the memory reads then is what is kept. Without the release
    they are still there (the test tells the two apart)."""
    after = float(subprocess.run([sys.executable, "-c", FREED_AT_ONCE, "release" if release else "keep"], cwd=ROOT,
                                 env=GLIBC_ENV, capture_output=True, text=True, check=True).stdout)
    if release:
        assert after < 16, f"{after:.0f} MB stayed resident after the release"
    else:
        assert after >= 32, f"jemalloc kept only {after:.0f} MB: this test would not notice a lost release"


def test_a_page_keeps_what_its_events_set_and_no_copy_of_every_components_config(char_model):
    """Gradio's `SessionState` copies every component's config at a page's first request (~286 KB, ~41 ms for the
    whole app) for deep links, which this server does not make; `PageState` keeps a config's shallow copy and what
    events set. Its attributes are Gradio's own, so a Gradio that changed its state would fail here first."""
    import tracemalloc
    from copy import copy

    from gradio.state_holder import SessionState

    from lmdemo.web.page import build_app
    from lmdemo.web.page_states import PageState

    app = build_app(Models({"char": str(char_model)}))

    def size_of_ten(make) -> float:
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            pages = [make(app) for _ in range(10)]
            return (tracemalloc.get_traced_memory()[0] - before) / 10 / 1024
        finally:
            tracemalloc.stop()
            del pages

    gradio_kb, lean_kb = size_of_ten(SessionState), size_of_ten(PageState)
    assert lean_kb < 40 and lean_kb * 5 < gradio_kb, f"a page keeps {lean_kb:.0f} KB (Gradio's: {gradio_kb:.0f} KB)"
    assert set(vars(PageState(app))) == set(vars(SessionState(app)))
    page = PageState(app)
    state = next(block for block in app.blocks.values() if isinstance(block, gr.State))
    textbox = next(block for block in app.blocks.values() if isinstance(block, gr.Textbox))
    updated = copy(textbox)
    page[state._id] = {"run": 1}
    page[textbox._id] = updated
    page._update_config(textbox._id)
    page._update_value_in_config(textbox._id, "typed")
    assert page[state._id] == {"run": 1} and page._state_ttl[state._id][0] == state.time_to_live
    assert page[textbox._id] is updated and app.blocks[textbox._id] is textbox
    assert list(page.components) == [], "a deep link's copy was kept"
