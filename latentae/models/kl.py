"""KL-regularized autoencoder with the diffusers `AutoencoderKL` architecture and state-dict layout."""
from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

from latentae.models.blocks import StandardBlocks, make_decoder, make_encoder
from latentae.models.bottleneck import GAUSSIAN
from latentae.models.output import AutoencoderOutput, posterior_forward
from latentae.models.posterior import GaussianPosterior


class KLAutoencoder(StandardBlocks, ModelMixin, ConfigMixin):
    """encoder -> [quant_conv] -> N(mean, var) -> z -> [post_quant_conv] -> decoder.

    Submodule names equal AutoencoderKL's, so `state_dict()` loads into it unchanged. Unlike
    AutoencoderKL.forward, `forward` returns the posterior too (the loss needs it).
    """

    family = "kl"
    bottleneck = GAUSSIAN
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        mid_block_add_attention: bool = True,
        sample_size: int = 256,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        latents_mean: tuple[float, ...] | None = None,  # SDXL-style per-channel statistics (latentae stats)
        latents_std: tuple[float, ...] | None = None,
        force_upcast: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        latent_norm: str | None = None,  # "flux2": AutoencoderKLFlux2's 2x2 patchify + batch-norm statistics (`bn`)
        decoder_block_out_channels: tuple[int, ...] | None = None,  # a decoder wider or narrower than the encoder
        batch_norm_eps: float = 1e-4,  # flux2 only: AutoencoderKLFlux2's bn
        batch_norm_momentum: float = 0.1,
        patch_size: tuple[int, int] = (2, 2),
    ):
        super().__init__()
        if latent_norm not in (None, "flux2"):
            raise ValueError(f"latent_norm must be null or 'flux2', got {latent_norm!r}")
        common = dict(layers_per_block=layers_per_block, norm_num_groups=norm_num_groups,
                      mid_block_add_attention=mid_block_add_attention)
        self.encoder = make_encoder(in_channels=in_channels, out_channels=latent_channels, double_z=True,
                                    block_out_channels=block_out_channels, **common)
        self.decoder = make_decoder(in_channels=latent_channels, out_channels=out_channels,
                                    block_out_channels=decoder_block_out_channels or block_out_channels, **common)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None
        # FLUX.2 pipelines normalize patchified latents with the running statistics of this (otherwise unused)
        # batch norm; `latentae stats --write` measures them. Never applied in forward, as in diffusers.
        self.bn = nn.BatchNorm2d(math.prod(patch_size) * latent_channels, eps=batch_norm_eps,
                                 momentum=batch_norm_momentum, affine=False) if latent_norm == "flux2" else None

    def posterior(self, images: Tensor) -> GaussianPosterior:
        moments = self.encoder(images)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return GaussianPosterior(moments)

    def encode(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] -> posterior mean (unscaled: multiply by scaling_factor for a diffusion model)."""
        return self.posterior(images).mean

    def decode(self, latents: Tensor) -> Tensor:
        if self.post_quant_conv is not None:
            latents = self.post_quant_conv(latents)
        return self.decoder(latents)

    def forward(self, images: Tensor, sample_posterior: bool = True,
                generator: torch.Generator | None = None) -> AutoencoderOutput:
        return posterior_forward(self, images, sample_posterior, generator)

    def last_layer(self) -> nn.Parameter:
        """The decoder's output weight: the adaptive GAN weight compares gradient norms here."""
        return self.decoder.conv_out.weight

    def encoder_last_layer(self) -> nn.Parameter:
        """The encoder's output weight (before quant_conv): loss.vf's adaptive weight compares gradient norms here."""
        return self.encoder.conv_out.weight
