"""What a sampling request asks for, and how its samples grow token by token from the model's logits.

Nothing here runs the model: `lmdemo.generation.Generator` advances the LSTM and hands each step's
logits to a `Decoding`, which picks a token per row, records it and says which rows go on.

All temperatures of a request are rows of one batch: one forward pass per step serves them all.
Randomness never comes from the global seed. Each row draws its uniforms from its own
`torch.Generator` (imported as `RandomGenerator`, so it is never mistaken for lmdemo's
`Generator`), seeded from the request's seed and how many earlier rows have the same temperature,
and picks a token by inverse CDF (one uniform per row per step). A temperature below
`GREEDY_BELOW` is greedy, exactly like 0. Hence:

- the same prompt, settings and seed give the same text, whatever else the process is doing;
- a temperature's sample is the same whether it is asked for alone or beside other temperatures
  (a repeated temperature gets a fresh stream, so "0.8, 0.8" gives two different samples);
- a longer `max_new_tokens` extends a shorter run's text rather than changing it;
- different temperatures share their uniforms (common random numbers), so columns differ by
  temperature rather than by luck.

A `Dial` holds one unit of the LSTM's state at a value while sampling (steering, as Radford et al. 2017 did
with their sentiment unit); the generator overwrites that unit after every step, before each prediction.

Up to floating-point rounding: batched matmuls may round differently at different batch sizes, so
a near-tie between two tokens can in rare cases resolve differently alone and in a batch.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Generator as RandomGenerator

from lmdemo.tokenizer import Tokenizer

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


DIAL_QUANTITIES = ("h", "c")  # the LSTM's hidden state and its cell
DIAL_SYNTAX = "LAYER:UNIT:QUANTITY=VALUE (e.g. 2:17:h=0.9; layers from 1, units from 0, quantity h or c)"


@dataclass(frozen=True)
class Dial:
    """Hold unit `unit` (from 0) of layer `layer`'s (from 1, the bottom) `quantity` ("h" or "c") at `value`
    at every step of sampling, so a visitor can see what that unit does to the text."""

    layer: int
    unit: int
    quantity: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Dial:
        """A dial from `LAYER:UNIT:QUANTITY=VALUE`; anything else is a `SettingsError` naming the syntax."""
        match = re.fullmatch(r"([^:=]*):([^:=]*):([^:=]*)=(.*)", text)
        if match is None:
            raise SettingsError(f"the dial must read {DIAL_SYNTAX} (got {text!r})")
        layer, unit, quantity, value = (part.strip() for part in match.groups())
        if not re.fullmatch(r"\d+", layer):
            raise SettingsError(f"the dial's layer must be a whole number from 1 (got {layer!r})")
        if not re.fullmatch(r"\d+", unit):
            raise SettingsError(f"the dial's unit must be a whole number from 0 (got {unit!r})")
        try:
            number = float(value)
        except ValueError:
            raise SettingsError(f"the dial's value must be a number (got {value!r})") from None
        dial = cls(int(layer), int(unit), quantity, number)
        dial.check()
        return dial

    def check(self, num_layers: int | None = None, hidden_size: int | None = None) -> None:
        """Refuse a dial this model (of `num_layers` layers of `hidden_size` units, when given) has no unit for."""
        if self.quantity not in DIAL_QUANTITIES:
            raise SettingsError(f"the dial's quantity must be h (hidden state) or c (cell) (got {self.quantity!r})")
        if not _is_int(self.layer) or self.layer < 1 or (num_layers is not None and self.layer > num_layers):
            raise SettingsError(f"the dial's layer must be from 1 to {num_layers or 'the number of layers'} "
                                f"(got {self.layer!r})")
        if not _is_int(self.unit) or self.unit < 0 or (hidden_size is not None and self.unit >= hidden_size):
            top = hidden_size - 1 if hidden_size is not None else "the hidden size - 1"
            raise SettingsError(f"the dial's unit must be from 0 to {top} (got {self.unit!r})")
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) or not math.isfinite(self.value):
            raise SettingsError(f"the dial's value must be a finite number (got {self.value!r})")

    def hold(self, state: tuple[torch.Tensor, torch.Tensor], rows: slice = slice(None)
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """`state` ([L, B, H] each) with this unit set to the value in `rows` (every row by default: a batch of
        several requests holds only the dialled one's rows); `state` itself is left as it was."""
        parts = list(state)
        which = DIAL_QUANTITIES.index(self.quantity)
        parts[which] = parts[which].clone()
        parts[which][self.layer - 1, rows, self.unit] = self.value
        return parts[0], parts[1]

    def __str__(self) -> str:
        return f"{self.layer}:{self.unit}:{self.quantity}={self.value:g}"


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
    dial: Dial | None = None  # hold one unit of the state at a value (checked against the model when sampling)

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
        if self.dial is not None:
            self.dial.check()


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


class Decoding:
    """One request's samples as they grow: each step it picks every live row's token from the logits,
    records it in that row's sample, and says which rows go on. Rows are named by their sample's index, so
    the batch the model advances can shrink, or be shared with other requests' rows, as long as each
    `Decoding` is handed the logits of its own rows."""

    def __init__(self, sampling: Sampling, tokenizer: Tokenizer, context: list[int]):
        self.sampling, self.tokenizer, self.context = sampling, tokenizer, context  # context: the ids before
        self.samples = [Sample(float(t)) for t in sampling.temperatures]
        self.uniforms = _Uniforms(sampling.seed, sampling.temperatures)
        unk_id = tokenizer.unk_id
        banned = unk_id if sampling.avoid_unk and unk_id is not None else None
        # what `choose_next` needs beyond each row's temperature and draw: rows of requests that share it can be
        # chosen in one call (lmdemo.batching)
        self.rule = ChoiceRule(sampling.top_k, sampling.top_p, banned)
        self.end_id = tokenizer.end_id if sampling.stop_at_eos else None

    def choose(self, logits: torch.Tensor, rows: list[int], index: int) -> torch.Tensor:
        """Step `index`: the next token [B] of each row from its logits [B, V], recorded in its sample."""
        temperatures, uniforms = self.draws(rows, index)
        ids, probabilities = self.rule.choose(logits, temperatures, uniforms)
        self.record(rows, ids.tolist(), probabilities.tolist(), index)
        return ids

    def draws(self, rows: list[int], index: int) -> tuple[list[float], list[float]]:
        """Step `index`'s temperature and uniform draw of each row: all of a row's own randomness."""
        uniforms = self.uniforms.at(index)
        return [self.samples[row].temperature for row in rows], [uniforms[row] for row in rows]

    def record(self, rows: list[int], tokens: list[int], probabilities: list[float], index: int) -> None:
        """Step `index`'s chosen token of each row, with the probability the model gave it, in its sample."""
        last = index + 1 == self.sampling.max_new_tokens
        for row, token, probability in zip(rows, tokens, probabilities):
            self._record(self.samples[row], token, probability, last)

    def unfinished(self, rows: list[int]) -> list[int]:
        """The positions in `rows` of the samples that go on."""
        return [position for position, row in enumerate(rows) if not self.samples[row].finished]

    def _record(self, sample: Sample, token: int, probability: float, last: bool) -> None:
        if self.end_id is not None and token == self.end_id:
            sample.stopped_by = "eos"
            self._repiece(sample, whole=True)
            return
        sample.ids.append(token)
        sample.tokens.append(self.tokenizer.tokens([token])[0])
        sample.probabilities.append(probability)
        self._repiece(sample, whole=last)
        if self.sampling.stop and self.sampling.stop in sample.text:
            sample.stopped_by = "stop"
            self._repiece(sample, whole=True)

    def _repiece(self, sample: Sample, whole: bool) -> None:
        """Bring `sample.pieces` up to date after a new token: the last `REPIECE` pieces while it streams
        (read with the token before them and `PIECE_CONTEXT` ids before that), all of them when `whole`."""
        ids, context = sample.ids, self.context
        if whole or len(ids) <= REPIECE + 1:
            sample.pieces = self.tokenizer.pieces(ids, context=context)
            return
        begin = len(ids) - REPIECE - 1  # its piece is read again only as context for the next one
        before = [*context[-PIECE_CONTEXT:], *ids[max(0, begin - PIECE_CONTEXT):begin]][-PIECE_CONTEXT:]
        sample.pieces[begin + 1:] = self.tokenizer.pieces(ids[begin:], context=before)[1:]


@dataclass(frozen=True)
class ChoiceRule:
    """How tokens are chosen, apart from each row's temperature and draw (top-k, top-p, a banned id)."""

    top_k: int = 0
    top_p: float = 1.0
    banned: int | None = None

    def choose(self, logits: torch.Tensor, temperatures: Sequence[float], uniforms: Sequence[float]
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's next token [B] and the probability the model (temperature 1) gave it [B]."""
        banned = None if self.banned is None else torch.tensor([self.banned])
        ids = choose_next(logits, torch.tensor(temperatures), torch.tensor(uniforms), self.top_k, self.top_p, banned)
        return ids, logits.float().log_softmax(-1).gather(1, ids.unsqueeze(1)).squeeze(1).exp()


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
        self.chunks: list[list[list[float]]] = []

    def at(self, index: int) -> list[float]:
        """The uniforms of step `index`, one per row (float32 values, exact as Python floats)."""
        chunk, offset = divmod(index, UNIFORM_CHUNK)
        while len(self.chunks) <= chunk:
            self.chunks.append(torch.stack([torch.rand(UNIFORM_CHUNK, generator=g) for g in self.generators],
                                           1).tolist())
        return self.chunks[chunk][offset]


def _mix(seed: int, stream: int) -> int:
    """SplitMix64 of (seed, stream): well-spread 64-bit seeds for neighbouring inputs."""
    z = (seed + (stream + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)
