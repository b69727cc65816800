"""The command line as a user meets it: help, presets, mistakes, and the train/eval/generate round."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import DATA, ROOT
from lmdemo import LSTMLanguageModel, load_model
from lmdemo.cli import main
from lmdemo.config import PRESETS, Config
from lmdemo.evaluation import evaluate
from lmdemo.training import encode_splits


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "lmdemo", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(Config):
        if f.name not in ("vocab_size", "cutoffs"):
            assert f"--{f.name.replace('_', '-')}" in text
    for preset in PRESETS:
        assert preset in text


@pytest.mark.parametrize("args, message", [
    (["train", "--preset", "nope"], "unknown preset 'nope'"),
    (["train", "--data", "/no/such/file.txt"], "data not found"),
    (["train", "--data", "x.txt", "--hidden-size", "-5"], "--hidden-size must be positive"),
    (["train", "--data", "x.txt", "--optimizer", "lion"], "invalid choice"),
    (["train", "--epochs", "ten"], "invalid int value"),
    (["train", "--resume"], "--resume needs --out"),
    (["eval", "/no/model"], "no model folder"),
    (["generate", "/no/model"], "no model folder"),
    (["bogus"], "invalid choice"),
])
def test_mistakes_give_one_line_and_exit_2(args, message, capsys):
    assert main(args) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.err.count("\n") == 1 and "Traceback" not in captured.err


def test_generate_rejects_bad_settings(char_model, capsys):
    assert main(["generate", str(char_model), "--temperature", "-1"]) == 2
    assert "temperature must be" in capsys.readouterr().err
    assert main(["generate", str(char_model), "--seed", str(2**64)]) == 2
    assert "seed must be" in capsys.readouterr().err


def test_generate_continues_the_prompt_with_the_models_own_greedy_choices(char_model, capsys):
    """The CLI's T = 0 text is what the model's argmax gives, step by step, after the prompt."""
    assert main(["generate", str(char_model), "--prompt", "ROMEO:", "--temperature", "0", "--max-tokens", "20"]) == 0
    trained = load_model(str(char_model))
    ids = trained.tokenizer.encode("ROMEO:")
    with torch.no_grad():
        for _ in range(20):
            logits, _ = trained.model(torch.tensor([ids]))
            ids.append(int(logits[0, -1].argmax()))
    assert capsys.readouterr().out == f"--- temperature 0\n{trained.tokenizer.decode(ids)}\n"


def test_train_eval_generate_round_trip(tmp_path):
    out = tmp_path / "run"
    trained = cli("train", "--data", str(DATA / "wikitext-2"), "--train-split", "valid", "--valid-split", "test",
                  "--max-tokens", "6000", "--emb-size", "24", "--hidden-size", "24", "--batch-size", "8",
                  "--bptt", "16", "--epochs", "1", "--out", str(out), "--quiet")
    assert trained.returncode == 0, trained.stderr
    assert f"best model: {out / 'model'}" in trained.stdout
    scored = cli("eval", str(out / "model"), "--split", "valid", "--json")
    assert scored.returncode == 0, scored.stderr
    result = json.loads(scored.stdout)
    best = min(r["val_loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
               if "val_loss" in r)
    assert result["loss"] == round(best, 4) and result["tokens"] > 5000 and 0 < result["unk_rate"] < 0.5
    sampled = cli("generate", str(out / "model"), "--prompt", "the game", "--temperature", "0", "1.0",
                  "--max-tokens", "12", "--seed", "3")
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.count("--- temperature") == 2 and "the game" in sampled.stdout


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_trains_end_to_end_on_a_local_slice(name, tmp_path):
    """Each preset's own settings, shrunk in size and length, on local files instead of the Hub."""
    level = PRESETS[name]["level"]
    data = ["--data", str(DATA / "tinyshakespeare" / "input.txt")] if level == "char" else \
        ["--data", str(DATA / ("ptb" if name.startswith("ptb") else "wikitext-2")), "--train-split", "valid",
         "--valid-split", "test", "--train-docs", "100000"]
    assert main(["train", "--preset", name, *data, "--max-tokens", "3000", "--emb-size", "16", "--hidden-size", "16",
                 "--batch-size", "4", "--max-steps", "10", "--out", str(tmp_path / name), "--quiet"]) == 0
    trained = load_model(str(tmp_path / name / "model"))
    config = trained.config
    for key, value in PRESETS[name].items():
        if key not in {"data", "emb_size", "hidden_size", "batch_size", "train_docs", "train_split", "valid_split",
                       "softmax"}:
            assert getattr(config, key) == value, key
    # it learned: the trained model beats the one it started from on the validation text
    _, splits = encode_splits(config, trained.tokenizer)
    torch.manual_seed(config.seed)
    initial = LSTMLanguageModel(config)
    valid = splits["valid"].ids[:3000]
    assert evaluate(trained.model, valid).loss < evaluate(initial, valid).loss
