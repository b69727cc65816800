"""Looking inside the LSTM: the states and gates shown are nn.LSTM's, and the unit rankings do what they say."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from lmdemo import generation
from lmdemo.checkpoint import TrainedModel, save_model
from lmdemo.config import Config
from lmdemo.generation import Generator, SettingsError
from lmdemo.internals import match_span, most_active, most_variable, read_internals, top_units
from lmdemo.model import LSTMLanguageModel
from lmdemo.tokenizer import Tokenizer
from lmdemo.web import render
from lmdemo.web.demo import Demo
from lmdemo.web.forms import Limits, read_sampling
from lmdemo.web.inside import Inside
from lmdemo.web.registry import Models

TEXT = "ROMEO:\nWhat say you?\n\nJULIET:\nNothing.\n"


@pytest.fixture(scope="module")
def tiny() -> TrainedModel:
    """A random 3-layer character model: untrained weights exercise the maths just as well."""
    torch.manual_seed(3)
    tokenizer = Tokenizer.build([TEXT], "char")
    config = Config(level="char", emb_size=6, hidden_size=10, num_layers=3, dropout=0.0,
                    tie_weights=False, vocab_size=tokenizer.vocab_size)
    return TrainedModel(LSTMLanguageModel(config).eval(), tokenizer, "random", Path("."), None)


def reference_layers(trained: TrainedModel, ids: list[int]) -> list[dict[str, torch.Tensor]]:
    """Per layer, h, c and the gates [tokens, units] from one-layer nn.LSTMs fed token by token.

    The gates are recomputed from the nn.LSTM's own parameters and previous hidden state, in
    PyTorch's documented order (input, forget, cell, output).
    """
    model, config = trained.model, trained.config
    x = model.embedding(torch.tensor([ids]))
    layers = []
    for n in range(config.num_layers):
        cell = torch.nn.LSTM(x.size(-1), config.hidden_size, batch_first=True)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, f"{name}_l0").data.copy_(getattr(model.lstm, f"{name}_l{n}"))
        h = c = torch.zeros(1, 1, config.hidden_size)
        values: dict[str, list[torch.Tensor]] = {k: [] for k in ("h", "c", "input_gate", "forget_gate",
                                                                  "candidate", "output_gate")}
        for t in range(x.size(1)):
            pre = F.linear(x[0, t], cell.weight_ih_l0, cell.bias_ih_l0) + F.linear(h[0, 0], cell.weight_hh_l0,
                                                                                     cell.bias_hh_l0)
            i, f, g, o = pre.chunk(4)
            for key, value in zip(("input_gate", "forget_gate", "candidate", "output_gate"),
                                  (i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid())):
                values[key].append(value)
            _, (h, c) = cell(x[:, t:t + 1], (h, c))
            values["h"].append(h[0, 0])
            values["c"].append(c[0, 0])
        layers.append({k: torch.stack(v) for k, v in values.items()})
        x = torch.stack(values["h"]).unsqueeze(0)
    return layers


@pytest.mark.parametrize("lookup", [True, False])
@torch.no_grad()
def test_states_and_gates_equal_nn_lstm(tiny, lookup, monkeypatch):
    if not lookup:  # the path large vocabularies take: layer 0's input multiplied, not looked up
        monkeypatch.setattr(generation, "LOOKUP_LIMIT", 0)
    generator = Generator(tiny)
    assert (generator.input_table is not None) == lookup
    ids = tiny.tokenizer.encode(TEXT)
    inside = read_internals(generator, ids, max_tokens=1000)
    assert inside.start == 0 and inside.total == len(ids) and inside.tokens[:6] == list("ROMEO:")
    expected = reference_layers(tiny, [generator.start_id, *ids])  # a text is read after its start token
    for layer, reference in enumerate(expected):
        for quantity, values in reference.items():
            torch.testing.assert_close(inside.matrix(quantity, layer), values[1:], atol=1e-5, rtol=1e-4,
                                       msg=lambda m: f"layer {layer} {quantity}: {m}")
    # and the full stack agrees: the top layer's outputs and the final (h, c) of every layer
    output, (h, c) = tiny.model.lstm(tiny.model.embedding(torch.tensor([[generator.start_id, *ids]])))
    torch.testing.assert_close(inside.values["h"][-1], output[0, 1:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(inside.values["h"][:, -1], h[:, 0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(inside.values["c"][:, -1], c[:, 0], atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_a_cut_window_equals_the_end_of_the_whole_text(tiny):
    generator = Generator(tiny)
    ids = tiny.tokenizer.encode(TEXT)
    whole, window = read_internals(generator, ids, 1000), read_internals(generator, ids, 7)
    assert window.start == len(ids) - 7 and window.ids == ids[-7:] and window.total == len(ids)
    for quantity in whole.values:
        torch.testing.assert_close(window.values[quantity], whole.values[quantity][:, -7:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(window.change("c", 1, 0), whole.change("c", 1, len(ids) - 7), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="positive"):
        read_internals(generator, ids, 0)


def test_unit_rankings():
    values = torch.tensor([[0.0, 0.5, -2.0], [0.0, 0.5, 2.0], [0.1, -0.5, -2.0], [0.0, 0.5, 2.0]])
    assert [u.unit for u in top_units(most_active(values), 3)] == [2, 1, 0]
    assert [u.unit for u in top_units(most_variable(values), 2)] == [2, 1]
    change = values[2] - values[1]
    assert top_units(change, 1, by_magnitude=True) == [(2, -4.0)]
    assert top_units(change, 1) == [(0, pytest.approx(0.1))]


def test_span_search_finds_the_unit_that_fires_on_the_span_and_ignores_scale():
    values = torch.rand(40, 6, generator=torch.Generator().manual_seed(0)) * 0.1
    values[10:13, 4] += 1.0  # unit 4 lights up on tokens 10-12
    values[:, 1] *= 50  # unit 1 is large everywhere but has no pattern
    values[10:13, 5] -= 1.0  # unit 5 is low on the span
    matches = match_span(values, range(10, 13), 6)
    assert matches[0].unit == 4 and matches[0].score > 3 and matches[0].inside > matches[0].outside + 0.9
    assert matches[-1].unit == 5 and matches[-1].score < -3
    assert abs(next(m for m in matches if m.unit == 1).score) < 1.5
    for bad in ([], range(40), [40]):
        with pytest.raises(ValueError):
            match_span(values, bad, 3)


# -- the request layer, on random models saved as folders (no training) -----------------------------
LIMITS = Limits(max_inside_tokens=20, max_units=8, max_new_tokens=30)


@pytest.fixture(scope="module")
def models(tiny, tmp_path_factory) -> Models:
    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(4)
    words = Tokenizer.build(["the cat sat on the mat .", "a dog ran"], "word")
    word_config = Config(level="word", emb_size=8, hidden_size=12, num_layers=2, dropout=0.0, vocab_size=len(words))
    return Models({"chars": str(save_model(folder / "chars", tiny.model, tiny.tokenizer)),
                   "words": str(save_model(folder / "words", LSTMLanguageModel(word_config), words))})


@pytest.fixture(scope="module")
def inside(models) -> Inside:
    return Inside(models, LIMITS)


def test_inside_ranks_units_and_says_what_it_cut(inside):
    text = inside.text(None, "chars", TEXT, 0)
    view = inside.units(text, 3, "forget_gate", "variable", 5)
    assert view.start == len(TEXT) - 20 and len(view.tokens) == 20 and view.values.shape == (5, 20)
    assert [row.score for row in view.ranking] == sorted((row.score for row in view.ranking), reverse=True)
    assert view.trace_unit == view.units[0] and len(view.trace) == 20
    assert "last 20 of" in render.inside_markdown(view)
    figure = render.unit_heatmap(view)
    assert len(figure.data[0].z) == 5 and "↵" in figure.layout.xaxis.ticktext
    changed = inside.units(text, 1, "c", "change", 3, at=len(TEXT) - 1, unit=9)
    assert changed.at == len(TEXT) - 1 and changed.trace_unit == 9 and changed.score_label.startswith("change")
    assert render.unit_trace(changed).data[0].y == tuple(changed.trace)
    by_number = inside.units(text, 1, "h", "unit", 4)
    assert by_number.units == [0, 1, 2, 3]


def test_a_word_text_is_shown_as_it_reads_one_span_per_token(inside, models):
    text = inside.text(None, "words", "the cat sat on the mat.\na dog ran, the zebra sat", 0)
    view = inside.units(text, 1, "h", "active", 3)
    assert view.tokens == models.generator("words").tokenizer.tokens(text.ids)  # the model's own tokens
    page = render.positions_html(view)
    spans = re.findall(r'<span class="[^"]*" title="#(\d+) [^"]*">([^<]*)</span>', page)
    assert [int(position) for position, _ in spans] == list(range(view.start, view.start + len(view.tokens)))
    shown = html.unescape(re.sub(r"<sub>\d+</sub>|<[^>]+>", "", page))
    assert shown == "the cat sat on the mat.↵\na dog ran ⟨unk⟩ the ⟨unk⟩ sat"  # <eos> drawn as ↵


def test_span_search_through_the_demo(inside):
    text = inside.text(None, "chars", TEXT, 0)
    view = inside.find_span(text, 2, "h", len(TEXT) - 5, len(TEXT) - 3, 6)
    assert view.marked == (len(TEXT) - 5, len(TEXT) - 3) and len(view.ranking) == 6
    table = render.unit_table(view)
    assert list(table.columns) == ["rank", "unit", "score", "mean inside", "mean outside"]
    assert 'class="marked"' in render.positions_html(view)


@pytest.mark.parametrize("call, message", [
    (lambda i, t: i.units(t, 4, "h", "active", 5), "layer must be from 1 \\(bottom\\) to 3"),
    (lambda i, t: i.units(t, 1, "z", "active", 5), "quantity must be one of"),
    (lambda i, t: i.units(t, 1, "h", "loudest", 5), "sort must be one of"),
    (lambda i, t: i.units(t, 1, "h", "active", 9), "number of units must be from 1 to 8"),
    (lambda i, t: i.units(t, 1, "h", "change", 5, at=2), "change at must be a shown token position"),
    (lambda i, t: i.units(t, 1, "h", "active", 5, unit=10), "unit must be from 0 to 9"),
    (lambda i, t: i.find_span(t, 1, "h", None, 30, 5), "mark a span"),
    (lambda i, t: i.find_span(t, 1, "h", 31, 30, 5), "must not come after"),
    (lambda i, t: i.find_span(t, 1, "h", len(TEXT) - 20, len(TEXT) - 1, 5), "covers every shown token"),
    (lambda i, t: i.text(None, "chars", TEXT, 1), "generate some text first"),
    (lambda i, t: i.units(i.text(None, "chars", "", 0), 1, "h", "active", 5), "the text is empty"),
])
def test_inside_refuses_bad_requests_with_a_reason(inside, call, message):
    with pytest.raises(SettingsError, match=message):
        call(inside, inside.text(None, "chars", TEXT, 0))


def test_compare_runs_both_models_on_one_request(models):
    demo = Demo(models, LIMITS)
    sampling = read_sampling(LIMITS, "0, 1", 12, 0, 1.0, 5)
    prompt = "The cat, sat!"  # 13 characters as written
    comparison = demo.compare(["chars", "words"], prompt, sampling)
    assert [run.model for run in comparison.runs] == ["chars", "words"]
    assert all(run.done and len(run.samples) == 2 for run in comparison.runs)
    assert [n.position for n in comparison.next_tokens] == [0, 0]
    for run, bars in zip(comparison.runs, comparison.next_tokens):  # what each model alone gives: the Sample tab
        generator = models.generator(run.model)
        alone = generator.generate(generator.prompt(prompt).ids, sampling)
        assert [s.text for s in run.samples] == [s.text for s in alone]
        log_probs, _ = generator.read(generator.prompt(prompt).ids)
        assert [s.id for s in bars.scores] == log_probs[-1].topk(len(bars.scores)).indices.tolist()
    summary = render.compare_markdown(comparison)
    assert summary.count("**Done**") == 2
    # bits per character side by side: each model's total bits on the prompt over the prompt's own 13 characters,
    # not over the word model's reading of it; both a lower bound (unseen "c", ",", "!"; a word model)
    assert comparison.runs[1].prompt.text == "the cat <unk> sat <unk>"
    row = re.search(r"^\| prompt \| (\d+\.\d+)\\\* \| (\d+\.\d+)\\\* \|$", summary, flags=re.M)
    assert row, summary
    for run, figure in zip(comparison.runs, row.groups()):
        total = -sum(math.log2(score.probability) for score in run.reading.scores)
        assert float(figure) == pytest.approx(total / 13, abs=5e-4)
    assert "| tokens | characters | words |" in summary and "lower bound" in summary
