"""The dial: holding one unit of the LSTM's state while sampling, from the library, the CLI and a real server."""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from browser import chromium_page
from servers import app_serving

from lmdemo import load_model
from lmdemo.cli import main
from lmdemo.generation import Dial, Generator, Sampling, SettingsError
from lmdemo.web.forms import Limits, read_sampling
from lmdemo.web.registry import Models

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1",
       "PYTHONUNBUFFERED": "1"}
ENV.pop("LMDEMO_MODELS", None)
NINE_INPUTS = ("ROMEO:\n", "0.5, 1.0", 30, 0, 1.0, "3", "", False)  # /generate's inputs after the model's name
ATLAS_DIAL = {"positive": 0.9, "negative": -0.9}


def held(state: tuple[torch.Tensor, torch.Tensor], dial: Dial) -> tuple[torch.Tensor, torch.Tensor]:
    """`state` with the dial's unit at its value, written here by hand (not by `Dial.hold`)."""
    h, c = state[0].clone(), state[1].clone()
    (h if dial.quantity == "h" else c)[dial.layer - 1, :, dial.unit] = dial.value
    return h, c


@pytest.mark.parametrize("quantity", ["h", "c"])
def test_the_dial_overwrites_exactly_its_unit_before_every_prediction(char_model, quantity):
    """Every state the decode loop predicts from (the first right after the prompt) is the model's own
    nn.LSTM step from the previous such state, with only the named unit replaced by the value."""
    trained = load_model(char_model)
    generator = Generator(trained)
    dial = Dial(2, 5, quantity, 0.9)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    predict = generator.predict
    generator.predict = lambda state: seen.append((state[0].clone(), state[1].clone())) or predict(state)
    reading = generator.reading(generator.prompt("ROMEO:\n").ids)
    [sample] = generator.generate(reading, Sampling(temperatures=[0.8], max_new_tokens=20, seed=4, dial=dial,
                                                    stop_at_eos=False))
    assert len(seen) == len(sample.ids) == 20
    expected, moved = held(reading.state, dial), False
    with torch.no_grad():
        for index, state in enumerate(seen):
            for got, want in zip(state, expected):
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
            if index + 1 < len(seen):
                _, free = trained.model(torch.tensor([[sample.ids[index]]]), expected)
                unit = free[0 if quantity == "h" else 1][1, 0, 5].item()
                moved |= abs(unit - dial.value) > 1e-3
                expected = held(free, dial)
    assert moved, "the unit never left the value by itself: this test could not tell a dial from none"


def test_without_a_dial_sampling_is_unchanged_and_with_one_it_differs(char_model):
    generator = Generator(load_model(char_model))
    ids = generator.prompt("ROMEO:\n").ids
    settings = dict(temperatures=[0, 0.8], max_new_tokens=40, seed=11, stop_at_eos=False)
    plain = [s.ids for s in generator.generate(ids, Sampling(**settings))]
    assert [s.ids for s in generator.generate(ids, Sampling(**settings, dial=None))] == plain
    dialled = [s.ids for s in generator.generate(ids, Sampling(**settings, dial=Dial(2, 0, "c", 8.0)))]
    assert dialled != plain


@pytest.mark.parametrize("text, message", [
    ("2:5", "the dial must read LAYER:UNIT:QUANTITY=VALUE"),
    ("0:5:h=1", "layer must be from 1"),
    ("x:5:h=1", "layer must be a whole number"),
    ("2:-1:h=1", "unit must be a whole number from 0"),
    ("2:5:q=1", "quantity must be h (hidden state) or c (cell)"),
    ("2:5:h=big", "value must be a number"),
    ("2:5:h=nan", "value must be a finite number"),
    ("2:5:h=1e999", "value must be a finite number"),
])
def test_bad_dial_text_is_refused_with_one_line(text, message):
    with pytest.raises(SettingsError) as refused:
        Dial.parse(text)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_a_dial_the_model_has_no_unit_for_is_refused_before_sampling(char_model):
    generator = Generator(load_model(char_model))  # 2 layers of 64 units
    for dial, message in [(Dial(3, 0, "h", 1.0), "layer must be from 1 to 2"),
                          (Dial(1, 64, "c", 1.0), "unit must be from 0 to 63")]:
        with pytest.raises(SettingsError, match=message):
            next(generator.stream([], Sampling(dial=dial)))


def test_form_reads_an_empty_dial_as_off():
    form = (Limits(), "0.8", 10, 0, 1.0, "0", "", False)
    assert read_sampling(*form).dial is None and read_sampling(*form, " ").dial is None
    assert read_sampling(*form, " 2:17:h=-0.5 ").dial == Dial(2, 17, "h", -0.5)


def test_cli_dial_samples_and_refuses_bad_input_with_exit_2(char_model, capsys):
    assert main(["generate", str(char_model), "--max-tokens", "5", "--dial", "2:3:h=0.5"]) == 0
    assert "--- temperature 0.8" in capsys.readouterr().out
    for dial, message in [("3:0:h=1", "the dial's layer must be from 1 to 2 (got 3)"),
                          ("1:0:h=abc", "the dial's value must be a number (got 'abc')")]:
        assert main(["generate", str(char_model), "--dial", dial]) == 2
        captured = capsys.readouterr()
        assert message in captured.err and captured.err.count("\n") == 1 and captured.out == ""


# -- the Sample tab: a model whose atlas names a steerable unit gets a slider ----------------------------
@pytest.fixture(scope="module")
def atlas_model(char_model, tmp_path_factory) -> Path:
    """The char model again, with an atlas naming a steerable (made-up) property."""
    folder = tmp_path_factory.mktemp("atlas") / "steerable-tiny"
    shutil.copytree(char_model, folder)
    atlas = {"properties": [
        {"property": "inside quotes", "layer": 1, "unit": 2, "quantity": "c", "metric": "auc", "score": 0.7,
         "baseline": 0.55},
        {"property": "sentiment", "layer": 2, "unit": 5, "quantity": "h", "metric": "accuracy", "score": 0.8,
         "baseline": 0.55, "dial": ATLAS_DIAL}]}
    (folder / "atlas.json").write_text(json.dumps(atlas))
    return folder


def test_the_registry_reads_the_steerable_properties_once(atlas_model, char_model, tmp_path):
    models = Models({"steerable-tiny": str(atlas_model), "shakespeare-tiny": str(char_model)})
    [steerable] = models.describe("steerable-tiny").steerable
    assert (steerable.property, steerable.layer, steerable.unit, steerable.quantity) == ("sentiment", 2, 5, "h")
    assert steerable.ends == (("negative", -0.9), ("positive", 0.9))
    assert models.describe("shakespeare-tiny").steerable == []
    broken = tmp_path / "broken-tiny"
    shutil.copytree(char_model, broken)
    (broken / "atlas.json").write_text(json.dumps({"properties": [
        {"property": "sentiment", "layer": 7, "unit": 5, "quantity": "h", "dial": ATLAS_DIAL}]}))
    with pytest.raises(SettingsError, match="atlas.json cannot be read: the dial's layer must be from 1 to 2"):
        Models({"broken-tiny": str(broken)})


def test_the_sentiment_dial_comes_first_whatever_the_atlas_order(char_model, tmp_path):
    """The Sample tab's slider turns the first steerable property: a review's sentiment, when the atlas has it."""
    folder = tmp_path / "many-dials"
    shutil.copytree(char_model, folder)
    (folder / "atlas.json").write_text(json.dumps({"properties": [
        {"property": "position_in_sentence", "layer": 1, "unit": 3, "quantity": "c",
         "dial": {"sentence end": -0.5, "sentence start": 0.5}},
        {"property": "sentiment", "layer": 2, "unit": 5, "quantity": "h", "dial": ATLAS_DIAL}]}))
    steerable = Models({"many-dials": str(folder)}).describe("many-dials").steerable
    assert [found.property for found in steerable] == ["sentiment", "position_in_sentence"]


@pytest.fixture(scope="module")
def server(atlas_model, char_model, tmp_path_factory) -> Iterator[str]:
    with app_serving([atlas_model, char_model], tmp_path_factory) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


def sample_texts(samples_html: str) -> list[str]:
    return re.findall(r'<div class="lm-text[a-z ]*">(.*?)</div></section>', samples_html, flags=re.S)


def test_generate_without_the_tenth_input_works_as_before(client):
    """An API caller of the nine inputs from before the dial gets the same samples as with an empty dial."""
    nine = client.predict("steerable-tiny", *NINE_INPUTS, api_name="/generate")
    ten = client.predict("steerable-tiny", *NINE_INPUTS, "", api_name="/generate")
    assert nine[2].startswith("**Done**") and "Dial on" not in nine[0]
    assert sample_texts(nine[0]) == sample_texts(ten[0]) and len(sample_texts(nine[0])) == 2


def test_generate_with_a_dial_shows_the_samples_without_and_with_it(client):
    plain = client.predict("shakespeare-tiny", *NINE_INPUTS, api_name="/generate")[0]
    both, _, status, *_ = client.predict("shakespeare-tiny", *NINE_INPUTS, "2:0:c=8", api_name="/generate")
    assert status.startswith("**Done** 2 samples, each also with the dial")
    assert "Dial off" in both and "Dial on: unit 0 of layer 2's c held at 8" in both
    texts = sample_texts(both)
    assert len(texts) == 4 and texts[:2] == sample_texts(plain) and texts[2:] != texts[:2]


@pytest.mark.parametrize("dial, message", [("9:0:h=1", "the dial's layer must be from 1 to 2"),
                                           ("2:0:h=loud", "the dial's value must be a number"),
                                           ("2:0", "the dial must read LAYER:UNIT:QUANTITY=VALUE")])
def test_generate_refuses_a_bad_dial_with_its_message(client, dial, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=re.escape(message)):
        client.predict("shakespeare-tiny", *NINE_INPUTS, dial, api_name="/generate")


def test_the_slider_is_on_the_page_only_for_a_model_with_an_atlas(server):
    """The page opens on the model with the atlas (served first): its slider is visible and spans the atlas's
    two dial values; the model without an atlas hides it (checked in the browser test)."""
    config = json.loads(urllib.request.urlopen(server + "config", timeout=10).read())
    [slider] = [c["props"] for c in config["components"]
                if c["type"] == "slider" and str(c["props"].get("label", "")).startswith("sentiment")]
    assert slider["visible"] is True and (slider["minimum"], slider["maximum"]) == (-0.9, 0.9)
    assert slider["label"] == "sentiment: negative ↔ positive"


@pytest.mark.browser
def test_the_dial_in_the_browser(server):
    with chromium_page(server) as page:
        slider = page.get_by_label("sentiment: negative ↔ positive")
        slider.first.wait_for(state="visible", timeout=30_000)
        page.get_by_label("Dial sentiment: hold its unit (samples without and with the dial, same seed)").check()
        dial_text = page.get_by_label("Dial (LAYER:UNIT:QUANTITY=VALUE, empty = off)")
        page.wait_for_function("() => [...document.querySelectorAll('textarea, input')]"
                               ".some(e => e.value === '2:5:h=0.9')", timeout=20_000)
        assert dial_text.input_value() == "2:5:h=0.9"
        page.get_by_role("button", name="Generate").click()
        page.get_by_text("Done 5 samples, each also with the dial").first.wait_for(timeout=60_000)
        assert page.get_by_text("Dial on: unit 5 of layer 2's h held at 0.9").count() == 1
        assert page.locator("#samples .lm-col").count() == 10
        page.get_by_label("Model").first.click()
        page.get_by_role("option", name="shakespeare-tiny").click()
        slider.first.wait_for(state="hidden", timeout=30_000)  # a model without a steerable unit: no dial
        dial_text.wait_for(state="hidden", timeout=30_000)
        assert not page.elsewhere, f"the page fetched from other hosts: {page.elsewhere}"
