"""What the LSTM holds at each token, and ways to find the units worth looking at.

For every token of a text and every layer this gives the hidden state h, the cell state c and the
four gate activations. They come from `Generator.layer_steps`, the very cell the sampler runs, so
the page shows what produced the text rather than a second model that might drift from it. A long
text is first read by the model's own `nn.LSTM` up to the shown window (only its final state is
needed there); the window is then stepped one token at a time to keep every intermediate value.

Finding units follows LSTMVis (Strobelt et al., 2018): rank them by how active or variable they are,
by how much they jump at one token, or by how well they pick out a span of text the user marks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from lmdemo.generation import CellStep, Generator

# CellStep's fields, in its order, with what the page calls them
QUANTITIES = dict(zip(CellStep._fields, ("hidden state h", "cell state c", "input gate i", "forget gate f",
                                         "cell candidate g", "output gate o")))
SPREAD_FLOOR = 1e-3  # a unit that moves less than this over the text counts as constant in `match_span`


@dataclass(frozen=True)
class Internals:
    """Every value of the cell over a window of a text: `values[q]` is [layers, tokens, units].

    `previous[q]` [layers, units] is the step before the window (the token before it, or the start
    of a text), so a change is defined at the window's first token too.
    """

    ids: list[int]
    tokens: list[str]
    start: int  # position in the whole text of the first token shown (tokens before it were cut)
    total: int  # tokens in the whole text
    values: dict[str, torch.Tensor]
    previous: dict[str, torch.Tensor]

    @property
    def num_layers(self) -> int:
        return self.values["h"].size(0)

    @property
    def hidden_size(self) -> int:
        return self.values["h"].size(2)

    def matrix(self, quantity: str, layer: int) -> torch.Tensor:
        """One quantity of one layer as [tokens, units]."""
        return self.values[quantity][layer]

    def change(self, quantity: str, layer: int, position: int) -> torch.Tensor:
        """Each unit's change [units] at window index `position`, from the token before it."""
        values = self.values[quantity][layer]
        before = values[position - 1] if position > 0 else self.previous[quantity][layer]
        return values[position] - before


@torch.no_grad()
def read_internals(generator: Generator, ids: Sequence[int], max_tokens: int) -> Internals:
    """The cell's values at each of the last `max_tokens` of `ids`, read from the start of a text."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive (got {max_tokens})")
    ids = list(ids)
    start = max(0, len(ids) - max_tokens)
    config = generator.config
    if start == 0:
        zeros = torch.zeros(config.num_layers, 1, config.hidden_size)
        state, previous_id = (zeros, zeros.clone()), generator.start_id
    else:
        _, state = generator.read(ids[:start - 1])
        previous_id = ids[start - 1]
    steps = []
    for token in [previous_id, *ids[start:]]:
        layers = generator.layer_steps(torch.tensor([token]), state)
        state = (torch.stack([s.h for s in layers]), torch.stack([s.c for s in layers]))
        steps.append(layers)
    # steps[t][layer][field] is [1, H]; stack into field -> [layers, 1 + tokens, H]
    stacked = {name: torch.stack([torch.cat([layers[layer][field] for layers in steps])
                                  for layer in range(config.num_layers)])
               for field, name in enumerate(CellStep._fields)}
    window = ids[start:]
    return Internals(ids=window, tokens=generator.tokenizer.tokens(window), start=start, total=len(ids),
                     values={name: v[:, 1:] for name, v in stacked.items()},
                     previous={name: v[:, 0] for name, v in stacked.items()})


class UnitScore(NamedTuple):
    unit: int
    score: float


class SpanMatch(NamedTuple):
    unit: int
    score: float  # (inside - outside) / (spread + SPREAD_FLOOR): see `match_span`
    inside: float  # mean value on the marked tokens
    outside: float  # mean value on the others


def most_active(values: torch.Tensor) -> torch.Tensor:
    """Mean |value| per unit of [tokens, units]: units that are far from zero most of the time."""
    return values.abs().mean(0)


def most_variable(values: torch.Tensor) -> torch.Tensor:
    """Standard deviation per unit over the tokens: units that react to the text rather than sit still."""
    return values.std(0, correction=0)


def top_units(scores: torch.Tensor, count: int, by_magnitude: bool = False) -> list[UnitScore]:
    """The `count` best units by score (by |score| when `by_magnitude`, for signed changes), best first."""
    key = scores.abs() if by_magnitude else scores
    order = key.argsort(descending=True, stable=True)[:count]
    return [UnitScore(int(unit), float(scores[unit])) for unit in order]


def match_span(values: torch.Tensor, inside: Sequence[int], count: int) -> list[SpanMatch]:
    """Units that are high on the marked tokens and low elsewhere, best first.

    The score is a standardised difference of means: (mean inside - mean outside) divided by the
    unit's standard deviation over the whole window (plus `SPREAD_FLOOR`). Dividing by the spread puts
    gates (0..1) and cell states (unbounded) on one scale, so a unit ranks by how cleanly it
    separates the span, not by its size; the floor keeps a unit that barely moves from ranking by
    rounding noise. For a perfect on/off unit the score is 1/sqrt(p(1-p)), p the marked share of
    the window (e.g. 2.0 for half, 4.4 for 5 %); 0 means no preference; negative means low inside.
    """
    tokens = values.size(0)
    if any(not 0 <= position < tokens for position in inside):
        raise ValueError(f"marked positions must be from 0 to {tokens - 1}")
    mask = torch.zeros(tokens, dtype=torch.bool)
    mask[list(inside)] = True
    if mask.all() or not mask.any():
        raise ValueError("mark at least one token and leave at least one unmarked")
    mean_inside, mean_outside = values[mask].mean(0), values[~mask].mean(0)
    scores = (mean_inside - mean_outside) / (values.std(0, correction=0) + SPREAD_FLOOR)
    return [SpanMatch(unit, score, float(mean_inside[unit]), float(mean_outside[unit]))
            for unit, score in top_units(scores, count)]
