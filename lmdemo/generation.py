"""Fast inference over one loaded model: reading texts, next-token distributions, and the decode loop.

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

The decode loop (`Generator.stream`) moves a batch of `Rows` on one token at a time: `next_state`
advances their LSTM state, `predict` turns it into logits, and a `Decoding` (lmdemo.sampling) picks and
records each row's token and drops the rows that are done. What a request may ask for (`Sampling`) and
what it gets back (`Sample`), with how randomness is drawn, are in lmdemo.sampling; how a prompt is
encoded and cut is in lmdemo.prompts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.nn import functional as F

from lmdemo.checkpoint import TrainedModel
from lmdemo.model import LSTMLanguageModel, State, adaptive_log_probs, head_log_probs
from lmdemo.prompts import Prompt, encode_prompt
from lmdemo.sampling import SEED_LIMIT, Decoding, Dial, Sample, Sampling, SettingsError

# Sampling's types are part of this module's API: callers import them from here with `Generator`.
__all__ = ["SEED_LIMIT", "CellStep", "Dial", "Generator", "Prompt", "Reading", "Rows", "Sample", "Sampling",
           "SettingsError", "TokenScore", "lstm_cell", "owned"]

LOOKUP_LIMIT = 4_000_000  # floats in a precomputed first-layer table (16 MB)
PACK_MIN = 2**18  # weights smaller than this (1 MB) run faster unpacked: oneDNN's call costs ~20-40 us


class TokenScore(NamedTuple):
    id: int
    token: str
    probability: float


@dataclass
class Reading:
    """A text as the model read it, once: what it gave each token, what it expects next, its state after.

    Sampling continues from `state`, the prompt's colouring is `scores` and the bars after the prompt
    are `next_log_probs`, so one request reads its prompt through the model once. A page keeps it (with its
    run) between events, so its tensors are its own: never views into the [tokens, V] matrix it was read from,
    whose size grows with the prompt times the vocabulary.
    """

    scores: list[TokenScore]  # each token with the probability the model gave it
    next_log_probs: torch.Tensor  # [V], its own storage: the distribution of the token after the text
    state: State  # ([L, 1, H], [L, 1, H]) after the last token, their own storage


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

class _AdaptiveDecoder:
    """The model's adaptive softmax (`LSTMLanguageModel.logits`) with its matrices packed like the others: MKL's
    GEMM on imdb-word's 26k-word tail cluster took 11 ms at 2 rows and 17.6 ms at 3, packed 3.5 and 3.7 ms."""

    def __init__(self, model: LSTMLanguageModel):
        weight, bias, cuts = model.decoder.weight.detach().float(), model.decoder.bias.detach().float(), model.cutoffs
        self.frequent = _Dense(weight[:cuts[0]], bias[:cuts[0]])
        self.clusters = _Dense(model.clusters.weight.detach().float(), model.clusters.bias.detach().float())
        self.tails = [_Dense(weight[low:high], bias[low:high]) for low, high in zip(cuts, cuts[1:])]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return adaptive_log_probs(head_log_probs(self.frequent(x), self.clusters(x)), [tail(x) for tail in self.tails])


@dataclass
class Rows:
    """The rows the decode loop moves on together, as one batch: the sample each row extends (its index in
    the request), the token each chose last (None before the first) and the LSTM state ([L, B, H] each)."""

    samples: list[int]
    state: State
    ids: torch.Tensor | None = None

    def keep(self, positions: list[int]) -> Rows:
        """Only the rows at `positions` (all of them: the same batch, uncopied)."""
        if len(positions) == len(self.samples):
            return self
        index = torch.tensor(positions)
        return Rows([self.samples[p] for p in positions], (self.state[0][:, index], self.state[1][:, index]),
                    None if self.ids is None else self.ids[index])


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
                if model.clusters is None else _AdaptiveDecoder(model)

    # -- the cell ------------------------------------------------------------------------------
    def step(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Logits [B, V] for ids [B] and the next state ([L, B, H] each), as the model's forward gives."""
        state = self.next_state(ids, state)
        return self.predict(state), state

    def next_state(self, ids: torch.Tensor, state: State) -> State:
        """The state ([L, B, H] each) of a batch of rows after each reads its id in `ids` [B]: one step."""
        layers = self.layer_steps(ids, state)
        return torch.stack([s.h for s in layers]), torch.stack([s.c for s in layers])

    def predict(self, state: State) -> torch.Tensor:
        """Logits [B, V] of the next token of each row in `state`, from its top layer's h."""
        x = state[0][-1]
        if self.projection is not None:
            x = self.projection(x)
        return self.decoder(x)

    def layer_steps(self, ids: torch.Tensor, state: State) -> list[CellStep]:
        """Every layer's cell step for ids [B] from state ([L, B, H] each), bottom layer first.

        The one place the stacked cell is run: `next_state` keeps h and c, and `lmdemo.internals`
        keeps all of it to show what the model holds at each token.
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

    # -- reading texts -------------------------------------------------------------------------
    @torch.no_grad()
    def read(self, ids: Sequence[int], state: State | None = None) -> tuple[torch.Tensor, State]:
        """Log-probabilities of each next token and the state after the last id, by the model's own forward.

        From the start of a text (no `state`): [len(ids)+1, V], row 0 the distribution after
        `start_id`. From `state`: [len(ids), V], row i the distribution after ids[i].
        """
        logits, state = self.trained.model(self._sequence(ids, state), state)
        return F.log_softmax(logits[0].float(), -1), state

    @torch.no_grad()
    def reading(self, ids: Sequence[int], after: Reading | None = None) -> Reading:
        """Read `ids` from the start of a text, or on from `after` (a prompt's reading) without re-reading it.

        Only the read tokens' own probabilities and the distribution after the last are computed: a 1,000-word
        review on a 36k-word model would otherwise make [n, V] matrices of 145 MB apiece (`read`)."""
        ids = list(ids)
        if after is not None and not ids:
            return after
        model, before = self.trained.model, after.state if after is not None else None
        features, state = model.features(self._sequence(ids, before), before)
        features = features[0]
        targets = ids if after is None else ids[1:]  # a reading on: its first token's is in `after`
        chosen = model.token_log_probs(features[:len(targets)], torch.tensor(targets, dtype=torch.long)).float()
        if after is not None:
            chosen = torch.cat([after.next_log_probs[ids[:1]], chosen])
        next_log_probs = F.log_softmax(model.logits(features[-1:]).float(), -1)[0]
        return Reading(self._scores(ids, chosen.exp().tolist()), next_log_probs, (owned(state[0]), owned(state[1])))

    def _sequence(self, ids: Sequence[int], state: State | None) -> torch.Tensor:
        """ids [1, T] as the model reads them: from the start of a text (no `state`), after `start_id`."""
        return torch.tensor([list(ids) if state is not None else [self.start_id, *ids]], dtype=torch.long)

    @property
    def start_id(self) -> int:
        """What a text starts after, as in training (`Tokenizer.start_id`)."""
        return self.tokenizer.start_id

    def prompt(self, text: str, max_tokens: int | None = None) -> Prompt:
        """`text` as this model reads it, cut to its last `max_tokens` (`lmdemo.prompts.encode_prompt`)."""
        return encode_prompt(self.tokenizer, text, max_tokens)

    def next_tokens(self, reading: Reading, k: int = 10) -> list[TokenScore]:
        """The k most likely tokens after a read text, likeliest first."""
        top = reading.next_log_probs.exp().topk(min(k, reading.next_log_probs.size(-1)))
        return self._scores(top.indices.tolist(), top.values.tolist())

    def _scores(self, ids: list[int], probabilities: list[float]) -> list[TokenScore]:
        return [TokenScore(i, token, p) for i, token, p in zip(ids, self.tokenizer.tokens(ids), probabilities)]

    # -- sampling ------------------------------------------------------------------------------
    def check_dial(self, dial: Dial | None) -> None:
        """Refuse a dial naming a layer, unit or quantity this model does not have (`SettingsError`)."""
        if dial is not None:
            dial.check(self.config.num_layers, self.config.hidden_size)

    @torch.no_grad()
    def stream(self, prompt: Sequence[int] | Reading, sampling: Sampling) -> Iterator[list[Sample]]:
        """Yield the samples (one per temperature, in order) after each new token.

        `prompt` is its ids, or its `Reading` when the caller has read it already (its tokens are then
        the text before, which decides how the first piece of a sample is spaced). A `sampling.dial` is
        checked against this model, then holds its unit after the prompt and after every step.
        """
        dial = sampling.dial
        self.check_dial(dial)
        reading = prompt if isinstance(prompt, Reading) else self.reading(prompt)
        decoding = Decoding(sampling, self.tokenizer, [score.id for score in reading.scores])
        count = len(decoding.samples)
        rows = Rows(list(range(count)), tuple(part.expand(-1, count, -1).contiguous() for part in reading.state))
        if dial is None:
            logits = reading.next_log_probs.expand(count, -1)
        else:  # the first token already feels the dial
            rows.state = dial.hold(rows.state)
            logits = self.predict(rows.state)
        for index in range(sampling.max_new_tokens):
            rows.ids = decoding.choose(logits, rows.samples, index)
            yield decoding.samples
            going_on = decoding.unfinished(rows.samples)
            if not going_on or index + 1 == sampling.max_new_tokens:
                return
            rows = rows.keep(going_on)
            rows.state = self.next_state(rows.ids, rows.state)
            if dial is not None:
                rows.state = dial.hold(rows.state)
            logits = self.predict(rows.state)

    def generate(self, prompt: Sequence[int] | Reading, sampling: Sampling) -> list[Sample]:
        """The finished samples of `stream`."""
        samples: list[Sample] = []
        for samples in self.stream(prompt, sampling):
            pass
        return samples


def owned(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`, or a copy of it when it is a view into a larger storage: what is kept (a `Reading`, a page's run)
    holds only its own bytes, never the matrix it was cut from."""
    if tensor.untyped_storage().nbytes() > tensor.numel() * tensor.element_size():
        return tensor.clone()
    return tensor


def lstm_cell(gates: torch.Tensor, c: torch.Tensor) -> CellStep:
    """One LSTM cell update from pre-activations [B, 4H] in PyTorch's order (input, forget, cell, output)."""
    i, f, g, o = gates.chunk(4, 1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = f * c + i * g
    return CellStep(o * torch.tanh(c), c, i, f, g, o)
