"""Each rule once: folder or Hub id, the best model, the measured step, no import cycle, clean stops, the rating
rule in digits or words."""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DATA, ROOT
from lmdemo import LSTMLanguageModel, Tokenizer, properties
from lmdemo.checkpoint import ModelLoadError, hub_dataset, load_model, save_model, write_model_card
from lmdemo.cli import main
from lmdemo.config import Config, data_name
from lmdemo.corpus import CorpusError, load_corpus
from lmdemo.files import hub_id
from lmdemo.metrics import MetricsWriter, improves, read_metrics
from lmdemo.properties import rating_label, without_ratings
from lmdemo.training import Trainer
from lmdemo.web.registry import _display_name

SHAKESPEARE = DATA / "tinyshakespeare" / "input.txt"
TINY_RUN = dict(level="char", data=str(SHAKESPEARE), max_tokens=20_000, emb_size=16, hidden_size=32, batch_size=8,
                bptt=16, log_every=5, precision="fp32", threads=1)


# -- 1. folder or Hub id: one rule ----------------------------------------------------------------------
@pytest.mark.parametrize("source, expected", [
    ("owner/name", "owner/name"),  # the Hub's shape, and no such folder here
    ("ptb_text_only", "ptb_text_only"),  # a dataset without an owner
    ("EleutherAI/gpt-neo-1.3B", "EleutherAI/gpt-neo-1.3B"),  # a dot is not a file suffix
    ("./x", None), ("../x", None), ("/no/such/folder", None), ("~/no-such-folder", None),  # paths by their start
    ("a/b/c", None), ("notes.txt", None), ("owner/reviews.jsonl", None),  # too deep, or a file's name
    ("my model", None), ("-owner/name", None), ("", None),  # not the Hub's characters
])
def test_hub_id_is_the_hubs_shape_and_never_a_path(source, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hub_id(source) == expected


def test_what_exists_here_is_local_whatever_its_shape(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner" / "name").mkdir(parents=True)
    (tmp_path / "corpus").write_text("text\n")
    assert hub_id("owner/name") is None and hub_id("corpus") is None
    assert hub_id(tmp_path / "owner") is None and hub_id("owner/other") == "owner/other"


@pytest.mark.parametrize("source", ["owner/gpt-neo-1.3B", "gpt2", "owner/reviews.jsonl", "./x", "/no/such/folder",
                                    "a/b/c"])
def test_every_caller_tells_a_folder_from_a_hub_id_the_same_way(source, tmp_path, monkeypatch):
    """Loading a model, loading a corpus, naming data, the card's dataset and the app's model name agree."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    repo = hub_id(source)
    assert hub_dataset(Config(data=source)) == repo
    assert _display_name(source) == (source if repo else Path(source).name)
    assert data_name(source) == (source if repo else data_name(str(tmp_path / source)))
    with pytest.raises(ModelLoadError, match=re.escape(f"no model folder at {source}")) as loading:
        load_model(source)
    assert ("Hugging Face cache" in str(loading.value)) == (repo is not None)
    with pytest.raises(CorpusError, match="could not load dataset" if repo else "data not found"):
        load_corpus(Config(data=source))


# -- 2. the best model: one definition ---------------------------------------------------------------
def test_the_card_names_the_validation_whose_weights_were_saved(tmp_path):
    """A later validation better by less than the threshold is no new best: training keeps the earlier
    weights, so the card, the app and the dashboard must report the earlier loss."""
    tokenizer = Tokenizer.build(["to be or not to be"], "char")
    model = LSTMLanguageModel(Config(level="char", vocab_size=tokenizer.vocab_size, emb_size=8, hidden_size=8))
    folder = save_model(tmp_path / "model", model, tokenizer)
    log = MetricsWriter(folder / "metrics.jsonl")
    log.append("val", step=10, val_loss=2.0, val_ppl=7.389, val_bpc=2.8854, best=True)
    log.append("val", step=20, val_loss=1.9999, val_ppl=7.3883, val_bpc=2.8853, best=False)
    assert not improves(1.9999, 2.0)
    metrics = read_metrics(folder / "metrics.jsonl")
    assert metrics.best("val_loss")["step"] == 10
    write_model_card(folder, model, metrics, "tiny")
    card = (folder / "README.md").read_text()
    assert "| validation (best) | 2.0000 | 7.39 | 2.8854 |" in card and "1.9999" not in card


def test_best_is_the_record_training_flagged_in_a_real_run(tmp_path):
    from lmdemo.training import train

    train(Config(**TINY_RUN, max_steps=60, eval_every=5, lr=0.05, schedule="constant"), tmp_path / "run",
          progress_bar=False, command="pytest")
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    flagged = [r for r in metrics.events("val") if r["best"]]
    assert len(flagged) >= 2 and metrics.best("val_loss") is flagged[-1]
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert f"| validation (best) | {flagged[-1]['val_loss']:.4f} |" in card


# -- 3. the budget is measured on the step that trains -------------------------------------------------
def test_the_minutes_budget_times_the_training_step_itself(tmp_path, monkeypatch):
    """The timed steps are `Trainer._step` (clipping, learning rate, gradient exchange), not a copy of it."""
    import torch

    from lmdemo import training
    from lmdemo.training import train

    measuring, steps_measured, clips_measured = [False], [], []
    real_measure, real_step, real_clip = training.measure_step_budget, Trainer._step, torch.nn.utils.clip_grad_norm_

    def measure(trainer):
        measuring[0] = True
        budget = real_measure(trainer)
        measuring[0] = False
        return budget

    def step(self, interval):
        if measuring[0]:
            steps_measured.append(self.counters.step)
        return real_step(self, interval)

    def clip(*args, **kwargs):
        if measuring[0]:
            clips_measured.append(1)
        return real_clip(*args, **kwargs)

    monkeypatch.setattr(training, "measure_step_budget", measure)
    monkeypatch.setattr(Trainer, "_step", step)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    train(Config(**TINY_RUN, max_minutes=0.1, epochs=100), tmp_path / "run", progress_bar=False, command="pytest")
    assert len(steps_measured) >= 5 and len(clips_measured) == len(steps_measured)
    assert steps_measured == list(range(len(steps_measured)))  # consecutive steps of the run, from its start ...
    first = read_metrics(tmp_path / "run" / "metrics.jsonl").events("train")[0]
    assert (first["step"], first["tokens"]) == (5, 5 * 8 * 16)  # ... then put back: the run starts at step 0


def test_a_minutes_budget_leaves_room_for_the_validation_at_its_limit(tmp_path, monkeypatch):
    """Where validation costs most (here every pass sleeps 8 s for its 111,000 characters; a step takes milliseconds and
    the budget ends inside the first epoch), the run still ends within its minutes: the steps planned leave room for
    the validation the limit always runs, not only for each step's share of the validations on the way."""
    import time

    from lmdemo import evaluation, run_scores, training
    from lmdemo.training import train

    def slow_evaluate(model, ids, *args, **kwargs):
        time.sleep(ids.numel() * 7.2e-5)
        return evaluation.evaluate(model, ids, *args, **kwargs)

    monkeypatch.setattr(training, "evaluate", slow_evaluate)
    monkeypatch.setattr(run_scores, "evaluate", slow_evaluate)
    config = Config(**{**TINY_RUN, "max_tokens": 1_000_000}, max_minutes=0.3, epochs=100)
    train(config, tmp_path / "run", progress_bar=False, command="pytest")
    log = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert log.last("end")["reason"] == "budget" and log.events("val")[-1]["step"] == log.last("start")["step_budget"]
    # steps share little of the budget, so a loaded machine's slower steps cannot pass for a validation's 8 s
    assert log.last("end")["time"] <= 18.0 + 3.0, log.last("end")  # the code before: 24.0 s, a validation over



def test_a_minutes_budget_leaves_room_for_the_atlas_that_follows(tmp_path, monkeypatch):
    """With --atlas the run, atlas included, ends within its minutes: the atlas's time is measured on a slice of
    what it reads (here it sleeps 0.2 ms a token read, 8 s for the 40,000 it reads: far more than validation costs), not
    guessed from validation's speed."""
    import time

    from lmdemo import training
    from lmdemo.training import train

    def slow_atlas(trained, choose, score, *args, **kwargs):
        time.sleep(2e-4 * sum(len(passage) for texts in (choose, score) for passage in texts.passages))
        return build_atlas(trained, choose, score, *args, **kwargs)

    build_atlas = training.build_atlas
    monkeypatch.setattr(training, "build_atlas", slow_atlas)
    config = Config(**TINY_RUN, max_minutes=0.3, epochs=100)
    started = time.monotonic()
    best = train(config, tmp_path / "run", progress_bar=False, command="pytest", atlas=True, started=started)
    seconds = time.monotonic() - started
    end = read_metrics(tmp_path / "run" / "metrics.jsonl").last("end")
    assert end["reason"] == "budget" and (best / "atlas.json").is_file()
    # the code before guessed under a second for this atlas from validation's speed, so the atlas ran past the limit;
    # the slice's fixed costs, scaled with it, may end a run early, never by a whole atlas
    assert 18.0 - 8.0 <= seconds <= 18.0 + 2.5, (seconds, end)

# -- 4. no import cycle ------------------------------------------------------------------------------
def _imports(path: Path) -> set[str]:
    """Every lmdemo module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return {name for name in found if name.startswith("lmdemo.")}


def test_lmdemo_modules_import_each_other_without_a_cycle():
    package = ROOT / "lmdemo"
    modules = {".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
               for path in package.rglob("*.py")}
    graph = {name: _imports(path) & modules.keys() - {name} for name, path in modules.items()}
    assert graph["lmdemo.config"] and graph["lmdemo.model"], "the graph must see the modules' imports"
    done, path = set(), []

    def visit(name: str) -> None:
        if name in path:
            cycle = path[path.index(name):] + [name]
            pytest.fail(f"import cycle: {' -> '.join(cycle)}")
        if name in done:
            return
        path.append(name)
        for imported in sorted(graph[name]):
            visit(imported)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


# -- 5. clean stops ------------------------------------------------------------------------------------
def _mapped(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="watches /proc to know the command has started")
def test_ctrl_c_while_the_command_loads_ends_with_one_line_and_130(tmp_path):
    """The signal goes in once torch starts loading (inside the command, not Python's own start-up)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "lmdemo", "train", "--data", str(SHAKESPEARE), "--level", "char",
                                "--max-minutes", "1", "--quiet", "--out", str(tmp_path / "run")],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while process.poll() is None and not _mapped(process.pid, "libtorch"):
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert (process.returncode, stderr) == (130, "lmdemo: interrupted\n"), stderr[-2000:]
    assert not (tmp_path / "run").exists()


INTERRUPTED_IMPORT = """
import importlib.abc, os, signal, sys

class InterruptAtImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == sys.argv[1]:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as the module starts importing
        return None

sys.meta_path.insert(0, InterruptAtImport())
from lmdemo.cli import main
sys.exit(main(["train", "--data", sys.argv[2], "--level", "char", "--max-minutes", "1", "--quiet", "--out", sys.argv[3]]))
"""


@pytest.mark.parametrize("module", ["numpy", "torch._C"])
def test_ctrl_c_inside_a_librarys_import_is_held_until_it_has_imported(module, tmp_path):
    """A Ctrl-C inside numpy's import (torch's start-up imports it and carries on without it) was swallowed: the
    command trained its whole minute and saved a model; at other instants it left numpy half-imported (an
    AttributeError's traceback) or aborted in torch's C++. Held until the imports end, it ends the command."""
    done = subprocess.run([sys.executable, "-c", INTERRUPTED_IMPORT, module, str(SHAKESPEARE), str(tmp_path / "run")],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert (done.returncode, done.stderr) == (130, "lmdemo: interrupted\n"), done.stderr[-2000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("phase", ["lmdemo.training.Tokenizer.build", "lmdemo.training.measure_step_budget"])
def test_ctrl_c_while_tokenising_or_measuring_ends_with_one_line_and_130(phase, tmp_path, monkeypatch, capsys):
    """A Ctrl-C raises KeyboardInterrupt wherever Python is: here, in each phase before training."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(phase, interrupted)
    code = main(["train", "--data", str(SHAKESPEARE), "--level", "char", "--max-tokens", "5000", "--max-minutes", "1",
                 "--threads", "1", "--quiet", "--out", str(tmp_path / "run")])
    assert (code, capsys.readouterr().err) == (130, "lmdemo: interrupted\n")


def test_a_runs_last_steps_are_on_its_curve_when_it_ends_between_log_steps(tmp_path):
    """A run that ends at a limit between two log steps logs its last steps' loss: the Train tab's short runs on a
    busy machine ended before their first log step and drew no training curve at all."""
    from lmdemo.training import train

    train(Config(**TINY_RUN, max_steps=7, save_every=0.0), tmp_path / "run", progress_bar=False, command="pytest")
    logged = read_metrics(tmp_path / "run" / "metrics.jsonl").events("train")
    assert [record["step"] for record in logged] == [5, 7]
    assert all(record["train_loss"] > 0 for record in logged)


def test_the_log_reaches_the_disk_before_the_state_that_counts_it(tmp_path, monkeypatch):
    from lmdemo.training import train

    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    train(Config(**TINY_RUN, max_steps=20, save_every=0.0), tmp_path / "run", progress_bar=False, command="pytest")
    states = [index for index, name in enumerate(synced) if name.startswith(".state.safetensors")]
    assert len(states) >= 4  # a save at every log interval
    for previous, state in zip([-1, *states], states):
        assert "metrics.jsonl" in synced[previous + 1:state], synced


# -- 6. the rating rule: a rating in words is a rating --------------------------------------------------------------
@pytest.mark.parametrize("review, label", [
    ("Great fun. I'd give it seven out of ten.", True),
    ("Loved every minute: 8 out of ten", True),
    ("A solid seven out of 10 from me.", True),
    ("Ten out of Ten!", True),
    ("Seven and a half out of ten.", True),
    ("A waste of time. Three out of ten.", False),
    ("Two stars out of 10 for the music alone.", False),
    ("My rating: 1 star out of 10.", False),  # digits with a unit, like the words
    ("Five out of ten: watchable.", None),  # between 4 and 7
    ("The book is nine out of ten but the film is two out of ten.", None),  # both sides
    ("Seven of the ten episodes are great.", None),  # not a rating
    ("Nine out of ten times the hero wins.", None),  # the idiom, not a rating
    ("Someone out of ten thousand would like it.", None),  # "one" inside a word is no score
    ("It was often written, and I saw it ten times.", None),
    ("It was fine, 4 out of10; one goes out often.", False),  # "out of10" is a scale, "out often" is not
])
def test_a_rating_in_words_labels_a_review_like_digits(review, label):
    assert rating_label(review) is label


@pytest.mark.parametrize("review, kept", [
    ("Great cast. I'd give it seven out of ten. Worth it.", "Great cast. Worth it."),
    ("Worth seeing.<br /><br />8 out of ten<br />See it? Yes.", "Worth seeing. See it? Yes."),
    ("Dull. Three out of ten! Skip it.", "Dull. Skip it."),
    ("Fine film. Three stars. Four out of five, even.", "Fine film."),  # words on any scale
    ("Seven of the ten episodes are great. The rest are fine.", "Seven of the ten episodes are great. The rest are fine."),
])
def test_a_rating_in_words_is_removed_before_reading(review, kept):
    assert without_ratings(review) == kept
    assert rating_label(without_ratings(review)) is None


def test_the_rating_check_stays_cheap_for_reviews_without_one(monkeypatch):
    """Only a review that holds "10" or "ten" is searched, and the search looks for the scale ("/10", "out of ten"),
    then for a score right before it, so words do not make every review's search slower."""
    searched = []

    class Counting:
        def __init__(self, pattern):
            self.pattern = pattern

        def finditer(self, text):
            searched.append(text)
            return self.pattern.finditer(text)

    monkeypatch.setattr(properties, "OUT_OF_TEN", Counting(properties.OUT_OF_TEN))
    for review in ("A plain review, no rating at all.", "Seven of the nine episodes; the eighth is fine."):
        assert rating_label(review) is None
    assert searched == []
    assert rating_label("Great. 9/10") is True and rating_label("Great. Nine out of ten.") is True
    assert rating_label("Often written, seen ten times.") is None and len(searched) == 3
