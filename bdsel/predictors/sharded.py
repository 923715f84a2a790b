"""``cache-zeroshot`` under torchrun: every rank predicts a share of each batch, rank 0 writes.

Rank 0 runs the ordinary, resumable ``build_cache`` with a :class:`ShardedPredictor`: each
call broadcasts the requested rows, every rank predicts rows[rank::world], and the pieces are
gathered back to rank 0 in order. The other ranks run :func:`serve` until rank 0 says stop.
One HDF5 file, written by one process: no MPI build of HDF5 is needed, and resuming works as
in one process (rank 0 reads ``done`` and asks only for the missing rows).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from bdsel.data import Dataset
from bdsel.distributed import World

_STOP = -1
_SPLITS = ("train", "test")


def _comm_device(predictor_device: torch.device) -> torch.device:
    # nccl moves CUDA tensors only; gloo moves CPU tensors.
    return predictor_device if dist.get_backend() == "nccl" else torch.device("cpu")


def _shard(predictor: Any, split: str, rows: torch.Tensor, world: World) -> torch.Tensor:
    mine = rows[world.rank :: world.size]
    if len(mine) == 0:
        return torch.zeros(0, 0)
    return predictor.logprobs(split, mine).float()


def _gather(piece: torch.Tensor, n_rows: int, n_classes: int, world: World, device) -> torch.Tensor:
    """All ranks' pieces (rank r holds rows r, r+W, ...), interleaved back into row order."""
    per_rank = -(-n_rows // world.size)
    padded = torch.zeros(per_rank, n_classes, device=device)
    if piece.numel():
        padded[: len(piece)] = piece.to(device)
    pieces = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(pieces, padded)
    out = torch.stack(pieces, dim=1).reshape(per_rank * world.size, n_classes)
    return out[:n_rows].cpu()


class ShardedPredictor:
    """Rank 0's view: a predictor whose every call is spread over all ranks."""

    def __init__(self, predictor: Any, dataset: Dataset, world: World, device: torch.device):
        self.predictor, self.dataset, self.world = predictor, dataset, world
        self.device = _comm_device(device)
        self.n_classes = dataset.n_classes

    def spec(self) -> dict[str, Any]:
        return self.predictor.spec()

    def logprobs(self, split: str, rows: torch.Tensor) -> torch.Tensor:
        header = torch.tensor(
            [_SPLITS.index(split), len(rows)], dtype=torch.int64, device=self.device
        )
        dist.broadcast(header, src=0)
        dist.broadcast(rows.to(self.device, torch.int64), src=0)
        piece = _shard(self.predictor, split, rows, self.world)
        return _gather(piece, len(rows), self.n_classes, self.world, self.device)

    def stop(self) -> None:
        dist.broadcast(torch.tensor([_STOP, 0], dtype=torch.int64, device=self.device), src=0)


def serve(predictor: Any, dataset: Dataset, world: World, device: torch.device) -> None:
    """The other ranks: predict the share of each batch rank 0 asks for, until it stops."""
    comm = _comm_device(device)
    while True:
        header = torch.empty(2, dtype=torch.int64, device=comm)
        dist.broadcast(header, src=0)
        split, n_rows = (int(v) for v in header.tolist())
        if split == _STOP:
            return
        rows = torch.empty(n_rows, dtype=torch.int64, device=comm)
        dist.broadcast(rows, src=0)
        piece = _shard(predictor, _SPLITS[split], rows.cpu(), world)
        _gather(piece, n_rows, dataset.n_classes, world, comm)
