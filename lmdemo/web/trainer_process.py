"""A visitor's training job as a child process: `python -m lmdemo train`, on one thread, at low priority.

The child runs in the job's own folder with relative paths (`--data pasted.txt --out char-tiny-1`), so the
model's config, card and messages name the text as the visitor knows it, never by a server path. It dies
with the server (Linux: the parent-death signal), and SIGINT stops it cleanly at its next log interval (it
saves, and the best model so far is kept). The training folder carries a marker naming the server process
that owns it, so a later server deletes the folders of dead servers and nothing else.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from lmdemo.web.train_requests import BPTT, LEVEL_OPTIONS, RECIPE, SIZES, TrainRequest

PACKAGE_PARENT = Path(__file__).resolve().parents[2]
NICENESS = 19  # the trainer yields a core to sampling requests whenever both want it
LEVEL_SPEED = {"char": 1.0, "word": 0.05, "bpe": 0.225}  # tokens a second against a character model's (the softmax)
LOG_EVERY_S, EVAL_EVERY_S = 1.0, 4.0  # how often a job logs and validates, from its size's measured speed
MARKER = ".lmdemo-training-folder"  # in every training folder: the owning server's pid and start time
ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                     "RAYON_NUM_THREADS", "NUMEXPR_NUM_THREADS")}
ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:[^\s/:'\"]+/)+([^\s/:'\"]*)")

# The child dies with the server (the parent-death signal, a clean stop), lowers its priority and then runs the
# command line itself, so its start record reads `python -m lmdemo train ...` like any run's.
BOOTSTRAP = """import ctypes, os, signal, sys
parent, niceness = int(sys.argv.pop(1)), int(sys.argv.pop(1))
try:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != parent:
    sys.exit(1)
os.nice(niceness)
from lmdemo.cli import main
sys.exit(main(sys.argv[1:]))
"""


def train_arguments(request: TrainRequest, out: str) -> list[str]:
    """`python -m lmdemo train` options for a request, relative to the job's folder (its text, and `out` for the
    run folder): its size and level on the shared recipe, a time budget (from the trainer's start, which is the
    visitor's click or the job's turn in line; no epoch limit of its own), one thread, logging and validating every
    few seconds, and the model's cell atlas once it is saved (shown in the Inside tab)."""
    size = SIZES[request.size]
    options: dict[str, Any] = dict(RECIPE, **LEVEL_OPTIONS[request.level])
    speed = size.characters_per_second * LEVEL_SPEED[request.level] / (RECIPE["batch_size"] * BPTT[request.level])
    log_every = max(1, round(speed * LOG_EVERY_S))
    options.update(level=request.level, emb_size=size.emb_size, hidden_size=size.hidden_size,
                   num_layers=size.num_layers, dropout=size.dropout, lr=size.lr, bptt=BPTT[request.level],
                   max_minutes=request.seconds / 60, log_every=log_every,
                   eval_every=max(log_every, round(speed * EVAL_EVERY_S)), threads=1)
    arguments = ["train", "--data", request.text_name, "--out", out, "--quiet", "--atlas"]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        arguments += [flag] if value is True else [flag, f"{value:.6g}" if isinstance(value, float) else str(value)]
    return arguments


def train_command(request: TrainRequest, out: str, niceness: int = NICENESS) -> list[str]:
    return [sys.executable, "-c", BOOTSTRAP, str(os.getpid()), str(niceness), *train_arguments(request, out)]


def start(command: list[str], folder: Path, log: Path) -> subprocess.Popen:
    """Start `command` in `folder`, its output to `log`, every library on one thread, no progress bars."""
    env = {**os.environ, **ONE_THREAD, "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_PARENT), os.environ.get("PYTHONPATH")]))}
    with open(log, "wb") as output:
        return subprocess.Popen(command, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=output,
                                stderr=subprocess.STDOUT)


def cpu_seconds(process: subprocess.Popen) -> float:
    """The CPU time `process` has used (Linux's /proc; 0 elsewhere, or once it has ended)."""
    try:
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except (OSError, ValueError, IndexError):
        return 0.0


def send(process: subprocess.Popen, number: int) -> None:
    try:
        process.send_signal(number)
    except (ProcessLookupError, OSError):
        pass


def end(process: subprocess.Popen, grace: float) -> None:
    """Abort a trainer: a second SIGINT aborts it at once; SIGKILL if it still runs after `grace` seconds."""
    send(process, signal.SIGINT)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def trainer_error(log: Path, code: int | None) -> str:
    """The trainer's one-line error (exit 2), else the end of its output; any server path reduced to its name."""
    try:
        lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    for line in reversed(lines):
        if line.startswith("lmdemo: error: "):
            return public(line.removeprefix("lmdemo: error: "))
    tail = lines[-1] if lines else "no output"
    return f"the trainer exited with code {code}: {public(tail[:300])}"


def public(message: str) -> str:
    """`message` with every absolute path shown as its last part: what a visitor sees names no server folder."""
    return ABSOLUTE_PATH.sub(lambda match: match.group(1) or "…", message)


# -- the training folder -------------------------------------------------------------------------------
def make_training_folder(base: str | Path | None) -> Path:
    """A new private (0700) folder for this server's runs under `base` (default: the system's temporary folder),
    marked as this process's, after deleting the marked folders of servers that are gone."""
    base = Path(base) if base is not None else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    remove_stale(base)
    folder = Path(tempfile.mkdtemp(prefix="lmdemo-train-", dir=base))
    (folder / MARKER).write_text(_owner(os.getpid()) or "", encoding="utf-8")
    return folder


def remove_stale(base: Path) -> list[Path]:
    """Delete the folders under `base` whose marker names a server process that no longer runs (a pid reused by
    another process has another start time); folders without the marker are never touched."""
    removed = []
    for folder in base.iterdir():
        marker = folder / MARKER
        try:
            if folder.is_symlink() or not marker.is_file():
                continue
            owner = marker.read_text(encoding="utf-8").strip()
        except OSError:
            continue
        pid = owner.split(" ", 1)[0]
        if pid.isdigit() and _owner(int(pid)) == owner:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _owner(pid: int) -> str | None:
    """`pid` and its start time (clock ticks since boot), which together name one process; None if none runs."""
    if not Path("/proc/self/stat").exists():  # no procfs: a live pid is taken as the owner
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return f"{pid} ?"
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return f"{pid} {stat.rsplit(')', 1)[1].split()[19]}"


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under `folder` (what counts against the training disk cap)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total
