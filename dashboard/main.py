"""Training dashboard: `streamlit run dashboard/main.py [-- --logs FOLDER [--logs FOLDER ...]]`.

Only layout and widgets live here; reading logs and shaping what is shown is `lmdemo.runs`.
The logs roots come from `--logs`, else the LMDEMO_LOGS environment variable (how tests pass them),
else this repository's runs/ and checkpoints/. They are all the page may read: the sidebar picks
among them or a folder inside one, like TensorBoard's fixed --logdir.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import streamlit as st

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `streamlit run` puts dashboard/, not the repo root, on the path
    sys.path.insert(0, str(REPO))

from lmdemo.curves import CURVES_TITLE, colours_for, curves_figure, small_chart
from lmdemo.metrics import Run, find_runs, load_run
from lmdemo.runs import (
    MEASURES,
    MISSING,
    SUMMARY_UNITS,
    X_AXES,
    OutsideLogsError,
    RunSourceError,
    config_diff,
    curve_frame,
    download_run,
    folder_within,
    log_notes,
    logs_roots,
    summary_frame,
)

DEFAULT_ROOTS = (REPO / "runs", REPO / "checkpoints")
LIVE_INTERVALS_S = (2, 5, 10, 30)
ALL = ""  # the "Logs root" option that reads every allowed root


def allowed_roots() -> tuple[list[Path], bool]:
    """The roots given at start (`-- --logs`, LMDEMO_LOGS), else the default ones that exist; and which it was."""
    given = logs_roots(sys.argv[1:], os.environ.get("LMDEMO_LOGS", ""))
    return (given, True) if given else ([root for root in DEFAULT_ROOTS if root.is_dir()], False)


def chosen_folders(roots: list[Path]) -> list[Path]:
    """The root picked in the sidebar, or a folder typed inside it; every root by default."""
    if not roots:
        return []
    options = [ALL, *map(str, roots)] if len(roots) > 1 else [str(roots[0])]
    with st.sidebar:
        root = st.selectbox("Logs root", options, key="logs_root",
                            format_func=lambda option: f"All {len(roots)} roots" if option == ALL else option,
                            help="The folders the dashboard was started with (`--logs`): the only ones it reads.")
        typed = st.text_input("Folder inside it", key="logs_folder", disabled=root == ALL,
                              placeholder="pick one root first" if root == ALL else "all of it",
                              help="A sub-folder of the root (relative to it, or absolute) to narrow the runs.")
    if root == ALL:
        return roots
    if not typed.strip():
        return [Path(root)]
    try:
        return [folder_within(typed, Path(root), roots)]
    except OutsideLogsError as error:
        st.error(f"{error}.")
        return []


def discover(folders: list[Path], quiet: bool) -> list[Run]:
    """The runs in the chosen folders, telling the page what went wrong (`quiet`: only that there are none)."""
    if quiet:
        runs = find_runs(folders)[0]
        if not runs:
            st.info("No training runs yet. Train one, e.g. `python -m lmdemo train --preset shakespeare-char "
                    "--out runs/shakespeare`, or enter a Hub model repo in the sidebar.")
        return runs
    readable = []
    for folder in folders:
        if not folder.exists():
            st.error(f"The logs folder `{folder}` does not exist.")
        elif not folder.is_dir():
            st.error(f"`{folder}` is a file, not a folder: choose the folder that holds the runs.")
        else:
            readable.append(folder)
    if not readable:
        return []
    runs, problems = find_runs(readable)
    hint = "" if runs else " Choose a folder that holds training runs (folders with a metrics.jsonl)."
    for problem in problems:
        st.warning(f"{problem}.{hint}")
    return runs


@st.cache_data(ttl=300, show_spinner="Fetching the log from the Hugging Face Hub…")
def hub_run(repo_id: str) -> Run:
    return download_run(repo_id)


def sidebar() -> tuple[list[Run], dict]:
    """Every control, and the runs they pick."""
    with st.sidebar:
        st.header("Runs")
    roots, given = allowed_roots()
    folders = chosen_folders(roots)
    runs = discover(folders, quiet=not given and folders == roots)  # the default roots may well be empty
    with st.sidebar:
        hub_id = st.text_input("Hub model repo", key="hub_repo", placeholder="owner/name",
                               help="Also show the training log shipped in a Hugging Face Hub model repo.")
    if hub_id.strip():
        try:
            runs.append(hub_run(hub_id.strip()))
        except RunSourceError as error:
            st.warning(f"Hub: {error}")
    with st.sidebar:
        names = [run.name for run in runs]
        # No key: a new root brings new options, and with them a fresh default selection.
        chosen = st.multiselect("Show runs", names, default=names[:8],
                                disabled=not names, placeholder="No runs found" if not names else "Pick runs")
        st.header("Chart")
        options = dict(
            measure=st.segmented_control("Measure", list(MEASURES), format_func=MEASURES.get,
                                         default=default_measure([run for run in runs if run.name in chosen]),
                                         required=True, key="measure",
                                         help="Bits per character compare models of any tokenisation; perplexity "
                                              "and loss are per token, so only models of one vocabulary compare."),
            x=st.selectbox("X axis", list(X_AXES), format_func=X_AXES.get, key="x_axis"),
            log_y=st.toggle("Log scale", value=True, key="log_y"),
            weight=st.slider("Smoothing", 0.0, 0.99, 0.6, 0.01, key="smoothing",
                             help="Exponential moving average of the training curve, debiased like "
                                  "TensorBoard's; the raw points stay visible, faint."),
            colours=colours_for(run.name for run in runs),
        )
        st.header("Live")
        live = st.toggle("Auto-refresh", key="live", help="Re-read the logs of a run in progress.")
        options["every"] = st.select_slider("Every (seconds)", LIVE_INTERVALS_S, value=5, key="live_every",
                                            disabled=not live) if live else None
    return [run for run in runs if run.name in chosen], options


def default_measure(runs: list[Run]) -> str:
    """Bits per character, as the app's Training curves: the one measure that compares characters, words and
    subwords; perplexity when a run's log has none to draw (one written before they were logged)."""
    drawn = curve_frame(runs).groupby("run").bpc.count()
    return "bpc" if all(drawn.get(run.name, 0) > 0 for run in runs) else "ppl"


def explain_gaps(runs: list[Run], frame: pd.DataFrame, measure: str, x: str) -> None:
    """Say why a selected run draws nothing, rather than leave the reader guessing."""
    for run in runs:
        rows = frame[frame.run == run.name]
        if rows.empty:
            continue
        if measure == "bpc" and rows.bpc.isna().all():
            st.caption(f"**{run.name}** logs no bits per character (a log from before they were recorded): pick "
                       f"perplexity or loss.")
        elif rows[x].isna().all():
            st.caption(f"**{run.name}** has no {X_AXES[x].lower()} in its log (an older log?): try the step axis.")


def show_runs(runs: list[Run], options: dict) -> None:
    """Everything drawn from the logs; re-run alone on the live timer."""
    runs = [load_run(run.path, name=run.name) for run in runs]
    for run in runs:
        for note in log_notes(run):
            st.warning(f"**{run.name}**: {note}")
    frame = curve_frame(runs)
    if frame.empty:
        st.info("The selected runs have no training or validation records yet.")
        return
    measure, x, colours = options["measure"], options["x"], options["colours"]
    explain_gaps(runs, frame, measure, x)

    curves = curves_figure(frame, measure, x, options["log_y"], options["weight"], colours, 480,
                           CURVES_TITLE.format(measure=MEASURES[measure]))
    st.plotly_chart(curves, key="curves")

    if frame[["lr", "tokens_per_sec"]].notna().any().any():
        left, right = st.columns(2)
        left.plotly_chart(small_chart(frame, "lr", "Learning rate", x, colours, schedule=True), key="lr")
        right.plotly_chart(small_chart(frame, "tokens_per_sec", "Tokens per second", x, colours), key="speed")

    st.subheader("Summary")
    show_summary(runs, measure)
    show_config_diff(runs)
    st.download_button("Download these metrics (CSV)", frame.to_csv(index=False), file_name="lmdemo-metrics.csv",
                       mime="text/csv", icon=":material/download:", on_click="ignore")


def show_summary(runs: list[Run], measure: str) -> None:
    """The summary table in the chart's measure, as wide as the page and no wider: short headings, figures as text
    (a missing one "—", where Streamlit would print "None")."""
    unit = SUMMARY_UNITS[measure]
    digits = "{:,.2f}" if measure == "ppl" else "{:.3f}"
    figures = {"Parameters": ("Params", "{:,.0f}"), f"Best val {unit}": ("Best val", digits),
               "Best at epoch": ("at epoch", "{:.2f}"), f"Last val {unit}": ("Last val", digits),
               f"Test {unit}": ("Test", digits), "Tokens/s": ("Tokens/s", "{:,.0f}")}
    table = summary_frame(runs, measure=measure)
    for column, (_, shown) in figures.items():
        table[column] = [MISSING if pd.isna(value) else shown.format(value) for value in table[column]]
    config = {column: st.column_config.TextColumn(label, alignment="right") for column, (label, _) in figures.items()}
    config["Training time"] = st.column_config.TextColumn("Time")
    st.caption(f"Best, last and test figures in {MEASURES[measure].lower()}.")
    st.dataframe(table, hide_index=True, width="stretch", column_config=config)


def show_config_diff(runs: list[Run]) -> None:
    if len(runs) < 2:
        return
    st.subheader("Settings that differ")
    names = [run.name for run in runs]
    left, right = st.columns(2)
    first = left.selectbox("First run", names, index=0, key="diff_first")
    second = right.selectbox("Second run", names, index=1, key="diff_second")
    by_name = {run.name: run for run in runs}
    diff = config_diff(by_name[first].config, by_name[second].config).rename(
        columns={"setting": "Setting", "first": first, "second": second})
    if first == second:
        st.info("Pick two different runs to compare their settings.")
    elif diff.empty:
        st.info(f"{first} and {second} were trained with the same settings.")
    else:
        st.dataframe(diff, hide_index=True)


def main() -> None:
    # An emoji icon is drawn in the page; a ":material/…:" one would be fetched from fonts.gstatic.com.
    st.set_page_config(page_title="lmdemo · training dashboard", page_icon="📈", layout="wide")
    st.title("Training dashboard")
    st.caption("Bits per character, perplexity, loss and learning-rate curves of lmdemo language-model runs, read "
               "from their `metrics.jsonl` logs. Pick runs and chart options in the sidebar.")
    runs, options = sidebar()
    if not runs:
        return
    st.fragment(show_runs, run_every=options["every"])(runs, options)


main()
