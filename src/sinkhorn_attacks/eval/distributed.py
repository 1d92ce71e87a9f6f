"""Sharded evaluation over ``torch.distributed`` ranks (one machine or many; gloo on CPU, NCCL on GPU).

Each rank attacks the examples ``i`` with ``i % world_size == rank`` and the per-example rows are gathered
on every rank in the original order. Per-example results do not depend on which other examples share a
batch for the library's attacks (step rules and early stopping act per example), so a sharded run gives
the rows of a single-process run. Launch with ``torchrun --nproc_per_node N`` (and ``--nnodes`` for several
machines); see docs/training.md for the multi-node variables.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from .._util import UserError

__all__ = ["shard_indices", "attack_sharded", "world_and_rank"]


def world_and_rank() -> tuple[int, int]:
    """``(world_size, rank)`` of this process: from an initialised ``torch.distributed`` group, else from
    ``WORLD_SIZE`` / ``RANK`` in the environment (``torchrun``), else ``(1, 0)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    try:
        world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    except ValueError:
        raise UserError(
            f"RANK={os.environ.get('RANK')!r} / WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} from the environment "
            "are not integers"
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"RANK={rank} / WORLD_SIZE={world} from the environment are inconsistent")
    return world, rank


def shard_indices(n: int, rank: int, world_size: int) -> torch.Tensor:
    """Indices ``rank, rank + W, rank + 2W, ...`` below ``n`` (round-robin, balanced to within one)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return torch.arange(rank, n, world_size)


def attack_sharded(
    attack: Callable[[torch.Tensor, torch.Tensor], Any], x: torch.Tensor, y: torch.Tensor
) -> list[dict[str, Any]]:
    """Run ``attack(x_shard, y_shard)`` on this rank's shard and all-gather the per-example rows.

    ``attack`` returns an :class:`~sinkhorn_attacks.attacks.AttackResult`; every returned row's ``index``
    is the example's position in ``x``. Without an initialised process group this is a plain single-process
    run. Every rank must call it with the same ``x`` and ``y``.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    idx = shard_indices(x.shape[0], rank, world)
    rows = attack(x[idx], y[idx]).to_rows() if idx.numel() else []
    for row, i in zip(rows, idx.tolist(), strict=True):
        row["index"] = i
    if world == 1:
        return rows
    parts: list[list[dict[str, Any]] | None] = [None] * world
    dist.all_gather_object(parts, rows)
    merged = [row for part in parts for row in (part or [])]
    return sorted(merged, key=lambda r: r["index"])
