"""The Train and Training curves tabs: requests and figures in-process, then a real `python app.py` whose
visitors train through gradio_client and Chromium (one training process at a time, bad input refused)."""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DATA
from servers import free_port, serving, wait_until
from browser import chromium_page
from test_app import ENV, sample_texts

from lmdemo import curves
from lmdemo.cli import build_parser
from lmdemo.config import Config
from lmdemo.metrics import load_run, read_metrics
from lmdemo.properties import properties_for
from lmdemo.web.curves_tab import models_figure
from lmdemo.web.gate import Gate
from lmdemo.web.jobs import TrainingLine
from lmdemo.web.registry import Models
from lmdemo.web.train_requests import (
    CORPORA,
    TrainInputError,
    TrainLimits,
    read_request,
    read_source,
    read_upload,
)
from lmdemo.web.trainer_process import train_arguments, train_command

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = (DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
SMALL_TEXT = SHAKESPEARE[:60_000]
SECONDS = 12  # the API tests' budget
LIFECYCLE_SECONDS = 30  # a run that must draw a growing curve: a trainer at nice 19 beside the other test worker
CAP = 40  # the test server's cap, and so the page's default budget: the browser's visitor stops the run
LIMITS = TrainLimits()
BOOTSTRAP_MARK = "from lmdemo.cli import main"  # in the command line of every trainer the app starts


# -- in-process: the request, the command, the figures ------------------------------------------
@pytest.mark.parametrize("text, level, size, seconds, message", [
    ("", "char", "tiny", 60, "the text is empty"),
    (" \n\t\n ", "char", "tiny", 60, "the text is empty"),
    (None, "char", "tiny", 60, "the text is empty"),
    (["not", "text"], "char", "tiny", 60, "the text must be a string"),
    ("a" * 100_000, "char", "tiny", 60, "one character \\('a'\\) repeated"),
    ("ab " * 5000, "word", "tiny", 60, "one word repeated"),
    ("to be or not " * 8, "char", "tiny", 60, "too short: its training part \\(the first 90%\\) gives 94 characters or "
                                              "fewer, and 95 are needed \\(32 streams of 2 or more after an offset of "
                                              "up to 31\\)"),
    ("\n".join(" ".join(f"w{i}" for i in range(100)) for _ in range(3)), "word", "tiny", 60,  # 3 lines: none held out
     "too short: its validation part \\(the last 10%\\) gives 0 words or fewer, and 2 are needed"),
    (SMALL_TEXT, ["char"], "tiny", 60, "level must be one of char, word, bpe \\(got a list\\)"),
    (SMALL_TEXT, "char", {"size": "tiny"}, 60, "size must be one of tiny, small \\(got a dict\\)"),
    (SMALL_TEXT, "char", "tiny", [60], "the time budget must be a number of seconds \\(got a list\\)"),
    ("\x00\x01\x02 binary" * 2_000, "char", "tiny", 60, "not plain text"),
    ("x" * 2_000_001, "char", "tiny", 60, "the text has 2,000,001 characters; at most 2,000,000"),
    ("".join(map(chr, range(0x4E00, 0x4E00 + 3000))) * 3, "char", "tiny", 60, "3,000 different characters"),
    (SMALL_TEXT, "char", "tiny", 0, "the time budget must be from 10 to 180 seconds on this server \\(got 0\\)"),
    (SMALL_TEXT, "char", "tiny", 1e9, "from 10 to 180 seconds on this server \\(got 1e\\+09\\)"),
    (SMALL_TEXT, "char", "tiny", float("nan"), "from 10 to 180 seconds"),
    (SMALL_TEXT, "char", "tiny", "soon", "the time budget must be a number of seconds"),
    (SMALL_TEXT, "chars", "tiny", 60, "level must be one of char, word, bpe"),
    (SMALL_TEXT, "char", "huge", 60, "size must be one of tiny, small"),
])
def test_bad_training_requests_are_refused_with_a_message(text, level, size, seconds, message):
    with pytest.raises(TrainInputError, match=message):
        read_request(text, level, size, seconds, LIMITS)


def test_a_good_request_keeps_the_text_with_plain_newlines():
    request = read_request(SMALL_TEXT.replace("\n", "\r\n"), "char", "tiny", "30", LIMITS)
    assert request.text == SMALL_TEXT and request.seconds == 30.0 and request.run_name == "char-tiny"
    assert read_request(SMALL_TEXT, "bpe", "small", None, LIMITS).seconds == LIMITS.default_seconds


def test_uploads_must_be_small_utf8_text_files(tmp_path):
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as f:
        f.truncate(50_000_000)  # sparse: refused by its size, never read
    for path, message in ((huge, "the file has 50.0 MB; at most 8 MB"),
                          (tmp_path / "weights.bin", "not text \\(it holds NUL bytes"),
                          (tmp_path / "latin1.txt", "not UTF-8 text \\(byte 3 cannot be read")):
        if path.suffix == ".bin":
            path.write_bytes(bytes(range(256)) * 64)
        elif path.name == "latin1.txt":
            path.write_bytes("café au lait\n".encode("latin-1") * 1000)
        with pytest.raises(TrainInputError, match=message):
            read_upload(str(path), LIMITS)
    notes = tmp_path / "my notes (v2).txt"
    notes.write_bytes(("\ufeff" + "café\n" * 10).encode())
    assert read_upload(str(notes), LIMITS) == ("café\n" * 10, "my-notes-v2")
    with pytest.raises(TrainInputError, match="no file uploaded"):
        read_source("upload", "", None, LIMITS)
    with pytest.raises(TrainInputError, match="text source must be one of"):
        read_source("../etc/passwd", "", None, LIMITS)


def test_the_bundled_corpora():
    assert read_source("tinyshakespeare", "", None, LIMITS) == (SHAKESPEARE, "tinyshakespeare")
    reviews = CORPORA["imdb"].read()
    assert reviews.count("\n") == 794 and "<br" not in reviews and 900_000 < len(reviews) <= 1_000_000
    for corpus in CORPORA.values():
        read_request(corpus.read(), "char", "tiny", 60, LIMITS)  # both fit the limits at every level
        read_request(corpus.read(), "bpe", "tiny", 60, LIMITS)


def test_a_job_is_the_command_line_trainer_with_one_thread(tmp_path):
    request = read_request(SMALL_TEXT, "word", "small", 90, LIMITS)
    arguments = train_arguments(request, "word-small-1")
    parsed = vars(build_parser().parse_args(arguments))
    assert parsed["command"] == "train" and parsed["threads"] == 1 and parsed["max_minutes"] == 1.5
    assert parsed["atlas"]  # the model's atlas follows, for the Inside tab
    assert (parsed["data"], str(parsed["out"])) == ("pasted.txt", "word-small-1")  # relative: no server path in the run
    assert (parsed["level"], parsed["num_layers"], parsed["hidden_size"]) == ("word", 2, 256)
    config = Config(**{name: value for name, value in parsed.items() if name in Config.__dataclass_fields__})
    assert config.schedule == "cosine" and config.test_fraction == 0.0
    command = train_command(request, "word-small-1")
    assert command[:2] == [sys.executable, "-c"] and BOOTSTRAP_MARK in command[2]
    assert command[3] == str(os.getpid()) and command[5:] == arguments


def test_the_curves_tab_draws_with_the_dashboards_code(char_model, word_model):
    models = Models({"char": str(char_model), "word": str(word_model)})
    figure, notes = models_figure(models, ["char", "word"], "bpc", "step", "log", 0.0)
    runs = [load_run(char_model, name="char"), load_run(word_model, name="word")]
    assert figure.to_json() == curves.runs_figure(runs, "bpc", "step", True, 0.0).to_json() and notes == ""
    validation = next(trace for trace in figure.data if trace.name == "char · validation")
    logged = read_metrics(char_model / "metrics.jsonl").events("val")
    assert list(validation.y) == pytest.approx([r["val_bpc"] for r in logged])
    assert list(validation.x) == [r["step"] for r in logged] and figure.layout.yaxis.type == "log"
    linear, _ = models_figure(models, ["word"], "ppl", "time", "linear", 0.5)
    assert linear.layout.yaxis.type == "linear" and {t.legendgroup for t in linear.data} == {"word"}
    for changes, message in ((dict(measure="perplexity"), "measure must be one of ppl, loss, bpc"),
                             (dict(x="epochs"), "x axis must be one of"), (dict(weight=1.0), "smoothing"),
                             (dict(log_y="sometimes"), "scale must be log or linear"),
                             (dict(names=["nope"]), "unknown model 'nope'"), (dict(names=["char"] * 9), "at most 8"),
                             (dict(names=[{"a": 1}]), "a list of model names")):
        with pytest.raises(ValueError, match=message):
            models_figure(models, **{**dict(names=["char"], measure="bpc", x="step", log_y="log",
                                            weight=0.6), **changes})


def test_a_session_model_is_served_but_never_listed(char_model, tmp_path):
    """Private models: found by name, absent from `names` and from what an unknown name's message lists."""
    models = Models({"char": str(char_model)})
    service = TrainingLine(models, LIMITS, tmp_path)
    try:
        models.add_private("mine-1234", models.generator("char"))
        assert models.generator("mine-1234") is models.generator("char") and models.names == ["char"]
        with pytest.raises(ValueError, match="choose one of: char$"):
            models.generator("mine-9999")
        visitor = {"session": "alice"}
        models.set_visitor(lambda: visitor["session"])  # as the app does: who asks is the request's session
        models.add_private("alices-1234", models.generator("char"), owner="alice")
        assert models.generator("alices-1234") is models.generator("char")
        visitor["session"] = "bob"
        with pytest.raises(ValueError, match="unknown model 'alices-1234'"):
            models.generator("alices-1234")
        assert service.stop("nobody") == "No training job of yours is running."
    finally:
        models.remove_private("mine-1234")
        service.close()
    assert not service.root.exists()


# -- a real server ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def train_server(char_model, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """`python app.py` with a Train tab capped at CAP seconds, its runs under a folder of the test's own."""
    root = tmp_path_factory.mktemp("train-root")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    command = [sys.executable, "app.py", "--port", str(port), "--model", str(char_model),
               "--checkpoints", str(tmp_path_factory.mktemp("no-checkpoints")), "--train-root", str(root),
               "--train-seconds", str(CAP), "--proxy-hops", "1"]  # the tests' clients are told apart as a proxy would
    with serving(command, url, tmp_path_factory.mktemp("train-app") / "app.log", cwd=ROOT, env=ENV):
        yield url, root


def client_for(url: str, address: str = "203.0.113.1"):
    """A visitor at `address` (a documentation address), as the proxy in front of the server reports it."""
    from gradio_client import Client

    return Client(url, verbose=False, headers={"X-Forwarded-For": address})


def trainers(root: Path) -> int:
    """Training processes the server under `root` runs now (they run in a folder under it). A trainer's own child
    (a fork, before it execs another program, still shows the trainer's command line) is not another trainer."""
    found: dict[int, int] = {}  # pid -> parent pid
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().decode(errors="replace")
                folder = os.readlink(entry / "cwd")
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if BOOTSTRAP_MARK in command and Path(folder).is_relative_to(root):
                found[int(entry.name)] = parent
    return sum(parent not in found for parent in found.values())


def generate(client, name: str) -> tuple:
    return client.predict(name, "ROMEO:\n", "0.5, 1", 40, 0, 1.0, "3", "", False, api_name="/generate")


def test_train_streams_curves_and_samples_then_the_model_samples(train_server):
    url, root = train_server
    client = client_for(url)
    job = client.submit(SMALL_TEXT, "char", "tiny", LIFECYCLE_SECONDS, api_name="/train")
    status, _, points, samples, name = job.result(timeout=120)
    assert status.startswith("**Done** (") and name == "char-tiny-1", status  # why it ended; one name everywhere
    updates = job.outputs()[:-1]
    statuses = [update[0] for update in updates]
    assert any(s.startswith("**Starting**") for s in statuses) and any(s.startswith("**Training**") for s in statuses)
    # curve points and samples arrived before the end, and the curve grew from the first points shown
    sizes = [len(next(iter(update[2].values()), {}).get("train", [])) for update in updates if update[2]]
    assert sizes and 0 < sizes[0] < len(points[name]["train"]), (sizes, len(points[name]["train"]))
    assert any("lm-col" in update[3] and "T = 0.5" in update[3] for update in updates)
    run = points[name]
    assert run["val"] and run["train"] and run["val"][-1]["loss"] < run["val"][0]["loss"] < 4.5
    assert "T = 1" in samples and "seed 0 every time" in samples
    # the model samples in the Sample tab's API, for this session only
    texts = sample_texts(generate(client, name)[0])
    assert len(texts) == 2 and all(text.startswith("ROMEO:\n") and len(text) > 20 for text in texts)
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="unknown model"):
        generate(client_for(url), name)
    plot, notes = client.predict([name], "loss", "time", "linear", 0.0, api_name="/curves")
    traces = json.loads(plot["plot"])["data"]
    assert {trace["name"] for trace in traces} >= {f"{name} · train", f"{name} · validation"}
    # the download: the model folder as a zip
    archives = list(root.glob("*/cache/*/char-tiny-1.zip"))
    assert len(archives) == 1
    with zipfile.ZipFile(archives[0]) as zipped:
        assert sorted(zipped.namelist()) == [f"char-tiny-1/{file}" for file in
                                             ("README.md", "atlas.json", "config.json", "examples.json",
                                              "metrics.jsonl", "model.safetensors", "tokenizer.json")]
        atlas = json.loads(zipped.read("char-tiny-1/atlas.json"))
    # its own atlas: structural properties only, chosen on its training text and scored on its validation text
    names = {entry["property"] for entry in atlas["properties"]}
    assert names and names <= {prop.name for prop in properties_for("char")}
    assert (atlas["choose"]["source"], atlas["score"]["source"]) == ("train split of pasted.txt",
                                                                     "valid split of pasted.txt")
    assert "with its own cell atlas in the Inside tab" in status
    heading, table, *_ = client.predict(name, api_name="/atlas")  # what the Inside tab shows for the model
    assert heading.startswith(f"**What the units of {name} follow**")
    shown = json.dumps(table)  # the table's update, as the API gives it
    assert all(f'"{entry["property"].replace("_", " ")}"' in shown for entry in atlas["properties"])


@pytest.mark.parametrize("arguments, message", [
    (("", "char", "tiny", SECONDS), "the text is empty"),
    (("a" * 50_000, "char", "tiny", SECONDS), "one character \\('a'\\) repeated"),
    ((SMALL_TEXT[:100], "char", "tiny", SECONDS), "the text is too short"),
    ((SMALL_TEXT, ["char"], "tiny", SECONDS), "level must be one of char, word, bpe \\(got a list\\)"),
    ((SMALL_TEXT, "char", "tiny", {"seconds": 20}), "the time budget must be a number of seconds \\(got a dict\\)"),
    (("\x00\x07" * 20_000, "char", "tiny", SECONDS), "not plain text"),
    (("x" * 2_000_001, "char", "tiny", SECONDS), "at most 2,000,000 are accepted"),
    ((SMALL_TEXT, "char", "tiny", 0), f"from 10 to {CAP} seconds on this server \\(got 0\\)"),
    ((SMALL_TEXT, "char", "tiny", 1e9), "got 1e\\+09"),
    ((SMALL_TEXT, "words", "tiny", SECONDS), "level must be one of"),
])
def test_bad_training_input_gets_a_message_and_the_server_keeps_serving(train_server, arguments, message):
    from gradio_client.exceptions import AppError

    client = client_for(train_server[0])
    with pytest.raises(AppError, match=message):
        client.predict(*arguments, api_name="/train")
    assert generate(client, "shakespeare-tiny")[2].startswith("**Done**")


def test_a_50_mb_upload_is_refused_by_the_server(train_server):
    import httpx

    response = httpx.post(train_server[0] + "gradio_api/upload", files={"files": ("big.txt", b"a" * 50_000_000)},
                          timeout=60)
    assert response.status_code == 413 and "the upload has 50.0 MB; a file may have at most 8 MB" in response.text


def test_training_twice_is_refused_and_stop_keeps_the_best_model(train_server):
    from gradio_client.exceptions import AppError

    client = client_for(train_server[0])
    job = client.submit(SMALL_TEXT, "char", "tiny", SECONDS, api_name="/train")
    wait_until(lambda: any("lm-col" in update[3] for update in job.outputs()), 60, "no model was saved")
    with pytest.raises(AppError, match="you already have a training job \\(running\\)"):
        client.predict(SMALL_TEXT, "char", "tiny", SECONDS, api_name="/train")
    assert client.predict(api_name="/stop_training").startswith("Stopping at the next log interval")
    status, *_, name = job.result(timeout=60)
    assert status.startswith("**Stopped**") and name.startswith("char-tiny-"), status
    assert len(sample_texts(generate(client, name)[0])) == 2
    assert client.predict(api_name="/stop_training") == "No training job of yours is running."


def test_two_trainings_never_run_at_once(train_server):
    url, root = train_server
    seen, done = [], threading.Event()

    def count() -> None:
        while not done.is_set():
            seen.append(trainers(root))
            time.sleep(0.05)

    watcher = threading.Thread(target=count, daemon=True)
    watcher.start()
    try:
        first = client_for(url, "203.0.113.2").submit(SMALL_TEXT, "char", "tiny", 10, api_name="/train")
        wait_until(lambda: first.outputs(), 30, "the first job never answered")
        second = client_for(url, "203.0.113.3").submit(SHAKESPEARE[100_000:160_000], "char", "tiny", 10,
                                                       api_name="/train")
        results = [first.result(timeout=90), second.result(timeout=90)]
    finally:
        done.set()
        watcher.join()
    assert [r[0][:8] for r in results] == ["**Done**"] * 2
    assert max(seen) == 1 and seen.count(1) > 20
    waited = [update[0] for update in second.outputs() if update[0].startswith("**Waiting**")]
    assert waited and "1 job ahead of yours" in waited[0]
    # the second started only once the first had ended: its first training update follows the first's result
    assert any(update[0].startswith("**Starting**") for update in second.outputs())


@pytest.mark.browser
def test_a_visitor_trains_downloads_and_leaves_in_a_browser(train_server, tmp_path):
    url, root = train_server
    script = ("() => { const g = document.querySelector('#train-curve .js-plotly-plot');"  # the points drawn
              " return g && g._fullData ? g._fullData.reduce((n, t) => n + (t._length || 0), 0) : 0; }")
    # other tests' sessions' zips: an API session can outlive its test
    others = set(root.glob("*/cache/*/char-tiny-1.zip"))
    with chromium_page(url) as page:
        page.get_by_role("tab", name="Train", exact=True).click()
        page.get_by_role("button", name="Train", exact=True).click()
        # the run has the whole cap (40 s), so the curve grows however busy the machine; then the visitor stops it
        first = wait_until(lambda: page.evaluate(script), 60, "no curve was drawn", every=0.25)
        wait_until(lambda: page.evaluate(script) > first, 60,
                   lambda: f"the curve did not grow: {page.locator('#train-status').inner_text()[:400]}", every=0.25)
        shot = os.environ.get("LMDEMO_TRAIN_SCREENSHOT")
        if shot:
            page.screenshot(path=shot, full_page=True)
        page.get_by_role("button", name="Stop", exact=True).click()
        page.locator("#train-status").get_by_text(re.compile("^Stopped \\(")).wait_for(timeout=60_000)
        with page.expect_download() as download:
            page.get_by_role("button", name="Download the model (zip)").click()
        saved = tmp_path / "model.zip"
        download.value.save_as(saved)
        with zipfile.ZipFile(saved) as zipped:
            assert "char-tiny-1/model.safetensors" in zipped.namelist()
            config = json.loads(zipped.read("char-tiny-1/config.json"))
            assert config["data"] == "tinyshakespeare.txt"  # named as the visitor knows it
            assert not any(str(root) in zipped.read(name).decode(errors="replace") for name in zipped.namelist())
        archives = list(set(root.glob("*/cache/*/char-tiny-1.zip")) - others)
        assert archives, "the zip is not in the session's own download folder"
        page.get_by_role("tab", name="Compare", exact=True).click()
        assert page.get_by_label("Model A").input_value() == "char-tiny-1"
        assert not page.elsewhere, f"the page fetched from other hosts: {page.elsewhere}"
    # Gradio notices a closed page at its next heartbeat check (every 15 s), then the session ends
    wait_until(lambda: not any(path.exists() for path in archives), 60, "the zip outlived the closed page")


@pytest.mark.browser
def test_closing_the_page_mid_run_stops_the_job_and_frees_the_slot(train_server):
    url, root = train_server
    before = {folder.name for folder in root.glob("*/*") if folder.is_dir()}
    with chromium_page(url) as page:
        page.get_by_role("tab", name="Train", exact=True).click()
        page.get_by_role("button", name="Train", exact=True).click()
        page.locator("#train-status").get_by_text(re.compile("^Training ")).wait_for(timeout=60_000)
        assert trainers(root) == 1
        mine = {folder.name for folder in root.glob("*/*") if folder.is_dir()} - before
    wait_until(lambda: trainers(root) == 0, 30, "the job went on after its page closed")
    wait_until(lambda: not any(any(root.glob(f"*/{name}")) for name in mine), 30, "the closed session's folders were kept")
    client = client_for(url)
    job = client.submit(SMALL_TEXT, "char", "tiny", SECONDS, api_name="/train")
    wait_until(lambda: any(update[0].startswith(("**Starting**", "**Training**")) for update in job.outputs()), 30,
               "the slot was not freed")
    job.cancel()  # a stream that goes away stops its job too
    wait_until(lambda: trainers(root) == 0, 30, "a cancelled stream's job went on")


@pytest.mark.browser
def test_the_page_explains_bad_input(train_server, tmp_path):
    """The page's own path (source picker, upload) refuses with a message in the page, and starts nothing."""
    url, root = train_server
    binary = tmp_path / "model.txt"
    binary.write_bytes(bytes(range(256)) * 64)
    with chromium_page(url) as page:
        page.get_by_role("tab", name="Train", exact=True).click()
        page.get_by_label("Paste a text").check()
        page.get_by_role("button", name="Train", exact=True).click()
        page.get_by_text("the text is empty").first.wait_for(timeout=20_000)
        page.get_by_label("Upload a .txt file").check()
        page.locator("#train-upload input[type=file]").set_input_files(str(binary))
        page.locator("#train-upload").get_by_text("model.txt").first.wait_for(timeout=20_000)
        page.get_by_role("button", name="Train", exact=True).click()
        page.get_by_text("it holds NUL bytes").first.wait_for(timeout=20_000)
        assert trainers(root) == 0
        assert page.get_by_role("button", name="Train", exact=True).is_enabled()


def test_no_train_turns_the_tab_and_its_api_off(char_model, tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("lmdemo_app_train", ROOT / "app.py")
    app_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app_module)
    models = Models({"char": str(char_model)})
    service = TrainingLine(models, LIMITS, tmp_path)
    try:
        def endpoints(page) -> set[str]:
            return {fn.api_name for fn in page.fns.values() if fn.api_name}

        def tabs(page) -> list[str]:
            return [block.label for block in page.blocks.values() if type(block).__name__ == "Tab"]

        off, on = app_module.build_app(models), app_module.build_app(models, training=service)
        assert "Train" not in tabs(off) and "Training curves" in tabs(off) and "train" not in endpoints(off)
        assert {"Train", "Training curves"} <= set(tabs(on)) and {"train", "stop_training", "curves"} <= endpoints(on)
    finally:
        service.close()
    assert app_module.parse_args(["--no-train"]).no_train and not app_module.parse_args([]).no_train
    monkeypatch.setenv("LMDEMO_NO_TRAIN", "1")
    monkeypatch.setenv("LMDEMO_TRAIN_SECONDS", "90")
    args = app_module.parse_args([])
    assert args.no_train and args.train_seconds == 90 and app_module._training(args, models, Gate()) is None
    with pytest.raises(SystemExit):
        app_module.parse_args(["--train-seconds", "5"])
