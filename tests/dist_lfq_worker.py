"""One rank of the 2-process gloo check of LFQ's codebook entropy (started by test_lfq.py).

Usage: python dist_lfq_worker.py RANK WORLD_SIZE INIT_FILE

Each rank quantizes its own batch in training mode (different sizes; in a second round rank 1 has no rows at
all). The codebook entropy every rank reports must be the single-process value on the union of the batches,
and each rank's input gradient world_size x the union gradient of its rows (DDP then averages over ranks).
Rank 1 also runs eval forwards rank 0 does not: a collective there would hang. Exits non-zero otherwise.
"""
from __future__ import annotations

import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from latentae.quantizers.base import flatten_channels_last
from latentae.quantizers.lfq import LFQ, lfq_entropies

BITS, TEMPERATURE, WEIGHT = 5, 0.5, 0.3


def batches(round_: int) -> list[torch.Tensor]:
    """Every rank's batch, the same on every rank (so each can compute the union reference)."""
    g = torch.Generator().manual_seed(round_)
    second = (1, BITS, 2, 4) if round_ == 0 else (0, BITS, 2, 2)
    return [torch.randn(2, BITS, 3, 3, generator=g), torch.randn(second, generator=g) + 0.5]


def main(rank: int, world_size: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=30))
    lfq = LFQ(BITS, codebook_size=2**BITS, temperature=TEMPERATURE, entropy_weight=WEIGHT, diversity_gamma=1.0)
    for round_ in range(2):
        data = batches(round_)
        z = data[rank].clone().requires_grad_()
        out = lfq.train()(z)
        if not torch.isfinite(out.loss):
            raise AssertionError(f"rank {rank}, round {round_}: non-finite losses {out.losses}")
        out.losses["entropy_codebook"].backward()
        if rank == 1:
            lfq.eval()(z.detach())  # must not synchronize: rank 0 runs no eval forward

        rows = [flatten_channels_last(d).requires_grad_() for d in data]
        _, union = lfq_entropies(torch.cat(rows), TEMPERATURE)
        (-WEIGHT * union).backward()
        got = out.stats["codebook_entropy"]
        # fp32 sums over the rows in another order than the union's: a few ulps
        if not torch.allclose(got, union.detach(), rtol=1e-5):
            raise AssertionError(f"rank {rank}, round {round_}: entropy {got.item()} != union {union.item()}")
        if z.numel():
            expected = world_size * rows[rank].grad
            if not torch.allclose(flatten_channels_last(z.grad), expected, rtol=1e-4, atol=1e-7):
                raise AssertionError(f"rank {rank}, round {round_}: gradient is not world_size x the union's")
    dist.destroy_process_group()
    print(f"rank {rank} ok")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
