"""Finite scalar quantization (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple").

Each latent channel is squashed into a bounded interval and rounded to one of L_i integer levels; the code is
the tuple of levels, so the implicit codebook is the grid of prod(levels) points and there is nothing to learn
or collapse (no loss terms).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from latentae.config import ConfigError
from latentae.quantizers.base import (
    Quantizer,
    QuantizerOutput,
    UsageTracker,
    check_indices,
    check_input,
    flatten_channels_last,
    full_precision,
    project,
    straight_through,
    unflatten_channels_last,
)






class FSQ(Quantizer):
    """forward(z [B, dim, H, W]) -> QuantizerOutput; codes are points of the grid prod(levels), scaled to [-1, 1].

    Computes in fp32 (autocast off); `quantized` comes back in z's dtype. indices_to_codes returns fp32, equal
    to forward's `quantized` once cast to its dtype (bit for bit).
    """

    def __init__(
        self,
        dim: int,  # channels of the latent z
        *,
        levels: tuple[int, ...] = (8, 5, 5, 5),  # levels per quantized channel (each >= 2); codebook = prod
        usage_window: int = 100,  # training forwards a code counts as "used" after it was last chosen
    ):
        super().__init__()
        levels = tuple(int(level) for level in levels)
        if not levels or min(levels) < 2:
            raise ConfigError(f"option 'levels': every level count must be >= 2, got {levels}")
        self.dim = dim
        self.levels = levels
        self.codebook_size = math.prod(levels)
        # The latent is projected to one channel per level entry only when the widths differ.
        self.project_in = nn.Linear(dim, len(levels)) if dim != len(levels) else None
        self.project_out = nn.Linear(len(levels), dim) if dim != len(levels) else None
        self.usage = UsageTracker(self.codebook_size, usage_window)

        # Integer buffers only, so casting the model to half precision cannot round the constants below.
        self.register_buffer("levels_t", torch.tensor(levels, dtype=torch.long), persistent=False)
        basis = torch.cumprod(torch.tensor((1,) + levels[:-1], dtype=torch.long), 0)  # mixed radix
        self.register_buffer("basis", basis, persistent=False)

    def _half_width(self) -> Tensor:
        """Rounded values lie in [-half_width, L - 1 - half_width] (long)."""
        return self.levels_t // 2

    def _bound(self, z: Tensor) -> Tensor:
        """fp32 z [N, len(levels)] -> values whose rounding has exactly L outcomes per channel."""
        lv = self.levels_t.float()
        # tanh spans +-half_range: a margin past the outermost level centres, so tanh < 1 still reaches them,
        # but well under 1/2, so no extra level appears (for any L).
        half_range = (lv - 1) / 2 + 1e-3
        # Even L: shift the output down by 1/2 so rounding has exactly L outcomes (-L/2 .. L/2 - 1), and the
        # input by the matching amount so that z = 0 still maps to 0.
        offset = (self.levels_t % 2 == 0).float() / 2
        return torch.tanh(z + torch.atanh(offset / half_range)) * half_range - offset

    def _to_output(self, codes: Tensor, shape: torch.Size) -> Tensor:
        """[N, len(levels)] codes in [-1, 1] -> [B, dim, H, W]; shared by forward and indices_to_codes."""
        return unflatten_channels_last(project(self.project_out, codes), shape)

    def forward(self, z: Tensor) -> QuantizerOutput:
        check_input(z, self.dim)
        with full_precision(z):
            bounded = self._bound(project(self.project_in, flatten_channels_last(z.float())))
            rounded = torch.round(bounded)
            codes = straight_through(rounded, bounded) / self._half_width()
            digits = rounded.detach().long() + self._half_width()
            indices = (digits * self.basis).sum(-1)
            quantized = self._to_output(codes, z.shape).to(z.dtype)
        indices = indices.reshape(z.shape[0], z.shape[2], z.shape[3])
        return QuantizerOutput(quantized, indices, {}, self.usage.update(indices))

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        check_indices(indices)
        b, h, w = indices.shape
        with full_precision(indices):
            digits = (indices.reshape(-1, 1) // self.basis) % self.levels_t
            codes = (digits - self._half_width()).float() / self._half_width()
            return self._to_output(codes, torch.Size((b, len(self.levels), h, w)))
