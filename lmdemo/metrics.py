"""The metrics log: one JSON object per line, written by training, read by the dashboard and tests.

Writes replace the whole file atomically, so a reader never sees half a record and a resumed run
can cut the log back to the records its checkpoint had seen. The reader still survives
hand-edited, truncated or foreign files: bad lines are skipped and reported, never raised.
Schema (version 1) is documented in README.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmdemo.files import write_atomic

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
SCHEMA_VERSION = 1
EVENTS = ("start", "train", "val", "test")
LN2 = math.log(2)


def loss_record(prefix: str, loss: float, level: str) -> dict[str, float]:
    """`{prefix}_loss` and `{prefix}_ppl` (and `{prefix}_bpc` for character models) from a mean loss in nats."""
    record = {f"{prefix}_loss": loss, f"{prefix}_ppl": math.exp(min(loss, 700.0))}
    if level == "char":
        record[f"{prefix}_bpc"] = loss / LN2
    return record


class MetricsWriter:
    """Appends records by rewriting the file atomically; cheap at the few thousand records a run has."""

    def __init__(self, path: str | Path, keep: int | None = None):
        self.path = Path(path)
        existing = read_metrics(self.path).records if self.path.exists() else []
        self.records: list[dict[str, Any]] = existing[:keep] if keep is not None else existing
        self._flush()

    def append(self, event: str, **values: Any) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown metrics event {event!r}")
        # A diverged run's NaN/inf is logged as null: JSON has no such numbers.
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}
        self.records.append({"schema": SCHEMA_VERSION, "event": event, **clean})
        self._flush()

    def _flush(self) -> None:
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.records))


@dataclass
class Metrics:
    """What a metrics file holds, plus the lines that could not be used and why."""

    path: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def events(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event") == event]

    def last(self, event: str) -> dict[str, Any] | None:
        found = self.events(event)
        return found[-1] if found else None

    def best(self, key: str = "val_loss") -> dict[str, Any] | None:
        scored = [r for r in self.records if isinstance(r.get(key), (int, float))]
        return min(scored, key=lambda r: r[key]) if scored else None


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
            last = number == len(lines)
            metrics.problems.append(f"line {number}: {'half-written last line' if last else 'not valid JSON'}")
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
            record[f"{prefix}_ppl"] = math.exp(min(loss, 700.0))
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
    """Every folder under `roots` with a metrics log, and the problems met on the way."""
    runs, problems = [], []
    for root in roots:
        root = Path(root).expanduser()
        if not root.exists():
            problems.append(f"{root} does not exist")
            continue
        if not root.is_dir():
            problems.append(f"{root} is not a folder")
            continue
        files = sorted(root.rglob(METRICS_FILE)) if not (root / METRICS_FILE).exists() else [root / METRICS_FILE]
        if not files:
            problems.append(f"no {METRICS_FILE} under {root}")
        for file in files:
            runs.append(load_run(file.parent, name=_run_name(root, file.parent)))
    return runs, problems


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


def _run_name(root: Path, folder: Path) -> str:
    relative = folder.relative_to(root)
    return str(relative) if str(relative) != "." else folder.name
