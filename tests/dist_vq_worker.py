"""One rank of the 2-process gloo check of VQ synchronization (started by test_vector_quantizer.py).

Usage: python dist_vq_worker.py RANK WORLD_SIZE INIT_FILE

Ranks get different data (different batch sizes; rank 1's data sits in one spot, so locally most codes are dead
there while rank 0 spreads over the codebook) and train EMA / dead-code / k-means quantizers for several steps,
some of two micro-batches (gradient accumulation: codebook updates and their collectives on the last only).
Rank 1 also runs eval forwards the other rank does not: a collective there would hang or mismatch. After every
step, every parameter and buffer must be identical on both ranks. Exits non-zero (with a message) otherwise.
"""
from __future__ import annotations

import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from latentae.quantizers.residual import ResidualVQ
from latentae.quantizers.vector import VectorQuantizer


def _same_on_all_ranks(model: torch.nn.Module) -> list[str]:
    """Names of the parameters and buffers whose values differ between ranks."""
    state = model.state_dict()
    flat = torch.cat([t.detach().double().reshape(-1) for t in state.values()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    differing, offset = [], 0
    for name, t in state.items():
        n = t.numel()
        if any(not torch.equal(g[offset:offset + n], gathered[0][offset:offset + n]) for g in gathered[1:]):
            differing.append(name)
        offset += n
    return differing


def main(rank: int, world_size: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=30))
    torch.manual_seed(0)  # identical initial models on every rank
    models = {
        "ema": VectorQuantizer(4, codebook_size=16, ema_decay=0.9, dead_code_threshold=1.0, kmeans_init=True,
                               usage_window=5),
        "grad_l2": VectorQuantizer(4, codebook_size=16, codebook_dim=3, l2_normalize=True,
                                   dead_code_threshold=1.0, kmeans_init=True, usage_window=5),
        "residual": ResidualVQ(4, num_stages=2, codebook_size=8, ema_decay=0.9, dead_code_threshold=0.5,
                               kmeans_init=True),
        "residual_shared": ResidualVQ(4, num_stages=2, codebook_size=8, shared_codebook=True, ema_decay=0.9,
                                      dead_code_threshold=0.5, kmeans_init=True),
    }
    torch.manual_seed(100 + rank)  # different data and different local random draws on each rank
    restarts = 0
    micro_batches = [(0, True), (1, False), (1, True), (2, True), (3, False), (3, True), (4, True)]
    for step, last_micro_batch in micro_batches:
        for name, model in models.items():
            model.set_step(step, last_micro_batch=last_micro_batch)
            if rank == 0:
                z = 3 * torch.randn(2, 4, 4, 4)
            else:
                z = 5 + 0.01 * torch.randn(3, 4, 4, 4)
            before = model.state_dict()["embedding.weight"].clone() if name == "grad_l2" else None
            model.train()(z)
            if rank == 1:
                model.eval()(z)  # must not synchronize: rank 0 runs no eval forward
            differing = _same_on_all_ranks(model)
            if differing:
                raise AssertionError(f"rank {rank}, step {step}, {name}: differs across ranks: {differing}")
            if before is not None and step > 0:  # only restarts change this codebook after k-means (no optimizer)
                restarts += int((model.embedding.weight != before).any(dim=1).sum())
            if not all(bool(vq.initialized) for vq in model.modules() if isinstance(vq, VectorQuantizer)):
                raise AssertionError(f"rank {rank}: k-means init did not run for {name}")
    if restarts == 0:
        raise AssertionError(f"rank {rank}: no dead code was restarted, the check exercised nothing")
    dist.destroy_process_group()
    print(f"rank {rank} ok, {restarts} restarts")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
