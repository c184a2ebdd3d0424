"""DC-AE (Chen et al. 2025, "Deep Compression Autoencoder for Efficient High-Resolution Diffusion Models"), diffusers'
AutoencoderDC held untouched, and DC-AE 1.5's structured latent (Chen et al. 2025, "DC-AE 1.5: Accelerating Diffusion
Model Convergence with Structured Latent Space").

A structured model encodes with only the first n channels of its latent, n one of `structured_channels`: the
encoder's output sliced to its first n channels (the authors slice the output convolution's filters: the same
values), and the decoder reads the absent channels as zeros. Zeros are what the authors' decoder input convolution,
its weight sliced to the first n input channels, computes, so the diffusers module needs no other layer: at the
full count it is plain AutoencoderDC, which the export is.
"""
from __future__ import annotations

import torch
from diffusers import AutoencoderDC
from torch import Tensor, nn

from latentae.models.bottleneck import Bottleneck
from latentae.models.wrapped import WrappedAutoencoder


class DCAutoencoder(WrappedAutoencoder):
    family = "dc"
    diffusers_class = AutoencoderDC

    def __init__(self, vae: nn.Module | None = None, structured_channels=(), channels: int | None = None, **config):
        super().__init__(vae, **config)
        full = self.vae.config["latent_channels"]
        self.structured_channels = check_structured_channels(structured_channels, full)
        if self.structured_channels:
            self.bottleneck = Bottleneck("deterministic", distills=True, channel_counts=self.structured_channels)
        self.channels = None  # the count this model encodes with (None: every channel)
        self.use_channels(channels)

    @property
    def latentae_options(self) -> dict:
        return {"structured_channels": list(self.structured_channels)} if self.structured_channels else {}

    def use_channels(self, n: int | None) -> None:
        """Encode with the first `n` latent channels from now on (None: all); `n` one of `structured_channels`."""
        if n is not None and n not in self.structured_channels:
            allowed = list(self.structured_channels) or "none: this DC-AE has no structured latent"
            raise ValueError(f"{n} latent channels: not one of the model's structured_channels ({allowed})")
        self.channels = None if n == self.vae.config["latent_channels"] else n

    def at_channels(self, n: int) -> DCAutoencoder:
        """This model (its weights shared, not copied) encoding with the first `n` latent channels."""
        return DCAutoencoder(self.vae, structured_channels=self.structured_channels, channels=n)

    def encode(self, images: Tensor) -> Tensor:
        """[B, n, h, w]: the first n channels (all without a count set)."""
        z = self.vae.encode(images).latent  # DC's EncoderOutput names it `latent`, Tiny's `latents`
        return z if self.channels is None else z[:, :self.channels]

    def decode(self, latents: Tensor) -> Tensor:
        """Latents of any of `structured_channels` channels: the absent ones are zero for the decoder."""
        full = self.vae.config["latent_channels"]
        n = latents.shape[1]
        if n != full and n in self.structured_channels:
            latents = torch.cat([latents, latents.new_zeros(latents.shape[0], full - n, *latents.shape[2:])], 1)
        return self.vae.decode(latents).sample

    def last_layer(self) -> nn.Parameter:
        return self.vae.decoder.conv_out.weight

    def encoder_last_layer(self) -> nn.Parameter:
        return self.vae.encoder.conv_out.weight


def check_structured_channels(counts, full: int) -> tuple[int, ...]:
    """The counts as a tuple, or the reason they cannot serve a latent of `full` channels."""
    counts = tuple(counts)
    if not counts:
        return counts
    if any(not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in counts) or \
            list(counts) != sorted(set(counts)):
        raise ValueError(f"structured_channels must be ascending distinct positive counts, got {list(counts)}")
    if counts[-1] != full:
        raise ValueError(f"structured_channels must end with the full latent, latent_channels={full} (the export's "
                         f"function), got {list(counts)}")
    return counts
