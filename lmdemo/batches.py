"""Continuous-stream batching for truncated back-propagation through time.

The token stream is cut into B equal streams laid side by side ([B, N]); training walks them in
windows of T steps, carrying the LSTM state from one window to the next, so every token is
predicted with all the context before it in its stream. Under data-parallel training each process
takes its own rows of the same [B, N] grid, so N processes see exactly what one process would.
"""

from __future__ import annotations

import torch


class TextTooShortError(ValueError):
    """The split has too few tokens for the requested batch size."""


class StreamBatches:
    """Windows `(inputs, targets)` of shape [B/world, <=T] over one split's id stream."""

    def __init__(self, ids: torch.Tensor, batch_size: int, bptt: int, rank: int = 0, world: int = 1,
                 offset: int = 0):
        """`offset` tokens are skipped first: a new offset per epoch moves every window boundary."""
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} must be divisible by the {world} processes")
        ids = ids[offset:]
        length = ids.numel() // batch_size
        if length < 2:
            raise TextTooShortError(f"{ids.numel()} tokens are too few for batch size {batch_size}: "
                                    f"each stream needs at least 2 tokens")
        grid = ids[: length * batch_size].view(batch_size, length)
        rows = batch_size // world
        self.streams = grid[rank * rows:(rank + 1) * rows].contiguous()
        self.bptt = bptt

    def __len__(self) -> int:
        """Windows per pass."""
        return -(-(self.streams.size(1) - 1) // self.bptt)

    @property
    def tokens_per_pass(self) -> int:
        """Predicted tokens in one pass, for this process."""
        return self.streams.size(0) * (self.streams.size(1) - 1)

    def window(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = index * self.bptt
        end = min(start + self.bptt, self.streams.size(1) - 1)
        return self.streams[:, start:end], self.streams[:, start + 1:end + 1]
