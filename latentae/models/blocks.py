"""Encoder and decoder: diffusers' own modules, so state dicts map 1:1 onto AutoencoderKL / VQModel."""
from __future__ import annotations

from diffusers.models.autoencoders.vae import Decoder, Encoder


def make_encoder(*, in_channels, out_channels, block_out_channels, layers_per_block, norm_num_groups,
                 mid_block_add_attention, double_z) -> Encoder:
    return Encoder(
        in_channels=in_channels,
        out_channels=out_channels,
        down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        norm_num_groups=norm_num_groups,
        act_fn="silu",
        double_z=double_z,
        mid_block_add_attention=mid_block_add_attention,
    )


def make_decoder(*, in_channels, out_channels, block_out_channels, layers_per_block, norm_num_groups,
                 mid_block_add_attention) -> Decoder:
    return Decoder(
        in_channels=in_channels,
        out_channels=out_channels,
        up_block_types=("UpDecoderBlock2D",) * len(block_out_channels),
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        norm_num_groups=norm_num_groups,
        act_fn="silu",
        mid_block_add_attention=mid_block_add_attention,
    )


def downsample_factor(block_out_channels) -> int:
    return 2 ** (len(block_out_channels) - 1)


class StandardBlocks:
    """Mixin of the models built from diffusers' standard VAE blocks (KLAutoencoder, VQTokenizer)."""

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent position along each side (8 for SD's VAE)."""
        return downsample_factor(self.config["block_out_channels"])

    @property
    def crop_multiple(self) -> int:
        """Image sides must be a multiple of this: the downsampling factor, times the 2x2 split of the latent where
        there is one (FLUX.2's patchify, VQ-VAE-2's half-resolution top level)."""
        import math

        split = math.lcm(*self.config["patch_size"]) if self.config.get("latent_norm") == "flux2" else 1
        return self.downsample_factor * split * getattr(getattr(self, "quantize", None), "spatial_multiple", 1)


def model_downsample_factor(model) -> int:
    """Pixels per latent position along each side of any latentae model (every family defines
    `downsample_factor`; native-size images are cropped to a multiple of `model.crop_multiple`)."""
    return model.downsample_factor
