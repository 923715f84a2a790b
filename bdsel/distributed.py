"""torchrun support: the process group, and the few collectives the training loop needs.

Under ``torchrun --nproc_per_node=K ... bdsel train ...`` every rank runs the same loop on its
own slice of each epoch's permutation, draws its own candidate batches and selects locally;
DistributedDataParallel all-reduces the gradients, the Laplace posterior all-reduces its batch
statistics, and rank 0 evaluates and writes the run directory. Outside torchrun (no
``WORLD_SIZE`` in the environment) everything here is a no-op for a world of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(device_name: str) -> World:
    """Join the process group torchrun describes in the environment (nccl on CUDA, gloo on
    CPU); a single process when there is none."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return World(rank=rank, size=size, local_rank=local_rank)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place; the identity for one process."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_min(tensor: torch.Tensor) -> torch.Tensor:
    """Minimum over ranks, in place; the identity for one process."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a picklable object, e.g. an error message or None)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    """Leave the process group at the end of a command (torchrun warns about, and NCCL may
    leak, a group never destroyed); a no-op for a single process. The ranks meet first: a
    rank that tears its connections down while a peer's last collective still sends on them can
    abort (seen once under gloo: "terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` (same shape on all), concatenated along dim 0 in rank order;
    the tensor itself for one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)
