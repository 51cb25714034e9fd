"""The collectives the training loop uses; each is a no-op without a process group
(a single process), so the same code runs with and without torchrun."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def is_distributed() -> bool:
    """True when a process group with more than one rank is running."""
    return bool(dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: T | None, rank: int) -> T:
    """Rank 0's ``obj`` on every rank (pickled; the other ranks pass None)."""
    if not is_distributed():
        assert obj is not None, "a single process must pass the object itself"
        return obj
    box = [obj if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    result: T = box[0]  # type: ignore[assignment]  # rank 0's object, never None
    return result


def all_reduce_metrics(
    values: dict[str, float], how: Callable[[str], str], device: torch.device
) -> dict[str, float]:
    """Combine each value over the ranks as ``how(name)`` says: ``mean`` figures (already
    weighted by each rank's share) are summed, ``min``/``max`` figures keep the extreme. Every
    rank must pass the same names (a rank without a figure passes the op's neutral value)."""
    if not is_distributed():
        return values
    out: dict[str, float] = {}
    ops = {"mean": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    for kind, op in ops.items():
        keys = sorted(k for k in values if how(k) == kind)
        if not keys:
            continue
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=op)
        out.update(zip(keys, t.tolist(), strict=True))
    return out
