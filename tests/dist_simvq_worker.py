"""One rank of the 2-process gloo check of SimVQ's usage statistics (started by test_simvq.py).

Usage: python dist_simvq_worker.py RANK WORLD_SIZE INIT_FILE

Each rank quantizes its own batch in training mode (different sizes; in a second round rank 1 has no rows at
all). Usage, perplexity and entropy on every rank must be the single-process values on the union of the batches
(usage: over both rounds, within the usage window), every rank's tokens those of the union, and the losses
finite. Rank 1 also runs eval forwards rank 0 does not: a collective there would hang. Exits non-zero otherwise.
"""
from __future__ import annotations

import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from dist_lfq_worker import BITS as DIM, batches  # every rank's batches: different sizes, then one empty
from latentae.quantizers.base import code_distribution_stats, flatten_channels_last, unflatten_channels_last
from latentae.quantizers.simvq import SimVQ

CODES = 16


def main(rank: int, world_size: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=30))
    torch.manual_seed(0)  # the same C and W on every rank
    q = SimVQ(DIM, codebook_size=CODES)
    used = torch.zeros(CODES, dtype=torch.bool)
    for round_ in range(2):
        data = batches(round_)
        z = data[rank].clone().requires_grad_()
        out = q.train()(z)
        if not all(torch.isfinite(v) for v in out.losses.values()):
            raise AssertionError(f"rank {rank}, round {round_}: non-finite losses {out.losses}")
        out.loss.backward()
        if rank == 1:
            q.eval()(z.detach())  # must not synchronize: rank 0 runs no eval forward

        rows = [flatten_channels_last(d) for d in data]
        union = torch.cat(rows)
        union_indices = q.eval()(unflatten_channels_last(union, (1, DIM, union.shape[0], 1))).indices.reshape(-1)
        offset = sum(r.shape[0] for r in rows[:rank])
        mine = union_indices[offset : offset + rows[rank].shape[0]]
        if not torch.equal(out.indices.reshape(-1), mine):
            raise AssertionError(f"rank {rank}, round {round_}: tokens differ from the union's")
        counts = torch.bincount(union_indices, minlength=CODES)
        used |= counts > 0
        expected = {**code_distribution_stats(counts), "usage": used.float().mean()}
        for name, value in expected.items():
            # the same integer counts through the same fp32 ops: equal up to the last ulp
            if not torch.allclose(out.stats[name], value, rtol=1e-6, atol=0):
                raise AssertionError(f"rank {rank}, round {round_}: {name} {out.stats[name].item()} != union "
                                     f"{value.item()}")
    dist.destroy_process_group()
    print(f"rank {rank} ok")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
