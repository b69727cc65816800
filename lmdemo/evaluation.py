"""Perplexity of a model on a token stream, with the state carried across windows as in training; a split's
stream with the characters its bits per character divide by."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmdemo.batches import StreamBatches
from lmdemo.metrics import bits, perplexity
from lmdemo.model import LSTMLanguageModel
from lmdemo.parallel import Parallel


@dataclass
class Split:
    """A split's id stream and the characters of the text it covers (for bits per character)."""

    ids: torch.Tensor
    characters: int

    @property
    def tokens_per_character(self) -> float:
        return self.ids.numel() / max(self.characters, 1)


@dataclass
class Score:
    loss: float  # mean negative log-likelihood, nats per token
    tokens: int

    @property
    def ppl(self) -> float:
        return perplexity(self.loss)

    @property
    def bits(self) -> float:
        """Bits per token (bits per character for character models)."""
        return bits(self.loss)


@torch.no_grad()
def evaluate(model: LSTMLanguageModel, ids: torch.Tensor, batch_size: int = 10, bptt: int = 256,
             parallel: Parallel | None = None) -> Score:
    """Mean loss over `ids` split into `batch_size` streams; each stream starts from a zero state.

    Under data parallelism every process scores its own streams and the sums are combined.
    """
    parallel = parallel or Parallel()
    world = parallel.world
    batch_size = max(world, min(batch_size, ids.numel() // 2) // world * world)  # short texts: fewer streams
    batches = StreamBatches(ids, batch_size, bptt, parallel.rank, world)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = torch.zeros(2, dtype=torch.float64, device=device)
    state = None
    for index in range(len(batches)):
        inputs, targets = (t.to(device) for t in batches.window(index))
        loss, state = model(inputs, state, targets)
        total[0] += loss.double() * targets.numel()
        total[1] += targets.numel()
    model.train(was_training)
    total = parallel.sum(total)
    return Score(loss=(total[0] / total[1]).item(), tokens=int(total[1].item()))
