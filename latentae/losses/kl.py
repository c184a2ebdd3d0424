"""KL term of the KL autoencoder: weight schedules and free bits (the per-channel KL and the collapse diagnostic
are the posterior's own: latentae/models/posterior.py).

Per-channel KL is measured in nats per latent element: KL_c = mean over batch and H, W of
KL(q(z_c|x) || N(0, 1)). Free bits (Kingma et al. 2016) floor each channel's batch-averaged KL at `free_bits`:
the term uses max(KL_c, free_bits), so a channel under the floor gets no KL gradient. With the floor at 0 the
term is exactly the plain KL in the configured reduction ('sum': summed over C, H, W and averaged over the
batch, as LDM; 'mean': averaged over every element).
"""
from __future__ import annotations

from torch import Tensor

from latentae.losses.config import KLConfig


def kl_weight(cfg: KLConfig, step: int) -> float:
    """beta at `step`: constant (beta-VAE); linear 0 -> weight over anneal_steps from anneal_start; cyclical
    (Fu et al. 2019): cycles of anneal_steps from anneal_start, each ramping 0 -> weight over its first
    cycle_ratio fraction, then holding weight."""
    if cfg.schedule == "constant":
        return cfg.weight
    t = step - cfg.anneal_start
    if t < 0:
        return 0.0
    if cfg.schedule == "linear":
        return cfg.weight * min(1.0, t / cfg.anneal_steps)
    if cfg.schedule == "cyclical":
        phase = (t % cfg.anneal_steps) / cfg.anneal_steps
        return cfg.weight * min(1.0, phase / cfg.cycle_ratio)
    raise ValueError(f"unknown KL schedule {cfg.schedule!r}")


def kl_term(per_channel: Tensor, *, spatial_size: int, free_bits: float, reduction: str) -> Tensor:
    """The KL loss from per-channel KL [C] (nats/element) of a latent with `spatial_size` = H*W elements per
    channel, each channel floored at `free_bits`."""
    floored = per_channel.clamp_min(free_bits)  # no gradient below the floor
    if reduction == "sum":
        return floored.sum() * spatial_size
    if reduction == "mean":
        return floored.mean()
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")

