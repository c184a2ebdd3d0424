"""What every quantizer shares: the uniform return, usage tracking, and the flattening and straight-through helpers."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from latentae.distributed import all_reduce_sum


@dataclass
class QuantizerOutput:
    quantized: Tensor  # [B, D, H, W], straight-through: forward value is the code, gradient reaches the input
    indices: Tensor  # [B, H, W] int64 ([B, H, W, S] for S residual stages)
    losses: dict[str, Tensor] = field(default_factory=dict)  # already weighted; their sum is the bottleneck loss
    stats: dict[str, Tensor] = field(default_factory=dict)  # detached scalars for logging

    @property
    def loss(self) -> Tensor:
        return sum(self.losses.values(), self.quantized.new_zeros(()))


def full_precision(z: Tensor) -> torch.autocast:
    """Context that turns autocast off: distances, losses and codebook statistics are computed in fp32."""
    return torch.autocast(device_type=z.device.type, enabled=False)


def project(layer: nn.Module | None, x: Tensor) -> Tensor:
    """An optional projection (or any layers) of fp32 `x`, fp32 out; a model cast to half precision runs it in its
    own precision."""
    if layer is None:
        return x
    return layer(x.to(next(layer.parameters()).dtype)).float()


def check_input(z: Tensor, dim: int) -> None:
    if z.ndim != 4 or z.shape[1] != dim:
        raise ValueError(f"quantizer expects z of shape [B, {dim}, H, W], got {tuple(z.shape)}")


def check_indices(indices: Tensor) -> None:
    if indices.ndim != 3:
        raise ValueError(f"indices_to_codes expects indices of shape [B, H, W], got {tuple(indices.shape)}")


def straight_through(value: Tensor, source: Tensor) -> Tensor:
    """`value` in the forward pass, identity gradient to `source`.

    Written as value + (source - source.detach()) rather than source + (value - source).detach(): the added
    term is exactly zero, so the forward value is bit-identical to `value` (which indices_to_codes relies on).
    """
    return value.detach() + (source - source.detach())


def flatten_channels_last(z: Tensor) -> Tensor:
    """[B, D, H, W] -> [B*H*W, D]."""
    return z.movedim(1, -1).reshape(-1, z.shape[1])


def unflatten_channels_last(flat: Tensor, shape: torch.Size) -> Tensor:
    """[B*H*W, D] -> [B, D, H, W] for the spatial shape of `shape` ([B, *, H, W])."""
    b, _, h, w = shape
    return flat.reshape(b, h, w, flat.shape[-1]).movedim(-1, 1)  # not -1: ambiguous for b = 0


def code_distribution_stats(counts: Tensor) -> dict[str, Tensor]:
    """Perplexity and entropy (bits) of the code histogram `counts` [K]."""
    p = counts.float() / counts.sum().clamp_min(1)
    entropy = -(p * torch.log2(p.clamp_min(1e-12))).sum()
    return {"perplexity": torch.exp2(entropy), "entropy": entropy}


class UsageTracker(nn.Module):
    """Fraction of the codebook used within the last `window` training forwards.

    Keeps, per code, the forward count at which it was last chosen (a buffer, so it is checkpointed). Counts
    are all-reduced so every rank reports the global usage; the same collective runs on every rank every
    training forward, so it cannot hang.
    """

    def __init__(self, codebook_size: int, window: int = 100):
        super().__init__()
        self.codebook_size = codebook_size
        self.window = window
        self.register_buffer("last_used", torch.full((codebook_size,), -(2**62), dtype=torch.long))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, indices: Tensor) -> dict[str, Tensor]:
        counts = torch.bincount(indices.reshape(-1), minlength=self.codebook_size)
        if self.training:
            counts = all_reduce_sum(counts)
            self.calls += 1
            self.last_used[counts > 0] = self.calls
        stats = code_distribution_stats(counts)
        recent = (self.calls - self.last_used) < self.window
        stats["usage"] = recent.float().mean() if self.training else (counts > 0).float().mean()
        return stats


class Quantizer(nn.Module):
    """Base class: forward(z [B, D, H, W]) -> QuantizerOutput; indices_to_codes(indices) -> [B, D, H, W]."""

    codebook_size: int
    # Training forwards may rewrite the codebook (EMA, dead-code restart, k-means init). The trainer turns this
    # off for a quantizer it does not train, so decoder-only fine-tuning keeps the latent space bit-identical.
    codebook_updates: bool = True

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        raise NotImplementedError

    def random_indices(self, batch: int, height: int, width: int, generator: torch.Generator) -> Tensor:
        """Uniformly random valid tokens for a [height, width] latent (prior samples of `latentae inspect`)."""
        return torch.randint(0, self.codebook_size, (batch, height, width), generator=generator)

    # False while a trainer runs the micro-batches of an optimizer step before its last (see set_step).
    last_micro_batch: bool = True

    def set_step(self, step: int, *, last_micro_batch: bool = True) -> None:
        """Before each training forward, the trainer's optimizer step (for schedules: the Gumbel temperature)
        and whether this forward is the step's last micro-batch under gradient accumulation (default: every
        forward is a step). Codebook statistics (VQ's EMA and dead-code usage) are gathered over the step's
        micro-batches and applied once, after its last: grad_accum micro-batches act as one batch of their
        union, as the gradients do. Applies to this quantizer's inner quantizers too (residual stages)."""
        for module in self.modules():
            if isinstance(module, Quantizer):
                module.last_micro_batch = last_micro_batch
