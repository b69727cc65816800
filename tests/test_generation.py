"""The generation engine: the fast step equals the model, sampling honours its settings and its seed."""

from __future__ import annotations

import dataclasses
import html
import re
import threading
from pathlib import Path

import pytest
import torch

from lmdemo import generation, load_model, sampling
from lmdemo.checkpoint import TrainedModel
from lmdemo.config import Config
from lmdemo.generation import Generator, Sampling, SettingsError
from lmdemo.model import LSTMLanguageModel
from lmdemo.sampling import GREEDY_BELOW, choose_next
from lmdemo.tokenizer import EOS, Tokenizer, level_unit
from lmdemo.web import render


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def forced_words() -> Generator:
    """A random word model over a vocabulary this module controls: samples are forced with `forcing`."""
    torch.manual_seed(5)
    tokenizer = Tokenizer.build(["i'm sure it's good. the cat (a dog) sat, too! do you know?"], "word")
    config = Config(level="word", emb_size=8, hidden_size=12, num_layers=2, dropout=0.0, vocab_size=len(tokenizer))
    return Generator(TrainedModel(LSTMLanguageModel(config).eval(), tokenizer, "random", Path("."), None))


def forcing(monkeypatch, generator: Generator, tokens: list[str]) -> list[int]:
    """Make every row of the next sampling take `tokens`, one per step; returns their ids."""
    ids = [generator.tokenizer.hf.token_to_id(token) for token in tokens]
    assert None not in ids, "every forced token must be in the vocabulary"
    steps = iter(ids)
    monkeypatch.setattr(sampling, "choose_next",
                        lambda logits, *args, **kwargs: torch.full((logits.size(0),), next(steps)))
    return ids


def texts(generator: Generator, prompt: str, **settings) -> list[str]:
    return [s.text for s in generator.generate(generator.prompt(prompt).ids, Sampling(**settings))]


@pytest.mark.parametrize("kind, lookup", [("char", True), ("word", True), ("word", False)])
def test_step_matches_the_models_forward(kind, lookup, char_model, word_model, monkeypatch):
    if not lookup:  # the path big vocabularies take: layer 0's input multiplied, not looked up
        monkeypatch.setattr(generation, "LOOKUP_LIMIT", 0)
    trained = load_model(char_model if kind == "char" else word_model)
    generator = Generator(trained)
    assert (generator.input_table is not None) == lookup
    config = trained.config
    ids = torch.randint(config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, (h, c) = trained.model(ids)
        zeros = torch.zeros(config.num_layers, 3, config.hidden_size)
        state, steps = (zeros, zeros.clone()), []
        for t in range(ids.size(1)):
            logits, state = generator.step(ids[:, t], state)
            steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(state[0], h, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(state[1], c, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("rows", [1, 3, 8])
def test_the_packed_adaptive_softmax_gives_the_models_log_probabilities(rows):
    """`Generator`'s adaptive decoder packs the clusters' matrices (MKL ran 3-5x slower at a few rows) and
    must still give `LSTMLanguageModel.logits`, clusters and all."""
    config = Config(level="word", vocab_size=40_000, emb_size=24, hidden_size=24, num_layers=1, softmax="adaptive")
    model = LSTMLanguageModel(config).eval()
    assert model.cutoffs == [2000, 10_000, 40_000]  # the last cluster's matrix is large enough to be packed
    features = torch.randn(rows, 24, generator=torch.Generator().manual_seed(rows))
    with torch.no_grad():
        packed = generation._AdaptiveDecoder(model)
        assert packed.tails[-1].packed is not None or not torch.backends.mkldnn.is_available()
        torch.testing.assert_close(packed(features), model.logits(features), atol=1e-5, rtol=1e-5)


def test_same_seed_same_text_and_other_seeds_differ(char_generator):
    settings = dict(temperatures=(0.8, 1.2), max_new_tokens=60)
    first = texts(char_generator, "ROMEO:\n", seed=5, **settings)
    torch.manual_seed(123)  # the global generator must not matter
    assert texts(char_generator, "ROMEO:\n", seed=5, **settings) == first
    assert texts(char_generator, "ROMEO:\n", seed=6, **settings) != first


def test_requests_in_parallel_threads_match_the_same_requests_alone(char_generator):
    seeds = [1, 2, 3, 4]
    alone = [texts(char_generator, "JULIET:\n", seed=s, temperatures=(1.0,), max_new_tokens=80) for s in seeds]
    together: dict[int, list[str]] = {}

    def run(seed: int) -> None:
        together[seed] = texts(char_generator, "JULIET:\n", seed=seed, temperatures=(1.0,), max_new_tokens=80)

    threads = [threading.Thread(target=run, args=(s,)) for s in seeds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [together[s] for s in seeds] == alone


def test_a_temperature_in_a_batch_gives_what_it_gives_alone(char_generator):
    """What holds by design: each row has its own random stream, keyed by seed, temperature and repeat."""
    temperatures = (0.0, 0.7, 1.0, 1.3)
    batch = texts(char_generator, "First Citizen:\n", seed=9, temperatures=temperatures, max_new_tokens=80)
    alone = [texts(char_generator, "First Citizen:\n", seed=9, temperatures=(t,), max_new_tokens=80)[0]
             for t in temperatures]
    assert batch == alone
    repeated = texts(char_generator, "First Citizen:\n", seed=9, temperatures=(1.0, 1.0), max_new_tokens=80)
    assert repeated[0] == alone[2] and repeated[1] != repeated[0]
    longer = texts(char_generator, "First Citizen:\n", seed=9, temperatures=(1.0,), max_new_tokens=120)[0]
    assert longer.startswith(alone[2])


def test_greedy_follows_the_argmax_path(char_generator):
    prompt = char_generator.prompt("KING:\n").ids
    sample = char_generator.generate(prompt, Sampling(temperatures=(0,), max_new_tokens=40))[0]
    log_probs, _ = char_generator.read(prompt + sample.ids)
    argmax = log_probs[len(prompt):-1].argmax(-1).tolist()
    assert sample.ids == argmax


def test_sampled_tokens_stay_inside_top_k_and_top_p(char_generator):
    prompt = char_generator.prompt("ROMEO:\n").ids
    for settings in (dict(top_k=3), dict(top_p=0.5)):
        sampling = Sampling(temperatures=(1.0, 2.0), max_new_tokens=60, seed=4, **settings)
        for sample in char_generator.generate(prompt, sampling):
            log_probs, _ = char_generator.read(prompt + sample.ids)
            scaled = (log_probs[len(prompt):-1] / sample.temperature).softmax(-1)
            for row, token in zip(scaled, sample.ids):
                ahead = row[row > row[token] + 1e-6]  # tokens likelier than the one taken
                if "top_k" in settings:
                    assert len(ahead) < settings["top_k"]
                else:
                    assert ahead.sum() < settings["top_p"] + 1e-4


def test_choose_next_filters_exactly():
    probabilities = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probabilities.log().expand(200, -1)
    uniforms = torch.linspace(0, 0.999, 200)
    ones = torch.ones(200)
    assert set(choose_next(logits, ones, uniforms).tolist()) == {0, 1, 2, 3}
    assert set(choose_next(logits, ones, uniforms, top_k=2).tolist()) == {0, 1}
    assert set(choose_next(logits, ones, uniforms, top_p=0.7).tolist()) == {0, 1}
    assert set(choose_next(logits, ones, uniforms, top_p=0.5).tolist()) == {0}
    assert set(choose_next(logits, ones, uniforms, banned=torch.tensor([0, 1])).tolist()) == {2, 3}
    assert set(choose_next(logits, torch.zeros(200), uniforms, banned=torch.tensor([0])).tolist()) == {1}


def test_a_sample_ends_with_the_stop_string(char_generator):
    samples = char_generator.generate(char_generator.prompt("ROMEO:\n").ids,
                                      Sampling(temperatures=(0.8, 1.0), max_new_tokens=300, seed=2, stop="e"))
    for sample in samples:
        assert sample.stopped_by == "stop"
        assert sample.text.endswith("e") and "e" not in sample.text[:-1]


def test_word_samples_read_as_text_and_keep_one_piece_per_token(forced_words, monkeypatch):
    """The tokens are forced, so the detokenised text is known; its pieces are right at every streamed step
    (an apostrophe's spacing changes with the token after it) and the page draws the text, one span per token."""
    tokens = ["i", "'", "m", "sure", "it", "'", "s", "good", ".", "the", "cat", "(", "a", "dog", ")", "sat", ",",
              "too", "!", "do", "you", "know", "?"]
    ids = forcing(monkeypatch, forced_words, tokens)
    tokenizer, prompt = forced_words.tokenizer, forced_words.prompt("the cat")
    sampling = Sampling(temperatures=(1.0,), max_new_tokens=len(tokens), stop_at_eos=False)
    for samples in forced_words.stream(prompt.ids, sampling):
        sample = samples[0]
        assert sample.pieces == tokenizer.pieces(sample.ids, context=prompt.ids), f"after {len(sample.ids)} tokens"
        assert sample.text == "".join(sample.pieces) and len(sample.pieces) == len(sample.ids)
    assert sample.ids == ids and sample.tokens == tokens
    assert sample.text == " i'm sure it's good. the cat (a dog) sat, too! do you know?"
    progress = type("Run", (), dict(samples=[sample], prompt=prompt, unit=level_unit("word"), by_line=True,
                                    lower_bound=True, done=True, dial=None))
    page = render.samples_html(progress)
    body = re.search(r'<div class="lm-text[^"]*">(.*?)</div></section>', page, flags=re.S).group(1)
    spans = re.findall(r'<span class="tok [^"]*" title="[^"]*">([^<]*)</span>', body)
    assert [html.unescape(span) for span in spans] == sample.pieces
    shown = html.unescape(re.sub(r"<[^>]+>", "", body))
    assert shown == "the cat i'm sure it's good. the cat (a dog) sat, too! do you know?"
    assert " ." not in shown and " ' " not in shown and " ," not in shown and "( " not in shown
    assert "lower bound" in page


def test_a_bpe_model_generates_and_its_pieces_make_its_text(bpe_generator):
    """Byte-level BPE: no <unk> (avoiding it changes nothing), lines end in <eos>, a text starts after one."""
    tokenizer = bpe_generator.tokenizer
    assert tokenizer.unk_id is None and bpe_generator.start_id == tokenizer.end_id == tokenizer.eos_id
    prompt = bpe_generator.prompt("This movie was Ünïcode-ish ✓")
    assert tokenizer.decode(prompt.ids) == prompt.text == "This movie was Ünïcode-ish ✓" and not prompt.notes
    sampling = Sampling(temperatures=(0.0, 1.0, 1.5), max_new_tokens=80, seed=2)
    streamed = []
    for samples in bpe_generator.stream(prompt.ids, sampling):
        streamed.append([list(s.pieces) == tokenizer.pieces(s.ids, context=prompt.ids) for s in samples])
    assert all(all(row) for row in streamed)
    for sample in samples:
        assert sample.text == "".join(sample.pieces) == tokenizer.decode([*prompt.ids, *sample.ids])[len(prompt.text):]
        assert len(sample.pieces) == len(sample.ids) == len(sample.probabilities) and tokenizer.eos_id not in sample.ids
    assert bpe_generator.generate(prompt.ids, dataclasses.replace(sampling, avoid_unk=True)) == samples
    long = bpe_generator.generate([], Sampling(temperatures=(1.5,) * 4, max_new_tokens=300, seed=1))
    assert any(s.stopped_by == "eos" for s in long), "a line ends at <eos>"
    text = "A first review.\nA second one, longer than the first.\nThe end"
    assert bpe_generator.prompt(text, max_tokens=6).ids == tokenizer.encode(text)[-6:]
    assert EOS not in "".join(tokenizer.pieces(tokenizer.encode(text)))


def test_word_samples_end_at_eos_and_can_avoid_unk(word_generator):
    tokenizer = word_generator.tokenizer
    prompt = word_generator.prompt("the company said").ids
    settings = dict(temperatures=(1.5,) * 4, max_new_tokens=150, seed=3)
    ended = word_generator.generate(prompt, Sampling(**settings))
    assert any(s.stopped_by == "eos" for s in ended)
    assert all(tokenizer.eos_id not in s.ids for s in ended)
    free = word_generator.generate(prompt, Sampling(stop_at_eos=False, **settings))
    assert any(tokenizer.unk_id in s.ids for s in free), "the test needs a model that samples <unk>"
    clean = word_generator.generate(prompt, Sampling(stop_at_eos=False, avoid_unk=True, **settings))
    assert all(tokenizer.unk_id not in s.ids for s in clean)


def test_stream_yields_every_token_and_records_probabilities(char_generator):
    sampling = Sampling(temperatures=(0.5, 1.0), max_new_tokens=25, seed=1)
    lengths = [[len(s.ids) for s in samples] for samples in char_generator.stream([], sampling)]
    assert lengths == [[n, n] for n in range(1, 26)]
    sample = char_generator.generate([], sampling)[1]
    log_probs, _ = char_generator.read(sample.ids)
    expected = log_probs[torch.arange(len(sample.ids)), torch.tensor(sample.ids)].exp()
    torch.testing.assert_close(torch.tensor(sample.probabilities), expected, atol=1e-4, rtol=1e-3)
    assert sample.tokens == char_generator.tokenizer.tokens(sample.ids)


def test_a_reading_gives_what_a_plain_forward_pass_gives(char_generator):
    """Surprisal and next-token bars against the model's forward + log_softmax, computed here on the same ids."""
    ids = char_generator.prompt("ROMEO:").ids
    with torch.no_grad():
        logits, (h, c) = char_generator.trained.model(torch.tensor([[char_generator.start_id, *ids]]))
    expected = logits[0].log_softmax(-1)  # row i: the distribution of token i; the last row: the token after
    reading = char_generator.reading(ids)
    assert [s.token for s in reading.scores] == list("ROMEO:")
    torch.testing.assert_close(torch.tensor([s.probability for s in reading.scores]),
                               expected[torch.arange(len(ids)), torch.tensor(ids)].exp(), atol=1e-6, rtol=1e-5)
    top = char_generator.next_tokens(reading, k=5)
    assert [s.id for s in top] == expected[-1].topk(5).indices.tolist()
    torch.testing.assert_close(torch.tensor([s.probability for s in top]), expected[-1].topk(5).values.exp(),
                               atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(reading.state, (h, c))
    # reading on from a reading equals reading the whole text at once
    on = char_generator.reading(ids[3:], after=char_generator.reading(ids[:3]))
    torch.testing.assert_close(torch.tensor([s.probability for s in on.scores]),
                               torch.tensor([s.probability for s in reading.scores[3:]]), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(on.next_log_probs, reading.next_log_probs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(on.state, reading.state, atol=1e-6, rtol=1e-5)
    empty = char_generator.reading([])
    assert empty.scores == [] and torch.equal(empty.next_log_probs, char_generator.read([])[0][0])


def test_a_long_prompt_is_encoded_only_as_far_as_it_is_kept(char_generator, word_generator, monkeypatch):
    for generator, text in ((char_generator, "ROMEO:\nWhat say you?\n" * 200),
                            (word_generator, "the company said it would\n" * 300 + "the end")):
        tokenizer = generator.tokenizer
        whole, encode, encoded = tokenizer.encode(text), tokenizer.encode_with_starts, []
        monkeypatch.setattr(tokenizer, "encode_with_starts", lambda t: encoded.append(len(t)) or encode(t))
        prompt = generator.prompt(text, max_tokens=50)
        assert prompt.ids == whole[-50:]
        assert sum(encoded) < len(text) / 4, f"encoded {sum(encoded)} of {len(text)} characters to keep 50 tokens"


def test_prompt_notes(char_generator, word_generator):
    assert "empty prompt" in char_generator.prompt("").notes[0]
    assert "€" in char_generator.prompt("Hail €").notes[0]
    unknown = word_generator.prompt("the zzyzxq said").notes[0]
    assert "1 word not in the model's vocabulary became <unk>: 'zzyzxq'" in unknown
    assert "1 character not in the model's vocabulary" in char_generator.prompt("Hail €").notes[0]
    cut = char_generator.prompt("ROMEO: hello", max_tokens=5)
    assert char_generator.tokenizer.decode(cut.ids) == "hello"
    assert "cut to its last 5 tokens (it had 12 characters)" in cut.notes[0]


def test_a_prompt_counts_the_characters_it_was_written_with(char_generator, word_generator):
    """What its bits per character divide by: the prompt as written, not as the model re-renders it."""
    written = word_generator.prompt("The Company said, (again)!")
    assert written.characters == 26 and written.text == "<unk> <unk> said <unk> <unk> again <unk> <unk>"
    assert word_generator.prompt("the company said\nit would", max_tokens=3).characters == len("\nit would")
    assert word_generator.prompt("the company said it would", max_tokens=2).characters == len("it would")
    assert char_generator.prompt("ROMEO: hello", max_tokens=5).characters == 5


@pytest.mark.parametrize("settings, message", [
    (dict(temperatures=()), "at least one temperature"),
    (dict(temperatures=(-0.5,)), "temperature"),
    (dict(temperatures=(float("nan"),)), "temperature"),
    (dict(max_new_tokens=0), "max new tokens"),
    (dict(max_new_tokens=5000), "max new tokens"),
    (dict(top_k=-1), "top-k"),
    (dict(top_p=0.0), "top-p"),
    (dict(top_p=1.5), "top-p"),
    (dict(seed=-1), "seed"),
    (dict(seed=2**64), "seed"),
])
def test_bad_settings_are_refused_with_a_reason(settings, message):
    with pytest.raises(SettingsError, match=message):
        Sampling(**settings).check(max_new_tokens_limit=1000)


def test_a_tiny_temperature_is_greedy(char_generator):
    prompt = char_generator.prompt("KING:\n").ids
    greedy = char_generator.generate(prompt, Sampling(temperatures=(0,), max_new_tokens=40))[0].ids
    for tiny in (1e-39, 1e-30, GREEDY_BELOW / 2):  # 1e-39: logits / T overflows float32
        sampling = Sampling(temperatures=(tiny,), max_new_tokens=40, seed=3)
        assert char_generator.generate(prompt, sampling)[0].ids == greedy
    logits = torch.tensor([[0.5, 3.0, -1.0, 2.9]]).expand(50, -1)
    assert choose_next(logits, torch.full((50,), 1e-39), torch.linspace(0, 0.999, 50)).tolist() == [1] * 50


def test_decoding_falls_back_to_the_plain_path_when_onednn_fails_at_call_time(char_model, monkeypatch):
    trained = load_model(char_model)
    sampling = Sampling(temperatures=(0.0, 1.0), max_new_tokens=40, seed=2)
    plain = Generator(trained)
    prompt = plain.prompt("ROMEO:\n").ids
    expected = [s.text for s in plain.generate(prompt, sampling)]
    monkeypatch.setattr(generation, "PACK_MIN", 0)  # pack every matrix, as large models do
    packed = Generator(trained)
    if not any(dense.packed is not None for dense in packed.layers):
        pytest.skip("this PyTorch build has no oneDNN packing")

    def broken(*args, **kwargs):
        raise RuntimeError("oneDNN refused")

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", broken)
    assert [s.text for s in packed.generate(prompt, sampling)] == expected
