"""One rank of the 2-process gloo check of CMMD's gathering (started by test_cmmd.py).

Usage: CMMD_CLIP_DIR=DIR python dist_cmmd_worker.py RANK WORLD_SIZE INIT_FILE

Round 1: rank 0 measures images 0-2 (two batches), rank 1 images 3-4; round 2: rank 0 all five, rank 1 none.
Every rank must report the CMMD of the union: what one process computes from all five images' embeddings.
Exits non-zero otherwise.
"""
from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from latentae.evaluation.cmmd import CMMDMetric, mmd


def main(rank: int, world_size: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=60))
    gen = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (5, 3, 24, 32), generator=gen, dtype=torch.uint8)
    fake = (real.float() * 0.8 + 20).round().to(torch.uint8)
    metric = CMMDMetric(os.environ["CMMD_CLIP_DIR"])
    union = mmd(metric.features(real), metric.features(fake))
    shares = {0: [slice(0, 2), slice(2, 3)], 1: [slice(3, 5)]}
    for round_, share in enumerate([shares[rank], [slice(0, 5)] if rank == 0 else []]):
        for part in share:
            metric.update(real[part], fake[part])
        value = metric.compute()
        assert abs(value - union) <= 1e-4 * union, (round_, value, union)
    dist.destroy_process_group()
    print(f"rank {rank} ok")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
