"""AWD-LSTM's regularisers as options and the faster step: the same maths where it should be (fp32 against the step's
shortcuts, bf16 within a stated tolerance of fp32), the regularisers doing what they say, exact kill -9 resumes,
and model and run folders written before the options still loading and behaving as they did."""

from __future__ import annotations

import itertools
import json

import pytest
import test_resume_and_parallel
import torch
from conftest import DATA, ROOT, train_small
from test_resume_and_parallel import finish, lmdemo
from torch.nn import functional as F

from lmdemo import Config, LSTMLanguageModel, load_model
from lmdemo import model as lmdemo_model
from lmdemo.config import ConfigError
from lmdemo.metrics import CONFIG_FILE, read_metrics
from lmdemo.model import adaptive_log_probs, head_log_probs
from lmdemo.training import _optimizer, native_bf16

pytestmark = pytest.mark.usefixtures("one_thread")

# Each option's Config fields, by a name for the test ids; OFF is every option off, the default model.
OPTIONS = {
    "dropout_locked": {"dropout_locked": True},
    "weight_drop": {"weight_drop": 0.5},
    "dropout_embedding": {"dropout_embedding": 0.2},
    "alpha_beta": {"alpha": 2.0, "beta": 1.0},
}
OFF = {"dropout_locked": False, "dropout_embedding": 0.0, "weight_drop": 0.0, "alpha": 0.0, "beta": 0.0}
BF16_TOLERANCE = 5e-3  # relative: bf16 keeps about 3 significant digits of the loss
CHAR = {"level": "char", "data": str(DATA / "tinyshakespeare" / "input.txt"), "max_tokens": 20_000, "dropout": 0.3,
        "max_steps": 30, "log_every": 10, "eval_tokens": 2_000, "threads": 1}


def tiny_model(vocab: int = 300, **changes) -> LSTMLanguageModel:
    torch.manual_seed(0)
    return LSTMLanguageModel(Config(**{"vocab_size": vocab, "emb_size": 24, "hidden_size": 24, "dropout": 0.3,
                                       **changes}))


def batch(vocab: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    ids, targets = torch.randint(0, vocab, (2, 4, 12), generator=torch.Generator().manual_seed(1))
    return ids, targets


def training_loss(model: LSTMLanguageModel, seed: int = 5) -> torch.Tensor:
    """The loss of the fixed batch in training mode, its dropout masks drawn from `seed`."""
    model.train()
    torch.manual_seed(seed)
    return model(*batch(model.config.vocab_size)[:1], targets=batch(model.config.vocab_size)[1])[0]


# -- the same maths -------------------------------------------------------------------------------
def test_the_layer_by_layer_lstm_is_nn_lstm(monkeypatch):
    """In training with dropout (or weight drop) the LSTM runs a layer at a time on nn.LSTM's own weights: with
    every mask all ones, its loss, state and gradients are those of nn.LSTM's one call (a model without dropout)."""
    monkeypatch.setattr(lmdemo_model, "dropout_mask", lambda shape, drop, like: like.new_ones(shape))
    state = (torch.randn(2, 4, 24, generator=torch.Generator().manual_seed(2)),) * 2
    ids, targets = batch()
    for changes in ({"dropout": 0.3}, {"dropout": 0.3, "dropout_locked": True}, {"dropout": 0.0, "weight_drop": 0.5}):
        results = []
        for model in (tiny_model(**{**OFF, "dropout": 0.0}), tiny_model(**changes)):
            loss, (h, c) = model.train()(ids, state, targets)
            loss.backward()
            results.append([loss, h, c, model.lstm.weight_hh_l1.grad, model.embedding.weight.grad])
        for mine, theirs in zip(*results):
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


def test_the_tied_embeddings_sparse_gradient_is_the_dense_one():
    """The tied embedding sends its gradient sparse; the weight's gradient is the one a dense lookup gives."""
    model = tiny_model(dropout=0.0).train()
    ids, targets = batch()
    model(ids, targets=targets)[0].backward()
    fast = model.embedding.weight.grad.clone()
    model.zero_grad()
    recurrent, _ = model.lstm(F.embedding(ids, model.embedding.weight))  # the dense lookup, by hand
    model._loss(recurrent.flatten(0, 1), targets.flatten()).backward()
    assert not fast.is_sparse
    torch.testing.assert_close(fast, model.embedding.weight.grad, rtol=1e-5, atol=1e-7)


def test_the_adaptive_softmax_split_is_the_slices():
    """One split of the decoder (one gradient concatenation) scores and trains as a slice per cluster did."""
    model = tiny_model(vocab=3000, dropout=0.0, softmax="adaptive").eval()
    ids, targets = batch(3000)
    targets[0, :4] = torch.tensor([0, 749, 750, 2999])
    loss, _ = model(ids, targets=targets)
    loss.backward()
    fast = model.decoder.weight.grad.clone()
    model.zero_grad()
    features, _ = model.lstm(model.embedding(ids))
    weight, bias, cuts = model.decoder.weight, model.decoder.bias, model.cutoffs
    head = head_log_probs(F.linear(features, weight[:cuts[0]], bias[:cuts[0]]), model.clusters(features))
    log_probs = adaptive_log_probs(head, [F.linear(features, weight[low:high], bias[low:high])
                                          for low, high in itertools.pairwise(cuts)])
    sliced = -log_probs.gather(2, targets[..., None]).mean()
    sliced.backward()
    assert loss.item() == pytest.approx(sliced.item(), abs=1e-5)
    torch.testing.assert_close(fast, model.decoder.weight.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(model.logits(features), log_probs, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_the_fused_optimiser_takes_the_unfused_steps(name):
    config = Config(vocab_size=300, emb_size=24, hidden_size=24, optimizer=name, lr=1e-2, weight_decay=0.1)
    models = [tiny_model(), tiny_model()]
    fused = _optimizer(models[0], config)
    plain = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[name](
        models[1].parameters(), lr=config.lr, weight_decay=config.weight_decay, foreach=False)
    assert fused.param_groups[0]["fused"]
    for _ in range(5):
        for model, optimizer in zip(models, (fused, plain)):
            optimizer.zero_grad()
            training_loss(model).backward()
            optimizer.step()
    for mine, theirs in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not native_bf16(torch.device("cpu")), reason="this CPU has no native bf16 (AVX512-BF16/AMX)")
@pytest.mark.parametrize("option", ["none", *OPTIONS])
def test_each_option_keeps_a_fixed_batchs_bf16_loss_near_fp32(option):
    """Under bf16 autocast, with the same dropout masks, the loss is fp32's within BF16_TOLERANCE."""
    model = tiny_model(**OPTIONS.get(option, {}))
    exact = training_loss(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = training_loss(model)
    assert fast.dtype == torch.float32 and fast.item() == pytest.approx(exact.item(), rel=BF16_TOLERANCE)


# -- the regularisers -----------------------------------------------------------------------------
@pytest.mark.parametrize("option", list(OPTIONS))
def test_every_regulariser_is_off_at_evaluation(option):
    """The same weights score the same with and without the option: weight drop, locked and embedding dropout
    and the activation penalties act in training only."""
    plain, regularised = tiny_model(), tiny_model(**OPTIONS[option])
    ids, targets = batch()
    assert regularised.eval()(ids, targets=targets)[0].item() == plain.eval()(ids, targets=targets)[0].item()


def test_weight_drop_drops_hidden_to_hidden_weights_with_one_mask_a_step(monkeypatch):
    """DropConnect on W_hh: a training step sees whole weights zeroed (about the rate of them), the rest scaled."""
    model = tiny_model(weight_drop=0.5).train()
    seen = []
    real_lstm = torch.lstm
    monkeypatch.setattr(torch, "lstm", lambda *args: seen.append(args[2][1].detach()) or real_lstm(*args))
    training_loss(model)
    assert len(seen) == 2
    for layer, dropped in enumerate(seen):
        whole = getattr(model.lstm, f"weight_hh_l{layer}").detach()
        kept = dropped != 0
        assert 0.4 < 1 - kept.float().mean().item() < 0.6
        torch.testing.assert_close(dropped[kept], 2 * whole[kept])


def test_locked_dropout_holds_one_mask_over_the_window_and_per_token_does_not():
    ones = torch.ones(4, 12, 24)
    locked, per_token = tiny_model(dropout_locked=True).train(), tiny_model().train()
    masked = locked._dropout(ones)
    assert torch.equal(masked, masked[:, :1].expand_as(masked)) and 0 < (masked == 0).float().mean() < 1
    masked = per_token._dropout(ones)
    assert not torch.equal(masked, masked[:, :1].expand_as(masked))


def test_per_token_dropout_keeps_each_activation_with_its_rate_scaled_and_only_in_training():
    """`dropout_mask`'s uniform numbers against the rate, not nn.Dropout's `bernoulli_`: the same distribution."""
    model = tiny_model(dropout=0.3).train()
    torch.manual_seed(0)
    masked = model._dropout(torch.ones(64, 35, 650))
    kept = masked != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005
    torch.testing.assert_close(masked[kept], torch.full_like(masked[kept], 1 / 0.7))
    activations = torch.randn(4, 12, 24)
    assert torch.equal(model.eval()._dropout(activations), activations)


def test_embedding_dropout_drops_a_word_everywhere_in_the_batch():
    model = tiny_model(dropout_embedding=0.5).train()
    ids = torch.tensor([[3, 7, 3, 3, 7, 9]] * 3)
    vectors, whole = model._embed(ids), model.embedding(ids)
    scales = (vectors / whole)[..., 0]
    for word in (3, 7, 9):
        assert len(set(scales[ids == word].tolist())) == 1
    assert set(scales.flatten().tolist()) <= {0.0, 2.0}


def test_the_activation_penalties_move_the_gradient_not_the_reported_loss():
    """--alpha and --beta add AR (the dropped last layer's mean square) and TAR (its step-to-step change's) to what
    training minimises; the loss reported stays the cross-entropy."""
    alpha, beta = 2.0, 1.0
    model, plain = tiny_model(dropout=0.0, alpha=alpha, beta=beta).train(), tiny_model(dropout=0.0).train()
    ids, targets = batch()
    loss, _ = model(ids, targets=targets)
    assert loss.item() == plain(ids, targets=targets)[0].item()
    loss.backward()
    recurrent, _ = plain.lstm(plain.embedding(ids))
    penalised = plain._loss(recurrent.flatten(0, 1), targets.flatten()) + alpha * recurrent.pow(2).mean() \
        + beta * (recurrent[:, 1:] - recurrent[:, :-1]).pow(2).mean()
    penalised.backward()
    for mine, theirs in zip(model.parameters(), plain.parameters()):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-5, atol=1e-7)


def test_the_options_are_checked():
    for bad in ({"weight_drop": 1.0}, {"dropout_embedding": -0.1}, {"alpha": -1.0}, {"beta": -0.5}):
        with pytest.raises(ConfigError):
            Config(**bad)


# -- training with the options, resuming, folders from before -------------------------------------
@pytest.mark.parametrize("option", list(OPTIONS))
def test_each_option_trains_a_tiny_model_whose_folder_scores_as_without_it(tmp_path, option):
    best = train_small(tmp_path / option, **CHAR, **OPTIONS[option])
    trained_losses = [r["train_loss"] for r in read_metrics(best.parent / "metrics.jsonl").events("train")]
    assert len(trained_losses) == 3 and trained_losses[-1] < trained_losses[0]
    trained = load_model(best)
    assert all(getattr(trained.config, name) == value for name, value in OPTIONS[option].items())
    without = LSTMLanguageModel(trained.config.replace(**OFF))
    without.load_state_dict(trained.model.state_dict())
    ids = torch.randint(0, trained.config.vocab_size, (2, 3, 20), generator=torch.Generator().manual_seed(4))
    assert trained.model(ids[0], targets=ids[1])[0].item() == without.eval()(ids[0], targets=ids[1])[0].item()


def test_kill_9_then_resume_continues_exactly_with_the_options(tmp_path, monkeypatch):
    """tests/test_resume_and_parallel.py's kill -9 test, run with locked dropout, weight drop, embedding dropout and
    the activation penalties on: their random masks resume from the saved generator state."""
    options = ["--dropout-locked", "--weight-drop", "0.3", "--dropout-embedding", "0.1", "--alpha", "1", "--beta", "1"]
    monkeypatch.setattr(test_resume_and_parallel, "PRESET_LIKE", [*test_resume_and_parallel.PRESET_LIKE, *options])
    test_resume_and_parallel.test_kill_9_then_resume_continues_exactly(tmp_path)
    saved = json.loads((tmp_path / "killed" / CONFIG_FILE).read_text())
    assert (saved["dropout_locked"], saved["weight_drop"], saved["alpha"]) == (True, 0.3, 1.0)


def test_folders_written_before_the_options_load_and_resume_as_before(tmp_path):
    """A config.json without the new fields has every option off: a shipped model scores as a plain embedding, LSTM
    and decoder do, and a run folder from before resumes without a 'changed settings' refusal."""
    for name in ("shakespeare-char", "imdb-word"):
        saved = json.loads((ROOT / "checkpoints" / name / CONFIG_FILE).read_text())
        assert not set(OFF) & set(saved)
        trained = load_model(ROOT / "checkpoints" / name)
        assert {field: getattr(trained.config, field) for field in OFF} == OFF
        model = trained.model
        ids = torch.randint(0, trained.config.vocab_size, (2, 2, 16), generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            features, _ = model.lstm(model.embedding(ids[0]))
            if model.projection is not None:
                features = model.projection(features)
            loss, _ = model(ids[0], targets=ids[1])
            expected = -model.logits(features).log_softmax(-1).gather(2, ids[1][..., None]).mean()
        assert loss.item() == pytest.approx(expected.item(), abs=1e-5)

    run = tmp_path / "old-run"
    train_small(run, **{**CHAR, "max_steps": 10})
    config = json.loads((run / CONFIG_FILE).read_text())
    (run / CONFIG_FILE).write_text(json.dumps({k: v for k, v in config.items() if k not in OFF}))
    finish(lmdemo("train", "--out", str(run), "--resume", "--max-steps", "20", "--quiet"))
    assert read_metrics(run / "metrics.jsonl").events("val")[-1]["step"] == 20
