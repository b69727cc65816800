"""A first visit without a stumble (issue 30): a visitor's job says why it ended and keeps to its budget from the
click, a model offers prompts from its own text, one name per model everywhere, the CLI's minute is a minute and
says what it reached, and the dashboard speaks bits per character with readable axes and a table that fits.

The Train tab's jobs here are real: `TrainEvents.on_train` (what the Train button runs) over a `TrainingLine` whose
trainer is the real `python -m lmdemo train` child process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import DATA, ROOT, train_small
from servers import free_port, serving

from lmdemo.generation import Sample
from lmdemo.metrics import read_metrics
from lmdemo.web import train_view
from lmdemo.web.curves_tab import models_figure
from lmdemo.web.gate import Gate
from lmdemo.web.jobs import FINISHED, TrainingLine
from lmdemo.web.registry import Models
from lmdemo.web.train_requests import TrainLimits, read_request
from lmdemo.web.train_tab import TrainEvents
from lmdemo.web.trainer_process import train_command

SHAKESPEARE = (DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
REVIEWS = (DATA / "imdb" / "train.txt").read_text(encoding="utf-8")[:40_000]  # prose, one review a line
BUDGET_S = 15  # the visitor's time budget in the budget test
COUNTDOWN = re.compile(r"about (\d+) s left")


def visitor(session: str = "alice") -> SimpleNamespace:
    """What a Gradio event's request tells the handlers: the page's session and the client's address."""
    return SimpleNamespace(session_hash=session, client=SimpleNamespace(host="203.0.113.7"), headers={})


def press_train(training: TrainingLine, text: str, seconds: float, drawn: list[str] | None = None) -> list[tuple]:
    """Press Train (pasted text, characters, tiny; `drawn`: the models the Training curves tab shows) and collect
    every update the page gets, to the last."""
    events = TrainEvents(training, Gate(), pickers=4)
    return list(events.on_train("paste", text, None, "char", "tiny", seconds, drawn or [], visitor()))


@pytest.fixture(scope="module")
def models(char_model) -> Models:
    return Models({"shakespeare-tiny": str(char_model)})


@pytest.fixture(scope="module")
def budget_job(models, tmp_path_factory):
    """One real job of BUDGET_S seconds on 400k characters of Shakespeare (too much to stop early): the updates its
    page got, its model and its line. Its trainer runs at normal priority: at the lowest, as a server runs it, the
    test suite's other worker would starve it."""
    training = TrainingLine(models, TrainLimits(min_seconds=5, default_seconds=BUDGET_S),
                            tmp_path_factory.mktemp("budget-line"),
                            command=lambda request, out: train_command(request, out, niceness=0))
    try:
        updates = press_train(training, SHAKESPEARE[:400_000], BUDGET_S, drawn=["shakespeare-tiny"])
        session = training.sessions.get("alice")
        yield updates, session.models[-1], training
    finally:
        training.close()


# -- 3. a visitor's text that stops early says why -------------------------------------------------------
def test_3_an_early_stop_is_named_on_the_page_and_a_blank_sample_is_visible(models, tmp_path):
    """Today: "**Done**: 18 steps in 9 s, best validation …", no reason; a sample of spaces is a blank bar."""
    def stalls(request, out):  # the real trainer, on a rate too small to ever improve: early stop at once
        return [*train_command(request, out), "--lr", "1e-9", "--early-stop", "1"]

    training = TrainingLine(models, TrainLimits(min_seconds=5), tmp_path, command=stalls)
    try:
        *_, last = press_train(training, REVIEWS, 60)
    finally:
        training.close()
    status = last[0]
    assert status.startswith("**Done** (early stop, after 1 validation in a row without improvement): "), status
    assert "best validation " in status and "bits/char" in status

    spaces = Sample(0.5, ids=[1] * 240, tokens=[" "] * 240, probabilities=[0.9] * 240, pieces=[" "] * 240)
    update = train_view.TrainUpdate(FINISHED, read_request(REVIEWS, "char", "tiny", 60, TrainLimits()), 0,
                                    train_view.curve_frame([]), step=100, samples=[spaces])
    shown = train_view.samples_html(update)
    assert shown.count("·") == 240 and not re.search(r'">\s+</span>', shown), "a run of blanks must be visible"


# -- 4. the budget counts from the click, and the countdown never goes up --------------------------------
def test_4_a_job_keeps_its_budget_from_the_click_and_its_countdown_only_falls(budget_job):
    """Today: a 15 s job took ~22 s from the click (start-up and saving uncounted) and its "about N s left" rose."""
    updates, model, training = budget_job
    statuses = [update[0] for update in updates]
    left = [int(found.group(1)) for status in statuses if (found := COUNTDOWN.search(status))]
    assert len(left) >= 3 and left == sorted(left, reverse=True), statuses
    assert left[0] <= BUDGET_S
    final = statuses[-1]
    assert final.startswith(f"**Done** (its time budget of {BUDGET_S} s was used): "), final
    log = read_metrics(model.run / "metrics.jsonl")
    start, end = log.last("start"), log.last("end")
    assert end["reason"] == "budget" and end["limit"] == pytest.approx(BUDGET_S / 60)
    # the trainer's clock starts at the click: its start-up is inside the budget, not before it
    assert 0 < start["time"] < end["time"], (start, end)
    took = float(re.search(r"steps in (\d+) s", final).group(1))
    # a loose bound only (how close a loaded machine gets is bench/train_tab.py's business): about 15 + 2 s alone
    assert took <= 2 * BUDGET_S, (f"{final}: the job took {took:.0f} s from the click for a {BUDGET_S} s budget; its "
                                  f"trainer started training at {start['time']:.1f} s and ended at {end['time']:.1f} s")


# -- 5. a model's examples come from its own text ---------------------------------------------------------
@pytest.fixture(scope="module")
def prose_model(tmp_path_factory) -> Path:
    """A character model of a few steps on film reviews: prose, not Shakespeare."""
    text = tmp_path_factory.mktemp("prose") / "reviews.txt"
    text.write_text(REVIEWS, encoding="utf-8")
    return train_small(tmp_path_factory.mktemp("prose-run") / "reviews", level="char", data=str(text), max_steps=6,
                       threads=1)


def test_5_a_model_offers_prompts_from_its_own_text(prose_model, char_model, tmp_path):
    """Today: a model trained on reviews opens on "ROMEO:\\n" with Shakespeare's examples (they follow the level)."""
    models = Models({"reviews": str(prose_model), "shakespeare-tiny": str(char_model)})
    examples = models.examples("reviews")
    assert REVIEWS.split("\n")[0].startswith(examples[0]) and len(examples[0]) >= 16, examples  # its opening
    assert all(example in REVIEWS for example in examples) and len(examples) == 4
    assert all(example.strip() for example in examples)
    assert models.examples("shakespeare-tiny")[0].startswith("First Citizen:\n")
    # the app opens on the model's own opening, in the Sample and Compare prompts
    import importlib.util

    spec = importlib.util.spec_from_file_location("lmdemo_app_first_visit", ROOT / "app.py")
    app_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app_module)
    page = app_module.build_app(Models({"reviews": str(prose_model)}))
    prompts = [block.value for block in page.blocks.values() if type(block).__name__ == "Textbox"
               and block.label == "Prompt"]
    assert prompts and set(prompts) == {examples[0]}, prompts
    # a folder from before example prompts: an empty prompt, never another corpus's text
    old = tmp_path / "old"
    old.mkdir()
    for path in prose_model.iterdir():
        if path.name != "examples.json":
            (old / path.name).write_bytes(path.read_bytes())
    assert Models({"old": str(old)}).examples("old") == [""]
    # the shipped models have theirs, from the corpora they were trained on
    shipped = Models({name: str(ROOT / "checkpoints" / name) for name in ("shakespeare-char", "imdb-bpe")})
    assert shipped.examples("shakespeare-char")[0] == "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    assert all("ROMEO" not in example for example in shipped.examples("imdb-bpe"))


# -- 6. one name per model, drawn in Training curves at once ---------------------------------------------
def test_6_a_visitors_model_has_one_name_and_is_drawn_at_once(budget_job, models):
    """Today: "char-tiny-1-41b267" (status, API), "yours: char-tiny-1" (pickers), `char-tiny-1.zip`, and the
    Training curves picker does not draw it; a 15 s run beside a long one is a line at 0 on the time axis."""
    updates, model, training = budget_job
    status, _, _, name, _, download, sample, compare_a, compare_b, curves = updates[-1]
    assert name == "char-tiny-1", name
    assert model.name == model.run.name == name
    assert f"Your model **{name}**" in status
    archive = Path(download.value["path"])
    assert archive.name == f"{name}.zip" == model.archive.name
    with zipfile.ZipFile(archive) as zipped:
        assert {entry.split("/")[0] for entry in zipped.namelist()} == {name}
        assert json.loads(zipped.read(f"{name}/examples.json"))["examples"][0].startswith("First Citizen:")
    for picker in (sample, compare_a, compare_b, curves):
        assert picker.choices[-1] == (name, name)  # (label, value): the same name shown and used
    assert compare_a.value == name and curves.value == ["shakespeare-tiny", name]  # drawn beside what was
    # the curves tab draws it under that name, and its 15 s beside a 26-minute model on a readable time axis
    shipped = "shakespeare-char"
    both = Models({shipped: str(ROOT / "checkpoints" / shipped)})
    both.add_private(name, training.models.generator(name), owner="alice")
    both.set_visitor(lambda: "alice")
    figure, notes = models_figure(both, [shipped, name], "bpc", "time", "log", 0.6)
    assert {f"{name} · validation", f"{shipped} · validation"} <= {trace.name for trace in figure.data}
    assert figure.layout.xaxis.type == "log", "a 15 s run beside a 26-minute one needs a log time axis"
    # another session's first model has the same name, and each session gets its own
    both.add_private(name, models.generator("shakespeare-tiny"), owner="bob")
    assert both.generator(name) is training.models.generator(name)
    both.set_visitor(lambda: "bob")
    assert both.generator(name) is models.generator("shakespeare-tiny")


# -- 8. the CLI's minute is a minute, and it says what it reached -----------------------------------------
def test_8_a_minutes_budget_is_not_cut_by_the_default_epochs_and_the_cli_says_why_it_ended(tmp_path):
    """Today: `--max-minutes` on a small text ended after the default 10 epochs, printing only "best model: …"."""
    text = tmp_path / "mine.txt"
    text.write_text(SHAKESPEARE[:20_000], encoding="utf-8")
    out = tmp_path / "mine"
    command = [sys.executable, "-m", "lmdemo", "train", "--data", str(text), "--level", "char", "--emb-size", "16",
               "--hidden-size", "32", "--precision", "fp32", "--threads", "1", "--quiet", "--max-minutes", "0.25",
               "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    log = read_metrics(out / "metrics.jsonl")
    end, last_val = log.last("end"), log.events("val")[-1]
    assert last_val["epoch"] > 10, f"ended at epoch {last_val['epoch']:g}, {last_val['time']:.0f} s: {done.stdout}"
    assert end["reason"] == "budget", end
    assert last_val["step"] == log.last("start")["step_budget"]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("ended: its time budget of 15 s was used (step "), done.stdout
    best = log.best("val_loss")
    assert lines[1] == (f"best validation: {best['val_loss']:.4f} nats/char (perplexity {best['val_ppl']:.2f}), "
                        f"{best['val_bpc']:.4f} bits/char at step {best['step']:,}")
    if end["improving"]:
        assert f"python -m lmdemo train --out {out} --resume --max-minutes 0.5` trains further" in done.stdout
    assert lines[-1] == f"best model: {out / 'model'}"


# -- 9. the dashboard: bits per character, readable log axes, a summary that fits --------------------------
LR_LOG = "".join(json.dumps({"schema": 1, **record}) + "\n" for record in [
    {"event": "start", "step": 0, "params": 1234},
    *({"event": "train", "step": step, "epoch": step / 100, "time": step / 10, "lr": 0.004 * (0.9 ** (step / 10)),
       "train_loss": 2.0 - step / 200, "tokens_per_sec": 1000.0} for step in range(10, 200, 10)),
    {"event": "val", "step": 100, "epoch": 1.0, "time": 11.0, "val_loss": 1.5, "val_bpc": 2.16},
])  # one run, no test, no speed in its val records: the summary has gaps; its rate falls within one decade


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    root = tmp_path_factory.mktemp("dashboard-logs")
    run = root / "cosine"
    run.mkdir()
    (run / "metrics.jsonl").write_text(LR_LOG)
    (run / "config.json").write_text(json.dumps({"level": "char", "data": "shakespeare.txt", "num_layers": 2,
                                                  "hidden_size": 512, "emb_size": 128}))
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard" / "main.py"), "--server.port",
               str(port), "--", "--logs", str(root)]
    with serving(command, f"http://127.0.0.1:{port}/_stcore/health", root.parent / "streamlit.log", cwd=ROOT):
        yield f"http://127.0.0.1:{port}"


@pytest.mark.browser
def test_9_the_dashboard_speaks_bits_per_character_with_readable_axes_and_a_table_that_fits(dashboard):
    """Today: perplexity by default, a learning-rate axis reading "4 3 2 0.001 9 8 7", a summary cut at the right
    that prints "None"."""
    from browser import chromium_page

    with chromium_page(dashboard) as page:
        page.wait_for_selector("[data-testid=stPlotlyChart] .js-plotly-plot", timeout=60_000)
        page.wait_for_function("document.querySelectorAll('[data-testid=stPlotlyChart] .js-plotly-plot').length >= 3",
                               timeout=60_000)
        titles = page.eval_on_selector_all("[data-testid=stPlotlyChart] .js-plotly-plot .ytitle",
                                           "nodes => nodes.map(n => n.textContent)")
        assert titles[0] == "Bits per character", titles
        ticks = "plots => [...plots[1].querySelectorAll('.ytick text')].map(t => t.textContent)"  # learning rate
        rate = page.eval_on_selector_all("[data-testid=stPlotlyChart] .js-plotly-plot", ticks)
        numbers = [float(label.replace("−", "-")) for label in rate]
        assert numbers and all(0.0005 <= number <= 0.005 for number in numbers), f"learning-rate axis reads {rate}"
        table = page.locator("[data-testid=stDataFrame]").first
        table.wait_for(timeout=60_000)
        fits = page.evaluate("""() => {
            const frame = document.querySelector('[data-testid=stDataFrame]');
            const scroller = frame.querySelector('.dvn-scroller');
            const main = document.querySelector('[data-testid=stMain] .block-container');
            return {scroll: scroller.scrollWidth, client: scroller.clientWidth,
                    frame: frame.getBoundingClientRect().right, main: main.getBoundingClientRect().right};
        }""")
        assert fits["scroll"] <= fits["client"] + 1 and fits["frame"] <= fits["main"] + 1, fits
        cells = "[data-testid=stDataFrame] table td"  # the grid's cells as read aloud: what it draws
        page.wait_for_function(f"document.querySelectorAll('{cells}').length > 0", timeout=60_000)
        cells = page.eval_on_selector_all(cells, "cells => cells.map(cell => cell.textContent)")
        assert cells and "None" not in cells and "—" in cells, cells
