"""One rank of the 2-process gloo check of the two-level quantizer (started by test_vqvae2.py).

Usage: python dist_vqvae2_worker.py RANK WORLD_SIZE INIT_FILE

Each rank quantizes its own batch in training mode (different sizes; in a second round rank 1 has no images at
all). Per-level usage, perplexity and entropy on every rank must be the single-process values on the union of
the batches, each rank's tokens those of the union, the EMA codebooks identical on every rank, and the losses
finite. Rank 1 also runs eval forwards rank 0 does not: a collective there would hang. Exits non-zero otherwise.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from datetime import timedelta
from unittest import mock

import torch
import torch.distributed as dist

from latentae.quantizers.base import code_distribution_stats
from latentae.quantizers.two_level import TwoLevelVQ, split_tokens

DIM, CODES = 4, 8


def batches(round_: int) -> list[torch.Tensor]:
    """Every rank's batch, the same on every rank (so each can compute the union reference)."""
    g = torch.Generator().manual_seed(round_)
    second = 1 if round_ == 0 else 0
    return [torch.randn(2, DIM, 4, 4, generator=g), torch.randn(second, DIM, 4, 4, generator=g) + 0.5]


@contextmanager
def single_process():
    """The reference's collectives off: it is the single process that sees the union."""
    with mock.patch("latentae.distributed.is_distributed", return_value=False), \
            mock.patch("latentae.quantizers.vector.is_distributed", return_value=False):
        yield


def main(rank: int, world_size: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=30))
    torch.manual_seed(0)  # the same weights on every rank
    q = TwoLevelVQ(DIM, codebook_size=CODES, hidden=4)
    reference = TwoLevelVQ(DIM, codebook_size=CODES, hidden=4)
    reference.load_state_dict(q.state_dict())  # trains single-process on the union
    used = {"top": torch.zeros(CODES, dtype=torch.bool), "bottom": torch.zeros(CODES, dtype=torch.bool)}
    for round_ in range(2):
        data = batches(round_)
        union = torch.cat(data)
        expected_tokens = reference.eval()(union).indices  # the codebooks before this round's update
        with single_process():
            reference.train()(union)
        out = q.train()(data[rank])
        if not all(torch.isfinite(v) for v in out.losses.values()):
            raise AssertionError(f"rank {rank}, round {round_}: non-finite losses {out.losses}")
        if rank == 1:
            q.eval()(data[rank])  # must not synchronize: rank 0 runs no eval forward
        offset = sum(len(d) for d in data[:rank])
        if not torch.equal(out.indices, expected_tokens[offset: offset + len(data[rank])]):
            raise AssertionError(f"rank {rank}, round {round_}: tokens differ from the union's")
        for level, tokens in zip(("top", "bottom"), split_tokens(expected_tokens)):
            counts = torch.bincount(tokens.reshape(-1), minlength=CODES)
            used[level] |= counts > 0
            expected = {**code_distribution_stats(counts), "usage": used[level].float().mean()}
            for name, value in expected.items():
                # the same integer counts through the same fp32 ops: equal up to the last ulp
                if not torch.allclose(out.stats[f"{name}/{level}"], value, rtol=1e-6, atol=0):
                    raise AssertionError(f"rank {rank}, round {round_}: {name}/{level} "
                                         f"{out.stats[f'{name}/{level}'].item()} != union {value.item()}")
        for name, level in (("top", q.top), ("bottom", q.bottom)):
            ref_level = getattr(reference, name)
            # EMA from all-reduced sums vs the union's sums: the same rows summed in another order
            if not torch.allclose(level.embedding.weight, ref_level.embedding.weight, rtol=1e-5, atol=1e-6):
                raise AssertionError(f"rank {rank}, round {round_}: the {name} codebook differs from the union's")
    dist.destroy_process_group()
    print(f"rank {rank} ok")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
