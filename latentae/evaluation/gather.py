"""The collectives of an evaluation, beside latentae.distributed's. Every rank calls each of them, in the same
order, whatever it read (a rank with no images passes empty tensors). Single-process they return their input
unchanged, so world size 1 and N run the same code.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from latentae.distributed import all_reduce_sum, is_distributed, world_size


def gather_cat(t: Tensor) -> Tensor:
    """Every rank's `t` concatenated along dim 0 in rank order; the ranks' lengths may differ (even be 0)."""
    if not is_distributed():
        return t
    n = torch.tensor([t.shape[0]], dtype=torch.long, device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    lengths = [int(s) for s in sizes]
    padded = t.new_zeros((max(lengths), *t.shape[1:]))  # all_gather needs equal shapes
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in lengths]
    dist.all_gather(parts, padded)
    return torch.cat([part[:length] for part, length in zip(parts, lengths)])


def gather_objects(items: list) -> list:
    """Every rank's list of picklable items, concatenated in rank order (the same order as gather_cat)."""
    if not is_distributed():
        return list(items)
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, list(items))
    return [item for part in parts for item in part]


def any_rank(flags: list[bool], device: torch.device) -> list[bool]:
    """Element-wise OR of a list of flags over ranks (so every rank takes the same branch afterwards)."""
    t = all_reduce_sum(torch.tensor([int(f) for f in flags], dtype=torch.long, device=device))
    return [bool(v) for v in t.tolist()]
