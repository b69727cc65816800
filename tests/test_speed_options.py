"""Each training speed option keeps the loss where fp32 on one thread puts it."""

from __future__ import annotations

import pytest
import torch

from conftest import DATA, train_small

from lmdemo.metrics import read_metrics
from lmdemo.training import native_bf16

CHAR = dict(level="char", data=str(DATA / "tinyshakespeare" / "input.txt"), max_tokens=40_000, max_steps=40,
            log_every=40, tie_weights=False, emb_size=32, hidden_size=128)


def losses(out, **options) -> tuple[float, float, str]:
    """Training loss of the last logged interval, validation loss after it, and the precision used."""
    train_small(out, **CHAR, **options)
    metrics = read_metrics(out / "metrics.jsonl")
    last = metrics.events("val")[-1]
    return last["train_loss"], last["val_loss"], metrics.events("start")[0]["precision"]


@pytest.fixture(scope="module")
def fp32_one_thread(tmp_path_factory) -> tuple[float, float, str]:
    return losses(tmp_path_factory.mktemp("fp32") / "run", precision="fp32", threads=1)


@pytest.mark.skipif(not native_bf16(torch.device("cpu")), reason="this CPU has no native bf16 (AVX512-BF16/AMX)")
def test_bf16_autocast_trains_to_the_fp32_loss(tmp_path, fp32_one_thread):
    train_loss, val_loss, precision = losses(tmp_path / "bf16", precision="bf16", threads=1)
    assert precision == "bf16"
    assert train_loss == pytest.approx(fp32_one_thread[0], abs=0.03)  # bf16 keeps ~3 significant digits
    assert val_loss == pytest.approx(fp32_one_thread[1], abs=0.03)


def test_bf16_without_native_support_falls_back_to_fp32(tmp_path, fp32_one_thread, monkeypatch, capsys):
    monkeypatch.setattr("lmdemo.training.native_bf16", lambda device: False)
    train_loss, val_loss, precision = losses(tmp_path / "fallback", precision="bf16", threads=1)
    assert precision == "fp32" and "training runs in fp32" in capsys.readouterr().err
    assert (train_loss, val_loss) == pytest.approx(fp32_one_thread[:2], abs=1e-6)


def test_more_threads_change_only_the_speed(tmp_path, fp32_one_thread):
    train_loss, val_loss, _ = losses(tmp_path / "two", precision="fp32", threads=2)
    assert (train_loss, val_loss) == pytest.approx(fp32_one_thread[:2], abs=1e-4)
