"""Sampling, next-token distributions and per-token surprisal.

Decoding is one token per step at a batch of a few rows, where a plain `nn.LSTM` call spends most
of its time in set-up and in a matrix kernel that reads the weights once per row. So each step
runs the LSTM cell by hand on weights laid out once: each layer's input and recurrent matrices
are fused into one matrix (one matmul per layer per step), pre-packed for oneDNN when PyTorch has
it, and for small vocabularies the first layer's input projection of every token is precomputed,
turning that matmul into a row lookup. If a packed call fails at run time (a oneDNN build that
packs but cannot run the kernel), that matrix falls back to the plain matmul for good.

The prompt is read once, by the model itself, into a `Reading`: each prompt token's probability (the
surprisal colouring), the distribution of the next token (the bars right after the prompt) and the
state that sampling, and the bars at any later position of a sample, continue from.

All temperatures of a request are rows of one batch: one forward pass per step serves them all.
Randomness never comes from the global seed. Each row draws its uniforms from its own
`torch.Generator` (imported as `RandomGenerator`, so it is never mistaken for this module's
`Generator`), seeded from the request's seed and how many earlier rows have the same temperature,
and picks a token by inverse CDF (one uniform per row per step). A temperature below
`GREEDY_BELOW` is greedy, exactly like 0. Hence:

- the same prompt, settings and seed give the same text, whatever else the process is doing;
- a temperature's sample is the same whether it is asked for alone or beside other temperatures
  (a repeated temperature gets a fresh stream, so "0.8, 0.8" gives two different samples);
- a longer `max_new_tokens` extends a shorter run's text rather than changing it;
- different temperatures share their uniforms (common random numbers), so columns differ by
  temperature rather than by luck.

Up to floating-point rounding: batched matmuls may round differently at different batch sizes, so
a near-tie between two tokens can in rare cases resolve differently alone and in a batch.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Generator as RandomGenerator
from torch.nn import functional as F

from lmdemo.checkpoint import TrainedModel
from lmdemo.model import State
from lmdemo.tokenizer import level_unit

LOOKUP_LIMIT = 4_000_000  # floats in a precomputed first-layer table (16 MB)
PACK_MIN = 2**18  # weights smaller than this (1 MB) run faster unpacked: oneDNN's call costs ~20-40 us
SEED_LIMIT = 2**64
TEMPERATURE_LIMIT = 100.0
# Temperatures below this are greedy: logits / T would overflow float32 (inf, then NaN probabilities)
# for T near 1e-38, and long before that the softmax puts all its mass on the argmax anyway.
GREEDY_BELOW = 1e-6
UNIFORM_CHUNK = 64  # uniforms drawn per row at a time: fixed, so a run's draws do not depend on its length
# While a sample streams, only its last pieces are re-derived after each token (a word piece can change
# with the token after it: "i '" + "m" reads "i'm"), from this many ids of context; a finished sample's
# pieces are derived from the whole text once more.
REPIECE = 4
PIECE_CONTEXT = 8
_MASK64 = SEED_LIMIT - 1


class SettingsError(ValueError):
    """A sampling setting is out of range; the message says which and what is allowed."""


@dataclass
class Sampling:
    """What a request asks for; `check` says what is wrong in words a user can act on."""

    temperatures: Sequence[float] = (0.8,)
    max_new_tokens: int = 200
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int = 0
    stop: str | None = None  # end a sample with the token that completes this text
    stop_at_eos: bool = True  # models that end lines with <eos> (word, bpe): end a sample there
    avoid_unk: bool = False  # never sample <unk> (its logit is masked); nothing to do without one (bpe)

    def check(self, max_new_tokens_limit: int | None = None) -> None:
        if not self.temperatures:
            raise SettingsError("give at least one temperature")
        for t in self.temperatures:
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= TEMPERATURE_LIMIT:
                raise SettingsError(f"temperature must be a number from 0 to {TEMPERATURE_LIMIT:g} (got {t!r})")
        limit = max_new_tokens_limit
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1 or (limit and self.max_new_tokens > limit):
            raise SettingsError(f"max new tokens must be a whole number from 1 to {limit or 'any'} "
                                f"(got {self.max_new_tokens!r})")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise SettingsError(f"top-k must be 0 (off) or a positive whole number (got {self.top_k!r})")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise SettingsError(f"top-p must be a number in (0, 1], 1 = off (got {self.top_p!r})")
        if not _is_int(self.seed) or not 0 <= self.seed < SEED_LIMIT:
            raise SettingsError(f"seed must be a whole number from 0 to 2**64-1 (got {self.seed!r})")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class Sample:
    """One temperature's continuation; `probabilities[i]` is the model's (temperature 1) P(ids[i]).

    `pieces[i]` is token i's share of the readable text after the prompt (`Tokenizer.pieces`), so a
    display can colour token by token and still read as text; `text` is their join.
    """

    temperature: float
    ids: list[int] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)  # ids as raw token strings, as the model sees them
    probabilities: list[float] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    stopped_by: str | None = None  # "eos" or "stop" once finished early

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def finished(self) -> bool:
        return self.stopped_by is not None


@dataclass
class Prompt:
    """A prompt as the model reads it, with what had to change to make it readable.

    `pieces[i]` is token i's share of the readable text (as in `Sample`); `text` is their join: the
    prompt as the model read it (at the word level lower-cased and detokenised, cut to what was kept).
    `characters` counts the prompt as it was written (the part kept): what its bits per character
    divide by, as `eval` and training do, whatever the model re-renders.
    """

    ids: list[int]
    notes: list[str]
    characters: int
    pieces: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


class TokenScore(NamedTuple):
    id: int
    token: str
    probability: float


@dataclass
class Reading:
    """A text as the model read it, once: what it gave each token, what it expects next, its state after.

    Sampling continues from `state`, the prompt's colouring is `scores` and the bars after the prompt
    are `next_log_probs`, so one request reads its prompt through the model once.
    """

    scores: list[TokenScore]  # each token with the probability the model gave it
    next_log_probs: torch.Tensor  # [V]: the distribution of the token after the text
    state: State  # ([L, 1, H], [L, 1, H]) after the last token


class CellStep(NamedTuple):
    """One layer's step: the new hidden and cell state and the four gate activations, each [B, H]."""

    h: torch.Tensor
    c: torch.Tensor
    input_gate: torch.Tensor
    forget_gate: torch.Tensor
    candidate: torch.Tensor  # g = tanh(...), what the input gate lets into the cell
    output_gate: torch.Tensor


class _Dense:
    """`x @ weight.T + bias`, with a large weight packed once for small-batch calls where oneDNN exists.

    At a batch of 2-8 rows MKL's GEMM on a large matrix runs at a fraction of the speed oneDNN's
    packed kernel reaches (about 2x slower here), and those matrices bound a decode step.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.weight = weight.contiguous()
        self.bias = None if bias is None else bias.contiguous()
        self.packed = None
        if torch.backends.mkldnn.is_available() and self.weight.numel() >= PACK_MIN:
            try:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, None)
            except (RuntimeError, AttributeError, NotImplementedError):
                self.packed = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        packed = self.packed
        if packed is not None:
            try:
                return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")
            except (RuntimeError, NotImplementedError):  # a private op: if it fails, the plain matmul from now on
                self.packed = None
        return F.linear(x, self.weight, self.bias)


class Generator:
    """Fast inference over one loaded model; safe to share between threads (it holds no request state)."""

    def __init__(self, trained: TrainedModel):
        self.trained, self.tokenizer = trained, trained.tokenizer
        model = trained.model.eval()
        self.config = model.config
        lstm = model.lstm
        with torch.no_grad():
            self.embedding = model.embedding.weight.detach().float().contiguous()
            weights = [torch.cat([getattr(lstm, f"weight_ih_l{n}"), getattr(lstm, f"weight_hh_l{n}")], 1).detach().float()
                       for n in range(self.config.num_layers)]
            biases = [(getattr(lstm, f"bias_ih_l{n}") + getattr(lstm, f"bias_hh_l{n}")).detach().float()
                      for n in range(self.config.num_layers)]
            emb = self.config.emb_size
            vocab, gates = self.embedding.size(0), 4 * self.config.hidden_size
            if vocab * gates <= LOOKUP_LIMIT:  # layer 0's input part becomes a table lookup
                self.input_table: torch.Tensor | None = (self.embedding @ weights[0][:, :emb].t() + biases[0]).contiguous()
                self.layers = [_Dense(weights[0][:, emb:], None)]
            else:
                self.input_table = None
                self.layers = [_Dense(weights[0], biases[0])]
            self.layers += [_Dense(w, b) for w, b in zip(weights[1:], biases[1:])]
            self.projection = _Dense(model.projection.weight.detach().float(), None) \
                if model.projection is not None else None
            self.decoder = _Dense(model.decoder.weight.detach().float(), model.decoder.bias.detach().float()) \
                if model.clusters is None else model.logits  # the adaptive softmax assembles its scores

    # -- the cell ------------------------------------------------------------------------------
    def step(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Logits [B, V] for ids [B] and the next state ([L, B, H] each), as the model's forward gives."""
        layers = self.layer_steps(ids, state)
        x = layers[-1].h
        if self.projection is not None:
            x = self.projection(x)
        return self.decoder(x), (torch.stack([s.h for s in layers]), torch.stack([s.c for s in layers]))

    def layer_steps(self, ids: torch.Tensor, state: State) -> list[CellStep]:
        """Every layer's cell step for ids [B] from state ([L, B, H] each), bottom layer first.

        The one place the stacked cell is run: `step` decodes the top layer's h, and
        `lmdemo.internals` keeps all of it to show what the model holds at each token.
        """
        h_all, c_all = state
        steps: list[CellStep] = []
        x = self.embedding[ids]
        for layer, dense in enumerate(self.layers):
            if layer == 0 and self.input_table is not None:
                gates = self.input_table[ids] + dense(h_all[0])
            else:
                gates = dense(torch.cat([x, h_all[layer]], 1))
            steps.append(lstm_cell(gates, c_all[layer]))
            x = steps[-1].h
        return steps

    @torch.no_grad()
    def read(self, ids: Sequence[int], state: State | None = None) -> tuple[torch.Tensor, State]:
        """Log-probabilities of each next token and the state after the last id, by the model's own forward.

        From the start of a text (no `state`): [len(ids)+1, V], row 0 the distribution after
        `start_id`. From `state`: [len(ids), V], row i the distribution after ids[i].
        """
        sequence = torch.tensor(list(ids) if state is not None else [self.start_id, *ids], dtype=torch.long)
        logits, state = self.trained.model(sequence.unsqueeze(0), state)
        return F.log_softmax(logits[0].float(), -1), state

    def reading(self, ids: Sequence[int], after: Reading | None = None) -> Reading:
        """Read `ids` from the start of a text, or on from `after` (a prompt's reading) without re-reading it."""
        ids = list(ids)
        if after is None:
            log_probs, state = self.read(ids)
        elif not ids:
            return after
        else:
            log_probs, state = self.read(ids, after.state)
            log_probs = torch.cat([after.next_log_probs.unsqueeze(0), log_probs])
        chosen = log_probs[torch.arange(len(ids)), torch.tensor(ids, dtype=torch.long)].exp()
        return Reading(self._scores(ids, chosen.tolist()), log_probs[-1], state)

    @property
    def start_id(self) -> int:
        """What a text starts after, as in training (`Tokenizer.start_id`)."""
        return self.tokenizer.start_id

    # -- prompts -------------------------------------------------------------------------------
    def prompt(self, text: str, max_tokens: int | None = None) -> Prompt:
        """Encode a prompt, keeping at most its last `max_tokens`, and say what was changed.

        Only the end of a long text is encoded: the last `max_tokens` + 1 characters, widened (to whole
        lines when the tokenizer reads by line, where its encoding restarts) until they hold more than
        `max_tokens` tokens.
        """
        tokenizer = self.tokenizer
        kept, ids, starts = self._encode_end(text, max_tokens)
        notes = [] if ids else ["empty prompt: the model starts from the beginning of a text"]
        characters = len(text)
        if max_tokens is not None and len(ids) > max_tokens:
            notes.append(f"prompt cut to its last {max_tokens} tokens (it had {len(text):,} characters)")
            ids, characters = ids[-max_tokens:], len(kept) - starts[-max_tokens]
        unknown = ids.count(tokenizer.unk_id) if tokenizer.unk_id is not None else 0
        if unknown:
            pieces = self.unknown_pieces(kept)[-unknown:]
            shown = ", ".join(repr(piece) for piece in list(dict.fromkeys(pieces))[:5])
            notes.append(f"{level_unit(tokenizer.level).count(unknown)} not in the model's vocabulary "
                         f"became <unk>: {shown}")
        return Prompt(ids, notes, characters, tokenizer.pieces(ids))

    def _encode_end(self, text: str, max_tokens: int | None) -> tuple[str, list[int], list[int]]:
        """The shortest end of `text` that encodes to more than `max_tokens` ids (or all of it), its ids and
        where each starts in it.

        Its ids are the end of the whole text's ids: a tokenizer that reads by line starts afresh at
        each line, so the window starts at one; one that does not (characters) reads a token per
        character, so any start will do.
        """
        size = len(text) if max_tokens is None else max_tokens + 1
        while True:
            start = max(0, len(text) - size)
            if start and self.tokenizer.by_line:
                start = text.rfind("\n", 0, start) + 1
            ids, starts = self.tokenizer.encode_with_starts(text[start:])
            if start == 0 or len(ids) > max_tokens:
                return text[start:], ids, starts
            size *= 4

    def unknown_pieces(self, text: str) -> list[str]:
        """The characters or words of `text` that the vocabulary lacks, in order (none without `<unk>`)."""
        if self.tokenizer.unk_id is None:
            return []
        encoding = self.tokenizer.hf.encode(text, add_special_tokens=False)
        return [text[start:end] for token, (start, end) in zip(encoding.ids, encoding.offsets)
                if token == self.tokenizer.unk_id]

    # -- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def stream(self, prompt: Sequence[int] | Reading, sampling: Sampling) -> Iterator[list[Sample]]:
        """Yield the samples (one per temperature, in order) after each new token.

        `prompt` is its ids, or its `Reading` when the caller has read it already (its tokens are then
        the text before, which decides how the first piece of a sample is spaced).
        """
        samples = [Sample(float(t)) for t in sampling.temperatures]
        reading = prompt if isinstance(prompt, Reading) else self.reading(prompt)
        context = [score.id for score in reading.scores]
        h, c = reading.state
        live = list(range(len(samples)))  # rows still sampling, in batch order
        live_rows = torch.tensor(live)
        logits = reading.next_log_probs.expand(len(live), -1)
        state = (h.expand(-1, len(live), -1).contiguous(), c.expand(-1, len(live), -1).contiguous())
        temperatures = torch.tensor([s.temperature for s in samples])
        uniforms = _Uniforms(sampling.seed, sampling.temperatures)
        unk_id, end_id = self.tokenizer.unk_id, self.tokenizer.end_id
        banned = torch.tensor([unk_id]) if sampling.avoid_unk and unk_id is not None else None
        end_at_eos = sampling.stop_at_eos and end_id is not None
        for index in range(sampling.max_new_tokens):
            last = index + 1 == sampling.max_new_tokens
            next_ids = choose_next(logits, temperatures, uniforms.at(index)[live_rows],
                                   sampling.top_k, sampling.top_p, banned)
            chosen = logits.float().log_softmax(-1).gather(1, next_ids.unsqueeze(1)).squeeze(1).exp()
            for row, token, probability in zip(live, next_ids.tolist(), chosen.tolist()):
                sample = samples[row]
                if end_at_eos and token == end_id:
                    sample.stopped_by = "eos"
                    self._repiece(sample, context, whole=True)
                    continue
                sample.ids.append(token)
                sample.tokens.append(self.tokenizer.tokens([token])[0])
                sample.probabilities.append(probability)
                self._repiece(sample, context, whole=last)
                if sampling.stop and sampling.stop in sample.text:
                    sample.stopped_by = "stop"
                    self._repiece(sample, context, whole=True)
            yield samples
            keep = [position for position, row in enumerate(live) if not samples[row].finished]
            if not keep:
                return
            if len(keep) < len(live):
                live = [live[position] for position in keep]
                live_rows, rows = torch.tensor(live), torch.tensor(keep)
                next_ids, temperatures = next_ids[rows], temperatures[rows]
                state = (state[0][:, rows], state[1][:, rows])
            if not last:
                logits, state = self.step(next_ids, state)

    def _repiece(self, sample: Sample, context: list[int], whole: bool) -> None:
        """Bring `sample.pieces` up to date after a new token: the last `REPIECE` pieces while it streams
        (read with the token before them and `PIECE_CONTEXT` ids before that), all of them when `whole`."""
        ids = sample.ids
        if whole or len(ids) <= REPIECE + 1:
            sample.pieces = self.tokenizer.pieces(ids, context=context)
            return
        begin = len(ids) - REPIECE - 1  # its piece is read again only as context for the next one
        before = [*context[-PIECE_CONTEXT:], *ids[max(0, begin - PIECE_CONTEXT):begin]][-PIECE_CONTEXT:]
        sample.pieces[begin + 1:] = self.tokenizer.pieces(ids[begin:], context=before)[1:]

    def generate(self, prompt: Sequence[int] | Reading, sampling: Sampling) -> list[Sample]:
        """The finished samples of `stream`."""
        samples: list[Sample] = []
        for samples in self.stream(prompt, sampling):
            pass
        return samples

    # -- looking at distributions --------------------------------------------------------------
    def next_tokens(self, reading: Reading, k: int = 10) -> list[TokenScore]:
        """The k most likely tokens after a read text, likeliest first."""
        top = reading.next_log_probs.exp().topk(min(k, reading.next_log_probs.size(-1)))
        return self._scores(top.indices.tolist(), top.values.tolist())

    def _scores(self, ids: list[int], probabilities: list[float]) -> list[TokenScore]:
        return [TokenScore(i, token, p) for i, token, p in zip(ids, self.tokenizer.tokens(ids), probabilities)]


def choose_next(logits: torch.Tensor, temperatures: torch.Tensor, uniforms: torch.Tensor, top_k: int = 0,
                top_p: float = 1.0, banned: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row of `logits` [B, V]: argmax where the temperature is below `GREEDY_BELOW`, else
    inverse-CDF sampling.

    Top-k and then top-p are applied to the temperature-scaled distribution; top-p keeps the
    smallest set of likeliest tokens whose mass reaches p. `banned` ids get probability 0.
    """
    logits = logits.float()
    if banned is not None:
        logits = logits.index_fill(1, banned, -math.inf)
    greedy = logits.argmax(-1)
    sampled_rows = temperatures >= GREEDY_BELOW
    scaled = logits / torch.where(sampled_rows, temperatures, 1.0).unsqueeze(1)
    vocab = scaled.size(-1)
    if 0 < top_k < vocab:
        kept = scaled.topk(top_k, -1).indices
        scaled = torch.full_like(scaled, -math.inf).scatter(-1, kept, scaled.gather(-1, kept))
    probs = scaled.softmax(-1)
    if top_p < 1.0:
        ordered, order = probs.sort(-1, descending=True)
        ordered = ordered.masked_fill(ordered.cumsum(-1) - ordered >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, ordered)
    cdf = probs.cumsum(-1)
    targets = (uniforms.float() * cdf[:, -1]).unsqueeze(1).contiguous()
    sampled = torch.searchsorted(cdf, targets, right=True).squeeze(1).clamp_max(vocab - 1)
    return torch.where(sampled_rows, sampled, greedy)


class _Uniforms:
    """Per-row uniform streams: row r's draws depend only on the seed, its temperature and its repeat count."""

    def __init__(self, seed: int, temperatures: Sequence[float]):
        seen: Counter[float] = Counter()
        self.generators = []
        for t in temperatures:
            self.generators.append(RandomGenerator().manual_seed(_mix(seed, seen[float(t)])))
            seen[float(t)] += 1
        self.chunks: list[torch.Tensor] = []

    def at(self, index: int) -> torch.Tensor:
        """The uniforms of step `index`, one per row."""
        chunk, offset = divmod(index, UNIFORM_CHUNK)
        while len(self.chunks) <= chunk:
            self.chunks.append(torch.stack([torch.rand(UNIFORM_CHUNK, generator=g) for g in self.generators], 1))
        return self.chunks[chunk][offset]


def _mix(seed: int, stream: int) -> int:
    """SplitMix64 of (seed, stream): well-spread 64-bit seeds for neighbouring inputs."""
    z = (seed + (stream + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def lstm_cell(gates: torch.Tensor, c: torch.Tensor) -> CellStep:
    """One LSTM cell update from pre-activations [B, 4H] in PyTorch's order (input, forget, cell, output)."""
    i, f, g, o = gates.chunk(4, 1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = f * c + i * g
    return CellStep(o * torch.tanh(c), c, i, f, g, o)
