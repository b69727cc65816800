"""Data-parallel plumbing: one object that is a no-op in a single process and wraps
torch.distributed (gloo on CPU, NCCL on GPU) under `torchrun --nproc_per_node=N`."""

from __future__ import annotations

import gc
import os
from datetime import timedelta

import torch
import torch.distributed as dist


class Parallel:
    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(self.world)))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def start(self, device: torch.device) -> None:
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=10))

    def stop(self) -> None:
        """Tear the group down together: gloo aborts a process whose peer leaves first, and the DDP
        wrapper's reducer (freed by the collection) must go before the group it holds."""
        if self.enabled and dist.is_initialized():
            gc.collect()
            dist.barrier()
            dist.destroy_process_group()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor

    def from_main(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's value everywhere: decisions (save, stop) must be the same on every rank."""
        if self.enabled:
            dist.broadcast(tensor, 0)
        return tensor

    def gather(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Every rank's `tensor`, concatenated along `dim` in rank order."""
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim)

    def mine(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """This rank's slice of a tensor that `gather` built."""
        return tensor.chunk(self.world, dim)[self.rank].contiguous() if self.enabled else tensor

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()
