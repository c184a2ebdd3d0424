"""Statistics of the bottleneck over a whole evaluation set: codebook use of tokenizers, KL of KL autoencoders.

Both accumulate sums only, reduced over ranks once in `compute()` (a collective: every rank calls it, also one
that read nothing), so the numbers are those of the whole set whatever the number of processes. The class
docstrings say how each number is computed; the evaluation report quotes them.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from latentae.distributed import all_reduce_sum
from latentae.models.output import AutoencoderOutput
from latentae.models.posterior import ACTIVE_THRESHOLD, GaussianPosterior, active_channels
from latentae.quantizers.base import code_distribution_stats


class CodebookStats:
    """Tokenizer statistics from a histogram of every token of the set (per stage for residual quantizers; top and
    bottom for the two-level quantizer, whose top tokens repeat over 2x2 blocks, which no histogram statistic sees):
    codebook_usage: fraction of the K codes used at least once (mean over stages);
    perplexity: 2 ** entropy of the histogram (mean over stages);
    entropy_bits: entropy of the histogram in bits (mean over stages);
    bits_per_pixel: log2(K) x distinct tokens per image (all stages) / pixels per image, the size of an image's
    fixed-length code (256 tokens of 14 bits for 256 x 256 px: 0.0547);
    entropy_bits_per_pixel: the same with each stage's histogram entropy instead of log2(K);
    .../stage{s}: usage, perplexity and entropy of stage s, when there are several stages."""

    STATE = ("counts", "sizes")  # what latentae.evaluation.resume saves

    def __init__(self, codebook_size: int, num_stages: int, device: torch.device,
                 tokens_per_position: tuple[float, ...] | None = None):  # per stage (two-level: top 1/4, bottom 1)
        self.codebook_size = codebook_size
        self.num_stages = num_stages
        self.tokens_per_position = tokens_per_position or (1.0,) * num_stages
        self.counts = torch.zeros(num_stages, codebook_size, dtype=torch.long, device=device)
        self.sizes = torch.zeros(2, dtype=torch.long, device=device)  # token positions, pixels (summed over images)

    @classmethod
    def for_model(cls, model, device: torch.device) -> "CodebookStats":
        quantizer = model.quantize
        return cls(quantizer.codebook_size, getattr(quantizer, "num_stages", 1), device,
                   getattr(quantizer, "tokens_per_position", None))

    def update(self, output: AutoencoderOutput, images: Tensor) -> None:
        indices = output.quant.indices
        indices = indices if indices.ndim == 4 else indices.unsqueeze(-1)  # [B, h, w, S]
        flat = indices.reshape(-1, indices.shape[-1])
        for s in range(self.num_stages):
            self.counts[s] += torch.bincount(flat[:, s], minlength=self.codebook_size)
        b, h, w, _ = indices.shape
        self.sizes += torch.tensor([b * h * w, b * images.shape[-2] * images.shape[-1]], device=self.sizes.device)

    def compute(self) -> dict[str, float]:
        counts, sizes = all_reduce_sum(self.counts), all_reduce_sum(self.sizes)
        per_stage = [code_distribution_stats(c) | {"usage": (c > 0).float().mean()} for c in counts]
        positions_per_pixel = sizes[0].item() / max(sizes[1].item(), 1)
        out = {
            "codebook_size": self.codebook_size,
            "codebook_usage": _mean(st["usage"] for st in per_stage),
            "perplexity": _mean(st["perplexity"] for st in per_stage),
            "entropy_bits": _mean(st["entropy"] for st in per_stage),
            "bits_per_pixel": math.log2(self.codebook_size) * sum(self.tokens_per_position) * positions_per_pixel,
            "entropy_bits_per_pixel": sum(float(st["entropy"]) * n for st, n in zip(per_stage, self.tokens_per_position))
            * positions_per_pixel,
        }
        if self.num_stages > 1:
            out["num_stages"] = self.num_stages
            for s, st in enumerate(per_stage):
                out[f"codebook_usage/stage{s}"] = float(st["usage"])
                out[f"perplexity/stage{s}"] = float(st["perplexity"])
                out[f"entropy_bits/stage{s}"] = float(st["entropy"])
        return out


class KLStats:
    """KL autoencoder statistics, KL(q(z|x) || N(0, I)) in nats per latent element as in the training
    diagnostics: kl_per_channel: per channel, the mean over positions of each image, averaged over images
    (images of different sizes weigh the same); kl: mean over channels;
    active_channels: channels whose KL exceeds the threshold (default 0.01 nats, loss.kl.active_threshold's):
    a collapsed channel carries no information and has KL ~ 0."""

    STATE = ("sums",)

    def __init__(self, latent_channels: int, device: torch.device, threshold: float = ACTIVE_THRESHOLD):
        self.threshold = threshold
        self.sums = torch.zeros(latent_channels + 1, dtype=torch.float64, device=device)  # per channel, images

    @classmethod
    def for_model(cls, model, device: torch.device, threshold: float = ACTIVE_THRESHOLD) -> "KLStats":
        return cls(model.config.latent_channels, device, threshold)

    def update(self, output: AutoencoderOutput, images: Tensor) -> None:
        p = output.posterior
        posterior = GaussianPosterior(torch.cat([p.mean, p.logvar], dim=1).float())  # fp32 also under autocast
        b = p.mean.shape[0]
        self.sums[:-1] += posterior.kl_per_element().double() * b  # batch mean -> batch sum
        self.sums[-1] += b

    def compute(self) -> dict[str, float | int | list[float]]:
        sums = all_reduce_sum(self.sums)
        per_channel = sums[:-1] / sums[-1].clamp_min(1)
        return {
            "kl": float(per_channel.mean()),
            "kl_per_channel": [float(v) for v in per_channel],
            "active_channels": int(active_channels(per_channel, self.threshold)),
            "latent_channels": int(per_channel.numel()),
        }


def _mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values)


class LatentShape:
    """Deterministic autoencoders (DC-AE, tiny, TAESD): no posterior, no codebook; latent_shape: [C, h, w] of the
    first image's latent."""

    STATE = ("shape",)

    def __init__(self):
        self.shape: list[int] | None = None

    def update(self, output: AutoencoderOutput, images: Tensor) -> None:
        if self.shape is None and len(output.latent):
            self.shape = list(output.latent.shape[1:])

    def compute(self) -> dict:
        return {} if self.shape is None else {"latent_shape": self.shape}


def bottleneck_stats(model, device: torch.device, *, active_threshold: float = ACTIVE_THRESHOLD):
    """The statistics object for `model`'s bottleneck: codebook use, KL of the posterior, else the latent shape."""
    if model.bottleneck.tokenizes:
        return CodebookStats.for_model(model, device)
    if model.bottleneck.samples:
        return KLStats.for_model(model, device, active_threshold)
    return LatentShape()
