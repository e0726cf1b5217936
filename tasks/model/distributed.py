"""Data-parallel training over the processes that ``torchrun`` or ``accelerate
launch`` start: which rank this is, its share of the batches, and the few
collective calls the training loop needs. One process is the degenerate case
(every method is then a no-op), so the loop has a single code path."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")


@dataclass
class Dist:
    """This process's place among ``world`` training processes (rank 0 writes files)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    on_cuda: bool = False
    owns_group: bool = False

    @classmethod
    def from_env(cls, device: torch.device) -> Dist:
        """Read ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` (set by both launchers) and join
        the process group: NCCL when training on GPUs, gloo on CPUs."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as td

        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        on_cuda = device.type == "cuda"
        owns = not td.is_initialized()
        if on_cuda:
            torch.cuda.set_device(local_rank)
        if owns:
            td.init_process_group("nccl" if on_cuda else "gloo")
        return cls(rank, world, local_rank, on_cuda, owns)

    @property
    def main(self) -> bool:
        """The process that logs progress and writes checkpoints and the model."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: its own GPU (``LOCAL_RANK``), or the CPU."""
        return torch.device("cuda", self.local_rank) if self.on_cuda else device

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to run forward/backward through (gradients averaged over ranks)."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            model, device_ids=[self.local_rank] if self.on_cuda else None
        )

    def share(self, batches: list[T]) -> list[T]:
        """This rank's batches, dealt round-robin from the common epoch order.

        The list is padded by repeating its first batches so that every rank
        runs the same number of steps (otherwise the gradient all-reduce hangs).
        """
        if self.world == 1:
            return batches
        padded = list(batches)
        while len(padded) % self.world:
            padded.append(batches[len(padded) % len(batches)])
        return padded[self.rank :: self.world]

    def sum(self, *values: float) -> tuple[float, ...]:
        """Each value summed over all ranks."""
        if self.world == 1:
            return tuple(float(v) for v in values)
        import torch.distributed as td

        device = torch.device("cuda", self.local_rank) if self.on_cuda else torch.device("cpu")
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        td.all_reduce(t)
        return tuple(t.tolist())

    def barrier(self) -> None:
        """Wait for every rank (e.g. until rank 0 has written a checkpoint)."""
        if self.world > 1:
            import torch.distributed as td

            td.barrier()

    def close(self) -> None:
        """Leave the process group if this object created it."""
        if self.owns_group:
            import torch.distributed as td

            td.destroy_process_group()
            self.owns_group = False
