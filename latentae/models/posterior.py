"""Diagonal Gaussian posterior q(z|x) of the KL autoencoder, with the closed-form KL to N(0, I)."""
from __future__ import annotations

import torch
from torch import Tensor

ACTIVE_THRESHOLD = 0.01  # nats per element: a channel whose mean KL is below carries (almost) no information


class GaussianPosterior:
    """Built from the encoder's moments [B, 2C, H, W] exactly as diffusers' DiagonalGaussianDistribution
    (logvar clamped to [-30, 20]) so latents match `AutoencoderKL.encode(x).latent_dist`."""

    def __init__(self, moments: Tensor):
        self.mean, logvar = torch.chunk(moments, 2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterized sample mean + std * eps: gradients reach mean and logvar."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> Tensor:
        return self.mean

    def kl_per_channel(self) -> Tensor:
        """KL(q || N(0, I)) per sample and channel, summed over H, W: [B, C]. In fp32 whatever the moments'
        dtype: under bf16 autocast var - 1 - logvar cancels badly near the prior."""
        mean, logvar = self.mean.float(), self.logvar.float()
        return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(2, 3))

    def kl(self) -> Tensor:
        """Per-sample KL summed over C, H, W: [B] (LDM's convention; divide by C*H*W for a mean)."""
        return self.kl_per_channel().sum(dim=1)

    def kl_per_element(self) -> Tensor:
        """[C] KL per latent element of each channel, averaged over batch and space (nats), fp32."""
        height, width = self.mean.shape[-2:]
        return self.kl_per_channel().float().mean(0) / (height * width)


def active_channels(per_channel: Tensor, threshold: float = ACTIVE_THRESHOLD) -> Tensor:
    """How many channels carry information: mean KL above `threshold` (a collapsed channel has KL ~ 0)."""
    return (per_channel > threshold).sum()
