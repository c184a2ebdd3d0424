"""Binary spherical quantization (Zhao, Xiong, Krähenbühl 2024, "Image and Video Tokenization with Binary
Spherical Quantization", arXiv 2406.07548; authors' code: github.com/zhaoyue-zephyrus/bsq-vit,
transcoder/models/quantizer/bsq.py and transcoder/models/bsqvit.py).

The latent is projected to L channels and l2-normalized to u on the unit sphere; the code is sign(u) / sqrt(L),
a corner of the hypercube that also lies on the sphere, so the codebook {-1, 1}^L / sqrt(L) is implicit and
the quantization error is bounded. Tokens are the sign bits packed as in LFQ (bit i = channel i; the authors' code
makes channel 0 the most significant bit instead).

Facts taken from the authors' code (their ImageNet 256 "b18g18" config: 18 bits, per-bit groups, analytical
per-sample entropy, l2 norm before and after quantization):
- the soft code distribution is softmax over codes c of 2 * tau * c.u (tau = inv_temperature, 1 there, the
  default), which factorizes into bits with P(bit i on) = sigmoid(4 * tau * u_i / sqrt(L));
- per-sample entropy: the sum of the bits' binary entropies, averaged over rows; codebook entropy: with groups of
  one bit, the sum over bits of the binary entropy of the bit's batch-mean probability (a factorized estimate);
- entropy penalty zeta * (gamma0 * per_sample - gamma * codebook) / tau; their loss multiplies the quantizer loss
  by codebook_weight 0.1 (zeta = gamma0 = gamma = 1), hence entropy_weight 0.1 here (their first-2000-step
  ramp-up of that weight, x3 at step 0, is not reproduced);
- commitment beta * mean over rows of ||sg(code) - u||^2 (a sum over channels), beta = 0 in that config;
- straight-through: forward sign(u) / sqrt(L), gradient 1 / sqrt(L) to u (their sign estimator, then scaled).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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
from latentae.quantizers.lfq import bits_to_indices, codebook_bits, entropy_stats, indices_to_signs, lfq_entropies


class BSQ(Quantizer):
    """forward(z [B, dim, H, W]) -> QuantizerOutput with losses entropy_per_sample, entropy_codebook, commitment.

    loss = entropy_weight / inv_temperature * (per_sample_entropy - diversity_gamma * codebook_entropy)
           + commitment_weight * mean_rows ||u - sg(code)||^2,
    reported as its three weighted terms. In training mode the codebook entropy is that of the per-bit
    probabilities averaged over every rank's rows (one all-reduce of 2 * bits + 1 floats per training forward,
    on every rank; see distributed.sum_over_ranks for its gradient); in eval mode, over this rank's rows, with no
    collective. Computes in fp32 (autocast off); `quantized` comes back in z's dtype. indices_to_codes returns
    fp32, equal to forward's `quantized` once cast to its dtype.
    """

    def __init__(
        self,
        dim: int,  # channels of the latent z
        *,
        codebook_size: int = 2**18,  # a power of 2; L = log2(codebook_size) channels on the sphere
        entropy_weight: float = 0.1,  # weight of the entropy penalty (authors: codebook_weight 0.1 x zeta 1)
        diversity_gamma: float = 1.0,  # weight of the codebook entropy relative to per-sample (authors' gamma)
        inv_temperature: float = 1.0,  # tau of the soft code distribution (authors' inv_temperature)
        commitment_weight: float = 0.0,  # authors' beta: 0 in their configs
        usage_window: int = 100,  # training forwards a code counts as "used" after it was last chosen
    ):
        super().__init__()
        bits = codebook_bits(codebook_size, "BSQ")
        if inv_temperature <= 0:
            raise ConfigError(f"option 'inv_temperature': must be > 0, got {inv_temperature}")
        self.dim = dim
        self.codebook_size = codebook_size
        self.bits = bits
        self.scale = 1 / math.sqrt(bits)  # codes are +-1/sqrt(L): unit norm
        self.entropy_weight = entropy_weight
        self.diversity_gamma = diversity_gamma
        self.inv_temperature = inv_temperature
        self.commitment_weight = commitment_weight
        self.project_in = nn.Linear(dim, bits) if dim != bits else None
        self.project_out = nn.Linear(bits, dim) if dim != bits else None
        self.usage = UsageTracker(codebook_size, usage_window)

    def _to_output(self, signs: Tensor, shape: torch.Size) -> Tensor:
        """[N, bits] signs in {-1, 1} -> [B, dim, H, W] codes; shared by forward and indices_to_codes."""
        return unflatten_channels_last(project(self.project_out, signs * self.scale), shape)

    def forward(self, z: Tensor) -> QuantizerOutput:
        check_input(z, self.dim)
        with full_precision(z):
            u = F.normalize(project(self.project_in, flatten_channels_last(z.float())), dim=1)
            positive = u.detach() > 0
            signs = torch.where(positive, 1.0, -1.0)
            quantized = self._to_output(straight_through(signs, u), z.shape).to(z.dtype)
            indices = bits_to_indices(positive)
            # P(bit on) = sigmoid(4 tau u_i / sqrt(L)) is LFQ's sigmoid(4 u_i / T) at T = sqrt(L) / tau.
            per_sample, codebook = lfq_entropies(u, math.sqrt(self.bits) / self.inv_temperature,
                                                 across_ranks=self.training, factorized=True)
            weight = self.entropy_weight / self.inv_temperature
            commitment = (u - signs * self.scale).pow(2).sum() / max(u.shape[0], 1)  # 0, not NaN, over no rows
            losses = {
                "entropy_per_sample": weight * per_sample,
                "entropy_codebook": -weight * self.diversity_gamma * codebook,
                "commitment": self.commitment_weight * commitment,
            }
        indices = indices.reshape(z.shape[0], z.shape[2], z.shape[3])
        return QuantizerOutput(quantized, indices, losses, entropy_stats(self.usage, indices, per_sample, codebook))

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        check_indices(indices)
        b, h, w = indices.shape
        with full_precision(indices):
            return self._to_output(indices_to_signs(indices, self.bits), torch.Size((b, self.bits, h, w)))
