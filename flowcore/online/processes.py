"""The processes of one ``python -m flowcore train`` (``accelerate launch`` data parallel, or just one).

Every process holds the same adapters: it explores its share of each round's
examples, the pairs are gathered in example order on every process, and each
DPO step sums the gradients of all processes (``all_reduce``), so every
process takes the same step (``flowcore.online.dpo``).
"""
from __future__ import annotations

import torch

from flowcore import models


class Processes:
    """This process's rank, device and the collectives of ``accelerate launch`` (no-ops in one process)."""

    def __init__(self, device: torch.device | None = None):
        from accelerate import PartialState

        device = device or models.resolve_device("auto")
        # CPU processes started by `accelerate launch --multi_gpu` (torchrun) join a gloo group only when told
        # they are CPU processes; GPU ones join NCCL. (`accelerate launch --cpu --num_processes N` starts ONE
        # process in accelerate 1.15 unless given an MPI hostfile.)
        self.state = PartialState(cpu=device.type != "cuda")
        self.rank, self.world = self.state.process_index, self.state.num_processes
        # one GPU per process (cuda:<local rank>) unless one was named
        self.device = self.state.device if device.type == "cuda" and device.index is None else device

    def gather(self, items: list) -> list:
        """Every process's list, concatenated in rank order, on every process."""
        if self.world == 1:
            return items
        from accelerate.utils import gather_object

        return gather_object(items)

    def all_reduce(self, tensor: torch.Tensor) -> None:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)

    def barrier(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()
