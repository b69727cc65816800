"""What the training dashboard shows, computed from run folders: curves, smoothing, summaries, diffs.

Kept out of dashboard/main.py so the page is only layout and widgets, and everything it shows can
be tested without a browser. Runs come from `lmdemo.metrics` (local folders) or the Hub.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from lmdemo.config import PRESETS, data_name
from lmdemo.metrics import CONFIG_FILE, METRICS_FILE, SCHEMA_VERSION, Run, bits, load_run, perplexity

X_AXES = {"step": "Step", "epoch": "Epoch", "tokens": "Tokens seen", "time": "Wall time (s)"}
MEASURES = {"ppl": "Perplexity", "loss": "Loss (nats/token)", "bpc": "Bits per character"}
SPLITS = ("train", "val", "test")
CURVE_COLUMNS = ["run", "split", *X_AXES, "lr", "tokens_per_sec", *MEASURES]
RUNNING_WITHIN_S = 120.0  # a log touched this recently without a test result is taken as still training
MISSING = "—"


class RunSourceError(ValueError):
    """A run log could not be fetched; the message says why in words a user can act on."""


class OutsideLogsError(ValueError):
    """A folder asked for in the page lies outside the logs roots the dashboard was started with."""


def dashboard_parser() -> argparse.ArgumentParser:
    """The dashboard's own options, those after `--` in `streamlit run dashboard/main.py -- …`."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--logs", action="append", default=[])
    return parser


def logs_roots(argv: Sequence[str], environment: str = "") -> list[Path]:
    """The only folders the dashboard may read, fixed when it starts; [] means the default ones.

    `--logs PATH` (repeatable) in `argv`, else the `environment` value (LMDEMO_LOGS: paths separated
    by os.pathsep). Relative paths are taken from the working directory, like any command's.
    """
    given = dashboard_parser().parse_known_args(list(argv))[0].logs or environment.split(os.pathsep)
    roots = [Path(os.path.abspath(Path(text.strip()).expanduser())) for text in given if text.strip()]
    return list(dict.fromkeys(roots))


def folder_within(text: str, root: Path, roots: Sequence[Path]) -> Path:
    """The folder typed in the page (relative to the chosen `root`, or absolute), if it lies in one of `roots`.

    Checked on the real path, `..` and links followed, before anything is read; otherwise the page
    would open any folder the server can read. The refusal does not say whether the folder exists.
    """
    try:
        folder = Path(os.path.abspath(root / Path(text.strip()).expanduser()))
        inside = any(Path(os.path.realpath(folder)).is_relative_to(os.path.realpath(allowed)) for allowed in roots)
    except ValueError:  # a NUL byte: no folder at all
        inside = False
    if not inside:
        raise OutsideLogsError(f"{text.strip()} is outside the logs folders this dashboard was started with; "
                               f"nothing was read (start it with --logs FOLDER to allow another)")
    return folder


def ema(values: Sequence[float | None] | pd.Series, weight: float) -> pd.Series:
    """TensorBoard's smoothing: an exponential moving average debiased so early points are not pulled to 0.

    That is pandas' `ewm(adjust=True)`. Missing or non-finite values stay gaps and do not disturb the
    average (`ignore_na`), so a diverged step does not smear into the points after it.
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1) (got {weight})")
    series = pd.Series(values, dtype=float)
    finite = series.where(np.isfinite(series))
    return finite.ewm(alpha=1.0 - weight, adjust=True, ignore_na=True).mean().where(finite.notna())


def curve_frame(runs: Iterable[Run]) -> pd.DataFrame:
    """Every train, validation and test point of the runs, one row each (long form, for plots and CSV).

    Old logs without a step number get their position in the log; bits per character are derived
    from the loss for character models whose log lacks them.
    """
    rows = []
    for run in runs:
        for position, record in enumerate(run.metrics.records, 1):
            split = record.get("event")
            if split not in SPLITS:
                continue
            loss = _finite_or_none(record.get(f"{split}_loss"))
            bpc = _finite_or_none(record.get(f"{split}_bpc"))
            if bpc is None and loss is not None and run.level == "char":
                bpc = bits(loss)
            step = _finite_or_none(record.get("step"))
            rows.append({
                "run": run.name, "split": split, "step": position if step is None else step,
                "epoch": _finite_or_none(record.get("epoch")), "tokens": _finite_or_none(record.get("tokens")),
                "time": _finite_or_none(record.get("time")), "lr": _finite_or_none(record.get("lr")),
                "tokens_per_sec": _finite_or_none(record.get("tokens_per_sec")),
                "ppl": _finite_or_none(record.get(f"{split}_ppl")), "loss": loss, "bpc": bpc,
            })
    return pd.DataFrame(rows, columns=CURVE_COLUMNS).astype({c: float for c in CURVE_COLUMNS[2:]})


def smooth(frame: pd.DataFrame, column: str, weight: float) -> pd.Series:
    """`ema` of one column along each run's train, validation and test series separately, in log order."""
    return frame.groupby(["run", "split"], sort=False)[column].transform(lambda series: ema(series, weight))


def describe_model(config: dict[str, Any]) -> str:
    """'char · 2×512' and the preset whose model shape it has, if any: how runs are told apart at a glance."""
    if not config:
        return MISSING
    shape = ("level", "emb_size", "hidden_size", "num_layers")
    text = f"{config.get('level', '?')} · {config.get('num_layers', '?')}×{config.get('hidden_size', '?')}"
    presets = [name for name, values in PRESETS.items() if all(values.get(k) == config.get(k) for k in shape)]
    return f"{text} ({presets[0]})" if presets else text


def run_status(run: Run, now: float | None = None) -> str:
    """'finished' once tested or past its epoch or step budget, 'running' while its log changes, else 'stopped'."""
    last = run.metrics.records[-1] if run.metrics.records else {}
    epochs, max_steps = _finite_or_none(run.config.get("epochs")), _finite_or_none(run.config.get("max_steps"))
    if run.metrics.last("test") or (epochs is not None and (_finite_or_none(last.get("epoch")) or 0) >= epochs) \
            or (max_steps is not None and (_finite_or_none(last.get("step")) or 0) >= max_steps):
        return "finished"
    try:
        age = (time.time() if now is None else now) - run.metrics.path.stat().st_mtime
    except OSError:
        return "stopped"
    return "running" if age < RUNNING_WITHIN_S else "stopped"


SUMMARY_UNITS = {"ppl": "ppl", "loss": "loss", "bpc": "bits/char"}  # a measure in the summary's column names


def summary_frame(runs: Iterable[Run], now: float | None = None, measure: str = "ppl") -> pd.DataFrame:
    """One row per run: its shape, size and the figures worth comparing, in `measure` (a key of MEASURES)."""
    unit = SUMMARY_UNITS[measure]
    rows = []
    for run in runs:
        start, test, last_val = run.metrics.last("start") or {}, run.metrics.last("test") or {}, \
            run.metrics.last("val") or {}
        best = run.metrics.best("val_loss") or {}
        speeds = [r["tokens_per_sec"] for r in run.metrics.events("train")
                  if _finite_or_none(r.get("tokens_per_sec")) is not None]
        times = [r["time"] for r in run.metrics.records if _finite_or_none(r.get("time")) is not None]
        rows.append({
            "Run": run.name, "Model": describe_model(run.config), "Data": _data(run.config),
            "Parameters": _finite_or_none(start.get("params")),
            f"Best val {unit}": _figure(best, "val", measure, run.level),
            "Best at epoch": _finite_or_none(best.get("epoch")),
            f"Last val {unit}": _figure(last_val, "val", measure, run.level),
            f"Test {unit}": _figure(test, "test", measure, run.level),
            "Training time": format_duration(max(times)) if times else MISSING,
            "Tokens/s": round(float(pd.Series(speeds).median())) if speeds else None,
            "Status": run_status(run, now),
        })
    frame = pd.DataFrame(rows)
    return frame.astype({"Parameters": "Int64", "Tokens/s": "Int64"}) if rows else frame


def _figure(record: dict[str, Any], split: str, measure: str, level: str) -> float | None:
    """A record's `measure` for `split`; a character model's bits per character from its loss when not logged."""
    value = _finite_or_none(record.get(f"{split}_{measure}"))
    loss = _finite_or_none(record.get(f"{split}_loss"))
    return bits(loss) if value is None and measure == "bpc" and level == "char" and loss is not None else value


def models_table(runs: Iterable[Run]) -> str:
    """docs/models.md's table of shipped models, every figure read from the models' own logs."""
    lines = ["| model | parameters | data | validation (best) | test | bits/char (test, else validation) | training "
             "| speed |",
             "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        config, start = run.config, run.metrics.last("start") or {}
        best, test = run.metrics.best("val_loss") or {}, run.metrics.last("test") or {}
        unit = "chars" if run.level == "char" else "tokens"
        shape = (f"{config.get('num_layers', '?')}×{config.get('hidden_size', '?')}, emb {config.get('emb_size', '?')}"
                 + (", tied" if config.get("tie_weights") else ""))
        kind = {"char": "symbols", "word": "words", "bpe": "BPE tokens"}.get(run.level, "tokens")
        data = f"{_data(config)}, {config.get('vocab_size', 0):,} {kind}"
        speeds = sorted(r["tokens_per_sec"] for r in run.metrics.events("train")
                        if _finite_or_none(r.get("tokens_per_sec")))
        last = run.metrics.trained()
        hardware = str(start.get("hardware", "?")).split(", torch")[0]
        lines.append(" | ".join([
            f"| `{run.path}`", f"{int(start.get('params', 0)):,} ({shape})", data,
            _score(best, "val", run.level), _score(test, "test", run.level),
            _bits_per_char(test, "test", run.level) if test else _bits_per_char(best, "val", run.level),
            f"{(last.get('time') or 0) / 60:.1f} min, {(last.get('tokens') or 0) / 1e6:.1f}M {unit}, "
            f"{start.get('precision', '?')}, {hardware}",
            f"{speeds[len(speeds) // 2]:,.0f} {unit}/s |" if speeds else f"{MISSING} |"]))
    return "\n".join(lines)


def _score(record: dict[str, Any], split: str, level: str) -> str:
    loss = _finite_or_none(record.get(f"{split}_loss"))
    if loss is None:
        return MISSING
    if level == "char":
        return f"{loss:.4f} nats/char (ppl {perplexity(loss):.2f})"
    unk = _finite_or_none(record.get(f"{split}_unk_rate"))
    return f"ppl {perplexity(loss):.2f}" + (f" (<unk> {unk:.2%} of tokens)" if unk else "")


def _bits_per_char(record: dict[str, Any], split: str, level: str) -> str:
    """Bits per character; a lower bound (≥) where `<unk>` words were never spelt out."""
    bpc = _finite_or_none(record.get(f"{split}_bpc"))
    loss = _finite_or_none(record.get(f"{split}_loss"))
    if bpc is None and level == "char" and loss is not None:
        bpc = bits(loss)
    if bpc is None:
        return MISSING
    bound = "≥ " if level == "word" and _finite_or_none(record.get("test_unk_rate")) != 0 else ""
    return f"{bound}{bpc:.3f}" + ("" if split == "test" else " (validation)")


def config_diff(first: dict[str, Any], second: dict[str, Any]) -> pd.DataFrame:
    """The settings two runs do not share, one row each; a setting only one of them has shows '—'."""
    keys = sorted(k for k in first.keys() | second.keys() if first.get(k, MISSING) != second.get(k, MISSING))
    return pd.DataFrame({"setting": keys, "first": [_text(first.get(k, MISSING)) for k in keys],
                         "second": [_text(second.get(k, MISSING)) for k in keys]})


def log_notes(run: Run) -> list[str]:
    """What a reader of this run's curves should know about its log: skipped lines, schema, live tail."""
    notes = [f"skipped {problem}" for problem in run.metrics.problems]
    schemas = {r.get("schema") for r in run.metrics.records}
    if not run.metrics.records:
        notes.append(f"no usable records in {run.metrics.path.name}")
    if 0 in schemas:
        notes.append("written by an older version (records without schema/event): read as best as possible")
    if any(isinstance(s, int) and s > SCHEMA_VERSION for s in schemas):
        notes.append(f"written by a newer version (schema > {SCHEMA_VERSION}): some values may be missing")
    if run.metrics.partial_tail:
        notes.append("last line is incomplete (still being written, or cut off): left out")
    return notes


def download_run(repo_id: str, revision: str | None = None) -> Run:
    """A Hub model repo's training log and config, through the Hugging Face cache (HF_HUB_OFFLINE honoured)."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise RunSourceError(f"{repo_id!r} is not a Hub repo id (expected owner/name)") from None
    if repo_id.count("/") != 1:
        raise RunSourceError(f"{repo_id!r} is not a Hub model repo id (expected owner/name)")
    try:
        metrics_path = Path(hf_hub_download(repo_id, METRICS_FILE, revision=revision))
    except (OfflineModeIsEnabled, FileNotFoundError):
        raise RunSourceError(f"{repo_id} is not in the local Hugging Face cache and the Hub cannot be "
                             f"reached (offline?)") from None
    except RepositoryNotFoundError:
        raise RunSourceError(f"no Hub model repo {repo_id} (or it is private or gated)") from None
    except EntryNotFoundError:
        raise RunSourceError(f"{repo_id} has no {METRICS_FILE}: it was not trained with lmdemo") from None
    except (HfHubHTTPError, OSError) as error:
        raise RunSourceError(f"cannot fetch {repo_id} from the Hub: {str(error).splitlines()[0]}") from None
    try:
        hf_hub_download(repo_id, CONFIG_FILE, revision=revision)
    except (EntryNotFoundError, HfHubHTTPError, OSError):
        pass  # the curves do not need it; the summary shows '—' for the model
    return load_run(metrics_path.parent, name=f"hub:{repo_id}")


def format_duration(seconds: float) -> str:
    """'42 s', '3 min 05 s', '2 h 07 min': training times span all three."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _finite_or_none(value: Any) -> float | None:
    """A log value as a float, or None for a missing, non-numeric or non-finite one (a hand-edited log)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _data(config: dict[str, Any]) -> str:
    return data_name(str(config.get("data") or ""), config.get("data_config"))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)
