"""Each training speed option keeps the loss where fp32 on one thread puts it."""

from __future__ import annotations

import json

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


@pytest.mark.skipif(not native_bf16(torch.device("cpu")), reason="this CPU has no native bf16 (AVX512-BF16/AMX)")
@pytest.mark.parametrize("softmax", ["full", "adaptive"])
def test_bf16_autocast_keeps_the_loss_of_a_fixed_batch(softmax):
    from lmdemo.config import Config
    from lmdemo.model import LSTMLanguageModel

    torch.manual_seed(0)
    model = LSTMLanguageModel(Config(vocab_size=5000, emb_size=256, hidden_size=256, softmax=softmax)).eval()
    ids, targets = torch.randint(0, 5000, (2, 16, 35))
    exact, _ = model(ids, targets=targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast, _ = model(ids, targets=targets)
    assert fast.dtype == torch.float32 and fast.item() == pytest.approx(exact.item(), rel=2e-3)


def test_bf16_without_native_support_falls_back_to_fp32(tmp_path, fp32_one_thread, monkeypatch, capsys):
    monkeypatch.setattr("lmdemo.training.native_bf16", lambda device: False)
    train_loss, val_loss, precision = losses(tmp_path / "fallback", precision="bf16", threads=1)
    assert precision == "fp32" and "training runs in fp32" in capsys.readouterr().err
    assert (train_loss, val_loss) == pytest.approx(fp32_one_thread[:2], abs=1e-6)


def test_more_threads_change_only_the_speed(tmp_path, fp32_one_thread):
    train_loss, val_loss, _ = losses(tmp_path / "two", precision="fp32", threads=2)
    assert (train_loss, val_loss) == pytest.approx(fp32_one_thread[:2], abs=1e-4)


def test_adaptive_softmax_is_a_true_distribution_and_its_loss_matches_it():
    from lmdemo.config import Config
    from lmdemo.model import LSTMLanguageModel

    torch.manual_seed(0)
    model = LSTMLanguageModel(Config(vocab_size=3000, emb_size=16, hidden_size=16, softmax="adaptive")).eval()
    assert model.cutoffs == [750, 3000] and model.decoder.weight is model.embedding.weight  # tying kept
    ids, targets = torch.randint(0, 3000, (2, 2, 9))
    targets[0, :4] = torch.tensor([0, 749, 750, 2999])  # both sides of every boundary
    log_probs, _ = model(ids)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(2, 9), atol=1e-5)
    loss, _ = model(ids, targets=targets)
    assert loss.item() == pytest.approx(-log_probs.gather(2, targets[..., None]).mean().item(), abs=1e-5)


def test_auto_softmax_is_adaptive_for_large_word_vocabularies_only(tmp_path):
    from lmdemo.config import Config

    assert Config(level="word", vocab_size=10_002).adaptive_softmax
    assert not Config(level="word", vocab_size=9_999).adaptive_softmax
    assert not Config(level="char", vocab_size=20_000).adaptive_softmax
    assert not Config(level="word", vocab_size=20_000, softmax="full").adaptive_softmax
    saved = Config(level="word", vocab_size=20_000).to_dict()
    del saved["softmax"]  # a model folder written before the adaptive softmax existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert not Config.load(tmp_path / "config.json").adaptive_softmax


WORD = dict(level="word", data=str(DATA / "wikitext-2"), train_split="valid", valid_split="test", test_split="test",
            max_tokens=60_000, max_vocab=3_000, epochs=1, log_every=20, emb_size=64, hidden_size=64)


def test_adaptive_softmax_trains_about_as_well_as_the_full_one(tmp_path):
    from lmdemo import load_model
    from lmdemo.generation import Generator, Sampling

    full_run = train_small(tmp_path / "full", softmax="full", **WORD).parent
    full = read_metrics(full_run / "metrics.jsonl").events("val")[-1]["val_loss"]
    best = train_small(tmp_path / "adaptive", softmax="adaptive", **WORD)
    adaptive = read_metrics(best.parent / "metrics.jsonl").events("val")[-1]["val_loss"]
    assert adaptive == pytest.approx(full, abs=0.1)  # measured: 5.289 vs 5.305 nats after 118 steps
    trained = load_model(best)
    assert trained.config.softmax == "adaptive" and trained.model.clusters is not None
    generator = Generator(trained)
    ids = torch.randint(3000, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, _ = trained.model(ids)
        state, steps = (torch.zeros(2, 3, 64), torch.zeros(2, 3, 64)), []
        for t in range(ids.size(1)):
            log_probs, state = generator.step(ids[:, t], state)
            steps.append(log_probs)
    torch.testing.assert_close(torch.stack(steps, 1), expected, atol=1e-4, rtol=1e-4)  # decoding = the model
    ids = generator.prompt("the film was").ids
    sample = generator.generate(ids, Sampling(temperatures=[0.8], max_new_tokens=20, seed=3))
    assert len(sample[0].ids) > 0
