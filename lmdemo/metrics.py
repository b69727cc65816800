"""The metrics log: one JSON object per line, written by training, read by the dashboard and tests.

Records are appended a line at a time, and a resumed run cuts the log back to the byte offset its
state recorded. The reader survives a half-written last line and hand-edited, truncated or foreign
files: bad lines are skipped and reported, never raised.
Schema (version 1) is documented in docs/training.md.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
SCHEMA_VERSION = 1
EVENTS = ("start", "train", "val", "test", "end")
LN2 = math.log(2)
MAX_LOSS = 700.0  # exp(700) is near float64's limit: a diverged run's perplexity is huge, not an overflow
MIN_IMPROVEMENT = 1e-4  # relative: a validation loss must beat the best by more than this to be the new best


def improves(loss: float, best: float) -> bool:
    """Whether `loss` makes a new best over `best` (inf before the first): the one definition of "the best
    model". Training saves the weights of each new best; cards, the app and the dashboard name that record
    (`Metrics.best`), so a figure shown is always the figure of the weights shipped."""
    if not math.isfinite(best):
        return math.isfinite(loss)
    return loss < best - MIN_IMPROVEMENT * abs(best)


def perplexity(loss: float) -> float:
    """exp(mean loss in nats), the one conversion every figure goes through."""
    return math.exp(min(loss, MAX_LOSS))


def bits(loss: float) -> float:
    """A loss in nats as bits (bits per character for character models)."""
    return loss / LN2


def bits_per_character(loss: float, tokens_per_character: float) -> float:
    """Bits per character of the scored text: the unit that compares models of any tokenisation
    (total nats ÷ characters ÷ ln 2). For word models with `<unk>` it is a lower bound: an unknown
    word is never spelt out, and lower-casing or dropped punctuation make the text easier."""
    return bits(loss) * tokens_per_character


def loss_record(prefix: str, loss: float, tokens_per_character: float) -> dict[str, float]:
    """`{prefix}_loss` (nats/token), `{prefix}_ppl` and `{prefix}_bpc` (bits per character of the text)."""
    return {f"{prefix}_loss": loss, f"{prefix}_ppl": perplexity(loss),
            f"{prefix}_bpc": bits_per_character(loss, tokens_per_character)}


class MetricsWriter:
    """Appends one line per record; `offset` is the log's size after the last whole record.

    A run state records the offset, so a resumed run cuts the log back to what its state had seen (a
    record written after the last save, or half of one, goes) and appends from there.
    """

    def __init__(self, path: str | Path, offset: int = 0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            if f.tell() < offset:
                raise ValueError(f"{self.path} is shorter than the {offset} bytes the run state recorded")
            f.truncate(offset)
        self.offset = offset

    def append(self, event: str, **values: Any) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown metrics event {event!r}")
        # A diverged run's NaN/inf is logged as null: JSON has no such numbers.
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}
        line = (json.dumps({"schema": SCHEMA_VERSION, "event": event, **clean}) + "\n").encode()
        with open(self.path, "ab") as f:
            f.write(line)
        self.offset += len(line)

    def sync(self) -> None:
        """Flush the log to the disk: a run state that records `offset` must not reach it before the records."""
        with open(self.path, "ab") as f:
            os.fsync(f.fileno())


@dataclass
class Metrics:
    """What a metrics file holds, plus the lines that could not be used and why.

    An unparsable last line is not a problem but `partial_tail`: a log being written by a tool that
    appends in place, or one cut off by a crash, ends that way.
    """

    path: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    partial_tail: bool = False

    def events(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event") == event]

    def last(self, event: str) -> dict[str, Any] | None:
        found = self.events(event)
        return found[-1] if found else None

    def trained(self) -> dict[str, Any]:
        """The last record of training itself: the final test's record would add its scoring time."""
        found = [r for r in self.records if r.get("event") in ("train", "val")]
        return found[-1] if found else {}

    def best(self, key: str = "val_loss") -> dict[str, Any] | None:
        """The record whose weights training kept as the best model: each new best by `improves`, in order."""
        best = None
        for record in self.records:
            value = record.get(key)
            if isinstance(value, (int, float)) and improves(value, math.inf if best is None else best[key]):
                best = record
        return best


def read_metrics(path: str | Path) -> Metrics:
    """Parse a metrics file leniently: skips blank, corrupt or half-written lines and says which."""
    path = Path(path)
    metrics = Metrics(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as error:
        metrics.problems.append(f"cannot read {path}: {error.strerror or error}")
        return metrics
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                metrics.partial_tail = True
            else:
                metrics.problems.append(f"line {number}: not valid JSON")
            continue
        if not isinstance(record, dict):
            metrics.problems.append(f"line {number}: not a JSON object")
            continue
        upgraded = _upgrade(record)
        if upgraded is None:
            metrics.problems.append(f"line {number}: unknown record (no event, step or loss)")
            continue
        metrics.records.append(upgraded)
    return metrics


def _upgrade(record: dict[str, Any]) -> dict[str, Any] | None:
    """Bring an older or looser record to the current schema; None if it is not a metrics record.

    Records without `schema` (hand-written or from early versions) name losses `loss`/`val_loss`
    and have no `event`: it is inferred from the keys present.
    """
    record = dict(record)
    if "event" not in record:
        if any(k.startswith("test_") for k in record):
            record["event"] = "test"
        elif "val_loss" in record or "val_ppl" in record:
            record["event"] = "val"
        elif "train_loss" in record or "loss" in record:
            record["event"] = "train"
        else:
            return None
    if "loss" in record and "train_loss" not in record:
        record["train_loss"] = record.pop("loss")
    for prefix in ("train", "val", "test"):
        loss, ppl = record.get(f"{prefix}_loss"), record.get(f"{prefix}_ppl")
        if isinstance(loss, (int, float)) and not isinstance(ppl, (int, float)):
            record[f"{prefix}_ppl"] = perplexity(loss)
        elif isinstance(ppl, (int, float)) and not isinstance(loss, (int, float)) and ppl > 0:
            record[f"{prefix}_loss"] = math.log(ppl)
    record.setdefault("schema", 0)
    return record


@dataclass
class Run:
    """A folder holding a metrics log, with its config when present."""

    name: str
    path: Path
    metrics: Metrics
    config: dict[str, Any]

    @property
    def level(self) -> str:
        return str(self.config.get("level", "word"))


def find_runs(roots: Iterable[str | Path]) -> tuple[list[Run], list[str]]:
    """Every folder under `roots` with a metrics log, and the problems met on the way.

    A folder with a log is not searched further, so a run's `model/` copy of its own log is not
    listed twice. Hidden folders are skipped, links are not followed into folders, and a log or
    config that resolves outside its root is refused: a logs root is all that is read.
    """
    roots = [Path(root).expanduser() for root in roots]
    runs: list[Run] = []
    problems: list[str] = []
    for root in roots:
        if not root.exists():
            problems.append(f"{root} does not exist")
            continue
        if not root.is_dir():
            problems.append(f"{root} is not a folder")
            continue
        if not any(root.iterdir()):
            problems.append(f"{root} is empty")
            continue
        found = 0
        for folder in _log_folders(root):
            escaping = [name for name in (METRICS_FILE, CONFIG_FILE)
                        if (folder / name).exists() and not _inside(folder / name, root)]
            if escaping:
                problems.append(f"skipped {folder}: {' and '.join(escaping)} links outside {root}")
                continue
            runs.append(load_run(folder, name=_run_name(root, folder, qualify=len(roots) > 1)))
            found += 1
        if not found:
            problems.append(f"no {METRICS_FILE} under {root}")
    return runs, problems


def _log_folders(root: Path) -> Iterable[Path]:
    for folder, subfolders, files in os.walk(root, followlinks=False):
        subfolders.sort()
        if METRICS_FILE in files:
            subfolders.clear()
            yield Path(folder)
        else:
            subfolders[:] = [name for name in subfolders if not name.startswith(".")]


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def load_run(folder: str | Path, name: str | None = None) -> Run:
    folder = Path(folder)
    config: dict[str, Any] = {}
    if (folder / CONFIG_FILE).exists():
        try:
            loaded = json.loads((folder / CONFIG_FILE).read_text())
            config = loaded if isinstance(loaded, dict) else {}
        except (json.JSONDecodeError, OSError):
            config = {}
    return Run(name or folder.name, folder, read_metrics(folder / METRICS_FILE), config)


def _run_name(root: Path, folder: Path, qualify: bool) -> str:
    """The folder relative to its root, prefixed by the root's name when several roots are listed."""
    relative = folder.relative_to(root)
    name = root.resolve().name if str(relative) == "." else str(relative)
    return f"{root.resolve().name}/{name}" if qualify and str(relative) != "." else name
