"""The trainer's promises: one validation per step, resumes that continue exactly (from the last weights,
with time budgets, never on a changed grid), saved configs that say what was built, an honest evaluate."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors import safe_open
from torch.nn import functional as F

from conftest import DATA, ROOT, train_small
from lmdemo import Config, LSTMLanguageModel, Tokenizer
from lmdemo.config import ConfigError, adaptive_cutoffs
from lmdemo.evaluation import evaluate
from lmdemo.metrics import MetricsWriter, loss_record, perplexity, read_metrics
from lmdemo.training import train

SHAKESPEARE = DATA / "tinyshakespeare" / "input.txt"
TINY = ["--data", str(SHAKESPEARE), "--level", "char", "--emb-size", "16", "--hidden-size", "32",
        "--precision", "fp32", "--threads", "1", "--quiet"]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lmdemo", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def records(run, *events: str) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl").records if not events or r["event"] in events]


def trajectory(run) -> list[tuple]:
    """What must match between two runs that trained the same way (not timing, not the start records)."""
    return [(r["event"], r["step"], r["epoch"], r["lr"], round(r.get("train_loss") or 0, 5),
             round(r.get("val_loss") or 0, 5)) for r in records(run, "train", "val")]


# -- 1. one validation per step -------------------------------------------------------------------
@pytest.mark.parametrize("early_stop", [None, 1])
def test_an_eval_on_the_last_window_of_an_epoch_is_the_only_validation_of_that_step(tmp_path, early_stop):
    """eval-every 25 lands on each epoch's last window (250 characters a stream, 25 windows of 10)."""
    options = ["--max-tokens", "1000", "--batch-size", "4", "--bptt", "10", "--eval-every", "25", "--epochs", "4",
               "--schedule", "plateau", "--lr-patience", "0", "--log-every", "5"]
    options += ["--early-stop", str(early_stop)] if early_stop else []
    done = cli("train", *TINY, *options, "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    validations = records(tmp_path / "run", "val")
    steps = [r["step"] for r in validations]
    assert len(steps) == len(set(steps)) and steps[:2] == [25, 50], steps
    assert all(r["epoch_end"] for r in validations)
    # the rate halves only after a validation that did not improve, and only once for it
    rates = {r["step"]: r["lr"] for r in records(tmp_path / "run", "train")}
    for val in validations[:-1]:
        before, after = rates[val["step"]], rates[val["step"] + 5]
        assert after == pytest.approx(before if val["best"] else before / 2), val
    if early_stop and len(validations) < 4:  # stopped early: after a validation that did not improve
        assert not validations[-1]["best"]


# -- 2. a finished run resumes from its last weights ----------------------------------------------------
def test_raising_the_limit_of_a_finished_run_continues_from_its_last_weights(tmp_path):
    options = [*TINY, "--max-tokens", "20000", "--batch-size", "8", "--bptt", "16", "--lr", "0.02", "--dropout", "0",
               "--schedule", "constant", "--eval-every", "10", "--log-every", "5", "--epochs", "50", "--test-fraction", "0.1"]
    reference = cli("train", *options, "--max-steps", "80", "--out", str(tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr
    first = cli("train", *options, "--max-steps", "40", "--out", str(tmp_path / "extended"))
    assert first.returncode == 0, first.stderr
    validations = records(tmp_path / "extended", "val")
    best_step = min(validations, key=lambda r: r["val_loss"])["step"]
    assert best_step < 40, "the scenario needs a best model older than the last weights"
    again = cli("train", "--out", str(tmp_path / "extended"), "--resume", "--max-steps", "80", "--quiet")
    assert again.returncode == 0, again.stderr
    assert trajectory(tmp_path / "extended") == trajectory(tmp_path / "reference")
    assert [r["event"] for r in records(tmp_path / "extended")].count("test") == 1  # the first run's is cut


# -- 3. time budgets are steps, measured once ----------------------------------------------------------
def test_a_minutes_budget_becomes_a_recorded_step_budget_that_resumes_exactly(tmp_path):
    """A preset-like run (cosine + --max-minutes + --save-every) equals a run of its step budget; the kill -9
    resume of the same recipe is tests/test_resume_and_parallel.py's."""
    options = [*TINY, "--max-tokens", "20000", "--batch-size", "8", "--bptt", "32", "--schedule", "cosine",
               "--warmup-steps", "5", "--eval-every", "20", "--log-every", "5", "--save-every", "1", "--epochs", "100"]
    timed = cli("train", *options, "--max-minutes", "0.15", "--out", str(tmp_path / "timed"))  # from the start
    assert timed.returncode == 0, timed.stderr
    start = records(tmp_path / "timed", "start")[0]
    budget = start["step_budget"]
    assert budget > 20 and records(tmp_path / "timed", "val")[-1]["step"] == budget
    steps = cli("train", *options, "--max-steps", str(budget), "--out", str(tmp_path / "steps"))
    assert steps.returncode == 0, steps.stderr
    assert trajectory(tmp_path / "timed") == trajectory(tmp_path / "steps")
    lrs = [r["lr"] for r in records(tmp_path / "timed", "train")]
    assert lrs[-1] == pytest.approx(0.1 * Config().lr, rel=0.05)  # the cosine ends at the budget, whatever the load


# -- 4. resume refuses changed settings -------------------------------------------------------------
def test_resume_with_changed_settings_is_refused_in_one_line(tmp_path):
    out = tmp_path / "run"
    done = cli("train", *TINY, "--max-tokens", "3000", "--batch-size", "8", "--bptt", "16", "--max-steps", "10",
               "--out", str(out))
    assert done.returncode == 0, done.stderr
    refused = cli("train", "--out", str(out), "--resume", "--batch-size", "4", "--seed", "3", "--max-steps", "20")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.count("\n") == 1 and "--batch-size" in refused.stderr and "--seed" in refused.stderr
    for changed in (["--bptt", "8"], ["--max-tokens", "2000"], ["--data", str(DATA / "ptb" / "ptb.valid.txt")],
                    ["--no-shift-windows"]):
        refused = cli("train", "--out", str(out), "--resume", *changed, "--max-steps", "20")
        assert refused.returncode == 2 and changed[0].replace("no-", "") in refused.stderr, refused.stderr
    allowed = cli("train", "--out", str(out), "--resume", "--max-steps", "20", "--log-every", "5", "--quiet")
    assert allowed.returncode == 0, allowed.stderr
    assert records(out, "train")[-1]["step"] == 20
    with pytest.raises(ConfigError, match="--dropout"):
        saved = Config.load(out / "config.json")
        train(saved.replace(dropout=0.5, max_steps=30), out, resume=True, progress_bar=False)


# -- 5. saved configs say what was built ----------------------------------------------------------
def test_saved_config_names_the_softmax_and_clusters_built(tmp_path):
    model = train_small(tmp_path / "run", level="word", data=str(DATA / "wikitext-2"), train_split="valid",
                        valid_split="test", test_split="test", lowercase=False, max_tokens=None, eval_tokens=3000, emb_size=8,
                        hidden_size=8, max_steps=2, softmax="auto")
    for folder in (model, tmp_path / "run"):
        saved = json.loads((folder / "config.json").read_text())
        assert saved["softmax"] == "adaptive" and saved["vocab_size"] >= 10_000
        assert saved["cutoffs"] == adaptive_cutoffs(saved["vocab_size"]) and saved["cutoffs"][-1] == saved["vocab_size"]
    char = json.loads((train_small(tmp_path / "char", level="char", data=str(SHAKESPEARE), max_tokens=3000,
                                   max_steps=2) / "config.json").read_text())
    assert char["softmax"] == "full" and char["cutoffs"] is None


def test_adaptive_clusters_never_end_with_a_sliver_and_old_folders_keep_theirs():
    assert adaptive_cutoffs(10_002) == [2000, 10_002]
    assert adaptive_cutoffs(50_002) == [2000, 10_000, 50_002]
    assert adaptive_cutoffs(12_000) == [2000, 10_000, 12_000]
    old = Config.from_dict({"level": "word", "softmax": "auto", "vocab_size": 10_002, "tie_projection": True})
    assert old.cutoffs == [2000, 10_000, 10_002]  # as the shipped imdb-word was built
    assert LSTMLanguageModel(old).clusters.out_features == 2


# -- 12. evaluate against a plain reference -------------------------------------------------------------
def test_evaluate_equals_cross_entropy_over_whole_streams():
    torch.manual_seed(3)
    model = LSTMLanguageModel(Config(vocab_size=40, emb_size=12, hidden_size=20, tie_weights=False)).eval()
    ids = torch.randint(0, 40, (1003,))
    score = evaluate(model, ids, batch_size=4, bptt=7)
    streams = ids[:1000].view(4, 250)  # evaluate's layout: 4 streams side by side, the remainder dropped
    with torch.no_grad():
        logits, _ = model(streams[:, :-1])
    reference = F.cross_entropy(logits.flatten(0, 1), streams[:, 1:].flatten()).item()
    assert score.tokens == 4 * 249 and score.loss == pytest.approx(reference, rel=1e-5)
    assert score.ppl == pytest.approx(math.exp(reference), rel=1e-5)


# -- 13. one way to do each thing -----------------------------------------------------------------
def test_the_log_is_appended_in_place_and_cut_back_to_a_recorded_offset(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsWriter(path)
    log.append("train", step=1, train_loss=2.0)
    kept, inode = log.offset, path.stat().st_ino
    log.append("train", step=2, train_loss=float("nan"))
    assert path.stat().st_ino == inode and path.stat().st_size == log.offset  # appended, not rewritten
    with open(path, "a") as f:
        f.write('{"event": "train", "st')  # a record half-written when the process was killed
    resumed = MetricsWriter(path, kept)
    resumed.append("val", step=2, val_loss=1.5)
    assert [(r["event"], r["step"]) for r in read_metrics(path).records] == [("train", 1), ("val", 2)]


def test_the_tokenizer_level_is_the_stored_one_not_a_guess(tmp_path):
    tokenizer = Tokenizer.build(["ab ba"], "char")
    tokenizer.save(tmp_path / "tokenizer.json")
    assert Tokenizer.load(tmp_path / "tokenizer.json", "char").level == "char"
    with pytest.raises(ValueError, match="level"):
        Tokenizer.load(tmp_path / "tokenizer.json", "bytes")


def test_perplexity_has_one_cap_everywhere():
    assert perplexity(800.0) == perplexity(700.0) == loss_record("val", 800.0, 1.0)["val_ppl"]
    assert math.isfinite(perplexity(1e9)) and perplexity(0.0) == 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_state_carries_the_cuda_random_numbers_and_resumes_exactly(tmp_path):
    options = [*TINY, "--device", "cuda", "--dropout", "0.3", "--max-tokens", "20000", "--batch-size", "8",
               "--bptt", "16", "--eval-every", "10", "--log-every", "5", "--schedule", "constant"]
    assert cli("train", *options, "--max-steps", "40", "--out", str(tmp_path / "reference")).returncode == 0
    assert cli("train", *options, "--max-steps", "20", "--out", str(tmp_path / "resumed")).returncode == 0
    with safe_open(str(tmp_path / "resumed" / "state.safetensors"), "pt") as f:
        assert "cuda_rng" in f.keys()
    assert cli("train", "--out", str(tmp_path / "resumed"), "--resume", "--max-steps", "40", "--quiet").returncode == 0
    for a, b in zip(trajectory(tmp_path / "resumed"), trajectory(tmp_path / "reference")):
        assert a[:4] == b[:4] and a[4:] == pytest.approx(b[4:], abs=1e-4)  # dropout masks continue as drawn


def test_a_ctrl_c_stop_keeps_the_best_model_and_resumes_exactly(tmp_path):
    """Ctrl-C saves the state at the next log interval and scores the best model; it validates only where
    the run would anyway, so the resumed run writes the log an uninterrupted run writes."""
    options = [*TINY, "--max-tokens", "20000", "--batch-size", "8", "--bptt", "16", "--log-every", "5", "--epochs", "100",
               "--eval-every", "7", "--schedule", "plateau", "--lr-patience", "0", "--max-steps", "300",
               "--test-fraction", "0.1"]
    out, reference = tmp_path / "run", tmp_path / "reference"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    uninterrupted = subprocess.Popen([sys.executable, "-m", "lmdemo", "train", *options, "--out", str(reference)],
                                     cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    process = subprocess.Popen([sys.executable, "-m", "lmdemo", "train", *options, "--out", str(out)], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and len(records(out, "train")) < 3:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "stopping at the next log interval" in stderr and "best model:" in stdout
    log = records(out)
    stopped = log[-3]["step"]
    assert [r["event"] for r in log[-2:]] == ["test", "end"] and log[-1]["reason"] == "stop"
    assert stopped % 5 == 0 and stopped < 300, "the run must stop before its end"
    assert "ended: a stop was asked for" in stdout
    assert (out / "model" / "model.safetensors").exists()
    assert uninterrupted.wait(timeout=300) == 0, uninterrupted.stderr.read()
    validated = [r["step"] for r in records(out, "val")]
    assert validated == [r["step"] for r in records(reference, "val") if r["step"] <= stopped]  # none off the grid
    resumed = cli("train", "--out", str(out), "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert trajectory(out) == trajectory(reference)


def test_a_diverging_run_stops_at_its_validation_and_says_why(tmp_path):
    """A learning rate that blows the model up ends the run at the first validation past log(V) + 1 nats (or NaN),
    with the reason in the log's `end` record and in words, instead of training on to its budget."""
    from lmdemo.run_scores import why_it_ended

    out = tmp_path / "run"
    train_small(out, level="char", data=str(DATA / "tinyshakespeare" / "input.txt"), optimizer="sgd", lr=1e4, clip=0.0,
                max_steps=400, epochs=100, eval_every=20, max_tokens=20_000)
    metrics = read_metrics(out / "metrics.jsonl")
    end = metrics.last("end")
    past = round(math.log(metrics.last("start")["vocab_size"]) + 1, 2)
    assert end["reason"] == "diverged" and end["limit"] == past
    assert metrics.trained()["step"] < 400 and len(metrics.events("val")) <= 3
    assert f"diverged past {past} nats a token" in why_it_ended(end) and "--lr" in why_it_ended(end)
