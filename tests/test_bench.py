"""bench/train_speed.py compares like with like: its textbook loop is lmdemo's trainer minus the speed options."""

from __future__ import annotations

import argparse
import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from servers import free_port

from lmdemo.checkpoint import read_weights
from lmdemo.config import Config
from lmdemo.metrics import read_metrics
from lmdemo.training import encode_splits, train

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def bench_module(name: str, file: str):
    """A bench script, imported from its file (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / file)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return bench_module("train_speed", "train_speed.py")


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield 1
    torch.set_num_threads(threads)


def tiny(**changes) -> Config:
    values = dict(level="char", data=str(DATA / "tinyshakespeare" / "input.txt"), lowercase=False, max_tokens=6_000,
                  emb_size=16, hidden_size=32, num_layers=2, dropout=0.2, tie_weights=False, batch_size=8, bptt=16,
                  optimizer="adam", lr=3e-3, clip=0.5, schedule="constant", shift_windows=False, device="cpu",
                  precision="fp32", softmax="full", threads=1, seed=3, eval_tokens=300, log_every=5)
    values.update(changes)
    return Config(**values)


def test_the_textbook_loop_is_lmdemos_trainer_in_fp32_with_the_full_softmax(bench, tmp_path, one_thread):
    """Same start, data order, optimiser, clipping, selection: the same kept model. Without dropout: lmdemo draws its
    masks from uniform numbers, nn.Dropout by `bernoulli_` (the same distribution, other draws; see
    tests/test_training_options.py)."""
    config = tiny(dropout=0.0)
    tokenizer, encoded = encode_splits(config, None)
    splits = {split: encoded[split].ids for split in encoded}
    config = config.replace(vocab_size=tokenizer.vocab_size)
    windows = -(-(splits["train"].numel() // config.batch_size - 1) // config.bptt)
    steps = windows + windows // 2  # an epoch end and a final validation
    textbook = bench.textbook_train(config, bench.initial_model(config), splits["train"], splits["valid"],
                                    seconds=math.inf, interval=5, max_steps=steps)
    best = train(config.replace(max_steps=steps, epochs=10_000), tmp_path / "run", progress_bar=False, command="pytest")
    kept = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl").events("val") if r.get("best")]

    assert textbook.steps == steps and textbook.picked == kept[-1]
    ours = read_weights(best).state_dict()
    theirs = textbook.model.state_dict()
    assert theirs.keys() == {"encoder.weight", "decoder.weight", "decoder.bias",
                             *(f"rnn.{k}" for k in textbook.model.rnn.state_dict())}
    for name, value in theirs.items():
        mine = {"encoder.weight": "embedding.weight"}.get(name, name.replace("rnn.", "lstm."))
        torch.testing.assert_close(value, ours[mine], rtol=1e-4, atol=1e-5, msg=name)


ADAPTIVE_WORDS = dict(level="word", data=str(DATA / "ptb"), train_split="valid", valid_split="test", tie_weights=True,
                      emb_size=32, softmax="adaptive")


@pytest.mark.parametrize("changes", [dict(), ADAPTIVE_WORDS])
def test_lmdemo_starts_from_the_weights_the_textbook_model_copies(bench, tmp_path, one_thread, changes):
    config = tiny(**changes)
    tokenizer, _ = encode_splits(config, None)
    config = config.replace(vocab_size=tokenizer.vocab_size)
    init = bench.initial_model(config)
    bench.textbook_from(init)  # asserts the copy
    assert bench.trainer_start_difference(config, tmp_path / "probe", init) <= bench.PROBE_TOLERANCE
    other = bench.initial_model(config.replace(seed=config.seed + 1))
    assert bench.trainer_start_difference(config, tmp_path / "other", other) > 1e-3


def test_peaks_on_cpus_without_native_bf16(bench):
    amd_avx2 = "Vendor ID: AuthenticAMD\nCPU family: 23\nCPU max MHz: 3000.0\nFlags: fpu sse avx avx2 fma\n"
    fp32, bf16, how = bench.cpu_peaks(2, amd_avx2)
    assert fp32 == pytest.approx(2 * 3.0 * 2 * 8 * 2) and bf16 == 0 and "bf16 none" in how
    assert bench.share(100.0, bf16) == "n/a" and bench.share(50.0, fp32) == f"{5000 / fp32:.1f}%"
    amx = "Vendor ID: GenuineIntel\nCPU family: 6\nCPU max MHz: 2000.0\nFlags: avx2 avx512f avx512_bf16 amx_bf16\n"
    fp32, bf16, _ = bench.cpu_peaks(1, amx)
    assert fp32 == pytest.approx(2.0 * 2 * 16 * 2) and bf16 == pytest.approx(2.0 * 1024)
    assert bench.cpu_peaks(1, "")[1] == 0  # no lscpu: no flags, no crash


FAKE_PEER = """import argparse, pathlib
parser = argparse.ArgumentParser()
parser.add_argument("--data")
known, _ = parser.parse_known_args()
words = [len(pathlib.Path(known.data, name).read_text().split()) for name in ("train.txt", "valid.txt", "test.txt")]
print("| end of epoch   1 | time: 95.25s | valid loss  5.57 | valid ppl   262.09")
print("| end of epoch   2 | time: 99.75s | valid loss  5.30 | valid ppl   200.59")
print("| End of training | test loss  5.26 | test ppl   192.85", words)
"""  # the two lines word_language_model/main.py prints at an epoch's end and at the end, in its formats


def test_the_peer_reads_lmdemos_token_stream_and_its_figures_are_read(bench, tmp_path):
    """time_to_quality writes the peer's files in lmdemo's tokens, one word per token id (so both score the same
    stream), and reads the peer's validation points (cumulative time) and test perplexity from its output."""
    quality = bench_module("time_to_quality", "time_to_quality.py")
    config = Config(level="word", data=str(DATA / "ptb"), train_split="valid", valid_split="test", max_vocab=2_000)
    tokenizer, encoded = encode_splits(config, None)
    ids = encoded["valid"].ids
    quality.write_peer_files(tmp_path / "peer", tokenizer, encoded["train"].ids, ids[:5_000], ids[5_000:9_000])
    words = (tmp_path / "peer" / "valid.txt").read_text().split()
    assert len(words) == 5_000 and len((tmp_path / "peer" / "valid.txt").read_text().splitlines()) == 1
    assert len({(word, token) for word, token in zip(words, ids[:5_000].tolist())}) == len(set(words))
    (tmp_path / "main.py").write_text(FAKE_PEER)
    points, test = quality.run_peer(tmp_path / "main.py", tmp_path / "peer", 1)
    assert points == [(95.25, 262.09), (195.0, 200.59)] and test == 192.85
    assert quality.first_reaching([(10.0, 300.0), (20.0, 199.0), (30.0, 150.0)], 200.59) == 20.0
    (tmp_path / "main.py").write_text("raise SystemExit(3)")
    with pytest.raises(SystemExit, match="the peer failed"):
        quality.run_peer(tmp_path / "main.py", tmp_path / "peer", 1)


def test_lmdemos_choices_in_the_quality_bench_replace_the_peers_shape_only_where_set(bench):
    """lmdemo trains the peer's shape; a choice given on the command line (dropout among them) replaces its own."""
    quality = bench_module("time_to_quality", "time_to_quality.py")
    unset = argparse.Namespace(threads=1, seed=1, **dict.fromkeys(quality.CHOICES))
    own = quality.lmdemo_config(unset)
    assert (own.dropout, own.hidden_size, own.lr, own.eval_every) == (0.5, 650, Config().lr, Config().eval_every)
    chosen = quality.lmdemo_config(argparse.Namespace(**{**vars(unset), "dropout": 0.0, "lr": 5e-3,
                                                          "warmup_steps": 20}))
    assert (chosen.dropout, chosen.lr, chosen.warmup_steps, chosen.hidden_size) == (0.0, 5e-3, 20, 650)


@pytest.fixture(scope="module")
def atlas_bench():
    return bench_module("atlas_bench", "atlas.py")


def rated(words: list[str], rating: int, count: int) -> list[str]:
    return [f"{' '.join(words[j % len(words):] + words[:j % len(words)])} the film. I give it {rating}/10." for j in
            range(count)]


def test_the_dial_judge_learns_from_rated_training_reviews_only(atlas_bench):
    """The judge reads the rating rule's labels with the rating sentences removed, so only the words can teach it."""
    from lmdemo.corpus import Corpus

    good, bad = ["wonderful", "moving", "great", "acting"], ["awful", "boring", "dull", "acting"]
    corpus = Corpus(train=["\n".join(rated(good, 9, 30) + rated(bad, 2, 30) + ["no rating here"])],
                    valid=["\n".join(rated(good, 8, 5) + rated(bad, 3, 5))], test=[])
    reviews, labels = atlas_bench.rated_reviews(corpus, "train")
    assert len(reviews) == 60 and sum(labels) == 30 and not any("/10" in review for review in reviews)
    judge = atlas_bench.train_judge(corpus, words=3)
    assert judge.positive(["a wonderful moving film", "dull and boring", "AWFUL<br />acting"]).tolist() == \
        [True, False, False]
    assert "acting" in judge.vocabulary and abs(float(judge.weights[judge.vocabulary["acting"]])) < 0.5


def test_dial_arms_score_samples_under_the_plain_model(atlas_bench):
    """The unheld arm's perplexity is the one its sampler saw; a held unit's samples are scored without the dial."""
    from lmdemo.generation import Generator
    from lmdemo.sampling import Dial, Sampling
    from test_atlas import tiny_char_model

    trained = tiny_char_model(seed=4, hidden=16)
    generator = Generator(trained)
    prompt = generator.prompt("ROMEO:").ids
    for dial, same in ((None, True), (Dial(1, 3, "c", 5.0), False)):
        sample = generator.generate(prompt, Sampling(temperatures=[0.8], max_new_tokens=12, seed=1, dial=dial))[0]
        own = sum(math.log(p) for p in sample.probabilities)
        assert (atlas_bench.plain_log_likelihood(generator, prompt, sample) == pytest.approx(own, abs=1e-4)) is same

    judge = atlas_bench.Judge({"e": 0}, torch.tensor([1.0], dtype=torch.double), torch.tensor([-0.5]), 0.0)
    entry = {"layer": 1, "unit": 3, "quantity": "c", "dial": {"positive": 5.0, "negative": -5.0}}
    arms = atlas_bench.dial_arms(trained, entry, judge, samples=4, tokens=12, prompts=("ROMEO:", "JULIET:"))
    assert [arm.name for arm in arms] == ["positive", "negative", "not held"]
    assert [str(arm.dial) for arm in arms[:2]] == ["1:3:c=5", "1:3:c=-5"] and arms[2].dial is None
    for arm in arms:
        assert len(arm.texts) == 4 and arm.tokens == 48 and arm.perplexity > 1
        assert arm.positive == pytest.approx(sum("e" in atlas_bench.judge_words(text) for text in arm.texts) / 4)
    assert arms[0].texts != arms[2].texts


def test_the_load_bench_talks_to_a_real_server_as_pages_do(capsys):
    """bench/load.py speaks Gradio's queue protocol itself (join, then the session's event stream): a Gradio
    upgrade that changed it would show here as errors, not as flattering figures."""
    load = bench_module("load", "load.py")
    assert load.main(["--users", "2", "--requests", "4", "--decode", "batched", "--port", str(free_port())]) == 0
    printed = capsys.readouterr().out
    assert "2 user(s): 8 requests" in printed and ", 0 error(s)" in printed, printed
    assert re.search(r"generate's first token: p50 \d", printed), printed


def test_the_loop_bench_runs_the_load_benchs_users_without_a_server(capsys, one_thread):
    """bench/loop.py sends bench/load.py's mix straight to the batched decoder: every request is counted, and a
    generate's first update is timed."""
    loop = bench_module("loop", "loop.py")
    assert loop.main(["--users", "2", "--requests", "3"]) == 0
    printed = capsys.readouterr().out
    assert "2 user(s): 6 requests in" in printed, printed
    assert re.search(r"all +6 +\d", printed) and re.search(r"generate's first update: p50 \d", printed), printed


def test_the_soak_bench_runs_visitors_and_an_abuser_against_a_real_server_and_stops_it(capsys):
    """bench/soak.py at its smallest: its pages and its abuser speak Gradio's protocol (no honest errors), it prints
    the server's figures over time, the latencies per phase, the abuser's tally and a verdict for every target, and
    the server it started is gone when it returns."""
    soak = bench_module("soak", "soak.py")
    assert soak.main(["--sessions", "8", "--minutes", "0.2", "--addresses", "4", "--session-ttl", "3",
                      "--sample-every", "1", "--print-every", "4", "--think", "0.2", "--abuser-inflight", "3",
                      "--port", str(free_port())]) == 0
    printed = capsys.readouterr().out
    for shown in ("RSS MiB", "threads", "fds", "disk MB", "honest visitors, seconds per request", "the abuser (",
                  "verdict:"):
        assert shown in printed, printed
    for phase in ("honest", r"honest\+abuser"):
        assert re.search(rf"\n  {phase} +all +\d+ +\d+\.\d+ +\d+\.\d+ +\d+ +0\n", printed), printed  # no errors
    assert len(re.findall(r"  (PASS|FAIL)  ", printed)) == 10, printed
    pid = int(re.search(r"server stopped: pid (\d+), exit code 0\n", printed).group(1))
    assert not Path(f"/proc/{pid}").exists() and "STILL RUNNING" not in printed
