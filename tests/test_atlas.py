"""The cell atlas: the properties' truth, the rating rule, the reading of every unit, and a planted unit found."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy
import pytest
import torch

from conftest import DATA, ROOT
from lmdemo.atlas import (ATLAS_FILE, EXAMPLE_REVIEWS, EndReading, Texts, best_thresholds, build_atlas, column_scores,
                          final_states, random_model, read_atlas, read_passages, review_examples, texts_from,
                          write_atlas)
from lmdemo.checkpoint import TrainedModel, load_model
from lmdemo.cli import main
from lmdemo.config import Config, data_name
from lmdemo.generation import Generator
from lmdemo.internals import read_internals
from lmdemo.properties import PROPERTIES, properties_for, rating_label, truth, without_ratings
from lmdemo.tokenizer import Tokenizer

SHAKESPEARE = (DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")


def values(pieces: list[str], name: str) -> list[float]:
    prop = next(p for p in PROPERTIES if p.name == name)
    return truth(pieces, [prop])[:, 0].tolist()


def test_character_properties_on_a_hand_written_play():
    text = 'BOB:\nSay "hi" (now).\n'
    chars = list(text)
    assert values(chars, "position_in_line") == [1, 2, 3, 4, 0, *range(1, 16), 0]
    assert "".join(c for c, v in zip(chars, values(chars, "inside_quotes")) if v) == '"hi'
    assert "".join(c for c, v in zip(chars, values(chars, "inside_brackets")) if v) == "(now"
    assert "".join(c for c, v in zip(chars, values(chars, "word_start")) if v) == "BShn"
    assert "".join(c for c, v in zip(chars, values(chars, "upper_case")) if v) == "BOBS"
    assert "".join(c for c, v in zip(chars, values(chars, "vowel")) if v) == "Oaio"
    assert "".join(c for c, v in zip(chars, values(chars, "speaker_name")) if v) == "BOB:"
    assert [i for i, v in enumerate(values(chars, "sentence_end_next")) if v] == [text.index(")")]


def test_speaker_lines_follow_a_blank_line():
    text = "ANNE:\nI say:\nGo.\n\nHENRY:\nNo.\n"
    flagged = "".join(c for c, v in zip(text, values(list(text), "speaker_name")) if v)
    assert flagged == "ANNE:HENRY:"  # "I say:" ends in a colon but is verse, not a name


def test_word_properties_on_hand_written_pieces():
    pieces = ["i", " do", "n't", " like", " it", ",", " but", " (", "2", " films", ")", " are", " fine", ".", "\n",
              "ok", "."]
    assert values(pieces, "position_in_sentence") == [*range(1, 14), 0, 0, 1, 0]
    assert [p for p, v in zip(pieces, values(pieces, "after_negation")) if v] == [" like", " it"]
    assert [p for p, v in zip(pieces, values(pieces, "inside_quotes_or_brackets")) if v] == [" (", "2", " films"]
    assert [p for p, v in zip(pieces, values(pieces, "number")) if v] == ["2"]
    assert [p for p, v in zip(pieces, values(pieces, "sentence_end_next")) if v] == [" fine", "ok"]
    assert [p.name for p in properties_for("bpe")] == [p.name for p in properties_for("word")]
    assert "speaker_name" in [p.name for p in properties_for("char")]


@pytest.mark.parametrize("review, label", [
    ("Loved it. 8/10", True),
    ("A mess.<br /><br />Rating: 3 out of 10.", False),
    ("Not bad, 7.5 / 10 from me.", True),
    ("Average: 5/10.", None),
    ("The book is 9/10 but the film is 2/10.", None),  # both sides: no label
    ("I'd say 12/10!", None),  # not a rating out of 10
    ("Released 10/10/2005, seen twice.", None),  # a date, not a rating
    ("No rating here, 4 stars.", None),
])
def test_rating_rule(review, label):
    assert rating_label(review) is label


def test_rating_sentences_are_removed_before_reading():
    review = "Great cast. I give it 9/10! Worth it.<br /><br />4 out of 5 stars<br />See it? Yes."
    assert without_ratings(review) == "Great cast. Worth it. See it? Yes."
    assert rating_label(without_ratings(review)) is None


def tiny_char_model(seed: int, hidden: int = 8) -> TrainedModel:
    tokenizer = Tokenizer.build([SHAKESPEARE[:20_000]], "char", lowercase=False)
    config = Config(level="char", emb_size=tokenizer.vocab_size, hidden_size=hidden, num_layers=2, dropout=0.0,
                    tie_weights=False, vocab_size=tokenizer.vocab_size)
    return TrainedModel(random_model(config, seed), tokenizer, "tiny", Path("."), None)


def test_read_passages_gives_the_cells_h_and_c_of_every_layer():
    trained = tiny_char_model(seed=1)
    tokenizer = trained.tokenizer
    passages = [tokenizer.encode("ROMEO:\nWhat say you?\n"), tokenizer.encode("JULIET:\nNo.")]
    read = read_passages(trained.model, passages, tokenizer.start_id)
    expected = []
    for ids in passages:
        internals = read_internals(Generator(trained), ids, len(ids))
        expected.append(torch.cat([internals.values[q][layer] for layer in range(2) for q in ("h", "c")], 1))
    torch.testing.assert_close(read, torch.cat(expected), rtol=0, atol=1e-5)
    ends = torch.tensor([len(p) for p in passages]).cumsum(0) - 1
    torch.testing.assert_close(final_states(trained.model, passages, tokenizer.start_id), read[ends], rtol=0,
                               atol=1e-5)


def test_scores_match_their_definitions_with_ties():
    generator = torch.Generator().manual_seed(0)
    scores_of = torch.randint(0, 4, (300, 5), generator=generator).float()  # many ties
    yes = torch.rand(300, generator=generator) > 0.6
    position = torch.rand(300, generator=generator)
    scores = column_scores(scores_of, torch.stack([yes.double(), position.double()], 1), ["binary", "position"])
    accuracy, threshold, sign = best_thresholds(scores_of, yes)
    for column in range(5):
        above = scores_of[yes, column][:, None] - scores_of[~yes, column][None]
        assert scores[column, 0] == pytest.approx(float((above > 0).double().mean() + (above == 0).double().mean() / 2))
        assert scores[column, 1] == pytest.approx(numpy.corrcoef(scores_of[:, column], position)[0, 1])
        cuts = [((s * (scores_of[:, column] - t) > 0) == yes).double().mean() for t in numpy.arange(-0.5, 4, 0.5)
                for s in (1, -1)]
        assert accuracy[column] == pytest.approx(float(max(cuts)))
        assert float(((sign[column] * (scores_of[:, column] - threshold[column]) > 0) == yes).double().mean()) \
            == pytest.approx(float(accuracy[column]))


def plant(trained: TrainedModel, counter: int, upper: int) -> None:
    """Layer 1's cell unit `counter` counts the characters of a line; its unit `upper` is +1 on an upper-case
    letter and -1 otherwise. The embedding is one-hot, so a character's column of the weights is its effect."""
    model, tokenizer, hidden = trained.model, trained.tokenizer, trained.config.hidden_size
    vocabulary = tokenizer.tokens(range(tokenizer.vocab_size))
    with torch.no_grad():
        model.embedding.weight.copy_(torch.eye(tokenizer.vocab_size))
        lstm = model.lstm
        for unit in (counter, upper):
            for gate in range(4):
                row = gate * hidden + unit
                lstm.weight_ih_l0[row] = 0
                lstm.weight_hh_l0[row] = 0
                lstm.bias_hh_l0[row] = 0
        i, f, g, o = (gate * hidden for gate in range(4))
        lstm.bias_ih_l0[[i + counter, f + counter, g + counter, o + counter]] = torch.tensor([10.0, 10.0, 1.0, 0.0])
        lstm.weight_ih_l0[f + counter, vocabulary.index("\n")] = -20.0  # forget the count at a line break
        lstm.bias_ih_l0[[i + upper, f + upper, g + upper, o + upper]] = torch.tensor([10.0, -10.0, 0.0, 10.0])
        lstm.weight_ih_l0[g + upper] = torch.tensor([5.0 if token.isupper() else -5.0 for token in vocabulary])


def shakespeare_parts(tokenizer: Tokenizer) -> tuple[Texts, Texts]:
    return (texts_from(SHAKESPEARE[:200_000], "first 200k", tokenizer, clean=False, tokens=6_000),
            texts_from(SHAKESPEARE[-100_000:], "last 100k", tokenizer, clean=False, tokens=6_000))


def test_the_atlas_finds_a_planted_unit_and_a_random_model_has_none():
    trained = tiny_char_model(seed=2)
    plant(trained, counter=5, upper=3)
    atlas = build_atlas(trained, *shakespeare_parts(trained.tokenizer))
    found = {entry["property"]: entry for entry in atlas["properties"]}
    position, upper = found["position_in_line"], found["upper_case"]
    assert (position["layer"], position["quantity"], position["unit"], position["sign"]) == (1, "c", 5, 1)
    assert position["metric"] == "r" and position["score"] > 0.95
    assert position["baseline"] < 0.7  # the best unit of a random model of the same shape
    assert (upper["layer"], upper["unit"], upper["metric"]) == (1, 3, "auc") and upper["score"] > 0.99
    assert upper["baseline"] < 0.95
    assert position["dial"]["line end"] > position["dial"]["line start"]

    unplanted = {entry["property"]: entry for entry in build_atlas(tiny_char_model(seed=2),
                                                                  *shakespeare_parts(trained.tokenizer))["properties"]}
    assert unplanted["position_in_line"]["score"] < 0.7
    assert (unplanted["position_in_line"]["layer"], unplanted["position_in_line"]["quantity"],
            unplanted["position_in_line"]["unit"]) != (1, "c", 5)


def test_the_atlas_file_round_trips(tmp_path):
    atlas = {"properties": [{"property": "sentiment", "layer": 2, "unit": 17, "quantity": "h", "metric": "accuracy",
                             "score": 0.8, "baseline": 0.55, "sign": -1, "dial": {"positive": -1.2, "negative": 1.3}}],
             "choose": {"source": "train"}, "score": {"source": "test"}}
    assert read_atlas(tmp_path) is None
    write_atlas(tmp_path, atlas)
    assert read_atlas(tmp_path) == atlas


def test_review_examples_are_typical_hits_of_each_label_and_one_typical_miss():
    """The sentiment examples show what the unit does (here: low means positive, threshold 0): of each label the
    reviews read right nearest that group's median, then the miss nearest the median of the commoner misses; a
    review too long to keep whole is never picked, however typical."""
    labels = torch.tensor([True] * 6 + [False] * 6)
    values = torch.tensor([-0.9, -0.6, -0.45, -0.35, -0.1, 0.3,  # positives: the last one misread
                           0.8, 0.62, 0.55, -0.1, -0.2, -0.6])  # negatives: the last three misread
    ends = EndReading(values, values < 0)
    whole = torch.ones(12, dtype=torch.bool)
    whole[2] = False  # the median of the positives read right, but too long to keep whole
    assert EXAMPLE_REVIEWS == 2
    assert review_examples(labels, ends, whole) == [3, 1, 7, 8, 10]
    assert review_examples(labels, EndReading(values, labels.clone()), whole) == [3, 1, 9, 10]  # no miss to show


@pytest.mark.parametrize("name", ["shakespeare-char", "imdb-word", "imdb-bpe"])
def test_shipped_models_have_their_atlas(name):
    folder = ROOT / "checkpoints" / name
    assert (folder / ATLAS_FILE).stat().st_size < 50_000
    config = load_model(folder).config
    atlas = read_atlas(folder)
    # the sources are shown as headings: the data's name, not the folder it was read from (../shared/data/imdb)
    data = data_name(config.data, config.data_config)
    assert atlas["choose"]["source"].endswith(f" of {data}") and atlas["score"]["source"].endswith(f" of {data}")
    assert atlas["score"]["source"] != atlas["choose"]["source"]
    descriptions = {prop.name: prop.description for prop in PROPERTIES}
    for entry in atlas["properties"]:
        assert 1 <= entry["layer"] <= config.num_layers and 0 <= entry["unit"] < config.hidden_size
        assert entry["quantity"] in ("h", "c") and entry["metric"] in ("r", "auc", "accuracy")
        assert entry["description"] == descriptions.get(entry["property"], "the review's sentiment")  # made today
    properties = {entry["property"]: entry for entry in atlas["properties"]}
    rated = [example["sentiment"] for example in atlas["examples"] if "sentiment" in example]
    if name.startswith("imdb"):
        assert set(properties["sentiment"]["dial"]) == {"positive", "negative"}
        assert len(rated) == 2 * EXAMPLE_REVIEWS + 1  # the typical ones of each label and one miss
    else:
        assert properties["position_in_line"]["score"] > properties["position_in_line"]["baseline"]
        assert not rated


def test_the_command_writes_the_atlas_into_the_model_folder(char_model, tmp_path, capsys):
    model = shutil.copytree(char_model, tmp_path / char_model.name)
    assert main(["atlas", str(model)]) == 0
    out = capsys.readouterr().out
    assert "position_in_line" in out and "written:" in out
    atlas = read_atlas(model)
    assert {"position_in_line", "upper_case"} <= {entry["property"] for entry in atlas["properties"]}
    # named as data_name names the data, not by the path it was read from (a heading in the app)
    assert atlas["choose"]["source"] == "train and valid splits of tinyshakespeare/input.txt"
    assert atlas["score"]["source"] == "test split of tinyshakespeare/input.txt"

    assert main(["atlas", str(model), "--json", "--text", str(DATA / "tinyshakespeare" / "input.txt")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == read_atlas(model) and printed["choose"]["source"] == "first half of tinyshakespeare/input.txt"


@pytest.mark.parametrize("args, message", [
    (["--reviews", "-1"], "--reviews must be 0 (all) or more"),
    (["--text", "no-such-file.txt"], "no such file"),
])
def test_the_command_refuses_bad_input(char_model, args, message, capsys):
    assert main(["atlas", str(char_model), *args]) == 2
    assert message in capsys.readouterr().err


def test_sentiment_is_scored_on_rated_reviews(bpe_model, tmp_path):
    """A text of rated reviews: the atlas labels them by the rule and scores a sentiment unit."""
    reviews = [line for line in (DATA / "imdb" / "test.txt").read_text(encoding="utf-8").split("\n")[:3000]
               if rating_label(line) is not None]
    text = tmp_path / "rated.txt"
    text.write_text("\n".join(reviews) + "\n", encoding="utf-8")
    model = shutil.copytree(bpe_model, tmp_path / bpe_model.name)
    assert main(["atlas", str(model), "--text", str(text)]) == 0
    sentiment = next(e for e in read_atlas(model)["properties"] if e["property"] == "sentiment")
    assert sentiment["metric"] == "accuracy" and 0 <= sentiment["baseline"] <= 1 and 0 <= sentiment["score"] <= 1
    assert set(sentiment["dial"]) == {"positive", "negative"}
    assert read_atlas(model)["choose"]["rated_reviews"] >= 40


def test_a_model_loaded_from_the_hub_brings_its_atlas(char_model, tmp_path, monkeypatch):
    """A Hub download fetches only what the allow-list names (filtered by huggingface_hub's own
    `filter_repo_objects`, as `snapshot_download` filters a repo's files): atlas.json must be among them."""
    from huggingface_hub.utils import filter_repo_objects

    repo = shutil.copytree(char_model, tmp_path / "repo")
    atlas = {"properties": [{"property": "position_in_line", "layer": 1, "unit": 3, "quantity": "c", "metric": "r",
                             "score": 0.9, "baseline": 0.5, "sign": 1, "dial": {"line end": 2.0, "line start": -1.0}}],
             "choose": {"source": "train"}, "score": {"source": "test"}}
    write_atlas(repo, atlas)
    (repo / "notes.txt").write_text("not part of a model")

    def snapshot_download(repo_id: str, revision: str | None = None, allow_patterns: list[str] | None = None) -> str:
        snapshot = tmp_path / "cache" / repo_id.replace("/", "--")
        snapshot.mkdir(parents=True)
        for name in filter_repo_objects([path.name for path in repo.iterdir()], allow_patterns=allow_patterns):
            shutil.copyfile(repo / name, snapshot / name)
        return str(snapshot)

    monkeypatch.setattr("lmdemo.checkpoint.snapshot_download", snapshot_download)
    trained = load_model("someone/tiny-shakespeare")
    assert read_atlas(trained.folder) == atlas
    assert not (trained.folder / "notes.txt").exists()
