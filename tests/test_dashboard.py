"""The training dashboard: lmdemo.runs directly, the page through Streamlit's AppTest, and once in Chromium."""

from __future__ import annotations

import base64
import json
import math
import os
import socket
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from browser import chromium_page
from conftest import DATA, ROOT, train_small
from servers import free_port, serving
from streamlit.testing.v1 import AppTest

import lmdemo.metrics
from lmdemo import curves
from lmdemo.config import PRESETS
from lmdemo.metrics import MetricsWriter, find_runs, load_run, read_metrics
from lmdemo.runs import (
    OutsideLogsError,
    RunSourceError,
    config_diff,
    curve_frame,
    describe_model,
    download_run,
    ema,
    folder_within,
    format_duration,
    log_notes,
    logs_roots,
    run_status,
    smooth,
    summary_frame,
)

PAGE = ROOT / "dashboard" / "main.py"
OLD_LOG = '{"step": 1, "loss": 5.0}\n{"step": 2, "loss": 4.5}\n{"step": 2, "val_loss": 4.6}\n'
# A log whose figures are known by hand: best validation loss 1.5 at epoch 1 (ppl e^1.5 = 4.4817),
# last 1.75 (ppl 5.7546), test 1.6 (ppl 4.9530), speeds 100, 300, 200 (median 200), 125 s in all.
KNOWN_LOG = "".join(json.dumps({"schema": 1, **record}) + "\n" for record in [
    {"event": "start", "step": 0, "params": 1234},
    {"event": "train", "step": 10, "epoch": 0.5, "time": 30, "tokens_per_sec": 100, "train_loss": 2.5},
    {"event": "val", "step": 10, "epoch": 0.5, "time": 35, "val_loss": 2.0},
    {"event": "train", "step": 20, "epoch": 1.0, "time": 60, "tokens_per_sec": 300, "train_loss": 1.5},
    {"event": "val", "step": 20, "epoch": 1.0, "time": 65, "val_loss": 1.5},
    {"event": "train", "step": 30, "epoch": 1.5, "time": 90, "tokens_per_sec": 200, "train_loss": 1.2},
    {"event": "val", "step": 30, "epoch": 1.5, "time": 95, "val_loss": 1.75},
    {"event": "test", "step": 30, "epoch": 1.5, "time": 125, "test_loss": 1.6},
])
LATER_VAL = json.dumps({"schema": 1, "event": "val", "step": 40, "epoch": 2.0, "time": 130, "val_loss": 1.25}) + "\n"


@pytest.fixture(scope="module")
def logs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny real character runs that differ in learning rate and width, side by side."""
    root = tmp_path_factory.mktemp("logs")
    shared = dict(level="char", data=str(DATA / "tinyshakespeare" / "input.txt"), emb_size=16, num_layers=1,
                  max_tokens=3_000, epochs=2, log_every=2, eval_every=4, test_fraction=0.1,
                  threads=1)  # one thread: tiny models train many times faster on a busy machine
    train_small(root / "small", hidden_size=16, **shared)
    train_small(root / "wide", hidden_size=32, lr=1e-2, **shared)
    return root


def write_run(folder: Path, log: str, config: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text(log)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def open_page(root: Path | str, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("LMDEMO_LOGS", str(root))
    return AppTest.from_file(str(PAGE), default_timeout=30).run()


def chart(page: AppTest, index: int = 0) -> dict:
    return json.loads(page.get("plotly_chart")[index].proto.spec)


def values(trace: dict, axis: str = "y") -> list[float]:
    """A trace's x or y values: plotly sends arrays as base64 (`bdata`) with their dtype."""
    data = trace[axis]
    return np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"]).tolist() if "bdata" in data else data


def messages(page: AppTest) -> str:
    return " | ".join(str(e.value) for kind in ("error", "warning", "info") for e in getattr(page, kind))


# --- lmdemo.runs and the reader -------------------------------------------------------------------

def test_ema_is_debiased_and_leaves_gaps():
    # By hand, weight 0.5: 1; (0.5·1 + 3) / 1.5 = 7/3; (0.25·1 + 0.5·3 + 2) / 1.75 = 15/7.
    assert ema([1.0, 3.0, 2.0], 0.5).tolist() == pytest.approx([1.0, 7 / 3, 15 / 7])
    assert ema([3.0, 3.0, 3.0], 0.9).tolist() == pytest.approx([3.0, 3.0, 3.0])  # no pull towards 0 at the start
    assert ema([1.0, 2.0], 0.0).tolist() == [1.0, 2.0]
    smoothed = ema([1.0, None, math.inf, 3.0], 0.5).tolist()  # gaps stay gaps and are skipped: 7/3 again
    assert smoothed[0] == 1.0 and math.isnan(smoothed[1]) and math.isnan(smoothed[2])
    assert smoothed[3] == pytest.approx(7 / 3)
    assert ema(pd.Series([1.0, 3.0], index=[5, 9]), 0.5).index.tolist() == [5, 9]  # lines up with its frame
    with pytest.raises(ValueError):
        ema([1.0], 1.0)


def test_smooth_keeps_runs_and_splits_apart(logs_root):
    frame = curve_frame(find_runs([logs_root])[0])
    frame["smoothed"] = smooth(frame, "ppl", 0.9)
    for _, rows in frame.groupby(["run", "split"]):
        assert rows.smoothed.tolist() == pytest.approx(ema(rows.ppl, 0.9).tolist())


def test_log_values_that_are_not_finite_numbers_are_gaps(tmp_path):
    log = json.dumps({"schema": 1, "event": "train", "step": 1, "epoch": True, "tokens": "12", "time": 1e999,
                      "lr": 0.5, "train_loss": 2.0}) + "\n"
    row = curve_frame([load_run(write_run(tmp_path / "odd", log))]).iloc[0]
    assert math.isnan(row.epoch) and math.isnan(row.tokens) and math.isnan(row.time)
    assert row.lr == 0.5 and row.loss == 2.0


def test_reader_skips_corrupt_lines_and_flags_a_half_written_tail(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"schema": 1, "event": "train", "step": 1, "train_loss": 4.0}\n{oops\n[1, 2]\n'
                    '{"schema": 1, "event": "train", "step": 2, "train_loss": 3.0}\n{"schema": 1, "ev')
    metrics = read_metrics(path)
    assert [r["step"] for r in metrics.records] == [1, 2]
    assert metrics.problems == ["line 2: not valid JSON", "line 3: not a JSON object"]
    assert metrics.partial_tail
    notes = log_notes(load_run(tmp_path))
    assert "skipped line 2: not valid JSON" in notes and any("incomplete" in n for n in notes)


def test_old_schema_log_is_read_as_best_as_possible(tmp_path):
    run = load_run(write_run(tmp_path / "old", OLD_LOG, {"level": "char"}))
    frame = curve_frame([run])
    assert list(frame.split) == ["train", "train", "val"]
    assert frame.ppl.iloc[0] == pytest.approx(math.exp(5.0))
    assert frame.bpc.iloc[0] == pytest.approx(5.0 / math.log(2))
    assert any("older version" in note for note in log_notes(run))


def test_writer_still_round_trips(tmp_path):
    writer = MetricsWriter(tmp_path / "metrics.jsonl")
    writer.append("train", step=1, train_loss=float("nan"))
    assert read_metrics(tmp_path / "metrics.jsonl").records == [
        {"schema": 1, "event": "train", "step": 1, "train_loss": None}]


def test_find_runs_skips_model_copies_hidden_folders_and_escaping_links(tmp_path):
    root = tmp_path / "root"
    write_run(root / "a", OLD_LOG)
    write_run(root / "a" / "model", OLD_LOG)  # a run's copy of its own log
    write_run(root / ".staging", OLD_LOG)
    outside = write_run(tmp_path / "outside", OLD_LOG)
    (root / "b").mkdir()
    (root / "b" / "metrics.jsonl").symlink_to(outside / "metrics.jsonl")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    runs, problems = find_runs([root])
    assert [run.name for run in runs] == ["a"]
    assert len(problems) == 1 and "links outside" in problems[0]


def test_find_runs_names_empty_and_missing_roots(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no logs")
    _, problems = find_runs([tmp_path / "empty", tmp_path / "notes", tmp_path / "missing"])
    assert problems == [f"{tmp_path / 'empty'} is empty", f"no metrics.jsonl under {tmp_path / 'notes'}",
                        f"{tmp_path / 'missing'} does not exist"]


def test_summary_and_description(logs_root):
    runs = find_runs([logs_root])[0]
    summary = summary_frame(runs).set_index("Run")
    assert list(summary.index) == ["small", "wide"]
    assert summary.loc["small", "Model"] == "char · 1×16"
    assert summary.loc["wide", "Parameters"] > summary.loc["small", "Parameters"]
    assert summary.loc["small", "Test ppl"] > 1 and summary.loc["small", "Status"] == "finished"
    shape = {k: PRESETS["shakespeare-char"][k] for k in ("level", "emb_size", "hidden_size", "num_layers")}
    assert describe_model(shape) == f"char · {shape['num_layers']}×{shape['hidden_size']} (shakespeare-char)"
    assert describe_model({**shape, "hidden_size": 7}) == f"char · {shape['num_layers']}×7"


def test_summary_figures_of_a_hand_written_log(tmp_path):
    row = summary_frame([load_run(write_run(tmp_path / "known", KNOWN_LOG))]).iloc[0]
    assert row["Best val ppl"] == pytest.approx(4.4817, abs=1e-4) and row["Best at epoch"] == 1.0
    assert row["Last val ppl"] == pytest.approx(5.7546, abs=1e-4)
    assert row["Test ppl"] == pytest.approx(4.9530, abs=1e-4)
    assert (row["Parameters"], row["Tokens/s"], row["Training time"], row["Status"]) == (
        1234, 200, "2 min 05 s", "finished")


def test_status_of_an_unfinished_run(tmp_path):
    run = load_run(write_run(tmp_path / "r", OLD_LOG, {"epochs": 3}))
    mtime = run.metrics.path.stat().st_mtime
    assert run_status(run, now=mtime + 1) == "running"
    assert run_status(run, now=mtime + 3600) == "stopped"


def test_config_diff():
    diff = config_diff({"lr": 0.001, "level": "char", "seed": 1}, {"lr": 0.003, "level": "char", "extra": True})
    assert diff.values.tolist() == [["extra", "—", "True"], ["lr", "0.001", "0.003"], ["seed", "1", "—"]]
    assert config_diff({"a": 1}, {"a": 1}).empty


def test_download_run_offline_and_bad_ids():
    with pytest.raises(RunSourceError, match="offline"):
        download_run("someone/not-cached-lmdemo-model")
    with pytest.raises(RunSourceError, match="owner/name"):
        download_run("not a repo id")


def test_logs_roots_from_arguments_or_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert logs_roots(["--logs", "a", "--other", "--logs", str(tmp_path / "b" / ".." / "c"), "--logs", "a"]) == [
        tmp_path / "a", tmp_path / "c"]
    assert logs_roots([], os.pathsep.join(["a", str(tmp_path / "d"), ""])) == [tmp_path / "a", tmp_path / "d"]
    assert logs_roots(["--logs", "a"], "d") == [tmp_path / "a"]  # the command line wins
    assert logs_roots([], "") == []  # the default roots


def test_folder_within_refuses_what_resolves_outside_the_roots(tmp_path):
    root, other = write_run(tmp_path / "root" / "run", OLD_LOG).parent, tmp_path / "other"
    outside = write_run(tmp_path / "outside", OLD_LOG)
    (root / "link").symlink_to(outside, target_is_directory=True)
    assert folder_within("run", root, [root]) == root / "run"
    assert folder_within(str(other / "x"), root, [root, other]) == other / "x"  # inside another allowed root
    for typed in ("..", "../outside", "run/../../outside", str(outside), "link", "link/sub", "/", "run\0"):
        with pytest.raises(OutsideLogsError, match="outside the logs folders"):
            folder_within(typed, root, [root, other])


def test_format_duration():
    assert [format_duration(s) for s in (4.4, 185, 7625)] == ["4 s", "3 min 05 s", "2 h 07 min"]


# --- the page through AppTest ---------------------------------------------------------------------

def test_page_renders_two_real_runs_overlaid(logs_root, monkeypatch):
    page = open_page(logs_root, monkeypatch)
    assert not page.exception and not page.error and not page.warning
    assert page.title[0].value == "Training dashboard"
    assert page.multiselect[0].value == ["small", "wide"]
    curves = chart(page)
    names = {trace["name"] for trace in curves["data"]}
    assert {"small · train", "small · validation", "small · test", "wide · validation"} <= names
    colours = {t["legendgroup"]: t.get("line", {}).get("color") for t in curves["data"] if t["mode"] == "lines"}
    assert colours["small"] != colours["wide"]
    assert len(page.get("plotly_chart")) == 3  # curves, learning rate, tokens per second
    assert list(page.dataframe[0].value.Run) == ["small", "wide"]
    assert page.get("download_button")


def test_log_scale_measure_and_axis(logs_root, monkeypatch):
    page = open_page(logs_root, monkeypatch)
    assert chart(page)["layout"]["yaxis"]["type"] == "log"
    page.toggle(key="log_y").set_value(False).run()
    assert chart(page)["layout"]["yaxis"]["type"] == "linear"
    page.selectbox(key="x_axis").set_value("tokens").run()
    page.segmented_control(key="measure").set_value("bpc").run()
    layout = chart(page)["layout"]
    assert layout["xaxis"]["title"]["text"] == "Tokens seen"
    assert layout["yaxis"]["title"]["text"] == "Bits per character"
    assert not page.exception
    frame = curve_frame(find_runs([logs_root])[0])
    expected = frame[(frame.run == "small") & (frame.split == "val")]
    drawn = next(t for t in chart(page)["data"] if t["name"] == "small · validation")
    assert values(drawn, "x") == expected.tokens.tolist() and values(drawn) == pytest.approx(expected.bpc.tolist())


def test_the_page_draws_lmdemo_curves_figures(logs_root, monkeypatch):
    """Its three charts are lmdemo.curves' figures for the same runs and options: the app's Training curves tab
    draws with those functions too, so the two show the same thing."""
    page = open_page(logs_root, monkeypatch)
    page.segmented_control(key="measure").set_value("bpc").run()
    page.selectbox(key="x_axis").set_value("tokens").run()
    page.toggle(key="log_y").set_value(False).run()
    page.slider(key="smoothing").set_value(0.3).run()
    runs = find_runs([logs_root])[0]
    frame, colours = curve_frame(runs), curves.colours_for(run.name for run in runs)
    expected = [curves.runs_figure(runs, "bpc", "tokens", False, 0.3),
                curves.small_chart(frame, "lr", "Learning rate", "tokens", colours, schedule=True),
                curves.small_chart(frame, "tokens_per_sec", "Tokens per second", "tokens", colours)]
    assert [chart(page, index) for index in range(3)] == [json.loads(figure.to_json()) for figure in expected]


def test_single_run_selection_and_config_diff(logs_root, monkeypatch):
    page = open_page(logs_root, monkeypatch)
    diff = page.dataframe[1].value
    assert "hidden_size" in set(diff.Setting) and "lr" in set(diff.Setting)
    page.multiselect[0].set_value(["wide"]).run()
    assert {t["legendgroup"] for t in chart(page)["data"]} == {"wide"}
    assert len(page.dataframe) == 1  # no diff for a single run


def test_several_roots_a_root_or_a_folder_inside_it(logs_root, tmp_path, monkeypatch):
    other = write_run(tmp_path / "other" / "known", KNOWN_LOG).parent
    page = open_page(os.pathsep.join([str(tmp_path / "missing"), str(logs_root), str(other)]), monkeypatch)
    assert page.selectbox(key="logs_root").options == ["All 3 roots", str(tmp_path / "missing"), str(logs_root),
                                                       str(other)]
    assert "does not exist" in page.error[0].value
    assert page.multiselect[0].options == [f"{logs_root.name}/small", f"{logs_root.name}/wide", "other/known"]
    page.selectbox(key="logs_root").set_value(str(logs_root)).run()
    assert not page.error and page.multiselect[0].value == ["small", "wide"]
    page.text_input(key="logs_folder").input("wide").run()
    assert page.multiselect[0].options == ["wide"]


@pytest.mark.parametrize("typed", ["outside", "../outside", "known/../../outside", "link", "/"])
def test_a_folder_outside_the_roots_is_refused_and_not_read(tmp_path, monkeypatch, typed):
    root = write_run(tmp_path / "root" / "known", KNOWN_LOG).parent
    outside = write_run(tmp_path / "outside", OLD_LOG)
    (root / "link").symlink_to(outside, target_is_directory=True)
    read = []
    for name in ("find_runs", "read_metrics"):
        original = getattr(lmdemo.metrics, name)
        monkeypatch.setattr(lmdemo.metrics, name, lambda path, original=original: read.append(path) or original(path))
    page = open_page(root, monkeypatch)
    assert page.multiselect[0].options == ["known"]
    read.clear()
    page.text_input(key="logs_folder").input(str(outside) if typed == "outside" else typed).run()
    assert not page.exception and "outside the logs folders" in page.error[0].value
    assert not page.multiselect[0].options and not page.get("plotly_chart")
    assert read == []


def test_live_view_shows_a_record_appended_after_the_first_render(tmp_path, monkeypatch):
    log = write_run(tmp_path / "live", KNOWN_LOG) / "metrics.jsonl"
    page = open_page(tmp_path, monkeypatch)
    page.segmented_control(key="measure").set_value("ppl").run()  # the log has losses only
    page.toggle(key="live").set_value(True).run()

    def shown() -> tuple[str, int]:
        validation = next(t for t in chart(page)["data"] if t["name"] == "live · validation")
        return page.dataframe[0].value["Last val ppl"].iloc[0], len(values(validation))

    assert shown() == ("5.75", 3)
    with log.open("a") as output:
        output.write(LATER_VAL)
    page.run()
    assert shown() == ("3.49", 4)  # e^1.25


@pytest.mark.parametrize("layout, kind, expected", [
    ("missing", "error", "does not exist"),
    ("file", "error", "is a file"),
    ("empty", "warning", "is empty"),
    ("no logs", "warning", "no metrics.jsonl"),
])
def test_bad_roots_get_a_message(tmp_path, monkeypatch, layout, kind, expected):
    root = tmp_path / "root"
    if layout == "file":
        root.write_text("not a folder")
    elif layout != "missing":
        root.mkdir()
    if layout == "no logs":
        (root / "notes.txt").write_text("hello")
    page = open_page(root, monkeypatch)
    assert not page.exception
    assert expected in " ".join(e.value for e in getattr(page, kind))
    assert not page.get("plotly_chart")


@pytest.mark.parametrize("log, expected", [
    (OLD_LOG, "older version"),
    ('{"schema": 1, "event": "train", "step": 1, "train_loss": 4.0}\nnot json\n'
     '{"schema": 1, "event": "train", "step": 2, "train_loss": 3.0}\n', "skipped line 2: not valid JSON"),
    ('{"schema": 1, "event": "train", "step": 1, "train_loss": 4.0}\n{"schema": 1, "event": "tr',
     "last line is incomplete"),
])
def test_odd_logs_still_plot_with_a_note(tmp_path, monkeypatch, log, expected):
    write_run(tmp_path / "run", log)
    page = open_page(tmp_path, monkeypatch)
    assert not page.exception
    assert expected in messages(page)
    assert chart(page)["data"]


def test_log_without_usable_records(tmp_path, monkeypatch):
    write_run(tmp_path / "run", "garbage\n{}\n")
    page = open_page(tmp_path, monkeypatch)
    assert not page.exception
    assert "no usable records" in messages(page) and "no training or validation records" in messages(page)


def test_hub_repo_offline_message(logs_root, monkeypatch):
    page = open_page(logs_root, monkeypatch)
    page.text_input(key="hub_repo").input("someone/not-cached-lmdemo-model").run()
    assert not page.exception
    assert "offline" in messages(page)
    assert page.get("plotly_chart")  # the local runs are still shown


# --- the real server in Chromium ------------------------------------------------------------------

def test_streamlit_config_listens_on_loopback_without_usage_statistics():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert config["browser"]["gatherUsageStats"] is False


@pytest.fixture(scope="module")
def live_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second root with one hand-written run that a test appends to."""
    root = tmp_path_factory.mktemp("live")
    write_run(root / "known", KNOWN_LOG)
    return root


@pytest.fixture(scope="module")
def server(logs_root, live_root, tmp_path_factory):
    """`streamlit run` from the repository root, so with the repo's .streamlit/config.toml and nothing else."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "streamlit", "run", str(PAGE), "--server.port", str(port),
               "--", "--logs", str(logs_root), "--logs", str(live_root)]
    log = tmp_path_factory.mktemp("server") / "streamlit.log"
    with serving(command, f"{url}/_stcore/health", log, cwd=ROOT):
        yield url


def outward_address() -> str | None:
    """This machine's address on the route out (no packet is sent), if it has one that is not loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the interface
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_real_server_is_not_reachable_from_other_machines(server):
    address = outward_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, int(server.rsplit(":", 1)[1])), timeout=5).close()


# The number of points plotly drew for the first trace whose name ends with `suffix` (0 if none yet).
POINTS = """suffix => {
    const plot = document.querySelector('[data-testid=stPlotlyChart] .js-plotly-plot');
    const index = plot && plot._fullData ? plot._fullData.findIndex(t => t.name.endsWith(suffix)) : -1;
    return index < 0 ? 0 : plot.calcdata[index].length;
}"""


@pytest.mark.browser
def test_chart_in_a_real_browser(server):
    with chromium_page(server) as page:
        page.wait_for_selector("[data-testid=stPlotlyChart] .js-plotly-plot", timeout=60_000)
        legend = page.locator(".js-plotly-plot .legend").first.text_content()
        assert "/small · validation" in legend and "/wide · validation" in legend and "/known · validation" in legend
        assert page.get_by_text("Training dashboard").first.is_visible()
        assert not page.elsewhere, f"the page fetched from other hosts: {page.elsewhere}"


@pytest.mark.browser
def test_auto_refresh_in_a_real_browser_draws_an_appended_record(server, live_root):
    with chromium_page(server) as page:
        page.wait_for_function(POINTS, arg="/known · validation", timeout=60_000)
        assert page.evaluate(POINTS, "/known · validation") == 3
        page.get_by_text("Auto-refresh").click()
        page.wait_for_selector("text=Every (seconds)", timeout=60_000)
        with (live_root / "known" / "metrics.jsonl").open("a") as output:
            output.write(LATER_VAL)
        page.wait_for_function(f"() => ({POINTS})('/known · validation') === 4", timeout=60_000)
