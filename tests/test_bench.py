"""bench/train_speed.py compares like with like: its textbook loop is lmdemo's trainer minus the speed options."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from lmdemo.checkpoint import read_weights
from lmdemo.config import Config
from lmdemo.metrics import read_metrics
from lmdemo.training import encode_splits, train

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_speed", ROOT / "bench" / "train_speed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_speed", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield 1
    torch.set_num_threads(threads)


def tiny(**changes) -> Config:
    values = dict(level="char", data=str(DATA / "tinyshakespeare" / "input.txt"), lowercase=False, max_tokens=6_000,
                  emb_size=16, hidden_size=32, num_layers=2, dropout=0.2, tie_weights=False, batch_size=8, bptt=16,
                  optimizer="adam", lr=3e-3, clip=0.5, schedule="constant", shift_windows=False, device="cpu",
                  precision="fp32", softmax="full", threads=1, seed=3, eval_tokens=300, log_every=5)
    values.update(changes)
    return Config(**values)


def test_the_textbook_loop_is_lmdemos_trainer_in_fp32_with_the_full_softmax(bench, tmp_path, one_thread):
    """Same start, data order, dropout masks, optimiser, clipping, selection: the same kept model."""
    config = tiny()
    tokenizer, encoded = encode_splits(config, None)
    splits = {split: encoded[split].ids for split in encoded}
    config = config.replace(vocab_size=tokenizer.vocab_size)
    windows = -(-(splits["train"].numel() // config.batch_size - 1) // config.bptt)
    steps = windows + windows // 2  # an epoch end and a final validation
    textbook = bench.textbook_train(config, bench.initial_model(config), splits["train"], splits["valid"],
                                    seconds=math.inf, interval=5, max_steps=steps)
    best = train(config.replace(max_steps=steps, epochs=10_000), tmp_path / "run", progress_bar=False, command="pytest")
    kept = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl").events("val") if r.get("best")]

    assert textbook.steps == steps and textbook.picked == kept[-1]
    ours = read_weights(best).state_dict()
    theirs = textbook.model.state_dict()
    assert theirs.keys() == {"encoder.weight", "decoder.weight", "decoder.bias",
                             *(f"rnn.{k}" for k in textbook.model.rnn.state_dict())}
    for name, value in theirs.items():
        mine = {"encoder.weight": "embedding.weight"}.get(name, name.replace("rnn.", "lstm."))
        torch.testing.assert_close(value, ours[mine], rtol=1e-4, atol=1e-5, msg=name)


ADAPTIVE_WORDS = dict(level="word", data=str(DATA / "ptb"), train_split="valid", valid_split="test", tie_weights=True,
                      emb_size=32, softmax="adaptive")


@pytest.mark.parametrize("changes", [dict(), ADAPTIVE_WORDS])
def test_lmdemo_starts_from_the_weights_the_textbook_model_copies(bench, tmp_path, one_thread, changes):
    config = tiny(**changes)
    tokenizer, _ = encode_splits(config, None)
    config = config.replace(vocab_size=tokenizer.vocab_size)
    init = bench.initial_model(config)
    bench.textbook_from(init)  # asserts the copy
    assert bench.trainer_start_difference(config, tmp_path / "probe", init) <= bench.PROBE_TOLERANCE
    other = bench.initial_model(config.replace(seed=config.seed + 1))
    assert bench.trainer_start_difference(config, tmp_path / "other", other) > 1e-3


def test_peaks_on_cpus_without_native_bf16(bench):
    amd_avx2 = "Vendor ID: AuthenticAMD\nCPU family: 23\nCPU max MHz: 3000.0\nFlags: fpu sse avx avx2 fma\n"
    fp32, bf16, how = bench.cpu_peaks(2, amd_avx2)
    assert fp32 == pytest.approx(2 * 3.0 * 2 * 8 * 2) and bf16 == 0 and "bf16 none" in how
    assert bench.share(100.0, bf16) == "n/a" and bench.share(50.0, fp32) == f"{5000 / fp32:.1f}%"
    amx = "Vendor ID: GenuineIntel\nCPU family: 6\nCPU max MHz: 2000.0\nFlags: avx2 avx512f avx512_bf16 amx_bf16\n"
    fp32, bf16, _ = bench.cpu_peaks(1, amx)
    assert fp32 == pytest.approx(2.0 * 2 * 16 * 2) and bf16 == pytest.approx(2.0 * 1024)
    assert bench.cpu_peaks(1, "")[1] == 0  # no lscpu: no flags, no crash
