"""Index backpropagation quantization (Shi, Luo, Ge, Yang, Shan, Wang 2024, "Taming Scalable Visual Tokenizer
for Autoregressive Image Generation", arXiv 2412.02692; authors' code: github.com/TencentARC/SEED-Voken, also
TencentARC/Open-MAGVIT2, src/IBQ/modules/vqvae/quantize.py `IndexPropagationQuantize` and
configs/IBQ/gpu/imagenet_ibqgan_262144.yaml).

Logits are the dot products of z with every code; the token is their argmax. The code is picked by a
straight-through one-hot: the hard one-hot in the forward pass, the gradient of softmax(logits) in the backward
pass, so the gradient reaches every code through the logits (VQ's nearest-code lookup updates only the chosen
codes, which is how large codebooks collapse).

Facts taken from the authors' code and their 16384 / 262144-code ImageNet configs:
- logits z.e (no normalization), softmax at temperature 1 for the straight-through one-hot; the codebook is an
  nn.Embedding with its default N(0, 1) init;
- quantization loss mean((q - z)^2) ("double quantization": q is the straight-through code, so the soft path
  carries it to z and to every code) + mean((sg(code) - z)^2) + beta * mean((code - sg(z))^2), beta = 0.25 on
  the codebook term; their loss weighs it by quant_loss_weight 1;
- entropy term (MAGVIT-v2's) on softmax(logits / 0.01): mean per-sample entropy - entropy of the batch-mean
  distribution, both weighted 1, the whole weighted entropy_loss_weight 0.05.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from latentae.config import ConfigError
from latentae.quantizers.base import (
    Quantizer,
    QuantizerOutput,
    UsageTracker,
    check_indices,
    check_input,
    flatten_channels_last,
    full_precision,
    unflatten_channels_last,
)
from latentae.quantizers.lfq import entropy_stats, mean_distribution_entropy


class IBQ(Quantizer):
    """forward(z [B, dim, H, W]) -> QuantizerOutput with losses double, commitment, codebook, entropy_per_sample,
    entropy_codebook (already weighted; see the module docstring), indices [B, H, W] = argmax_k z.e_k.

    Memory: the logits are N x codebook_size (N = B*H*W rows), a few such tensors live at once (logits, two
    softmaxes, the entropy's log-probabilities); 4096 rows at 2^18 codes would be 4 GiB each. They are computed
    in chunks of max(1, chunk_logits // codebook_size) rows, so peak memory is a small multiple (under 10) of
    4 bytes x chunk_logits, whatever N (the default 2^25: 128 rows at 2^18 codes; measured on CPU, forward and
    backward of 512 rows x 2^18 codes x dim 16: 0.9 GiB, and 0.4 GiB at 2^23). Cost: with more
    than one chunk and gradients on, each chunk's forward runs again in the backward pass (activation
    checkpointing): 7 instead of 5 matmuls of N x codebook_size x dim (forward 2, backward 3), 1.4x the
    quantizer's FLOPs; the same result as one chunk up to fp32 summation order. The rows' per-code
    probabilities are summed over chunks and, in training, over ranks (one all-reduce of codebook_size + 1
    floats per training forward, on every rank; see distributed.sum_over_ranks for its gradient), so the codebook
    entropy is that of the global batch; in eval mode, of this rank's rows, with no collective. The per-sample
    entropy is a mean over this rank's rows, as LFQ's.

    Computes in fp32 (autocast off); `quantized` comes back in z's dtype. indices_to_codes returns fp32, equal to
    forward's `quantized` once cast to its dtype.
    """

    def __init__(
        self,
        dim: int,  # channels of the latent z = code width
        *,
        codebook_size: int = 2**14,  # number of codes
        beta: float = 0.25,  # weight of the codebook term mean((code - sg(z))^2) (authors' beta)
        commitment_weight: float = 1.0,  # weight of mean((sg(code) - z)^2)
        double_weight: float = 1.0,  # weight of mean((straight-through code - z)^2)
        entropy_weight: float = 0.05,  # weight of the entropy term (authors' entropy_loss_weight)
        diversity_gamma: float = 1.0,  # weight of the batch entropy relative to per-sample entropy
        entropy_temperature: float = 0.01,  # of softmax(logits / T) in the entropy term (authors' 0.01)
        chunk_logits: int = 2**25,  # logits computed at once (rows x codes); bounds peak memory, see above
        usage_window: int = 100,  # training forwards a code counts as "used" after it was last chosen
    ):
        super().__init__()
        if codebook_size < 2:
            raise ConfigError(f"option 'codebook_size': must be >= 2, got {codebook_size}")
        if entropy_temperature <= 0:
            raise ConfigError(f"option 'entropy_temperature': must be > 0, got {entropy_temperature}")
        if chunk_logits < 1:
            raise ConfigError(f"option 'chunk_logits': must be >= 1, got {chunk_logits}")
        self.dim = dim
        self.codebook_size = codebook_size
        self.beta = beta
        self.commitment_weight = commitment_weight
        self.double_weight = double_weight
        self.entropy_weight = entropy_weight
        self.diversity_gamma = diversity_gamma
        self.entropy_temperature = entropy_temperature
        self.chunk_rows = max(1, chunk_logits // codebook_size)
        self.embedding = nn.Embedding(codebook_size, dim)
        self.usage = UsageTracker(codebook_size, usage_window)

    def _chunk(self, x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """fp32 rows x [n, dim] and codebook -> (indices [n], straight-through codes [n, dim], sum over rows of
        the per-sample entropy, sum over rows of softmax(logits / T) [codebook_size])."""
        logits = x @ weight.T
        indices = logits.detach().argmax(-1)
        code = F.embedding(indices, weight)  # the hard one-hot's product: gradient to the chosen codes
        soft = logits.softmax(-1) @ weight.detach()  # the soft one-hot's: gradient to the logits only
        quantized = code + (soft - soft.detach())  # adds exactly 0: the forward value is the code bit for bit
        log_p = F.log_softmax(logits / self.entropy_temperature, dim=-1)
        p = log_p.exp()
        return indices, quantized, -(p * log_p).sum(), p.sum(0)

    def forward(self, z: Tensor) -> QuantizerOutput:
        check_input(z, self.dim)
        with full_precision(z):
            x = flatten_channels_last(z.float())
            weight = self.embedding.weight.float()
            chunks = x.split(self.chunk_rows)  # one empty chunk when x has no rows
            recompute = len(chunks) > 1 and torch.is_grad_enabled()
            parts = [checkpoint(self._chunk, c, weight, use_reentrant=False) if recompute else self._chunk(c, weight)
                     for c in chunks]
            indices, quantized = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
            per_sample = sum(p[2] for p in parts) / max(len(x), 1)  # 0 over no rows
            codebook = mean_distribution_entropy(sum(p[3] for p in parts), len(x), across_ranks=self.training)
            code = quantized.detach()
            count = max(x.numel(), 1)  # means that are 0, not NaN, over no rows (a rank may have none)
            losses = {
                "double": self.double_weight * F.mse_loss(quantized, x, reduction="sum") / count,
                "commitment": self.commitment_weight * F.mse_loss(x, code, reduction="sum") / count,
                "codebook": self.beta * F.mse_loss(F.embedding(indices, weight), x.detach(), reduction="sum") / count,
                "entropy_per_sample": self.entropy_weight * per_sample,
                "entropy_codebook": -self.entropy_weight * self.diversity_gamma * codebook,
            }
            quantized = unflatten_channels_last(quantized, z.shape).to(z.dtype)
        indices = indices.reshape(z.shape[0], z.shape[2], z.shape[3])
        return QuantizerOutput(quantized, indices, losses, entropy_stats(self.usage, indices, per_sample, codebook))

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        check_indices(indices)
        b, h, w = indices.shape
        with full_precision(indices):
            codes = F.embedding(indices.reshape(-1), self.embedding.weight.float())
            return unflatten_channels_last(codes, torch.Size((b, self.dim, h, w)))
