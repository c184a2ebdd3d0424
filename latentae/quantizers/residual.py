"""Residual vector quantization (SoundStream / RQ-VAE): each stage quantizes what the previous stages left over.

The latent is projected once (dim -> codebook_dim), `num_stages` VectorQuantizers run on successive residuals,
and the quantized latent is the sum of the stage codes, with one straight-through gradient for the whole sum.
Indices are [B, H, W, S]; the first s stages alone decode to a coarser latent (`indices_to_codes` takes a prefix).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from latentae.config import ConfigError
from latentae.quantizers.base import (
    Quantizer,
    QuantizerOutput,
    UsageTracker,
    check_input,
    flatten_channels_last,
    full_precision,
    project,
    unflatten_channels_last,
)
from latentae.quantizers.vector import VectorQuantizer


class ResidualVQ(Quantizer):
    """forward(z [B, dim, H, W]) -> QuantizerOutput with indices [B, H, W, num_stages]."""

    def __init__(
        self,
        dim: int,  # channels of the input z [B, dim, H, W]
        *,
        num_stages: int = 4,  # number of residual stages S
        codebook_size: int = 1024,  # codes per stage
        codebook_dim: int | None = None,  # code width (None: dim); otherwise Linear project_in/out, once for all
        shared_codebook: bool = False,  # one codebook for every stage instead of one per stage
        **vq_options,  # the remaining VectorQuantizer options (beta, ema_decay, dead_code_threshold, ...)
    ):
        super().__init__()
        if num_stages < 1:
            raise ConfigError(f"quantizer option 'num_stages' must be a positive integer, got {num_stages}")
        if vq_options.get("l2_normalize"):
            raise ConfigError("quantizer option 'l2_normalize' is not supported by the residual quantizer: "
                              "unit-norm stage codes cannot add up to residuals that shrink stage after stage")
        if vq_options.get("grad_estimator", "ste") != "ste":
            raise ConfigError("quantizer option 'grad_estimator' is not supported by the residual quantizer: "
                              "its one straight-through gradient covers the sum of the stage codes")
        codebook_dim = dim if codebook_dim is None else codebook_dim
        self.dim = dim
        self.codebook_dim = codebook_dim
        self.codebook_size = codebook_size
        self.num_stages = num_stages
        self.shared_codebook = shared_codebook
        self.project_in = nn.Linear(dim, codebook_dim) if codebook_dim != dim else None
        self.project_out = nn.Linear(codebook_dim, dim) if codebook_dim != dim else None
        self.quantizers = nn.ModuleList(
            VectorQuantizer(codebook_dim, codebook_size=codebook_size, **vq_options)
            for _ in range(1 if shared_codebook else num_stages)
        )
        if shared_codebook:
            # The shared quantizer's own tracker measures pooled usage; these measure each stage's.
            window = self.quantizers[0].tracker.window
            self.stage_trackers = nn.ModuleList(UsageTracker(codebook_size, window) for _ in range(num_stages))

    def stage(self, s: int) -> VectorQuantizer:
        return self.quantizers[0 if self.shared_codebook else s]

    def random_indices(self, batch: int, height: int, width: int, generator: torch.Generator) -> Tensor:
        return torch.randint(0, self.codebook_size, (batch, height, width, self.num_stages), generator=generator)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """indices [B, H, W, s] for the first s <= num_stages stages -> summed codes [B, dim, H, W]."""
        if indices.ndim != 4 or not 1 <= indices.shape[-1] <= self.num_stages:
            raise ValueError(f"indices_to_codes expects indices of shape [B, H, W, s] with 1 <= s <= "
                             f"{self.num_stages}, got {tuple(indices.shape)}")
        b, h, w, _ = indices.shape
        with full_precision(indices):
            total = torch.zeros(b * h * w, self.codebook_dim, device=indices.device)
            for s in range(indices.shape[-1]):
                total = total + self.stage(s).lookup(indices[..., s].reshape(-1))
            codes = project(self.project_out, total)
        return unflatten_channels_last(codes, (b, -1, h, w)).to(self.quantizers[0].embedding.weight.dtype)

    def forward(self, z: Tensor) -> QuantizerOutput:
        check_input(z, self.dim)
        b, _, h, w = z.shape
        with full_precision(z):
            x = project(self.project_in, flatten_channels_last(z.float()))
            residual, total = x, torch.zeros_like(x)
            losses: dict[str, Tensor] = {}
            inputs, indices = [], []
            for s in range(self.num_stages):
                xc, code, idx, stage_losses = self.stage(s).quantize_flat(residual)
                for name, value in stage_losses.items():
                    losses[name] = losses[name] + value if name in losses else value
                total = total + code.detach()
                residual = residual - code.detach()
                inputs.append(xc.detach())
                indices.append(idx)
            if self.training:
                self._update_codebooks(inputs, indices)
            stats = self._usage_stats(indices)
            # Straight-through for the whole sum: forward value is exactly the summed codes.
            quantized = project(self.project_out, total + (x - x.detach()))
        quantized = unflatten_channels_last(quantized, z.shape).to(z.dtype)
        return QuantizerOutput(quantized, torch.stack(indices, dim=1).view(b, h, w, self.num_stages), losses, stats)

    def _update_codebooks(self, inputs: list[Tensor], indices: list[Tensor]) -> None:
        if self.shared_codebook:  # one update from every stage's rows, so no stage's codes look dead to it
            self.quantizers[0].update_codebook(torch.cat(inputs), torch.cat(indices))
        else:
            for vq, x, idx in zip(self.quantizers, inputs, indices):
                vq.update_codebook(x, idx)

    def _usage_stats(self, indices: list[Tensor]) -> dict[str, Tensor]:
        if self.shared_codebook:
            stats = self.quantizers[0].tracker.update(torch.cat(indices))
            per_stage = [tracker.update(idx) for tracker, idx in zip(self.stage_trackers, indices)]
        else:
            per_stage = [vq.tracker.update(idx) for vq, idx in zip(self.quantizers, indices)]
            stats = {name: torch.stack([st[name] for st in per_stage]).mean() for name in per_stage[0]}
        stats.update({f"usage/stage{s}": st["usage"] for s, st in enumerate(per_stage)})
        return stats
