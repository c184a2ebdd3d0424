"""One rank of the 2-process gloo check of a quantizer's cross-rank statistics (started by test_ibq.py and
test_bsq.py).

Usage: DIST_QUANTIZER=ibq|bsq python dist_entropy_worker.py RANK WORLD_SIZE INIT_FILE

Each rank quantizes its own batch in training mode (rank 0: 2 images, rank 1: 1; in a second round rank 1 has
none; IBQ runs in chunks, so the ranks also run different numbers of chunks). Every rank must report the codebook
entropy, usage and perplexity of the union of the batches: what one process reports in eval mode on the union
(eval forwards use no collective). The codebook-entropy term's gradient must be, after DDP's average over
ranks, the union's: world_size x the union gradient of this rank's input rows, and the mean over ranks of the
parameters' gradients (IBQ's codebook, BSQ's projection). Rank 1 also runs an eval forward rank 0 does not: a
collective there would hang. Exits non-zero otherwise.
"""
from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from latentae.quantizers.bsq import BSQ
from latentae.quantizers.ibq import IBQ

DIM = 6
QUANTIZERS = {
    # 4 rows per chunk: rank 0's 18 rows are 5 chunks, rank 1's 9 rows 3 (and no rows 1 empty chunk)
    "ibq": lambda: IBQ(DIM, codebook_size=32, entropy_temperature=0.5, chunk_logits=4 * 32),
    "bsq": lambda: BSQ(DIM, codebook_size=16, inv_temperature=2.0),
}


def fresh(kind: str):
    """The same weights on every rank and in the reference; usage counts start empty."""
    torch.manual_seed(0)
    return QUANTIZERS[kind]()


def batches(round_: int) -> list[torch.Tensor]:
    """Every rank's batch, the same on every rank (so each can compute the union reference)."""
    g = torch.Generator().manual_seed(round_)
    return [torch.randn(2, DIM, 3, 3, generator=g), torch.randn(1 - round_, DIM, 3, 3, generator=g) + 0.5]


def check(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    # fp32 sums over the rows in another order than the union's (per rank, per chunk, then all-reduced): ulps
    if not torch.allclose(got, want, rtol=1e-5, atol=1e-7):
        raise AssertionError(f"{name}: {got} != union {want}")


def main(rank: int, world_size: int, init_file: str, kind: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=30))
    for round_ in range(2):
        data = batches(round_)
        q = fresh(kind).train()
        z = data[rank].clone().requires_grad_()
        out = q(z)
        if not torch.isfinite(out.loss):
            raise AssertionError(f"rank {rank}, round {round_}: non-finite losses {out.losses}")
        out.losses["entropy_codebook"].backward()
        if rank == 1:
            q.eval()(z.detach())  # must not synchronize: rank 0 runs no eval forward

        ref = fresh(kind).eval()
        union = torch.cat(data).requires_grad_()
        ref_out = ref(union)
        ref_out.losses["entropy_codebook"].backward()
        where = f"rank {rank}, round {round_}"
        for stat in ("codebook_entropy", "perplexity", "usage"):
            check(f"{where} {stat}", out.stats[stat], ref_out.stats[stat])
        rows = slice(0, 2) if rank == 0 else slice(2, 2 + z.shape[0])
        check(f"{where} input gradient", z.grad, world_size * union.grad[rows])
        for (name, p), r in zip(q.named_parameters(), ref.parameters()):
            grad = p.grad.clone() if p.grad is not None else torch.zeros_like(p)
            dist.all_reduce(grad)  # what DDP does, then / world_size
            want = r.grad if r.grad is not None else torch.zeros_like(r)
            check(f"{where} gradient of {name}", grad / world_size, want)
    dist.destroy_process_group()
    print(f"rank {rank} ok")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], os.environ["DIST_QUANTIZER"])
