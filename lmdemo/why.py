"""Why this token? Each unit's exact share of the logits that picked a token, and what holding one unit does to it.

The decoder is linear in the top layer's h: logits = W (P h) + b, with P the bias-free projection where the model has
one (dropout is the identity in eval). So the difference between two tokens' logits splits exactly into one share per
unit of h, h_j · (Pᵀ(w_token − w_reference))_j, plus the decoder's bias difference b_token − b_reference, which belongs
to no unit and is reported apart: shares + bias difference = logit difference, up to float rounding. A logit difference
is the log of the two tokens' probability ratio, so it is read off the model's own log-probabilities (`model.logits`).

The reference is the likeliest other token: the runner-up when the token is the model's first choice, else that first
choice. Against it a share says what tipped the model to this token rather than the one it nearly took (or took
instead). Against the mean logit, the other usual reference, a share would mostly say that the token is plausible at
all, against thousands of tokens the model never considers.

The adaptive softmax (imdb-word) picks a word in two softmaxes over the same features: the head, over the frequent
words and one entry per cluster of rarer words, then, for a rarer word, its cluster's words. Each is linear, so each is
explained against its likeliest other word: a frequent word in the head (never a cluster, which stands for thousands
of words), a word of the same cluster within it; a unit's share is the sum of its shares in the two. For a frequent
word that is the plain case: log p(word) / p(reference), both frequent words. For a rarer word what is explained is
the sum of two log-ratios, each measured from the model's log-probabilities: log p(its cluster) / p(the head's
reference word), plus log p(word | cluster) / p(the cluster's reference word | cluster).

Holding a unit uses the dial's own mechanism (`Dial.hold`, as `Generator.stream` applies it): the token's probability
with one unit held at a value (0 for the units shown: where h and c rest before a text starts) in the state the token
is predicted from (`from_token`: a dial turned on at that token, which reaches it only through the top layer's h);
and for a unit asked about, of any layer, h or c, also held after every token read from the text's start
(`from_start`: a dial held while the whole text was read, so that lower layers and cells act through the steps
between; one step per token, so not for every unit shown).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch

from lmdemo.generation import Dial, Generator, SettingsError
from lmdemo.model import LSTMLanguageModel, State
from lmdemo.tokenizer import Tokenizer

TOP_HELD = 5  # by default, the units held are this many with the largest shares for the token and as many against
UnitKey = tuple[int, int, str]  # (layer from 1, unit from 0, "h" or "c"), as atlas.json and a dial name a unit


@dataclass(frozen=True)
class Choice:
    """One softmax the decoder picks a token by, as rows of a linear layer over the decoder's input: a plain
    decoder's over every token; the adaptive softmax's head (its frequent words, then one entry per cluster) and
    each cluster's own over its words."""

    name: str
    weight: torch.Tensor  # [entries, D]
    bias: torch.Tensor  # [entries]
    first_id: int  # the token id of entry 0
    words: int  # entries that are tokens, from `first_id` on; any after them stand for the clusters
    clusters: tuple[tuple[int, int], ...] = ()  # each cluster entry's token ids, [low, high)


@dataclass(frozen=True)
class Contrast:
    """One choice's entry carrying the token against its likeliest other entry, for the rows that choice decides:
    the measured log-ratio of the two, and each unit's share of it (the bias difference aside)."""

    choice: Choice
    rows: torch.Tensor  # [M] rows of the request
    chosen: torch.Tensor  # [M] entry indices
    reference: torch.Tensor  # [M]
    chosen_log_prob: torch.Tensor  # [M] within the choice
    reference_log_prob: torch.Tensor  # [M]
    shares: torch.Tensor  # [M, H] float64
    bias_difference: torch.Tensor  # [M] float64


@dataclass(frozen=True)
class UnitShare:
    layer: int  # from 1 (bottom), as in atlas.json
    unit: int  # from 0
    quantity: str
    share: float
    name: str | None  # the atlas property this unit follows, if any


@dataclass(frozen=True)
class Step:
    """One choice of the decoder, as a reader sees it: what it chose, against what, and how the units add up."""

    choice: str  # "token" (one softmax), "head" or "cluster N" (the adaptive softmax)
    chosen: str  # a token, or a cluster of rarer words ("[cluster 1: 8,000 rarer words]")
    chosen_id: int | None  # the token's id; None for a cluster
    reference: str  # always a token
    reference_id: int
    reference_is: str  # "runner-up" or "first choice"
    chosen_probability: float  # within the choice
    reference_probability: float
    logit_difference: float  # measured: log(chosen_probability / reference_probability)
    bias_difference: float
    sum_of_shares: float


@dataclass(frozen=True)
class Held:
    """The token's probability with one unit held at `value` from the token on, and from the text's start (None
    where not measured: a step per token of the text, so only for a unit asked about)."""

    layer: int
    unit: int
    quantity: str
    value: float
    name: str | None
    from_token: float
    from_start: float | None


@dataclass(frozen=True)
class Why:
    """Why the model gave a token its probability: the steps of its decoder, every top-layer unit's share, and the
    probability with a few units held."""

    position: int  # the token's index in the text as the model reads it (len(text): the next token after it)
    token_id: int
    token: str
    probability: float
    steps: list[Step]
    units: list[UnitShare]  # every unit of the top layer's h, largest |share| first
    held: list[Held]

    @property
    def reference(self) -> str:
        first, *rest = self.steps
        return first.reference + "".join(f"; within {step.choice}: {step.reference}" for step in rest)

    @property
    def logit_difference(self) -> float:
        return sum(step.logit_difference for step in self.steps)

    @property
    def bias_difference(self) -> float:
        return sum(step.bias_difference for step in self.steps)

    @property
    def sum_of_shares(self) -> float:
        return sum(step.sum_of_shares for step in self.steps)

    def as_json(self) -> dict:
        """The explanation as the `/why` API returns it."""
        return {"position": self.position, "token_id": self.token_id, "token": self.token,
                "probability": self.probability, "reference": self.reference,
                "logit_difference": self.logit_difference, "bias_difference": self.bias_difference,
                "sum_of_shares": self.sum_of_shares, "steps": [vars(step) for step in self.steps],
                "units": [vars(unit) for unit in self.units], "held": [vars(held) for held in self.held]}


# -- the decoder as linear choices ----------------------------------------------------------------
def choices(model: LSTMLanguageModel) -> list[Choice]:
    """The decoder's softmaxes: one over every token, or the adaptive softmax's head and then each cluster."""
    weight, bias = model.decoder.weight, model.decoder.bias
    if model.clusters is None:
        return [Choice("token", weight, bias, 0, weight.size(0))]
    cuts = model.cutoffs
    spans = tuple(pairwise(cuts))
    head = Choice("head", torch.cat([weight[:cuts[0]], model.clusters.weight]),
                  torch.cat([bias[:cuts[0]], model.clusters.bias]), 0, cuts[0], spans)
    return [head, *(Choice(f"cluster {index}", weight[low:high], bias[low:high], low, high - low)
                    for index, (low, high) in enumerate(spans, start=1))]


def entry_log_probs(choice: Choice, log_probs: torch.Tensor) -> torch.Tensor:
    """Each entry's log-probability within `choice` [N, entries], from the model's log-probabilities of every token
    [N, V]: a token's own, a cluster entry's the log of its tokens' summed probability, renormalised over the choice
    (a cluster's words: p(word | cluster))."""
    words = log_probs[:, choice.first_id:choice.first_id + choice.words]
    entries = torch.cat([words, *(log_probs[:, low:high].logsumexp(-1, keepdim=True) for low, high in choice.clusters)],
                        -1)
    return entries - entries.logsumexp(-1, keepdim=True)


def carriers(choice: Choice, tokens: torch.Tensor) -> torch.Tensor:
    """The entry of `choice` that leads to each token [N]: the token itself or its cluster; -1 where `choice` is not
    on the token's way (another cluster's softmax)."""
    entries = torch.full_like(tokens, -1)
    own = (tokens >= choice.first_id) & (tokens < choice.first_id + choice.words)
    entries[own] = tokens[own] - choice.first_id
    for index, (low, high) in enumerate(choice.clusters):
        entries[(tokens >= low) & (tokens < high)] = choice.words + index
    return entries


@torch.no_grad()
def attribute(model: LSTMLanguageModel, hidden: torch.Tensor, log_probs: torch.Tensor,
              tokens: torch.Tensor) -> list[Contrast]:
    """Each choice on the way to each token, against its likeliest other entry, with every unit's share.

    `hidden` [N, H] is the top layer's h the decoder read, `log_probs` [N, V] what the model made of it
    (`next_log_probs`), `tokens` [N] the tokens to explain. Shares are in float64, so their sum adds no rounding."""
    projection = model.projection.weight.double() if model.projection is not None else None
    contrasts = []
    for choice in choices(model):
        carried = carriers(choice, tokens)
        rows = (carried >= 0).nonzero()[:, 0]
        if not len(rows):
            continue
        entries, chosen = entry_log_probs(choice, log_probs[rows]), carried[rows]
        # the likeliest other word: never a cluster, which stands for thousands of words
        reference = entries.scatter(1, chosen[:, None], -torch.inf)[:, :choice.words].argmax(1)
        direction = (choice.weight[chosen] - choice.weight[reference]).double()  # [M, D]
        if projection is not None:
            direction = direction @ projection  # d · (P h) = (Pᵀ d) · h
        contrasts.append(Contrast(choice, rows, chosen, reference, entries.gather(1, chosen[:, None])[:, 0],
                                  entries.gather(1, reference[:, None])[:, 0], hidden[rows].double() * direction,
                                  (choice.bias[chosen] - choice.bias[reference]).double()))
    return contrasts


def row_shares(contrasts: Sequence[Contrast], rows: int) -> torch.Tensor:
    """Each row's unit shares [rows, H], summed over the choices on the way to its token."""
    total = torch.zeros(rows, contrasts[0].shares.size(1), dtype=torch.float64)
    for contrast in contrasts:
        total.index_add_(0, contrast.rows, contrast.shares)
    return total


# -- reading a text -------------------------------------------------------------------------------
@torch.no_grad()
def read_text(model: LSTMLanguageModel, ids: Sequence[int], start_id: int) -> tuple[torch.Tensor, State]:
    """The top layer's h after the start and after each id [len(ids) + 1, H], and the state after the last, by the
    model's own embedding and LSTM (its forward without the logits, which only the explained rows need)."""
    output, state = model.lstm(model.embedding(torch.tensor([[start_id, *ids]])))
    return output[0], state


@torch.no_grad()
def next_log_probs(model: LSTMLanguageModel, hidden: torch.Tensor) -> torch.Tensor:
    """The distribution [N, V] the model's own decoder (`logits`) gives after top-layer states `hidden` [N, H], as
    `Generator.read` gives it."""
    features = model.projection(hidden) if model.projection is not None else hidden
    return model.logits(features).float().log_softmax(-1)


# -- holding a unit -------------------------------------------------------------------------------
def _held_each(dials: Sequence[Dial], state: State) -> State:
    """`state` ([L, len(dials), H] each) with dial i's unit held in row i, as a batch holds each dialled request's."""
    for row, dial in enumerate(dials):
        state = dial.hold(state, slice(row, row + 1))
    return state


def _probabilities(generator: Generator, state: State, token: int) -> list[float]:
    return generator.predict(state).float().log_softmax(-1)[:, token].exp().tolist()


@torch.no_grad()
def held_from_token(generator: Generator, state: State, token: int, dials: Sequence[Dial]) -> list[float]:
    """For each dial, the probability of `token` predicted from `state` ([L, 1, H] each: after the text before it)
    with the dial's unit held there: a dial turned on at that token."""
    for dial in dials:
        generator.check_dial(dial)
    if not dials:
        return []
    rows = tuple(part.expand(-1, len(dials), -1).contiguous() for part in state)
    return _probabilities(generator, _held_each(dials, rows), token)


@torch.no_grad()
def held_from_start(generator: Generator, before: Sequence[int], token: int, dials: Sequence[Dial]) -> list[float]:
    """For each dial, the probability of `token` after the text `before` read with the dial's unit held after every
    token from the text's start, one step per token through the generator's cell (a decode step's, as a dialled
    sample is written from an empty prompt)."""
    for dial in dials:
        generator.check_dial(dial)
    if not dials:
        return []
    zeros = torch.zeros(generator.config.num_layers, len(dials), generator.config.hidden_size)
    state: State = (zeros, zeros.clone())
    for read in [generator.start_id, *before]:
        state = _held_each(dials, generator.next_state(torch.full((len(dials),), read), state))
    return _probabilities(generator, state, token)


# -- one token explained --------------------------------------------------------------------------
@torch.no_grad()
def explain(generator: Generator, ids: Sequence[int], position: int, names: Mapping[UnitKey, str] | None = None,
            hold: Sequence[Dial] = ()) -> Why:
    """Why the model gave the token at `position` of `ids` (0-based; -1: the likeliest next token after them) its
    probability; `names` are the atlas's names of units. Held from the token on: the `TOP_HELD` units with the largest
    shares for and against, each at 0, then the dials of `hold` (any layer's units), which are also held from the
    text's start (one step per token: only for the units asked about)."""
    ids, names = list(ids), names or {}
    if not ids:
        raise SettingsError("the text is empty: give a text to explain one of its tokens")
    if not -1 <= position < len(ids):
        raise SettingsError(f"position must be from 0 to {len(ids) - 1} (a token of the text as the model reads it), "
                            f"or -1 for the next token after it (got {position})")
    at = len(ids) if position == -1 else position
    model, tokenizer = generator.trained.model, generator.tokenizer
    hidden, state = read_text(model, ids[:at], generator.start_id)
    log_probs = next_log_probs(model, hidden[-1:])
    token = int(log_probs[0].argmax()) if position == -1 else ids[at]
    contrasts = attribute(model, hidden[-1:], log_probs, torch.tensor([token]))
    top = generator.config.num_layers
    units = sorted((UnitShare(top, unit, "h", share, names.get((top, unit, "h")))
                    for unit, share in enumerate(row_shares(contrasts, 1)[0].tolist())),
                   key=lambda found: -abs(found.share))
    for_token, against = [unit for unit in units if unit.share > 0], [unit for unit in units if unit.share < 0]
    shown = [Dial(unit.layer, unit.unit, unit.quantity, 0.0) for unit in for_token[:TOP_HELD] + against[:TOP_HELD]]
    dials = shown + list(hold)
    from_start = [None] * len(shown) + held_from_start(generator, ids[:at], token, hold)
    held = [Held(dial.layer, dial.unit, dial.quantity, dial.value, names.get((dial.layer, dial.unit, dial.quantity)),
                 from_token, started)
            for dial, from_token, started in zip(dials, held_from_token(generator, state, token, dials), from_start)]
    return Why(at, token, tokenizer.tokens([token])[0], float(log_probs[0, token].exp()),
               [_step(contrast, tokenizer) for contrast in contrasts], units, held)


def _step(contrast: Contrast, tokenizer: Tokenizer) -> Step:
    """One request's (one row's) contrast in words."""
    choice, chosen, reference = contrast.choice, int(contrast.chosen[0]), int(contrast.reference[0])
    chosen_log_prob, reference_log_prob = float(contrast.chosen_log_prob[0]), float(contrast.reference_log_prob[0])
    if chosen < choice.words:
        chosen_id: int | None = choice.first_id + chosen
        chosen_name = tokenizer.tokens([chosen_id])[0]
    else:
        chosen_id, (low, high) = None, choice.clusters[chosen - choice.words]
        chosen_name = f"[cluster {chosen - choice.words + 1}: {high - low:,} rarer words]"
    reference_id = choice.first_id + reference
    return Step(choice.name, chosen_name, chosen_id, tokenizer.tokens([reference_id])[0], reference_id,
                "runner-up" if chosen_log_prob >= reference_log_prob else "first choice",
                math.exp(chosen_log_prob), math.exp(reference_log_prob), chosen_log_prob - reference_log_prob,
                float(contrast.bias_difference[0]), float(contrast.shares[0].sum()))
