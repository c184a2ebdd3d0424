"""The image autoencoders of current diffusion pipelines (diffusers 0.42), held untouched as `vae` like DC-AE and the
tiny autoencoders (latentae/models/wrapped.py):

  AutoencoderKLQwenImage     Qwen-Image            Gaussian posterior (family kl), f8, 16 channels
  AutoencoderKLWan           Wan 2.1 / 2.2         Gaussian posterior (family kl), f8 (2.2: 2x2 patchify, f16)
  AutoencoderKLHunyuanImage  HunyuanImage 2.1      Gaussian posterior (family kl), f32, 64 channels
  AutoencoderRAE             RAE                   frozen representation encoder + ViT decoder (models/rae.py)

The posterior ones expose `posterior(images)` as KLAutoencoder does, so the KL term, KL per channel and the
sample / mean statistics apply. Qwen-Image and Wan are video autoencoders ([B, C, T, H, W], causal 3D convolutions):
an image is one frame (T = 1), as their pipelines pass it; the T axis is added going in and removed coming out, so
latents are [B, C, h, w] like every other family's.
"""
from __future__ import annotations

import math

import torch
from diffusers import (
    AutoencoderKLHunyuanImage,
    AutoencoderKLQwenImage,
    AutoencoderKLWan,
)
from torch import Tensor, nn

from latentae.models.bottleneck import GAUSSIAN
from latentae.models.output import AutoencoderOutput, posterior_forward
from latentae.models.posterior import GaussianPosterior
from latentae.models.wrapped import WrappedAutoencoder


def check_sides(model, images: Tensor) -> None:
    """Sides that are not a multiple of the downsampling factor would come back from the decoder another size."""
    h, w = images.shape[-2:]
    f = model.downsample_factor
    if h % f or w % f:
        from latentae.errors import LatentaeError

        raise LatentaeError(f"{type(model.vae).__name__} takes images whose sides are multiples of {f} (its "
                            f"downsampling factor), got {h}x{w} px: crop them to a multiple of {model.crop_multiple} "
                            "(latentae's loaders do, at native size and at a --resolution that is one)")


class PosteriorAutoencoder(WrappedAutoencoder):
    """A diffusers autoencoder whose encode returns a `latent_dist`: encode -> posterior mean, forward decodes a
    sample (training) or the mean (evaluation), as KLAutoencoder."""

    family = "kl"  # reported as a KL autoencoder: a Gaussian posterior, like KLAutoencoder's
    bottleneck = GAUSSIAN
    frames = False  # a video autoencoder: images go in as one frame
    convention = "sd"  # the normalization its pipeline applies: `latentae stats --write`'s default --convention
    pipeline_latents = ("sample", "LDM and diffusers' SD-family training scripts encode posterior samples")

    def _in(self, x: Tensor) -> Tensor:
        return x.unsqueeze(2) if self.frames else x

    def _out(self, x: Tensor) -> Tensor:
        return x[:, :, 0] if self.frames else x

    def posterior(self, images: Tensor) -> GaussianPosterior:
        check_sides(self, images)
        # the class's own moments (after its quant_conv), split and clamped as its DiagonalGaussianDistribution does
        return GaussianPosterior(self._out(self.vae.encode(self._in(images)).latent_dist.parameters))

    def encode(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] -> posterior mean (unnormalized: see latentae.models.latent_norm)."""
        return self.posterior(images).mean

    def decode(self, latents: Tensor) -> Tensor:
        return self._out(self.vae.decode(self._in(latents)).sample)

    def forward(self, images: Tensor, sample_posterior: bool = True,
                generator: torch.Generator | None = None) -> AutoencoderOutput:
        return posterior_forward(self, images, sample_posterior, generator)

    def last_layer(self) -> nn.Parameter:
        return self.vae.decoder.conv_out.weight

    def encoder_last_layer(self) -> nn.Parameter:
        return self.vae.encoder.conv_out.weight


class QwenImageAutoencoder(PosteriorAutoencoder):
    """Qwen-Image's VAE (the Wan 2.1 architecture): QwenImagePipeline normalizes (z - latents_mean) / latents_std and
    packs 2x2 latent patches into tokens (`_pack_latents`), so image sides are multiples of 2 x the factor."""

    diffusers_class = AutoencoderKLQwenImage
    frames = True
    channels_key = "z_dim"
    convention = "wan"
    pipeline_latents = ("sample", ("QwenImageImg2ImgPipeline normalizes posterior samples (the Edit pipelines "
                                    "condition on means)"))

    @property
    def downsample_factor(self) -> int:  # the pipeline's vae_scale_factor
        return 2 ** len(self.config["temperal_downsample"])

    @property
    def crop_multiple(self) -> int:
        return 2 * self.downsample_factor


class WanAutoencoder(QwenImageAutoencoder):
    """Wan 2.x's VAE: the same normalization; Wan 2.2's patchifies 2x2 pixels first (patch_size 2: f16); its DiT's
    (1, 2, 2) patches want even latent sides."""

    diffusers_class = AutoencoderKLWan
    pipeline_latents = ("mean", "WanVideoToVideoPipeline and WanImageToVideoPipeline normalize posterior means")

    @property
    def downsample_factor(self) -> int:
        return 2 ** len(self.config["temperal_downsample"]) * (self.config["patch_size"] or 1)


class HunyuanImageAutoencoder(PosteriorAutoencoder):
    """HunyuanImage 2.1's f32 VAE (2D): its pipeline decodes latents / scaling_factor (the sd convention)."""

    diffusers_class = AutoencoderKLHunyuanImage

    @property
    def downsample_factor(self) -> int:  # every level but the last halves, up to spatial_compression_ratio
        levels = len(self.config["block_out_channels"]) - 1
        return 2 ** min(int(math.log2(self.config["spatial_compression_ratio"])), levels)


IMAGE_VAES = (QwenImageAutoencoder, WanAutoencoder, HunyuanImageAutoencoder)
