"""Token levels: the seeds' exact whitespace tokenisation, basic_english unchanged, byte-level BPE that
round-trips any text, readable word-level text, and bits per character that agree across levels."""

from __future__ import annotations

import json
import math

import pytest

from conftest import DATA, train_small
from lmdemo import Config, Tokenizer
from lmdemo.cli import main
from lmdemo.training import encode_splits

IMDB_REVIEW = ("I didn't like it... The plot (if any) was thin; \"acting\": poor!<br /><br />Still, it's 10/10 "
               "for the music.")


@pytest.mark.parametrize("folder, file", [("ptb", "ptb.valid.txt"), ("wikitext-2", "valid.txt"),
                                          ("wikitext-2", "test.txt")])
def test_whitespace_tokenisation_counts_as_the_seeds_data_code(folder, file):
    """`line.split() + ['<eos>']` per line (pytorch/examples data.py): counts and vocabulary."""
    path = DATA / folder / file
    config = Config(level="word", tokenize="whitespace", data=str(DATA / folder), train_split=file.split(".")[-2],
                    valid_split="test" if "valid" in file else "valid", test_split="test", lowercase=True)
    tokenizer, splits = encode_splits(config, None)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert splits["train"].ids.numel() == sum(len(line.split()) + 1 for line in lines)
    assert tokenizer.vocab_size == len({word for line in lines for word in line.split()} | {"<eos>", "<unk>"})
    literal = [i for i, line in enumerate(lines) if "<unk>" in line.split()][0]
    assert tokenizer.unk_id in tokenizer.encode(lines[literal])  # a literal <unk> is the <unk> token
    assert tokenizer.tokens(tokenizer.encode(lines[1]))[: len(lines[1].split())] == lines[1].split()  # as written


def test_basic_english_is_unchanged_for_imdb():
    tokenizer = Tokenizer.build([IMDB_REVIEW], "word")
    assert tokenizer.tokens(tokenizer.encode(IMDB_REVIEW)) == [
        "i", "didn", "'", "t", "like", "it", ".", ".", ".", "the", "plot", "(", "if", "any", ")", "was", "thin",
        "acting", "poor", "!", "still", ",", "it", "'", "s", "10/10", "for", "the", "music", "."]


@pytest.mark.parametrize("text", ["Hello, wörld! 🎬🍿 naïve café", "日本語のテキスト", "tab\tbell\x07nul\x00 end",
                                  "line one\nline two\n\n", "   spaces   ", "<unk> and <br /> stay text", ""])
def test_bpe_round_trips_any_text_and_never_yields_unk(text):
    reviews = (DATA / "imdb" / "train.txt").read_text(encoding="utf-8").splitlines()[:400]
    tokenizer = Tokenizer.build(reviews, "bpe", max_vocab=600)
    assert tokenizer.unk_id is None and tokenizer.vocab_size == 600
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text and "".join(tokenizer.pieces(ids)) == text
    assert "<unk>" not in tokenizer.tokens(tokenizer.encode("☃ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢"))


@pytest.mark.parametrize("tokenize, tokens, readable", [
    ("basic_english", ["i", "'", "m", "sure", "it", "didn", "'", "t", "work", "(", "really", ")", ".", "yes", ",",
                       "ok", "!", "<eos>", "next"], "i'm sure it didn't work (really). yes, ok!\nnext"),
    ("basic_english", ["the", "'", "quote", "'", "stays", "?"], "the ' quote ' stays?"),
    ("whitespace", ["do", "n't", "stop", ",", "it", "'s", "a", "<unk>", "$", "N", "million", "."],
     "don't stop, it's a <unk> $ N million."),
    ("whitespace", ["a", "well", "@-@", "known", "1", "@,@", "000", "<eos>", "=", "Title", "="],
     "a well-known 1,000\n= Title ="),
])
def test_word_level_text_reads_detokenised_and_keeps_a_piece_per_token(tokenize, tokens, readable):
    tokenizer = Tokenizer.build([" ".join(t for t in tokens if t != "<eos>")], "word", tokenize=tokenize,
                                lowercase=False)
    ids = [tokenizer.hf.token_to_id(t) for t in tokens]
    pieces = tokenizer.pieces(ids)
    assert len(pieces) == len(ids) and "".join(pieces) == tokenizer.decode(ids) == readable
    for cut in range(1, len(ids)):  # a prompt before sets the spacing, wherever it ends
        assert tokenizer.pieces(ids[cut:], context=ids[:cut]) == pieces[cut:], cut


def test_an_unknown_character_reads_as_one_replacement_character():
    tokenizer = Tokenizer.build(["abc"], "char")
    ids = tokenizer.encode("a☃c")
    assert tokenizer.tokens(ids) == ["a", "<unk>", "c"] and tokenizer.decode(ids) == "a\ufffdc"


def test_bits_per_character_agree_across_levels(char_model, tmp_path, capsys):
    """A character model's bits per character are its loss / ln 2; a word model's are its total bits over
    the characters of the text it scored."""
    log = [json.loads(line) for line in (char_model / "metrics.jsonl").read_text().splitlines()]
    for record in log:
        for split in ("train", "val", "test"):
            if record.get(f"{split}_loss") is not None:
                assert record[f"{split}_bpc"] == pytest.approx(record[f"{split}_loss"] / math.log(2), rel=1e-6)
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat .\nthe dog sat .\n")
    word = train_small(tmp_path / "word", level="word", data=str(text), valid_fraction=0.5, batch_size=2, bptt=4,
                       max_steps=2, emb_size=8, hidden_size=8)
    assert main(["eval", str(word), "--text-file", str(text), "--json", "--batch-size", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    # by hand: 25 + 14 characters, newlines included; 7 + 4 words, each line ending in <eos>: 13 tokens
    assert result["characters"] == 39
    assert result["bpc"] == pytest.approx(result["loss"] / math.log(2) * 13 / 39, rel=1e-3)
