"""The lmdemo core on small real data: tokenizers, corpora, the model, training, checkpoints, evaluation."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import DATA, train_small
from lmdemo import Config, LSTMLanguageModel, Tokenizer, load_model
from lmdemo.batches import StreamBatches
from lmdemo.checkpoint import ModelLoadError, save_model
from lmdemo.corpus import CorpusError, load_corpus
from lmdemo.evaluation import evaluate
from lmdemo.metrics import read_metrics
from lmdemo.parallel import Parallel

SHAKESPEARE = DATA / "tinyshakespeare" / "input.txt"


# -- tokenizers --------------------------------------------------------------------------------
def test_char_tokenizer_round_trips_and_maps_unknown_to_unk(tmp_path):
    text = SHAKESPEARE.read_text()[:5000]
    tokenizer = Tokenizer.build([text], "char")
    assert tokenizer.decode(tokenizer.encode(text)) == text
    ids = tokenizer.encode("the ☃\n")
    assert ids.count(tokenizer.unk_id) == 1  # the snowman
    tokenizer.save(tmp_path / "tokenizer.json")
    again = Tokenizer.load(tmp_path / "tokenizer.json", "char")
    assert again.level == "char" and again.encode(text) == tokenizer.encode(text)


def test_word_tokenizer_follows_basic_english_and_round_trips():
    tokenizer = Tokenizer.build(["The film wasn't good.<br />Really: \"bad\" (sadly)!"], "word")
    ids = tokenizer.encode("The film wasn't good.<br />Really: \"bad\" (sadly)!")
    assert tokenizer.tokens(ids) == ["the", "film", "wasn", "'", "t", "good", ".", "really", "bad", "(",
                                     "sadly", ")", "!"]
    assert tokenizer.decode(ids) == "the film wasn't good. really bad (sadly)!"  # detokenised for reading
    assert tokenizer.encode(tokenizer.decode(ids)) == ids
    assert tokenizer.tokens(tokenizer.encode("an unseen zebra")) == ["<unk>", "<unk>", "<unk>"]
    assert tokenizer.decode(tokenizer.encode("the film\nthe end")) == "the film\nthe <unk>"


def test_word_vocabulary_respects_min_freq_and_max_vocab():
    docs = ["a a a b b c"] * 2
    assert set(Tokenizer.build(docs, "word", min_freq=3).hf.get_vocab()) == {"<unk>", "<eos>", "a", "b"}
    assert set(Tokenizer.build(docs, "word", max_vocab=1).hf.get_vocab()) == {"<unk>", "<eos>", "a"}


def test_literal_unk_in_corpus_keeps_special_ids():
    tokenizer = Tokenizer.build([line for line in (DATA / "ptb" / "ptb.valid.txt").read_text().splitlines()[:200]],
                                "word", lowercase=False)
    assert (tokenizer.unk_id, tokenizer.eos_id) == (0, 1)
    line = " consumers may want to move their telephones a little closer to the tv set"
    assert tokenizer.decode(tokenizer.encode(line)) == line.strip()


# -- corpora -----------------------------------------------------------------------------------
def test_single_file_uses_standard_char_split():
    corpus = load_corpus(Config(level="char", data=str(SHAKESPEARE), valid_fraction=0.1))
    text = SHAKESPEARE.read_text()
    assert corpus.train[0] + corpus.valid[0] == text
    assert len(corpus.valid[0]) == len(text) - round(len(text) * 0.9)
    assert corpus.test == []


def test_folder_splits_and_missing_split_is_carved(tmp_path):
    corpus = load_corpus(Config(data=str(DATA / "wikitext-2"), train_split="valid", valid_split="test",
                                max_tokens=2000))
    assert corpus.train[1].startswith(" = Homarus gammarus =")
    (tmp_path / "train.txt").write_text("".join(f"line {i}\n" for i in range(100)))
    carved = load_corpus(Config(data=str(tmp_path), valid_fraction=0.2))
    assert len(carved.train) == 80 and carved.valid[0] == "line 80"


def test_dataset_paths_offline_save_to_disk_and_data_files(tmp_path):
    import datasets

    reviews = (DATA / "imdb" / "valid.txt").read_text().splitlines()[:60]
    saved = tmp_path / "imdb-saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"review": reviews[:50]}),
                          "test": datasets.Dataset.from_dict({"review": reviews[50:]})}).save_to_disk(saved)
    corpus = load_corpus(Config(data=str(saved), text_column="review", valid_fraction=0.2, clean_html=True))
    assert len(corpus.train) == 40 and len(corpus.valid) == 10 and len(corpus.test) == 10
    assert not any("<br" in doc for doc in corpus.train)
    with pytest.raises(CorpusError, match="no column 'text'"):
        load_corpus(Config(data=str(saved)))
    # A folder of data files goes through datasets.load_dataset, the same call a Hub id takes.
    files = tmp_path / "imdb-json"
    files.mkdir()
    for split, rows in (("train", reviews[:50]), ("test", reviews[50:])):
        (files / f"{split}.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    from_files = load_corpus(Config(data=str(files), valid_fraction=0.2, train_docs=30))
    assert len(from_files.train) == 30 and len(from_files.valid) == 10 and from_files.test == reviews[50:]


def test_unknown_dataset_offline_is_a_clear_error():
    with pytest.raises(CorpusError, match="could not load dataset"):
        load_corpus(Config(data="nobody/no-such-dataset"))


# -- model and batches -------------------------------------------------------------------------
def test_stream_batches_cover_the_text_in_order():
    ids = torch.arange(103)
    batches = StreamBatches(ids, batch_size=4, bptt=7)
    rows = torch.cat([batches.window(i)[0] for i in range(len(batches))], 1)
    targets = torch.cat([batches.window(i)[1] for i in range(len(batches))], 1)
    assert torch.equal(rows, ids[:100].view(4, 25)[:, :24]) and torch.equal(targets, rows + 1)
    halves = [StreamBatches(ids, 4, 7, rank, 2).streams for rank in (0, 1)]
    assert torch.equal(torch.cat(halves), batches.streams)
    shifted = StreamBatches(ids, 4, 7, offset=3)
    assert torch.equal(shifted.window(0)[0][:, 0], ids[3:].view(4, 25)[:, 0])  # every boundary moves by 3


def test_later_epochs_cut_the_text_at_other_places(tmp_path):
    from lmdemo.training import Trainer, set_up_hardware

    config = Config(level="char", data=str(DATA / "tinyshakespeare" / "input.txt"), max_tokens=5_000, batch_size=4,
                    bptt=16, emb_size=8, hidden_size=8, precision="fp32")
    hardware = set_up_hardware(config, Parallel(), torch.device("cpu"))
    run = Trainer(config, tmp_path / "run", False, Parallel(), hardware, "pytest")
    firsts = {int(run._epoch_batches(epoch).window(0)[0][0, 0]) for epoch in range(6)}
    assert len(firsts) > 2 and int(run._epoch_batches(0).window(0)[0][0, 0]) == int(run.splits["train"].ids[0])
    unshifted = Trainer(config.replace(shift_windows=False), tmp_path / "plain", False, Parallel(), hardware, "pytest")
    assert torch.equal(unshifted._epoch_batches(5).streams, unshifted._epoch_batches(0).streams)


def test_tying_with_projection_shares_one_matrix():
    model = LSTMLanguageModel(Config(vocab_size=50, emb_size=16, hidden_size=24))
    assert model.decoder.weight is model.embedding.weight and model.projection is not None
    logits, (h, c) = model(torch.randint(0, 50, (3, 5)))
    assert logits.shape == (3, 5, 50) and h.shape == (2, 3, 24)


def test_lstm_weights_are_really_initialised():
    torch.manual_seed(0)
    model = LSTMLanguageModel(Config(vocab_size=30, emb_size=8, hidden_size=100, tie_weights=False))
    bound = 1 / 100 ** 0.5
    assert model.lstm.weight_hh_l1.abs().max() <= bound
    assert 0.8 < model.embedding.weight.std() < 1.2  # untied: unit scale, so the LSTM sees its input
    tied = LSTMLanguageModel(Config(vocab_size=30, emb_size=100, hidden_size=100, tie_weights=True))
    assert tied.embedding.weight.abs().max() <= 0.1  # tied: it is the decoder too, so it starts small
    assert model.lstm.weight_ih_l0.abs().max() > 0.9 * bound and torch.all(model.decoder.bias == 0)


def test_model_overfits_a_short_text():
    torch.manual_seed(0)
    text = "to be or not to be that is the question " * 3
    tokenizer = Tokenizer.build([text], "char")
    ids = torch.tensor(tokenizer.encode(text)).unsqueeze(0)
    model = LSTMLanguageModel(Config(vocab_size=tokenizer.vocab_size, emb_size=32, hidden_size=64, dropout=0.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        logits, _ = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1


def test_state_carrying_one_call_equals_chunks(char_model):
    trained = load_model(char_model)
    ids = torch.tensor(trained.tokenizer.encode(SHAKESPEARE.read_text()[:3000]))
    whole = evaluate(trained.model, ids, batch_size=1, bptt=4000)
    chunked = evaluate(trained.model, ids, batch_size=1, bptt=37)
    assert whole.tokens == chunked.tokens == 2999
    assert abs(whole.loss - chunked.loss) < 1e-5


# -- checkpoints -------------------------------------------------------------------------------
def test_save_load_gives_identical_logits(char_model, tmp_path):
    trained = load_model(char_model)
    files = sorted(p.name for p in char_model.iterdir())
    assert files == ["README.md", "config.json", "examples.json", "metrics.jsonl", "model.safetensors",
                     "tokenizer.json"]
    copy = save_model(tmp_path / "copy", trained.model, trained.tokenizer, char_model / "metrics.jsonl")
    again = load_model(copy)
    ids = torch.randint(0, trained.config.vocab_size, (2, 40))
    assert torch.equal(trained.model(ids)[0], again.model(ids)[0])
    card = (char_model / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: lmdemo" in card and "perplexity" in card


def test_the_card_of_a_resumed_run_lists_the_command_of_every_leg(char_model, tmp_path):
    """Only all the legs in turn reproduce a resumed run, so the card names each one with its step."""
    trained = load_model(char_model)
    log = tmp_path / "metrics.jsonl"
    records = [json.loads(line) for line in (char_model / "metrics.jsonl").read_text().splitlines()]
    first = next(record for record in records if record["event"] == "start")
    leg = dict(first, step=1234, resumed=True, command="python -m lmdemo train --out runs/x --resume --max-steps 2000")
    log.write_text("".join(json.dumps(record) + "\n" for record in [*records, leg]))
    card = (save_model(tmp_path / "copy", trained.model, trained.tokenizer, log) / "README.md").read_text()
    assert f"  - step 0: `{first['command']}`" in card
    assert "  - step 1,234: `python -m lmdemo train --out runs/x --resume --max-steps 2000`" in card
    single = (save_model(tmp_path / "one", trained.model, trained.tokenizer, char_model / "metrics.jsonl")
              / "README.md").read_text()
    assert f"- command: `{first['command']}`" in single and "resumed" not in single


def test_hub_loading_from_an_offline_cache(char_model, tmp_path, monkeypatch):
    """Pre-fill a Hugging Face cache the way a download would, then load by repo id with HF_HUB_OFFLINE=1."""
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = cache / "models--someone--tiny-shakespeare" / "snapshots" / commit
    shutil.copytree(char_model, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    trained = load_model("someone/tiny-shakespeare")
    assert trained.folder == snapshot
    ids = torch.randint(0, trained.config.vocab_size, (1, 20))
    assert torch.equal(trained.model(ids)[0], load_model(char_model).model(ids)[0])
    assert load_model("someone/tiny-shakespeare", revision=commit).folder == snapshot
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        load_model("someone/not-cached")


def test_incomplete_or_corrupt_model_folders_are_clear_errors(char_model, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(char_model, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="cannot load the model"):
        load_model(broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="missing model.safetensors"):
        load_model(broken)
    with pytest.raises(ModelLoadError, match="no model folder"):
        load_model(tmp_path / "nowhere")


# -- training ----------------------------------------------------------------------------------
def test_training_writes_the_documented_log(char_model):
    metrics = read_metrics(char_model / "metrics.jsonl")
    assert metrics.problems == []
    events = [r["event"] for r in metrics.records]
    assert events[0] == "start" and events[-2:] == ["test", "end"] and events.count("val") == 2
    assert (metrics.last("end")["reason"], metrics.last("end")["limit"]) == ("epochs", 2)  # why it ended
    train = metrics.events("train")
    assert [r["step"] for r in train] == sorted(r["step"] for r in train)
    for key in ("step", "epoch", "tokens", "time", "lr", "train_loss", "train_ppl", "train_bpc", "tokens_per_sec"):
        assert key in train[0]
    assert train[-1]["train_loss"] < train[0]["train_loss"]
    assert {"val_loss", "val_ppl", "val_bpc", "epoch_end", "best"} <= set(metrics.events("val")[0])


def test_same_seed_same_run(tmp_path):
    options = dict(level="char", data=str(SHAKESPEARE), max_tokens=8000, max_steps=12, emb_size=16, hidden_size=32,
                   dropout=0.2, log_every=4)
    runs = [train_small(tmp_path / name, **options) for name in ("a", "b")]
    logs = [[(r["event"], r.get("train_loss"), r.get("val_loss")) for r in read_metrics(run / "metrics.jsonl").records]
            for run in runs]
    assert logs[0] == logs[1]
    other = train_small(tmp_path / "c", **{**options, "seed": 99})
    assert read_metrics(other / "metrics.jsonl").events("train")[0]["train_loss"] != \
        read_metrics(runs[0] / "metrics.jsonl").events("train")[0]["train_loss"]


def test_config_round_trips_through_json(tmp_path):
    config = Config(level="char", data="x.txt", hidden_size=7, max_tokens=5)
    config.save(tmp_path / "c.json")
    assert Config.load(tmp_path / "c.json") == config
    saved = json.loads((tmp_path / "c.json").read_text())
    assert Config.from_dict({**saved, "from_the_future": 1}) == config
