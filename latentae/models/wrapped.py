"""Diffusers autoencoders behind latentae's model interface: here the base and `AutoencoderTiny` (TAESD family);
`AutoencoderDC` (DC-AE, deep compression f32 / f64, SANA's; DC-AE 1.5's structured latent) in latentae/models/dc.py,
the image VAEs of current pipelines in latentae/models/image_vaes.py, all on the same base.

The diffusers module itself is held as `vae`, untouched: its state dict is the exported one (under `vae.`), and
`save_pretrained` writes the directory its pipelines load. latentae's interface on top: `encode(images)` ->
latents, `decode(latents)` -> images, `forward(images)` -> AutoencoderOutput (latent = the encoded latent,
no posterior / quant), `config`, `family`, `bottleneck`, `downsample_factor`, `last_layer()`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderTiny
from diffusers.configuration_utils import FrozenDict
from torch import Tensor, nn

from latentae.models.bottleneck import Bottleneck
from latentae.models.deterministic import deterministic_forward
from latentae.models.output import AutoencoderOutput


class WrappedAutoencoder(nn.Module):
    family: str  # "dc" | "tiny"
    diffusers_class: type
    bottleneck = Bottleneck("deterministic", distills=True)
    has_encoder = True
    channels_key = "latent_channels"  # the config key holding the latent channels (Qwen-Image / Wan: z_dim)

    def __init__(self, vae: nn.Module | None = None, **config):
        super().__init__()
        self.vae = vae if vae is not None else self.diffusers_class(**config)

    @classmethod
    def from_pretrained(cls, path: str | Path, options: dict | None = None, **kwargs) -> "WrappedAutoencoder":
        """`options`: latentae's own keys (`latentae_options`, as an export's latentae.json keeps them)."""
        return cls(cls.diffusers_class.from_pretrained(path, **kwargs), **(options or {}))

    @property
    def latentae_options(self) -> dict:
        """latentae's keys of this model beyond its class's config.json (the export keeps them in latentae.json)."""
        return {}

    def save_pretrained(self, path: str | Path, **kwargs) -> None:
        self.vae.save_pretrained(path, **kwargs)

    @property
    def config(self):
        """The diffusers config; `latent_channels` also where the class names it otherwise (the commands read it)."""
        config = self.vae.config
        if "latent_channels" in config:
            return config
        return FrozenDict({**config, "latent_channels": config[self.channels_key]})

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.dtype

    @property
    def device(self) -> torch.device:
        return self.vae.device

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent position along each side (DC-AE: each encoder level but the first halves it)."""
        return 2 ** (len(self.config["encoder_block_out_channels"]) - 1)

    @property
    def crop_multiple(self) -> int:
        """Image sides must be a multiple of this (see StandardBlocks.crop_multiple)."""
        return self.downsample_factor

    def enable_gradient_checkpointing(self) -> None:
        if not self.vae._supports_gradient_checkpointing:
            from latentae.config import ConfigError

            raise ConfigError(f"config key 'train.gradient_checkpointing': diffusers' {type(self.vae).__name__} does "
                              "not support gradient checkpointing")
        self.vae.enable_gradient_checkpointing()

    def encode(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] -> latents, unscaled (multiply by scaling_factor for a diffusion model)."""
        return self.vae.encode(images).latents

    def decode(self, latents: Tensor) -> Tensor:
        return self.vae.decode(latents).sample

    def forward(self, images: Tensor, target: Tensor | None = None) -> AutoencoderOutput:
        return deterministic_forward(self, images, target)

    def last_layer(self) -> nn.Parameter:
        """The decoder's output weight (the adaptive GAN weight compares gradient norms here)."""
        raise NotImplementedError

    def encoder_last_layer(self) -> nn.Parameter:
        """The encoder's output weight (loss.vf's adaptive weight compares gradient norms here)."""
        raise NotImplementedError


class TinyAutoencoder(WrappedAutoencoder):
    """TAESD-style tiny autoencoder (diffusers AutoencoderTiny): deterministic, its latents already in the
    diffusion model's space of the VAE it mimics (scaling_factor 1)."""

    family = "tiny"
    diffusers_class = AutoencoderTiny
    bottleneck = Bottleneck("deterministic", distills=True, normalized_by=(
        "they are its teacher's, and pipelines still apply its config's scaling_factor / shift_factor: measured ones "
        "would normalize them twice"))

    @property
    def downsample_factor(self) -> int:  # every encoder block after the first downsamples by the scaling factor
        return self.config["upsampling_scaling_factor"] ** (len(self.config["encoder_block_out_channels"]) - 1)

    def last_layer(self) -> nn.Parameter:
        return self.vae.decoder.layers[-1].weight

    def encoder_last_layer(self) -> nn.Parameter:
        return self.vae.encoder.layers[-1].weight

