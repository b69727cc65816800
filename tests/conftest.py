"""Shared fixtures: small real models trained once per test session on slices of ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from browser import chromium_path

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT.parent / "shared" / "data").resolve()

# Nothing in the tests may reach the network or phone home.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def pytest_configure(config: pytest.Config) -> None:
    if not DATA.is_dir():
        raise pytest.UsageError(f"the offline corpora are missing: expected {DATA}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A browser test without a browser skips (or fails, if required) before its fixtures start servers."""
    if item.get_closest_marker("browser"):
        chromium_path()


def train_small(out: Path, **overrides) -> Path:
    """Train a few hundred steps of a tiny model; returns its model folder."""
    from lmdemo.config import Config
    from lmdemo.training import train

    values = dict(emb_size=32, hidden_size=64, num_layers=2, dropout=0.0, batch_size=16, bptt=32,
                  epochs=1, log_every=10, lr=3e-3, max_tokens=30_000, precision="fp32", seed=7)
    values.update(overrides)
    return train(Config(**values), out, progress_bar=False, command="pytest")


@pytest.fixture(scope="session")
def char_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A character model on the first 30k characters of Tiny Shakespeare (with a test split)."""
    return train_small(tmp_path_factory.mktemp("char") / "shakespeare-tiny", level="char",
                       data=str(DATA / "tinyshakespeare" / "input.txt"), test_fraction=0.1, epochs=2)


@pytest.fixture(scope="session")
def word_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A word model on a slice of Penn Treebank (train on valid, score on test)."""
    return train_small(tmp_path_factory.mktemp("word") / "ptb-tiny", level="word", data=str(DATA / "ptb"),
                       train_split="valid", valid_split="test", test_split="test", lowercase=False,
                       max_tokens=20_000)


@pytest.fixture(scope="session")
def bpe_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE model on IMDB reviews (300 subwords, 20k training tokens)."""
    return train_small(tmp_path_factory.mktemp("bpe") / "imdb-bpe-tiny", level="bpe", data=str(DATA / "imdb"),
                       train_split="train", valid_split="valid", test_split="test", max_vocab=300, max_tokens=20_000)


@pytest.fixture(scope="module")
def one_thread():
    """Small models on a shared 2-core machine run faster on one thread than fighting for two (a module asks for it
    with `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def char_generator(char_model: Path):
    """The tiny character model, loaded for generation."""
    from lmdemo import load_model
    from lmdemo.generation import Generator

    return Generator(load_model(char_model))


@pytest.fixture(scope="module")
def word_generator(word_model: Path):
    from lmdemo import load_model
    from lmdemo.generation import Generator

    return Generator(load_model(word_model))


@pytest.fixture(scope="module")
def bpe_generator(bpe_model: Path):
    from lmdemo import load_model
    from lmdemo.generation import Generator

    return Generator(load_model(bpe_model))
