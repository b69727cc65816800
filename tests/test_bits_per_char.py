"""Bits per character are honest: specials in raw text are text, a text a model could not read whole is
flagged as a lower bound, and `eval --text-file` reads a text as training did."""

from __future__ import annotations

import json

import pytest

from conftest import DATA, train_small
from lmdemo import Tokenizer
from lmdemo.cli import main
from lmdemo.generation import Sampling
from lmdemo.web import render
from lmdemo.web.demo import Demo
from lmdemo.web.registry import Models


def eval_text(capsys, model, text_file, *flags) -> str:
    assert main(["eval", str(model), "--text-file", str(text_file), "--batch-size", "1", *flags]) == 0
    return capsys.readouterr().out


def test_a_literal_eos_round_trips_at_the_subword_level():
    reviews = (DATA / "imdb" / "train.txt").read_text(encoding="utf-8").splitlines()[:400]
    tokenizer = Tokenizer.build(reviews, "bpe", max_vocab=600)
    text = "a <eos> b\n<eos>"
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == "".join(tokenizer.pieces(ids)) == text
    assert ids.count(tokenizer.eos_id) == 1  # only the newline ends a line


def test_a_literal_unk_costs_what_its_characters_cost_at_the_character_level():
    text = "a<unk>b <eos>"
    tokenizer = Tokenizer.build([text], "char")  # its characters are counted, so none is unknown
    ids = tokenizer.encode(text)
    assert tokenizer.tokens(ids) == list(text)
    assert ids == [tokenizer.encode(character)[0] for character in text]  # the ids (and so the scores) of its characters
    assert tokenizer.decode(ids) == text


@pytest.fixture(scope="module")
def char_model(tmp_path_factory):
    """A few steps of a character model on text without a snowman."""
    folder = tmp_path_factory.mktemp("abc")
    text = folder / "abc.txt"
    text.write_text("abc cab bca.\n" * 40)
    return train_small(folder / "model", level="char", data=str(text), valid_fraction=0.5, batch_size=2, bptt=8,
                       max_steps=2, emb_size=8, hidden_size=8)


def test_a_character_the_model_never_saw_makes_its_bits_per_character_a_lower_bound(char_model, tmp_path, capsys):
    seen, unseen = tmp_path / "seen.txt", tmp_path / "unseen.txt"
    seen.write_text("abc cab\n")
    unseen.write_text("abc ☃ cab\n")
    assert "lower bound" not in eval_text(capsys, char_model, seen)
    assert "lower bound" in eval_text(capsys, char_model, unseen)
    assert json.loads(eval_text(capsys, char_model, unseen, "--json"))["lower_bound"] is True
    demo = Demo(Models({"abc": str(char_model)}))
    sampling = Sampling(temperatures=(1.0,), max_new_tokens=5)
    for prompt, bound in (("abc cab", False), ("abc ☃ cab", True)):
        *_, progress = demo.generate("abc", prompt, sampling)
        assert progress.lower_bound is bound
        assert ("lower bound" in render.prompt_html(progress)) is bound
        assert ("lower bound" in render.samples_html(progress)) is bound


def test_eval_of_a_text_file_cleans_html_as_training_did(tmp_path, capsys):
    corpus = tmp_path / "reviews.txt"
    corpus.write_text("a good film .<br /><br />i liked it &amp; more .\n" * 20)
    model = train_small(tmp_path / "model", level="word", data=str(corpus), clean_html=True, valid_fraction=0.5,
                        batch_size=2, bptt=4, max_steps=2, emb_size=8, hidden_size=8)
    raw, cleaned = tmp_path / "raw.txt", tmp_path / "cleaned.txt"
    raw.write_text("A good film.<br /><br />I liked it &amp; more.\n")
    cleaned.write_text("A good film.  I liked it & more.\n")  # by hand: each tag a space, the entity decoded
    scores = [json.loads(eval_text(capsys, model, text, "--json")) for text in (raw, cleaned)]
    assert scores[0]["characters"] == scores[1]["characters"] == 33
    assert {**scores[0], "data": ""} == {**scores[1], "data": ""}
