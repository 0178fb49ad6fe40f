"""Several processes on one job through torch.distributed, as started by ``torchrun``.

Without ``WORLD_SIZE`` in the environment everything runs as a single worker and no process group
is made, so library code can always go through :class:`Workers`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from traitlens.errors import TraitlensError


@dataclass(frozen=True)
class Workers:
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def device(self, requested: str) -> torch.device:
        """``auto`` picks this worker's GPU (``LOCAL_RANK``) when there is one, else the CPU."""
        if requested != "auto":
            try:
                device = torch.device(requested)
            except RuntimeError as error:
                raise TraitlensError(f"unknown device {requested!r}; use cpu, cuda, cuda:N or auto") from error
            if device.type == "cuda" and not torch.cuda.is_available():
                raise TraitlensError(f"device {requested} was asked for, but torch sees no CUDA GPU here; use --device cpu or auto")
            return device
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device("cpu")


@contextmanager
def workers_from_env() -> Iterator[Workers]:
    """Join the process group torchrun describes (gloo on CPU, NCCL on GPUs) for the block."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    created = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        created = True
    try:
        if dist.is_initialized():
            yield Workers(rank=dist.get_rank(), world_size=dist.get_world_size())
        else:
            yield Workers(rank=0, world_size=1)
    finally:
        if created:
            dist.destroy_process_group()
