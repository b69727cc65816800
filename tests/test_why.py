"""Why this token? (`lmdemo.why`): the units' shares add up to the measured logit difference on every shipped model,
the adaptive softmax's clusters included; holding a unit is a dial run; `/why` answers through a real server."""

from __future__ import annotations

import html
import math
import sys
from pathlib import Path

import pytest
import torch
from servers import free_port, serving
from test_app import ENV

from lmdemo import load_model
from lmdemo.generation import Dial, Generator, Sampling, SettingsError
from lmdemo.web import render
from lmdemo.web.why_view import why_html
from lmdemo.why import (
    Held,
    Step,
    UnitShare,
    Why,
    explain,
    held_from_start,
    held_from_token,
    read_text,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("shakespeare-char", "imdb-bpe", "imdb-word")
# imdb-word: "breathtaking" (position 3) and "menacing" (11) are rarer words, in the adaptive softmax's first cluster
TEXT = "the cinematography was breathtaking, the screenplay superb and the villain menacing."
POSITIONS = (0, 3, 11, -1)
TOLERANCE = 1e-3

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def generators() -> dict[str, Generator]:
    return {name: Generator(load_model(ROOT / "checkpoints" / name)) for name in SHIPPED}


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shares_and_the_bias_add_up_to_the_measured_logit_difference(generators, name):
    generator = generators[name]
    ids = generator.prompt(TEXT).ids
    reading = generator.reading(ids)  # the Sample tab's colouring and bars: the model's own forward
    steps_seen = set()
    for position in POSITIONS:
        why = explain(generator, ids, position)
        assert why.position == (len(ids) if position == -1 else position)
        expected = reading.scores[position].probability if position >= 0 else float(reading.next_log_probs.exp().max())
        assert why.probability == pytest.approx(expected, rel=1e-4)
        assert why.token_id == (ids[position] if position >= 0 else int(reading.next_log_probs.argmax()))
        for step in why.steps:
            assert step.sum_of_shares + step.bias_difference == pytest.approx(step.logit_difference, abs=TOLERANCE)
            assert step.logit_difference == pytest.approx(
                math.log(step.chosen_probability / step.reference_probability), abs=1e-6)
            assert (step.reference_is == "runner-up") == (step.logit_difference >= 0)
        assert why.sum_of_shares + why.bias_difference == pytest.approx(why.logit_difference, abs=TOLERANCE)
        assert sum(unit.share for unit in why.units) == pytest.approx(why.sum_of_shares, abs=1e-9)
        assert len(why.units) == generator.config.hidden_size
        assert [abs(unit.share) for unit in why.units] == sorted((abs(unit.share) for unit in why.units), reverse=True)
        steps_seen.add(tuple(step.choice for step in why.steps))
    if name == "imdb-word":  # head words, and rarer words chosen in the head and then within their cluster
        assert steps_seen == {("head",), ("head", "cluster 1")}
    else:
        assert steps_seen == {("token",)}


def test_against_the_runner_up_the_head_words_log_ratio_is_the_tokens(generators):
    """A frequent word against another frequent word: the head's log-ratio is the two words' own, as the model gives
    them; a rarer word's explanation names its cluster and, within it, the likeliest other word of that cluster."""
    generator = generators["imdb-word"]
    ids = generator.prompt(TEXT).ids
    log_probs = generator.reading(ids).next_log_probs
    why = explain(generator, ids, -1)
    head = why.steps[0]
    assert head.chosen_id == why.token_id and head.reference == generator.tokenizer.tokens([head.reference_id])[0]
    assert head.logit_difference == pytest.approx(float(log_probs[why.token_id] - log_probs[head.reference_id]),
                                                  abs=1e-5)
    rare = explain(generator, ids, 3)
    assert rare.token == "breathtaking" and rare.steps[0].chosen.startswith("[cluster 1:")
    assert rare.steps[0].chosen_id is None and rare.steps[0].reference_id < 2000 <= rare.steps[1].reference_id
    assert rare.reference == f"{rare.steps[0].reference}; within cluster 1: {rare.steps[1].reference}"


def test_a_held_unit_is_what_a_dial_run_gives(generators):
    """From the token on: the first token of a greedy dialled sample after the text. From the start: every token of a
    greedy sample from an empty prompt with the dial held all along. Several dials in one batch, each its own row."""
    generator = generators["shakespeare-char"]
    ids = generator.prompt("ROMEO:\nWhat say you").ids
    state = read_text(generator.trained.model, ids, generator.start_id)[1]
    dials = [Dial(2, 7, "h", 0.0), Dial(1, 30, "c", 2.0), Dial(2, 100, "c", -1.5)]
    for dial in dials:
        first = generator.generate(generator.reading(ids), Sampling(temperatures=[0], max_new_tokens=1, dial=dial))[0]
        assert held_from_token(generator, state, first.ids[0], [dial]) == pytest.approx(first.probabilities, rel=1e-4)
        sample = generator.generate([], Sampling(temperatures=[0], max_new_tokens=12, dial=dial))[0]
        for position in (0, 5, 11):
            assert held_from_start(generator, sample.ids[:position], sample.ids[position], [dial]) == pytest.approx(
                [sample.probabilities[position]], rel=1e-4)
    token = ids[-1]
    state = read_text(generator.trained.model, ids[:-1], generator.start_id)[1]
    for measure, before in ((held_from_token, state), (held_from_start, ids[:-1])):
        assert measure(generator, before, token, dials) == pytest.approx(
            [measure(generator, before, token, [dial])[0] for dial in dials], rel=1e-5)
    lower = explain(generator, ids, -1, hold=[dials[1]]).held[-1]  # a lower layer's unit acts only through later steps
    assert (lower.layer, lower.unit, lower.quantity, lower.value) == (1, 30, "c", 2.0)
    probability = explain(generator, ids, -1).probability
    assert lower.from_token == pytest.approx(probability, rel=1e-4)
    assert abs(lower.from_start - probability) > 0.01


def test_the_strongest_units_for_and_against_are_held_at_zero_from_the_token_on(generators):
    generator = generators["imdb-bpe"]
    why = explain(generator, generator.prompt(TEXT).ids, -1, hold=[Dial(1, 314, "h", 0.5)])
    strongest = {unit.unit for unit in why.units if unit.share > 0}, {unit.unit for unit in why.units if unit.share < 0}
    shown, asked = why.held[:10], why.held[10:]
    assert all(item.value == 0.0 and item.from_start is None for item in shown)
    assert {item.unit for item in shown[:5]} <= strongest[0] and {item.unit for item in shown[5:]} <= strongest[1]
    assert [(item.unit, item.value) for item in asked] == [(314, 0.5)] and asked[0].from_start is not None


@pytest.mark.parametrize("ids, position, message", [
    ([], -1, "the text is empty"),
    ([5, 6], 2, "position must be from 0 to 1"),
    ([5, 6], -2, "or -1 for the next token"),
])
def test_a_bad_request_is_one_clear_error(generators, ids, position, message):
    with pytest.raises(SettingsError, match=message):
        explain(generators["shakespeare-char"], ids, position)
    with pytest.raises(SettingsError, match="layer must be from 1 to 2"):
        explain(generators["shakespeare-char"], [5, 6], -1, hold=[Dial(3, 0, "h", 0.0)])


def test_the_explanation_is_drawn_escaped_with_the_atlas_colours():
    markup = '<b>*x*</b>'
    why = Why(4, 9, markup, 0.25, [Step("token", markup, 9, "a|b", 7, "runner-up", 0.25, 0.125, math.log(2), 0.1,
                                        math.log(2) - 0.1)],
              [UnitShare(2, 19, "h", 0.5, "sentiment"), UnitShare(2, 3, "h", -0.25, None),
               UnitShare(2, 8, "h", 0.1, "<script>")],
              [Held(2, 19, "h", 0.0, "sentiment", 0.2, None), Held(1, 84, "h", 0.0, None, 0.2, 0.1)])
    page = why_html(why)
    assert render.escape(markup) in page and markup not in page and "<script>" not in page
    assert "unit 19, sentiment" in page and "layer 2 · h · unit 3" in page and "+0.50" in page
    assert 'data-layer="2" data-quantity="h" data-unit="3"' in page
    assert render.unit_colour(0.5, 0.5) in page and render.unit_colour(-0.25, 0.5) in page  # red for, blue against
    assert "25.0%" in html.unescape(page) and "layer 1 · h · unit 84 at 0" in page and "—" in page


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """`python app.py` on the shipped models (no Train tab), driven by gradio_client."""
    from gradio_client import Client

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    command = [sys.executable, "app.py", "--port", str(port), "--no-train", "--max-prompt-tokens", "40"]
    with serving(command, url, tmp_path_factory.mktemp("why") / "app.log", cwd=ROOT, env=ENV):
        yield Client(url, verbose=False)


def test_the_why_api_answers_the_schema(client):
    answer = client.predict("imdb-word", "i loved this film , it was", -1, "", api_name="/why")
    assert {"token", "probability", "reference", "logit_difference", "sum_of_shares", "units", "steps",
            "held"} <= set(answer)
    assert answer["sum_of_shares"] + answer["bias_difference"] == pytest.approx(answer["logit_difference"],
                                                                                abs=TOLERANCE)
    units = answer["units"]
    assert len(units) == 384 and all(set(unit) == {"layer", "unit", "quantity", "share", "name"} for unit in units)
    assert sum(unit["share"] for unit in units) == pytest.approx(answer["sum_of_shares"], abs=1e-9)
    assert [abs(unit["share"]) for unit in units] == sorted((abs(unit["share"]) for unit in units), reverse=True)
    assert next(unit for unit in units if unit["unit"] == 19)["name"] == "sentiment"  # imdb-word's atlas
    held = client.predict("shakespeare-char", "ROMEO:\nWhat", 3, "1:151:c=0", api_name="/why")["held"]
    assert len(held) == 11 and held[-1]["from_start"] is not None
    assert (held[-1]["layer"], held[-1]["unit"], held[-1]["quantity"], held[-1]["name"]) == (1, 151, "c", "speaker_name")
    assert client.predict("imdb-bpe", "This movie was", api_name="/why")["position"] == 3  # position: -1 by default


@pytest.mark.parametrize("request_, message", [
    (("no-such-model", "text", -1, ""), "unknown model 'no-such-model'"),
    (("imdb-bpe", "", -1, ""), "the text is empty"),
    (("imdb-bpe", "This movie", 2, ""), "position must be from 0 to 1"),
    (("imdb-bpe", "This movie", "first", ""), "position must be a whole number"),
    (("imdb-bpe", "This movie", 0, "2:999:h=0"), "unit must be from 0 to 383"),
])
def test_a_bad_why_request_is_one_clear_error(client, request_, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message) as refused:
        client.predict(*request_, api_name="/why")
    assert "\n" not in str(refused.value)


def test_the_generator_reads_what_why_reads(generators):
    """`read_text`'s last state is the reading's: held from the token on starts where sampling starts."""
    generator = generators["imdb-word"]
    ids = generator.prompt(TEXT).ids
    hidden, state = read_text(generator.trained.model, ids, generator.start_id)
    reading = generator.reading(ids)
    torch.testing.assert_close(state[0], reading.state[0])
    torch.testing.assert_close(hidden[-1], reading.state[0][-1, 0])
