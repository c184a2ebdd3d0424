"""Finite scalar quantization (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple").

Each latent channel is squashed into a bounded interval and rounded to one of L_i evenly spaced levels; the
code is the tuple of levels, so the implicit codebook is the grid of prod(levels) points and there is nothing
to learn or collapse (no loss terms).

Levels are symmetric about 0 for every L: tanh(z) * (L - 1) / 2 is rounded to the integers -(L-1)/2 .. (L-1)/2
for odd L and to the half-integers -(L-1)/2 .. (L-1)/2 for even L, so the decision boundaries mirror about
z = 0 and an even L has no level at 0 (L = 2: the signs, split at z = 0). (The paper's reference bound instead
shifts tanh's input so that z = 0 stays on level 0 for even L: that moves every boundary to one side, for
L = 2 to z = -3.45, where 99.98% of N(0, 1) inputs fall on one level.) Codes are the levels over (L - 1) / 2,
in [-1, 1].
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

    def _half_range(self) -> Tensor:
        """(L - 1) / 2 per channel (fp32, exact): the outermost level; levels lie in [-half_range, half_range]."""
        return (self.levels_t - 1).float() / 2

    def _levels_of(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """fp32 z [N, len(levels)] -> (bounded, level): bounded = tanh(z) * (L - 1) / 2 and the nearest of the L
        levels to it (integers for odd L, half-integers for even L, exact in fp32)."""
        bounded = torch.tanh(z) * self._half_range()
        offset = (self.levels_t % 2 == 0).float() / 2
        return bounded, torch.round(bounded - offset) + offset

    def _to_output(self, codes: Tensor, shape: torch.Size) -> Tensor:
        """[N, len(levels)] codes in [-1, 1] -> [B, dim, H, W]; shared by forward and indices_to_codes."""
        return unflatten_channels_last(project(self.project_out, codes), shape)

    def forward(self, z: Tensor) -> QuantizerOutput:
        check_input(z, self.dim)
        with full_precision(z):
            bounded, level = self._levels_of(project(self.project_in, flatten_channels_last(z.float())))
            codes = straight_through(level, bounded) / self._half_range()
            digits = (level.detach() + self._half_range()).long()
            indices = (digits * self.basis).sum(-1)
            quantized = self._to_output(codes, z.shape).to(z.dtype)
        indices = indices.reshape(z.shape[0], z.shape[2], z.shape[3])
        return QuantizerOutput(quantized, indices, {}, self.usage.update(indices))

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        check_indices(indices)
        b, h, w = indices.shape
        with full_precision(indices):
            digits = (indices.reshape(-1, 1) // self.basis) % self.levels_t
            codes = (digits.float() - self._half_range()) / self._half_range()
            return self._to_output(codes, torch.Size((b, len(self.levels), h, w)))
