"""Lookup-free quantization (Yu et al. 2023, MAGVIT-v2, "Language Model Beats Diffusion").

Each of `bits` channels is quantized to its sign; the code is the bit pattern, so the codebook {-1, +1}^bits
is implicit. An entropy penalty keeps every vector confident about its code while spreading the batch over
the whole codebook, and a commitment term pulls the encoder output towards its code.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentae.config import ConfigError
from latentae.distributed import sum_over_ranks
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


def codebook_bits(codebook_size: int, quantizer: str) -> int:
    """log2(codebook_size) for a quantizer whose codes are bit patterns; ConfigError unless a power of 2 >= 2."""
    if codebook_size < 2 or codebook_size & (codebook_size - 1):
        raise ConfigError(f"option 'codebook_size': {quantizer} needs a power of 2 >= 2, got {codebook_size}")
    return int(math.log2(codebook_size))


def bits_to_indices(positive: Tensor) -> Tensor:
    """[N, bits] bool (bit on) -> [N] int64 token: bit i of the token is channel i."""
    powers = 2 ** torch.arange(positive.shape[-1], device=positive.device)
    return (positive.long() * powers).sum(-1)


def indices_to_signs(indices: Tensor, bits: int) -> Tensor:
    """Inverse of bits_to_indices: [N] int64 -> [N, bits] fp32 in {-1, 1}."""
    powers = 2 ** torch.arange(bits, device=indices.device)
    return torch.where((indices.reshape(-1, 1) & powers) != 0, 1.0, -1.0)


def lfq_entropies(z: Tensor, temperature: float, *, across_ranks: bool = False,
                  factorized: bool = False) -> tuple[Tensor, Tensor]:
    """(mean per-sample entropy, entropy of the batch-mean code distribution), in nats, for z [N, bits].
    across_ranks: the batch is the union of every rank's rows (one all-reduce, every rank must call it, also
    with N = 0; single-process it changes nothing); otherwise this process's rows. A rank without rows has a
    per-sample entropy of 0. factorized: the codebook entropy is the sum over bits of the entropy of each bit's
    batch-mean distribution (BSQ's estimate; an upper bound of the exact one, O(N * bits) memory and FLOPs).

    The distribution over codes c in {-1, 1}^bits is softmax_c(-||z - c||^2 / T). Since ||c||^2 is the same
    for every code, the logit is 2 z.c / T + const = sum_i 2 z_i c_i / T: the distribution factorizes into
    independent bits with P(c_i = +1) = sigmoid(4 z_i / T). Hence, exactly:
    - per-sample entropy = sum of per-bit binary entropies (O(N * bits)).
    - batch mean: split the bits into a low and a high half; p_n(c) = p_lo[n, c_lo] * p_hi[n, c_hi], so
      mean_n p_n(c) = (P_lo^T @ P_hi)[c_lo, c_hi] / N. That is the full codebook distribution in memory
      O(N * (2**lo + 2**hi) + codebook_size) rather than the O(N * codebook_size) of the direct softmax
      (2048 vectors at 2**18 codes: tens of MiB instead of gigabytes), for the same N * codebook_size FLOPs.
    """
    logit = 4 * z / temperature  # log P(bit=+1) - log P(bit=-1)
    log_pos, log_neg = F.logsigmoid(logit), F.logsigmoid(-logit)
    p_pos, p_neg = log_pos.exp(), log_neg.exp()
    per_sample = -(p_pos * log_pos + p_neg * log_neg).sum() / max(z.shape[0], 1)

    def joint(start: int, stop: int) -> Tensor:
        """[N, 2**(stop-start)] probabilities of every pattern of bits start..stop-1 (column = pattern value)."""
        probs = z.new_ones(z.shape[0], 1)
        for i in range(start, stop):  # appending bit i doubles the patterns: bit off first, then bit on
            probs = torch.cat([probs * p_neg[:, i : i + 1], probs * p_pos[:, i : i + 1]], dim=1)
        return probs

    if factorized:  # per-bit sums over rows of P(off) and P(on): the entropy below is then the per-bit sum
        summed = torch.cat([p_neg.sum(0), p_pos.sum(0)])
    else:
        lo = z.shape[-1] // 2
        summed = joint(0, lo).T @ joint(lo, z.shape[-1])  # sum over rows of p_n(c)
    return per_sample, mean_distribution_entropy(summed, z.shape[0], across_ranks=across_ranks)


def mean_distribution_entropy(summed: Tensor, rows: int, *, across_ranks: bool) -> Tensor:
    """Entropy (nats) of the batch-mean distribution, from `summed` = the sum of this rank's `rows` rows'
    probabilities. across_ranks: the batch is every rank's rows (one all-reduce of summed.numel() + 1 floats;
    every rank must call it, also with rows = 0; see base.sum_over_ranks for its gradient)."""
    summed = torch.cat([summed.flatten(), summed.new_tensor([rows])])  # and the row count
    if across_ranks:
        summed = sum_over_ranks(summed)
    mean_probs = summed[:-1] / summed[-1].clamp_min(1)
    return -(mean_probs * mean_probs.clamp_min(1e-30).log()).sum()


def entropy_stats(usage: UsageTracker, indices: Tensor, per_sample: Tensor, codebook: Tensor) -> dict[str, Tensor]:
    """What the entropy-regularized quantizers (LFQ, BSQ, IBQ) log: usage of `indices` and both entropies."""
    stats = usage.update(indices)
    stats["per_sample_entropy"] = per_sample.detach()
    stats["codebook_entropy"] = codebook.detach()
    return stats


class LFQ(Quantizer):
    """forward(z [B, dim, H, W]) -> QuantizerOutput with losses entropy_per_sample, entropy_codebook, commitment.

    loss = entropy_weight * (per_sample_entropy - diversity_gamma * codebook_entropy)
           + commitment_weight * mse(z, sg(code)),
    reported as its three weighted terms (their sum is `QuantizerOutput.loss`). In training mode the codebook
    entropy is that of the code distribution averaged over every rank's rows (a per-rank batch of 4096 rows
    could not reach more than ln 4096 of a 2^18 codebook's ln 2^18): one all-reduce of codebook_size floats
    per training forward, on every rank (see base.sum_over_ranks for its gradient); in eval mode, over this
    rank's rows, with no collective. Computes in fp32 (autocast off); `quantized` comes back in z's dtype.
    indices_to_codes returns fp32, equal to forward's `quantized` once cast to its dtype.
    """

    def __init__(
        self,
        dim: int,  # channels of the latent z
        *,
        codebook_size: int = 2**10,  # a power of 2; bits = log2(codebook_size) sign channels
        entropy_weight: float = 0.1,  # weight of the entropy penalty
        commitment_weight: float = 0.25,  # weight of mse(z, sg(code)), pulls the encoder to its code
        diversity_gamma: float = 1.0,  # weight of the codebook-entropy reward relative to per-sample entropy
        temperature: float = 0.01,  # of softmax(-||z - c||^2 / T) over codes; 0.01 = the usual MAGVIT-v2 choice
        usage_window: int = 100,  # training forwards a code counts as "used" after it was last chosen
    ):
        super().__init__()
        bits = codebook_bits(codebook_size, "LFQ")
        if temperature <= 0:
            raise ConfigError(f"option 'temperature': must be > 0, got {temperature}")
        self.dim = dim
        self.codebook_size = codebook_size
        self.bits = bits
        self.entropy_weight = entropy_weight
        self.commitment_weight = commitment_weight
        self.diversity_gamma = diversity_gamma
        self.temperature = temperature
        self.project_in = nn.Linear(dim, self.bits) if dim != self.bits else None
        self.project_out = nn.Linear(self.bits, dim) if dim != self.bits else None
        self.usage = UsageTracker(codebook_size, usage_window)

    def _to_output(self, codes: Tensor, shape: torch.Size) -> Tensor:
        """[N, bits] codes in {-1, 1} -> [B, dim, H, W]; shared by forward and indices_to_codes."""
        return unflatten_channels_last(project(self.project_out, codes), shape)

    def forward(self, z: Tensor) -> QuantizerOutput:
        check_input(z, self.dim)
        with full_precision(z):
            h = project(self.project_in, flatten_channels_last(z.float()))
            positive = h.detach() > 0
            signs = torch.where(positive, 1.0, -1.0)
            quantized = self._to_output(straight_through(signs, h), z.shape).to(z.dtype)
            indices = bits_to_indices(positive)
            per_sample, codebook = lfq_entropies(h, self.temperature, across_ranks=self.training)
            losses = {
                "entropy_per_sample": self.entropy_weight * per_sample,
                "entropy_codebook": -self.entropy_weight * self.diversity_gamma * codebook,
                # a mean that is 0, not NaN, over no rows (a rank may have none)
                "commitment": self.commitment_weight * F.mse_loss(h, signs, reduction="sum") / max(h.numel(), 1),
            }
        indices = indices.reshape(z.shape[0], z.shape[2], z.shape[3])
        return QuantizerOutput(quantized, indices, losses, entropy_stats(self.usage, indices, per_sample, codebook))

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        check_indices(indices)
        b, h, w = indices.shape
        with full_precision(indices):
            codes = indices_to_signs(indices, self.bits)
            return self._to_output(codes, torch.Size((b, self.bits, h, w)))
