"""Continuous-stream batching for truncated back-propagation through time.

The token stream is cut into B equal streams laid side by side ([B, N]); training walks them in
windows of T steps, carrying the LSTM state from one window to the next, so every token is
predicted with all the context before it in its stream. Under data-parallel training each process
takes its own rows of the same [B, N] grid, so N processes see exactly what one process would.
"""

from __future__ import annotations

import torch


class TextTooShortError(ValueError):
    """A split has too few tokens for its streams; `tokens` and `needed` let a caller say so in its own words."""

    def __init__(self, message: str, tokens: int, needed: int):
        super().__init__(message)
        self.tokens, self.needed = tokens, needed


def check_stream_length(tokens: int, streams: int, offset: int = 0) -> None:
    """The one rule for "long enough": after skipping `offset` tokens, each of `streams` streams needs 2 tokens
    (one to read, one to predict). The trainer applies it to each split; the web demo to a text before it queues."""
    needed = 2 * streams + offset
    if tokens < needed:
        skipped = f" after skipping {offset}" if offset else ""
        raise TextTooShortError(f"{tokens - offset} tokens{skipped} are too few for batch size {streams}: each stream "
                                f"needs at least 2 tokens", tokens, needed)


class StreamBatches:
    """Windows `(inputs, targets)` of shape [B/world, <=T] over one split's id stream."""

    def __init__(self, ids: torch.Tensor, batch_size: int, bptt: int, rank: int = 0, world: int = 1,
                 offset: int = 0):
        """`offset` tokens are skipped first: a new offset per epoch moves every window boundary."""
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} must be divisible by the {world} processes")
        check_stream_length(ids.numel(), batch_size, offset)
        ids = ids[offset:]
        length = ids.numel() // batch_size
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
