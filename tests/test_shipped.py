"""The shipped models: they load, docs/models.md's table is what their logs say, and eval reproduces the logs."""

from __future__ import annotations

import json
import re

import pytest

from conftest import DATA, ROOT
from test_cli import cli

from lmdemo import load_model
from lmdemo.metrics import read_metrics

SHIPPED = ("shakespeare-char", "imdb-word", "imdb-bpe")
TABLE = re.compile(r"<!-- models table: (.*?) -->\n(.*?)\n<!-- end of models table -->", re.S)


def parameters_by_hand(config) -> int:
    """Count from the architecture on paper, not from the code that logged the figure."""
    vocab, emb, hidden = config.vocab_size, config.emb_size, config.hidden_size
    decoder_in = emb if config.tie_weights else hidden
    count = vocab * emb + vocab  # embedding, decoder bias
    count += 0 if config.tie_weights else vocab * hidden  # an untied decoder matrix
    count += hidden * emb if config.tie_weights and emb != hidden else 0  # projection
    for layer in range(config.num_layers):
        count += 4 * hidden * ((emb if layer == 0 else hidden) + hidden + 2)  # weights and two biases
    if config.cutoffs:
        count += (decoder_in + 1) * (len(config.cutoffs) - 1)  # one head logit per tail cluster
    return count


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_and_is_small_enough(name):
    folder = ROOT / "checkpoints" / name
    trained = load_model(str(folder))
    assert parameters_by_hand(trained.config) == read_metrics(folder / "metrics.jsonl").last("start")["params"]
    assert sum(f.stat().st_size for f in folder.iterdir()) <= 25 * 2**20
    card = (folder / "README.md").read_text()
    assert "python -m lmdemo train --preset" in card and "hardware:" in card


def test_models_table_is_generated_from_the_logs():
    command, table = TABLE.search((ROOT / "docs" / "models.md").read_text()).groups()
    assert command.startswith("python -m lmdemo table ")
    done = cli(*command.split()[3:])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == table.strip()


@pytest.mark.parametrize("name, data", [("shakespeare-char", DATA / "tinyshakespeare" / "input.txt"),
                                        ("imdb-word", DATA / "imdb"), ("imdb-bpe", DATA / "imdb")])
def test_eval_reproduces_the_logged_validation(name, data):
    """The card's validation figure is what `eval` prints (the IMDB model scores the first 200k tokens)."""
    folder = ROOT / "checkpoints" / name
    done = cli("eval", str(folder), "--split", "valid", "--data", str(data), "--json")
    assert done.returncode == 0, done.stderr
    best = read_metrics(folder / "metrics.jsonl").best("val_loss")
    result = json.loads(done.stdout)
    assert result["loss"] == pytest.approx(best["val_loss"], abs=1e-4)
    assert result["bpc"] == pytest.approx(best["val_bpc"], abs=1e-4)
    assert f"{best['val_loss']:.4f}" in (folder / "README.md").read_text()
