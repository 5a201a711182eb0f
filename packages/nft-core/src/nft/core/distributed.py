"""Running under ``torchrun``: which rank am I, how is data split, how are results combined.

Every loop in nft is written for one process and becomes data-parallel through the few helpers
here, so a single-process run needs no setup at all:

* :func:`init_from_env` starts the process group when ``torchrun`` set ``WORLD_SIZE`` > 1
  (``nccl`` on CUDA, ``gloo`` on CPU) and pins each rank to its own GPU;
* :func:`shard` gives each rank a disjoint slice of a dataset's indices;
* :func:`all_reduce_sum` / :func:`average_gradients` combine counts and gradients, and
  :func:`union_over_ranks` sets;
* :func:`is_main` guards everything that writes files (only rank 0 writes a run folder).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo", "all_reduce_sum", "average_gradients", "current", "init_from_env", "is_main",
    "rank_device", "shard", "share_from_first_rank", "union_over_ranks",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def current() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def init_from_env(backend: str | None = None) -> DistInfo:
    """Join the process group ``torchrun`` describes in the environment (no-op otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return current()
    if not dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return current()


def is_main() -> bool:
    return current().rank == 0


def rank_device(device: torch.device) -> torch.device:
    """On CUDA under torchrun, each rank uses its own GPU."""
    info = current()
    if device.type == "cuda" and info.distributed and device.index is None:
        return torch.device("cuda", info.local_rank)
    return device


def shard(length: int) -> list[int]:
    """This rank's indices of ``range(length)``: disjoint across ranks, together all of them."""
    info = current()
    return list(range(info.rank, length, info.world_size))


def all_reduce_sum(values: list[float], device: torch.device | None = None) -> list[float]:
    """Sum numbers over ranks (identity in a single process)."""
    info = current()
    if not info.distributed:
        return list(values)
    backend_device = device if device is not None and dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=backend_device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def union_over_ranks(ids: set[int], size: int, device: torch.device | None = None) -> set[int]:
    """The union over ranks of a set of integers in ``range(size)`` (itself in one process): for
    state every rank must agree on, such as the words text's adversary may not choose."""
    info = current()
    if not info.distributed:
        return set(ids)
    backend_device = device if device is not None and dist.get_backend() == "nccl" else torch.device("cpu")
    present = torch.zeros(size, dtype=torch.int32, device=backend_device)
    if ids:
        present[torch.tensor(sorted(ids), dtype=torch.long, device=backend_device)] = 1
    dist.all_reduce(present, op=dist.ReduceOp.MAX)
    return set(present.nonzero().flatten().tolist())


def average_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Mean of each parameter's gradient over ranks, in place (one flat all-reduce)."""
    info = current()
    if not info.distributed:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= info.world_size
    offset = 0
    for p, g in zip(parameters, grads):
        n = g.numel()
        p.grad = flat[offset: offset + n].view_as(p).clone()
        offset += n


def share_from_first_rank(holder) -> None:
    """Give every rank rank 0's copy of ``holder``'s state (``state_dict`` / ``load_state_dict``
    of tensors): for something each rank computed from its own data but all must share, such as
    the adversarial patches NFT searches on its first batch."""
    info = current()
    if not info.distributed:
        return
    payload = [holder.state_dict() if info.rank == 0 else None]
    dist.broadcast_object_list(payload, src=0)
    if info.rank != 0:
        holder.load_state_dict(payload[0])
