"""Gumbel-softmax quantizer (DALL-E dVAE; taming-transformers' GumbelQuantize).

A 1x1 projection gives logits over the codebook; training samples a (hard, straight-through) one-hot with the
Gumbel-softmax at an annealed temperature and looks the code up in an embedding; a KL term to the uniform prior
keeps the logits spread. Submodule names `proj` and `embed` follow taming's layout.
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


class GumbelQuantizer(Quantizer):
    """forward(z [B, dim, H, W]) -> QuantizerOutput with losses {"kl"}; stats add `temperature`.

    Temperature tau(step) = max(temperature_end, temperature_start * exp(-temperature_decay * step)), where
    `step` is a checkpointed int64 buffer counting training forwards (a trainer may overwrite it, e.g. with its
    global step, when resuming a run saved without it). Training: one-hot sampled from
    softmax((logits + Gumbel noise) / tau). Eval: argmax of the logits, no noise. `indices` is always the argmax
    of the noise-free logits (the token inference emits). Computes in fp32 (autocast off); `quantized` comes back
    in z's dtype. indices_to_codes returns fp32, equal to eval forward's `quantized` once cast to its dtype.
    """

    def __init__(
        self,
        dim: int,  # channels of the latent z
        *,
        codebook_size: int = 8192,  # number of codes (logits per position)
        codebook_dim: int | None = None,  # width of the code vectors; None = dim (else projected back to dim)
        kl_weight: float = 5e-4,  # weight of KL(softmax(logits) || uniform), DALL-E/taming's value
        temperature_start: float = 1.0,  # tau at step 0
        temperature_end: float = 1 / 16,  # floor tau anneals to (DALL-E's final value)
        temperature_decay: float = 1.85e-5,  # rate r of exp(-r * step); reaches 1/16 near 150k steps, as DALL-E
        straight_through: bool = True,  # training: hard one-hot with soft gradients; False = soft mixture
        usage_window: int = 100,  # training forwards a code counts as "used" after it was last chosen
    ):
        super().__init__()
        if not 0 < temperature_end <= temperature_start:
            raise ConfigError(
                f"option 'temperature_end': need 0 < temperature_end <= temperature_start, "
                f"got {temperature_end} and {temperature_start}"
            )
        if temperature_decay < 0:
            raise ConfigError(f"option 'temperature_decay': must be >= 0, got {temperature_decay}")
        if codebook_size < 2:
            raise ConfigError(f"option 'codebook_size': must be >= 2, got {codebook_size}")
        codebook_dim = dim if codebook_dim is None else codebook_dim
        self.dim = dim
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.kl_weight = kl_weight
        self.temperature_start = temperature_start
        self.temperature_end = temperature_end
        self.temperature_decay = temperature_decay
        self.straight_through = straight_through
        self.proj = nn.Conv2d(dim, codebook_size, 1)
        self.embed = nn.Embedding(codebook_size, codebook_dim)
        self.project_out = nn.Linear(codebook_dim, dim) if codebook_dim != dim else None
        self.usage = UsageTracker(codebook_size, usage_window)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def temperature(self) -> Tensor:
        """tau at the current `step` (0-dim fp32 tensor; no host sync)."""
        decayed = self.temperature_start * torch.exp(-self.temperature_decay * self.step.float())
        return decayed.clamp_min(self.temperature_end)

    def _to_output(self, vectors: Tensor, shape: torch.Size) -> Tensor:
        """[N, codebook_dim] code vectors -> [B, dim, H, W]; shared by forward and indices_to_codes."""
        return unflatten_channels_last(project(self.project_out, vectors), shape)

    def _codes(self, indices: Tensor) -> Tensor:
        """fp32 code vectors [N, codebook_dim] of flat indices (a lookup, no matmul rounding)."""
        return F.embedding(indices, self.embed.weight.float())

    def set_step(self, step: int, *, last_micro_batch: bool = True) -> None:
        """Anneal by optimizer steps (not forwards, which grad accumulation multiplies)."""
        super().set_step(step, last_micro_batch=last_micro_batch)
        self.step.fill_(step)

    def forward(self, z: Tensor) -> QuantizerOutput:
        check_input(z, self.dim)
        tau = self.temperature()
        with full_precision(z):
            # A model cast to half precision projects in its own precision (like `project`).
            logits = flatten_channels_last(self.proj(z.to(self.proj.weight.dtype)).float())  # [N, codebook_size]
            indices = logits.detach().argmax(-1)
            if self.training:
                gumbels = -torch.empty_like(logits).exponential_().log()
                soft = F.softmax((logits + gumbels) / tau, dim=-1)
                if self.straight_through:
                    hard = F.one_hot(soft.detach().argmax(-1), self.codebook_size).float()
                    soft = straight_through(hard, soft)
                vectors = soft @ self.embed.weight.float()
            else:
                vectors = self._codes(indices)  # as in indices_to_codes, so that reproduces it bit for bit
            quantized = self._to_output(vectors, z.shape).to(z.dtype)
            log_q = F.log_softmax(logits, dim=-1)
            kl = (log_q.exp() * (log_q + math.log(self.codebook_size))).sum(-1).mean()
        if self.training:
            self.step += 1
        indices = indices.reshape(z.shape[0], z.shape[2], z.shape[3])
        stats = self.usage.update(indices)
        stats["temperature"] = tau
        return QuantizerOutput(quantized, indices, {"kl": self.kl_weight * kl}, stats)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        check_indices(indices)
        b, h, w = indices.shape
        with full_precision(indices):
            return self._to_output(self._codes(indices.reshape(-1)), torch.Size((b, self.codebook_dim, h, w)))
