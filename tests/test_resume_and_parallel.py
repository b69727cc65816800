"""Runs killed with SIGKILL resume exactly; two data-parallel processes train like one, budgets included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DATA, ROOT
from servers import free_port
from lmdemo.metrics import read_metrics

SMALL = ["--data", str(DATA / "tinyshakespeare" / "input.txt"), "--level", "char", "--max-tokens", "60000",
         "--emb-size", "32", "--hidden-size", "128", "--num-layers", "2", "--batch-size", "16", "--bptt", "64",
         "--dropout", "0.1", "--log-every", "4", "--eval-every", "24", "--precision", "fp32", "--threads", "1", "--quiet"]
RUN = [*SMALL, "--max-steps", "96", "--save-every", "0"]
# The shipped presets' recipe: a cosine over a minutes budget, state saved every second.
PRESET_LIKE = [*SMALL, "--schedule", "cosine", "--warmup-steps", "10", "--epochs", "100", "--max-minutes", "0.2",
               "--save-every", "1"]


def lmdemo(*args: str, launcher: tuple[str, ...] = ()) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, *launcher, "-m", "lmdemo", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def torchrun() -> tuple[str, ...]:
    """The launcher for two data-parallel processes on this machine."""
    return ("-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
            f"--master_port={free_port()}")


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def comparable(run: Path) -> list[tuple]:
    """The log without what legitimately differs between runs (timing, the start records)."""
    return [(r["event"], r["step"], round(r.get("train_loss") or 0, 5), round(r.get("val_loss") or 0, 5))
            for r in read_metrics(run / "metrics.jsonl").records if r["event"] != "start"]


def test_kill_9_then_resume_continues_exactly(tmp_path):
    """The victim's minutes budget becomes a step budget before its first step; an uninterrupted run of
    that many steps is the reference, and the killed run, resumed, must write the same log."""
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    victim = lmdemo("train", *PRESET_LIKE, "--out", str(killed))
    log = killed / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and victim.poll() is None and not (log.exists() and read_metrics(log).events("start")):
        time.sleep(0.02)
    budget = read_metrics(log).last("start")["step_budget"]
    uninterrupted = lmdemo("train", *[a for a in PRESET_LIKE if a not in ("--max-minutes", "0.2")],
                           "--max-steps", str(budget), "--out", str(reference))
    while time.monotonic() < deadline and victim.poll() is None:
        trained = read_metrics(log).events("train")
        if (killed / "state.safetensors").exists() and trained and trained[-1]["step"] >= min(36, budget // 2):
            break
        time.sleep(0.02)
    assert victim.poll() is None, "the run finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    steps_done = read_metrics(log).events("train")[-1]["step"]
    assert min(36, budget // 2) <= steps_done < budget

    finish(lmdemo("train", "--out", str(killed), "--resume", "--quiet"))
    finish(uninterrupted)
    assert comparable(killed) == comparable(reference)
    assert read_metrics(log).events("val")[-1]["step"] == budget
    starts = read_metrics(killed / "metrics.jsonl").events("start")
    assert [s["resumed"] for s in starts] == [False, True]
    assert (killed / "model" / "model.safetensors").exists()

    again = lmdemo("train", "--out", str(killed), "--resume")
    output, _ = again.communicate(timeout=120)
    assert again.returncode == 2 and "already reached its limits" in output


def test_two_process_torchrun_trains_like_one_process(tmp_path):
    options = [*RUN, "--dropout", "0", "--max-steps", "24", "--eval-every", "12", "--test-fraction", "0.1"]
    single = lmdemo("train", *options, "--out", str(tmp_path / "one"))
    pair = lmdemo("train", *options, "--out", str(tmp_path / "two"), launcher=torchrun())
    finish(pair)
    finish(single)
    one, two = read_metrics(tmp_path / "one" / "metrics.jsonl"), read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert two.events("start")[0]["world"] == 2
    assert [r["tokens"] for r in two.events("train")] == [r["tokens"] for r in one.events("train")]
    for a, b in zip(one.events("val"), two.events("val")):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
    assert two.last("test")["test_loss"] == pytest.approx(one.last("test")["test_loss"], rel=1e-4)


def test_two_processes_time_their_budget_on_the_step_they_train_and_put_it_back(tmp_path):
    """Under torchrun the budget is timed on the real step, gradient exchange included, which every process
    must take the same number of times; the run is then put back on every process, so a run of
    --max-minutes equals a run of --max-steps <its budget>, as in one process."""
    options = [*SMALL, "--dropout", "0.1", "--epochs", "100", "--schedule", "cosine", "--save-every", "1"]
    timed = lmdemo("train", *options, "--max-minutes", "0.2", "--out", str(tmp_path / "timed"), launcher=torchrun())
    log = tmp_path / "timed" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and timed.poll() is None and not (log.exists() and read_metrics(log).events("start")):
        time.sleep(0.05)
    start = read_metrics(log).last("start")
    assert start["world"] == 2 and start["step_budget"] > 0
    steps = lmdemo("train", *options, "--max-steps", str(start["step_budget"]), "--out", str(tmp_path / "steps"),
                   launcher=torchrun())
    finish(timed)
    finish(steps)
    assert read_metrics(log).events("val")[-1]["step"] == start["step_budget"]
    assert comparable(tmp_path / "timed") == comparable(tmp_path / "steps")
