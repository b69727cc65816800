"""The web demo: its request functions, then a real `python app.py` driven by gradio_client and Chromium."""

from __future__ import annotations

import ctypes.util
import html
import importlib.util
import json
import math
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import plotly.graph_objects as go
import pytest
import torch

from browser import chromium_page
from servers import ENV, ROOT, free_port, serving, wait_until

from lmdemo import load_model
from lmdemo.checkpoint import read_examples, save_model
from lmdemo.generation import SettingsError, TokenScore
from lmdemo.metrics import read_metrics
from lmdemo.web import render
from lmdemo.web.demo import Demo, NextTokens
from lmdemo.web.forms import (FIELD_CHARS, Limits, parse_number, parse_seed, parse_temperatures, read_prompt,
                              read_sampling)
from lmdemo.web.inside import Inside
from lmdemo.web.registry import Models, NoModelsError, discover_models

PROMPT_LIMIT = 40
GENERATE_DEFAULTS = dict(prompt_text="ROMEO:\n", temperature_text="0.2, 0.5, 0.8, 1.0, 1.3", max_new=40, k=0, p=1.0,
                         seed_text="7", stop_at="", no_unk=False)
SPEECH = "ROMEO:\nWhat say you?\n\nJULIET:\n"  # 30 characters; JULIET: is positions 22-28
READING = dict(name="shakespeare-tiny", prompt_text=SPEECH, text=0, layer=2, quantity="h")  # the inside tab's text


# -- the request layer, in-process ----------------------------------------------------------------
def test_discover_models_names_folders_and_keeps_order(tmp_path, char_model, word_model):
    shipped = tmp_path / "checkpoints"
    (shipped / "b-model").mkdir(parents=True)
    (shipped / "b-model" / "config.json").write_text("{}")
    (shipped / "no-config").mkdir()
    found = discover_models(shipped, [str(char_model)], environ={"LMDEMO_MODELS": f" {word_model}, user/repo "})
    assert list(found) == ["b-model", "shakespeare-tiny", "ptb-tiny", "user/repo"]
    with pytest.raises(NoModelsError, match="--model"):
        discover_models(tmp_path / "missing", [], environ={})


def test_form_values_are_parsed_or_refused_with_a_reason():
    assert parse_temperatures("0.2, 0.5 1;2") == [0.2, 0.5, 1.0, 2.0]
    assert parse_seed("18446744073709551615") == 2**64 - 1
    assert parse_seed(12.0) == 12
    for bad, message in (("", "at least one"), ("0.5, warm", "must be a number"), ("-1", "0 \\(greedy\\) or positive"),
                         ("1 " * 9, "at most 8")):
        with pytest.raises(SettingsError, match=message):
            parse_temperatures(bad)
    for bad in ("-1", str(2**64), "abc", 1.5, None):
        with pytest.raises(SettingsError, match="seed"):
            parse_seed(bad)


def test_oversized_form_values_are_refused_before_they_are_parsed():
    limits = Limits(max_prompt_chars=50, max_prompt_tokens=20)
    assert read_prompt("x" * 50, limits) == "x" * 50 and read_prompt(None, limits) == ""
    with pytest.raises(SettingsError, match="the prompt has 51 characters; at most 50 are read"):
        read_prompt("x" * 51, limits)
    with pytest.raises(SettingsError, match="the prompt must be text"):
        read_prompt(["x"], limits)
    long = "1" * (FIELD_CHARS + 1)
    for parse, message in ((lambda: parse_number(long, "top-p"), "top-p is"), (lambda: parse_seed(long), "seed is"),
                           (lambda: parse_temperatures(long), "temperatures is"),
                           (lambda: read_sampling(limits, "1", 5, 0, 1, 0, stop=long), "the stop text is")):
        with pytest.raises(SettingsError, match=f"{message} {FIELD_CHARS + 1} characters long; at most {FIELD_CHARS}"):
            parse()


def test_demo_streams_progress_and_explains_tokens(char_model):
    models, limits = Models({"char": str(char_model)}), Limits(max_new_tokens=50)
    demo = Demo(models, limits)
    info = models.describe("char")
    assert info.level == "char" and info.test_bpc and info.validation_ppl
    sampling = read_sampling(limits, "0, 1", "30", "0", "1", "3")
    finished = []
    for progress in demo.generate("char", "", sampling, every=0.0):
        finished.append(progress.done)
    final = progress
    assert finished == [False] * 30 + [True]
    assert "empty prompt" in final.prompt.notes[0]
    assert [len(s.ids) for s in final.samples] == [30, 30]
    explained = demo.next_tokens(final, 1, 4, k=5)
    # the bars are the model's own distribution after the text, read in one plain forward pass
    generator, sample = models.generator("char"), final.samples[1]
    with torch.no_grad():
        logits, _ = generator.trained.model(torch.tensor([[generator.start_id, *sample.ids[:4]]]))
    expected = logits[0, -1].log_softmax(-1).exp()
    top = expected.topk(5)
    assert [s.id for s in explained.scores] == top.indices.tolist()
    torch.testing.assert_close(torch.tensor([s.probability for s in explained.scores]), top.values,
                               atol=1e-5, rtol=1e-4)
    assert explained.chosen.probability == pytest.approx(float(expected[sample.ids[4]]), rel=1e-3)
    assert explained.context == generator.tokenizer.decode(sample.ids[:4]) and explained.temperature == 1.0
    with pytest.raises(SettingsError, match="max new tokens"):
        read_sampling(limits, "1", 51, 0, 1, 0)


def test_bits_per_character_of_a_char_model_by_hand(char_model, tmp_path):
    """A char model whose decoder ignores its input and gives 'O' probability 1/2, each of the V - 1 other tokens
    1 / (2 (V - 1)): by hand, a text costs 1 bit per 'O' and log2(2 (V - 1)) bits per other character, and a
    greedy sample is all 'O's at 1 bit per character. The card shows the logged validation bits per character."""
    trained = load_model(char_model)
    vocab, letter_o = trained.config.vocab_size, trained.tokenizer.encode("O")[0]
    with torch.no_grad():
        trained.model.decoder.weight.zero_()
        trained.model.decoder.bias.zero_()
        trained.model.decoder.bias[letter_o] = math.log(vocab - 1)
    folder = save_model(tmp_path / "constant", trained.model, trained.tokenizer, char_model / "metrics.jsonl")
    models = Models({"constant": str(folder)})
    for progress in Demo(models).generate("constant", SPEECH, read_sampling(Limits(), "0", 40, 0, 1, 2)):
        pass
    assert SPEECH.count("O") == 2 and len(SPEECH) == 30
    prompt_bits = 2 * 1 + 28 * math.log2(2 * (vocab - 1))
    assert f"30 characters, {prompt_bits / 30:.2f} bits/char (perplexity " in render.prompt_html(progress)
    assert progress.samples[0].text == "O" * 40 and "40 characters · 1.00 bits/char" in render.samples_html(progress)
    assert "lower bound" not in render.prompt_html(progress) + render.samples_html(progress)
    best = read_metrics(char_model / "metrics.jsonl").best("val_loss")
    card = render.model_markdown(models.describe("constant"))
    assert f"validation **{best['val_bpc']:.3f}** bits/char" in card and "lower bound" not in card


def test_the_app_opens_on_the_preferred_models(char_model, word_model, bpe_model):
    """imdb-bpe, else imdb-word, else the first model; Compare on imdb-word against imdb-bpe when both are served."""
    bpe = str(bpe_model)
    assert Models({"a": str(char_model), "b": str(word_model)}).compare_pair == ("a", "b")
    fallback = Models({"shakespeare-char": str(char_model), "imdb-word": str(word_model)})
    assert fallback.default == "imdb-word" and fallback.compare_pair == ("imdb-word", "shakespeare-char")
    models = Models({"shakespeare-char": str(char_model), "imdb-word": str(word_model), "imdb-bpe": bpe})
    assert models.default == "imdb-bpe" and models.compare_pair == ("imdb-word", "imdb-bpe")
    examples = {name: models.examples(name) for name in ("imdb-bpe", "imdb-word")}  # openings of their own texts
    assert examples["imdb-bpe"] == read_examples(bpe_model) and examples["imdb-bpe"][0][0].isupper()
    spec = importlib.util.spec_from_file_location("lmdemo_app", ROOT / "app.py")
    app_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app_module)
    page = app_module.build_app(models)
    shown = {block.label: block.value for block in page.blocks.values()
             if type(block).__name__ in ("Dropdown", "Textbox") and block.label}
    assert (shown["Model"], shown["Model A"], shown["Model B"]) == ("imdb-bpe", "imdb-word", "imdb-bpe")
    assert shown["Prompt"] in (examples["imdb-bpe"][0], examples["imdb-word"][0])
    boxes = [block for block in page.blocks.values() if type(block).__name__ == "Checkbox" and "<unk>" in block.label]
    assert [box.interactive for box in boxes] == [False], "the default model (bpe) has no <unk> to avoid"


def test_a_bpe_model_runs_through_every_tab(char_model, bpe_model):
    """Sampling, next-token bars, surprisal colouring, Inside and Compare on a byte-level BPE model (no <unk>)."""
    models = Models({"bpe": str(bpe_model), "char": str(char_model)})
    demo, limits = Demo(models), Limits()
    sampling = read_sampling(limits, "0.5, 1", 30, 0, 1, 4, avoid_unk=True)
    for progress in demo.generate("bpe", "This movie was", sampling):
        pass
    tokenizer = models.generator("bpe").tokenizer
    for sample in progress.samples:
        assert sample.text == "".join(sample.pieces) and sample.pieces == tokenizer.pieces(sample.ids,
                                                                                        context=progress.prompt.ids)
    assert sample_texts(render.samples_html(progress))[1] == "This movie was" + progress.samples[1].text
    assert "subword tokens, " in render.prompt_html(progress) and "bits/char" in render.prompt_html(progress)
    assert "lower bound" not in render.prompt_html(progress)
    bars = render.next_token_figure(demo.next_tokens(progress, 1, 3, 5))
    assert len(bars["data"][0]["y"]) == 5
    assert go.Figure(bars).to_plotly_json()["data"][0]["y"] == bars["data"][0]["y"]  # plain data Plotly validates
    card = render.model_markdown(models.describe("bpe"))
    assert "LSTM over subword tokens" in card and "bits/char" in card and "lower bound" not in card
    inside = Inside(models, limits)
    view = inside.units(inside.text(progress, "bpe", "This movie was", 2), 2, "c", "variable", 4)
    assert view.tokens == tokenizer.tokens([*progress.prompt.ids, *progress.samples[1].ids])
    shown = html.unescape(re.sub(r"<sub>\d+</sub>|<[^>]+>", "", render.positions_html(view)))
    assert shown.replace("·", " ") == "This movie was" + progress.samples[1].text
    render.unit_heatmap(view)
    comparison = demo.compare(["char", "bpe"], "This movie was", sampling)
    table = render.compare_markdown(comparison)
    assert re.search(r"\| prompt \| \d+\.\d{3} \| \d+\.\d{3} \|", table) and "subword tokens" in table


def test_one_generate_reads_the_prompt_through_the_model_once(char_model, monkeypatch):
    models = Models({"char": str(char_model)})
    demo = Demo(models)
    model = models.generator("char").trained.model
    calls = []

    def counted(read):
        def reading(ids, *args, **kwargs):
            calls.append(ids.size(1))
            return read(ids, *args, **kwargs)
        return reading

    for way in ("forward", "features"):  # every way a text goes through the model
        monkeypatch.setattr(model, way, counted(getattr(model, way)))
    prompt = "ROMEO:\nWhat say you?\n"
    for progress in demo.generate("char", prompt, read_sampling(demo.limits, "0.5, 1", 20, 0, 1, 1)):
        pass
    demo.next_tokens(progress, 0, 0)  # the bars the page draws when a generation ends
    assert calls == [1 + len(prompt)], "the prompt is read once: its surprisal, the sampling and the bars share it"
    calls.clear()
    demo.next_tokens(progress, 1, 5)  # bars inside a sample read only the sample, from the prompt's state
    assert calls == [5]


def test_the_next_token_title_escapes_the_context():
    taken = TokenScore(5, "<", 0.6)
    shown = NextTokens("<script>alert(1)</script> <b>bold", 3, 0.5, [taken, TokenScore(6, "x", 0.3)], taken)
    title = render.next_token_figure(shown)["layout"]["title"]["text"]
    assert "<script>" not in title and "<b>bold" not in title
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &lt;b&gt;bold" in title and "<b>&lt;</b>" in title


# -- the served app ---------------------------------------------------------------------------------
def test_app_without_models_exits_with_one_clear_line(tmp_path):
    done = subprocess.run([sys.executable, "app.py", "--checkpoints", str(tmp_path)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no models to serve" in done.stderr
    assert "Traceback" not in done.stderr


SERVER_LOG = "test-app-server.log"


@pytest.fixture(scope="module")
def server(char_model, word_model, bpe_model, tmp_path_factory) -> Iterator[str]:
    """One `python app.py` for the module, polled until it answers, killed at the end."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    command = [sys.executable, "app.py", "--port", str(port), "--model", str(char_model), "--model", str(word_model),
               "--model", str(bpe_model),
               "--checkpoints", str(tmp_path_factory.mktemp("no-checkpoints")), "--max-new-tokens", "300",
               "--max-prompt-tokens", str(PROMPT_LIMIT)]
    with serving(command, url, tmp_path_factory.getbasetemp() / SERVER_LOG, cwd=ROOT, env=ENV):
        yield url


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


def generate(client, name: str = "shakespeare-tiny", **changes) -> tuple:
    return client.predict(name, *{**GENERATE_DEFAULTS, **changes}.values(), api_name="/generate")


def sample_texts(samples_html: str) -> list[str]:
    bodies = re.findall(r'<div class="lm-text[a-z ]*">(.*?)</div></section>', samples_html, flags=re.S)
    return [html.unescape(re.sub(r"<[^>]+>", "", body)) for body in bodies]


def test_generate_gives_one_column_per_temperature_and_is_reproducible(client):
    samples, prompt_view, status, *_ = generate(client)
    texts = sample_texts(samples)
    assert len(texts) == 5 and all(len(t) > len("ROMEO:\n") for t in texts)
    assert "bits/char" in prompt_view and status.startswith("**Done**")
    assert sample_texts(generate(client)[0]) == texts
    assert sample_texts(generate(client, seed_text="8")[0]) != texts
    word = sample_texts(generate(client, "ptb-tiny", prompt_text="the company said", temperature_text="1")[0])
    assert len(word) == 1 and word[0].startswith("the company said")
    subwords, prompt_view, status, *_ = generate(client, "imdb-bpe-tiny", prompt_text="This movie was",
                                                 temperature_text="0.5, 1.5")
    assert [text[:len("This movie was")] for text in sample_texts(subwords)] == ["This movie was"] * 2
    assert re.search(r"\d+ subword tokens, [\d.]+ bits/char", prompt_view) and status.startswith("**Done**")


def test_next_token_bars_after_the_prompt_and_inside_a_sample(client):
    generate(client, temperature_text="0.5, 1.0")
    figure = json.loads(client.predict(1, 5, 7, api_name="/next_tokens")["plot"])
    bars = figure["data"][0]
    assert len(bars["y"]) == 7 and all(0 <= p <= 1 for p in bars["x"])
    assert "took" in figure["layout"]["title"]["text"]


@pytest.mark.parametrize("changes, message", [
    (dict(temperature_text="-0.5"), "0 \\(greedy\\) or positive"),
    (dict(temperature_text="hot"), "must be a number"),
    (dict(p=0.0), "top-p"),
    (dict(p=1.5), "top-p"),
    (dict(max_new=100_000), "max new tokens must be a whole number from 1 to 300"),
    (dict(k=-3), "top-k"),
    (dict(seed_text="-1"), "seed"),
    (dict(seed_text=str(2**64)), "seed"),
    (dict(seed_text="lucky"), "seed must be a whole number"),
])
def test_bad_settings_come_back_as_errors_and_the_server_stays_up(client, changes, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        generate(client, **changes)
    assert generate(client, max_new=5)[2].startswith("**Done**")


def test_a_visitors_mistake_stays_out_of_the_server_log(client, tmp_path_factory):
    """A refused request is the visitor's message, not a traceback in the server's log with what they typed."""
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="must be a number"):
        generate(client, temperature_text="hot-QZXV")
    log = (tmp_path_factory.getbasetemp() / SERVER_LOG).read_text()
    assert "QZXV" not in log and "Traceback" not in log, log[-2000:]


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc")
def test_the_served_app_runs_on_jemalloc_where_it_is_installed(server, tmp_path_factory):
    """`python app.py` restarts itself with PYTHONMALLOC=malloc, and jemalloc's malloc where it is installed (CI
    installs it), before it starts (tests/test_memory.py shows why): the process that answers on the port has them,
    and kept its arguments; without jemalloc its log says how to add it."""
    port = server.rstrip("/").rsplit(":", 1)[1]
    answering = [proc for proc in Path("/proc").iterdir() if proc.name.isdigit()
                 and _read(proc / "cmdline").split(b"\0")[1:4] == [b"app.py", b"--port", port.encode()]]
    assert len(answering) == 1, f"{len(answering)} processes serve port {port}"
    assert b"PYTHONMALLOC=malloc" in _read(answering[0] / "environ").split(b"\0")
    installed = ctypes.util.find_library("jemalloc") is not None
    assert (b"jemalloc" in _read(answering[0] / "maps")) == installed
    assert ("install jemalloc" in (tmp_path_factory.getbasetemp() / SERVER_LOG).read_text()) != installed


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # a process that ended meanwhile, or another user's
        return b""


def test_concurrent_users_get_their_own_results_and_errors(server, client):
    """Six sessions at once (more than the two computed at a time): the repeated request gives the text it
    gives alone, other requests and failing ones run beside it, and no failure leaks into another session."""
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client
    from gradio_client.exceptions import AppError

    repeated = dict(temperature_text="0.5, 1.0", max_new=120, seed_text="11")
    alone = sample_texts(generate(client, **repeated)[0])

    def session(number: int) -> str | list[str]:
        own = Client(server, verbose=False)
        if number % 3 == 2:
            with pytest.raises(AppError, match="temperature"):
                generate(own, temperature_text="hot", max_new=120)
            return "refused"
        if number % 3 == 1:
            return sample_texts(generate(own, "ptb-tiny", prompt_text="the", seed_text=str(number), max_new=120)[0])
        return sample_texts(generate(own, **repeated)[0])

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(session, range(6)))
    assert results[0] == results[3] == alone
    assert results[2] == results[5] == "refused"
    assert len(results[1]) == len(results[4]) == 5 and results[1] != results[4]


def test_prompt_problems_are_explained_in_the_status(client):
    for prompt, note in (("", "empty prompt"), ("ROMEO€:\n", "became &lt;unk&gt;: '€'"),  # Markdown: escaped
                         ("x" * (PROMPT_LIMIT + 10), f"cut to its last {PROMPT_LIMIT} tokens")):
        assert note in generate(client, prompt_text=prompt, max_new=5)[2]


def test_a_too_long_prompt_is_refused_with_a_message(server, client):
    from gradio_client.exceptions import AppError

    config = json.loads(urllib.request.urlopen(server + "config", timeout=10).read())
    boxes = [c["props"] for c in config["components"] if c["type"] == "textbox"]
    assert boxes and all(box.get("max_length") for box in boxes), "every text box bounds its input in the page"
    huge = "x" * 100_001  # API callers bypass the page's bound
    for request in (lambda: generate(client, prompt_text=huge, max_new=5),
                    lambda: client.predict("shakespeare-tiny", "ptb-tiny", huge, "1", 5, 0, 1.0, "0",
                                           api_name="/compare"),
                    lambda: inside(client, prompt_text=huge)):
        with pytest.raises(AppError, match="the prompt has 100,001 characters; at most"):
            request()
    assert generate(client, max_new=5)[2].startswith("**Done**")


def test_model_info_and_random_seed(client, bpe_model):
    card, _, prompt = client.predict("ptb-tiny", api_name="/model_info")
    assert "word-level LSTM over words" in card and "bits/char" in card and "perplexity" in card and prompt
    assert "lower bound" in card
    card, _, prompt = client.predict("imdb-bpe-tiny", api_name="/model_info")
    assert "bpe-level LSTM over subword tokens" in card and "bits/char" in card
    assert prompt == read_examples(bpe_model)[0]  # the model's own first example
    seeds = {client.predict(api_name="/random_seed") for _ in range(3)}
    assert all(seed.isdigit() for seed in seeds) and len(seeds) > 1


@pytest.fixture(scope="module")
def one_at_a_time(char_model, tmp_path_factory) -> Iterator[str]:
    """A `python app.py --concurrency 1 --decode per-request`: one model computation at a time, whatever its
    endpoint (batched, sampling requests share the decode loop instead: tests/test_batching.py)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    command = [sys.executable, "app.py", "--port", str(port), "--model", str(char_model), "--concurrency", "1",
               "--decode", "per-request",
               "--checkpoints", str(tmp_path_factory.mktemp("no-checkpoints")), "--max-new-tokens", "5000"]
    with serving(command, url, tmp_path_factory.mktemp("app-1") / "app.log", cwd=ROOT, env=ENV):
        yield url


def test_model_requests_take_fair_turns_across_endpoints(one_at_a_time):
    """--concurrency 1: one model computation at a time whatever its endpoint, in turns: an /inside request sent
    while a long /generate streams is computed between two of its updates, not after the whole generation (it
    used to wait in Gradio's queue until the generation ended). That the two never compute at once is
    tests/test_admission.py's `test_model_work_computes_one_at_a_time_in_fair_turns`."""
    from gradio_client import Client

    long = Client(one_at_a_time, verbose=False).submit(
        "shakespeare-tiny", "ROMEO:\n", "0.5, 0.8, 1, 1.2, 1.5, 2", 5000, 0, 1.0, "1", "", False, api_name="/generate")
    wait_until(long.outputs, 120, "the long generation never streamed")  # it streams: it is computing
    short = Client(one_at_a_time, verbose=False).submit(*READING.values(), "variable", 8, None, None,
                                                        api_name="/inside")
    assert short.result(timeout=120)[0].startswith("**shakespeare-tiny**")
    assert not long.done(), "the generation ended before /inside was answered: make it longer"
    streamed = len(long.outputs())
    wait_until(lambda: len(long.outputs()) > streamed, 60, "the generation stopped streaming after /inside")
    long.cancel()


@pytest.mark.browser
def test_the_page_generates_in_a_browser_without_leaving_the_host(server):
    with chromium_page(server) as page:
        page.get_by_role("button", name="Generate").click()
        page.get_by_text("Done").first.wait_for(timeout=60_000)
        columns = page.locator("#samples .lm-col")
        assert columns.count() == 5
        assert len(columns.first.locator(".tok").all()) > 10
        # the page then asks for the run's bars (/after_generate): the chart of what came after the prompt
        page.get_by_text("Next token after").first.wait_for(timeout=30_000)
        assert not page.elsewhere, f"the page fetched from other hosts: {page.elsewhere}"


# -- inside the LSTM and comparing models -----------------------------------------------------------
def inside(client, sort: str = "variable", count: int = 12, at: int | None = None, unit: int | None = None,
           **reading) -> tuple:
    return client.predict(*{**READING, **reading}.values(), sort, count, at, unit, api_name="/inside")


def find_units(client, first: int, last: int, count: int = 8, unit: int | None = None, **reading) -> tuple:
    return client.predict(*{**READING, **reading}.values(), first, last, count, unit, api_name="/find_units")


def test_inside_tab_returns_a_heatmap_and_ranked_units(client):
    status, positions, heatmap, table, trace = inside(client)
    cells = json.loads(heatmap["plot"])["data"][0]["z"]
    assert len(cells) == 12 and all(len(row) == len(SPEECH) for row in cells)
    assert "↵" in json.loads(heatmap["plot"])["layout"]["xaxis"]["ticktext"]
    spreads = [row[2] for row in table["data"]]
    assert table["headers"][:3] == ["rank", "unit", "std"] and spreads == sorted(spreads, reverse=True)
    traced = json.loads(trace["plot"])
    assert f"Unit {table['data'][0][1]}" in traced["layout"]["title"]["text"] and len(traced["data"][0]["y"]) == 30
    assert "<sub>20</sub>" in positions and "layer 2 of 2" in status

    generate(client, prompt_text=SPEECH, temperature_text="1", max_new=300)  # 330 tokens: more than are drawn
    status, *_ = inside(client, text=1, sort="change", quantity="forget_gate", unit=5)
    assert "sample at T = 1" in status and "showing the last 300 of 330 tokens" in status


def test_span_search_ranks_units_by_how_well_they_pick_out_the_span(client):
    status, positions, heatmap, table, _ = find_units(client, 22, 28)
    assert table["headers"] == ["rank", "unit", "score", "mean inside", "mean outside"] and len(table["data"]) == 8
    scores = [row[2] for row in table["data"]]
    assert scores == sorted(scores, reverse=True)
    assert all((row[3] > row[4]) == (row[2] > 0) for row in table["data"])
    assert json.loads(heatmap["plot"])["layout"]["shapes"] and positions.count('class="marked"') == 7


@pytest.mark.parametrize("request_, message", [
    (lambda client: inside(client, sort="change", at=1000), "change at must be a shown token position, from 0 to 29"),
    (lambda client: inside(client, unit=64), "unit must be from 0 to 63"),
    (lambda client: inside(client, prompt_text=""), "the text is empty"),
    (lambda client: find_units(client, 20, 10), "must not come after"),
    (lambda client: find_units(client, 0, 29), "covers every shown token"),
])
def test_inside_refuses_bad_requests_and_the_server_stays_up(client, request_, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        request_(client)
    assert inside(client)[0].startswith("**shakespeare-tiny**")


def test_compare_runs_two_models_on_one_request(client):
    prompt, settings = "the company said", dict(temperature_text="0.5, 1", max_new=20, seed_text="3")
    status, card_a, samples_a, prompt_a, bars_a, card_b, samples_b, prompt_b, bars_b = client.predict(
        "shakespeare-tiny", "ptb-tiny", prompt, settings["temperature_text"], settings["max_new"], 0, 1.0,
        settings["seed_text"], api_name="/compare")
    assert status.count("**Done**") == 2 and "**shakespeare-tiny**" in status and "**ptb-tiny**" in status
    assert "char-level" in card_a and "word-level" in card_b
    # both models in bits per character, side by side, the word model's marked as a lower bound
    row = re.search(r"^\| prompt \| (\d+\.\d+) \| (\d+\.\d+)\\\* \|$", status, flags=re.M)
    assert row and "lower bound" in status and "bits per character" in status
    for figure, view in zip(row.groups(), (prompt_a, prompt_b)):
        assert float(figure) == pytest.approx(float(re.search(r"([\d.]+) bits/char", view).group(1)), abs=0.006)
    assert "lower bound" in prompt_b and "lower bound" not in prompt_a
    assert all(json.loads(bars["plot"])["data"][0]["x"] for bars in (bars_a, bars_b))
    alone = generate(client, "ptb-tiny", prompt_text=prompt, **settings)[0]
    assert len(sample_texts(samples_a)) == 2 and sample_texts(samples_b) == sample_texts(alone)


@pytest.mark.browser
def test_the_inside_tab_draws_its_heatmap_in_a_browser(server, char_model):
    prompt = read_examples(char_model)[0]  # the Sample tab opens on the model's own first example
    with chromium_page(server) as page:
        page.get_by_role("tab", name="Inside the LSTM").click()
        page.get_by_role("button", name="Show units").click()
        page.locator("#inside-heatmap .hm image").wait_for(timeout=60_000)
        labels = page.locator("#inside-heatmap .xtick text").all_text_contents()
        assert "".join(labels) == prompt[-len(labels):].replace(" ", "·").replace("\n", "↵"), labels
        assert page.get_by_text("units by most variable").count() > 0
        assert not page.elsewhere, f"the page fetched from other hosts: {page.elsewhere}"
