"""`model:` of family kl: the constructor arguments of KLAutoencoder (latentae/models/kl.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from latentae.config import ConfigError
from latentae.models.config import ModelConfig, check_block_channels


@dataclass
class KLConfig(ModelConfig):
    """Gaussian posterior in diffusers' AutoencoderKL layout (SD VAE, SD3, FLUX.1; FLUX.2 with latent_norm)."""

    family: Literal["kl"] = "kl"
    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: list[int] = field(default_factory=lambda: [128, 256, 512, 512])  # one per level; f = 2^(n-1)
    layers_per_block: int = 2  # resnets per encoder level (the decoder uses one more, as in diffusers)
    latent_channels: int = 4
    norm_num_groups: int = 32
    mid_block_add_attention: bool = True  # self-attention in the mid blocks
    sample_size: int = 256  # diffusers' tiling tile size; a training run sets it to data.resolution
    scaling_factor: float = 0.18215  # written to the export; `latentae stats` measures the right one
    shift_factor: float | None = None  # SD3/FLUX-style latent shift
    # per-channel latent statistics (SDXL-style pipelines: (z - mean) * scaling_factor / std), written to the
    # export's config.json; `latentae stats --write` measures them
    latents_mean: list[float] | None = None
    latents_std: list[float] | None = None
    force_upcast: bool = True  # tells diffusers pipelines to decode in fp32 (SDXL's fp16 overflow)
    use_quant_conv: bool = True  # 1x1 conv on the moments (SD: yes, SD3/FLUX: no)
    use_post_quant_conv: bool = True
    latent_norm: Literal["flux2"] | None = None  # flux2 = FLUX.2's 2x2 patchify + batch-norm latent statistics
    # (`latentae stats --write` fills them); exports to AutoencoderKLFlux2
    decoder_block_out_channels: list[int] | None = None  # a decoder wider or narrower than the encoder (null: the
    # same widths). AutoencoderKLFlux2 holds one; AutoencoderKL cannot, so without latent_norm the export is
    # latentae's format
    batch_norm_eps: float = 1e-4  # latent_norm flux2: AutoencoderKLFlux2's bn
    batch_norm_momentum: float = 0.1
    patch_size: tuple[int, int] = (2, 2)  # latent_norm flux2: the patchify before bn

    def __post_init__(self):
        super().__post_init__()
        check_block_channels("block_out_channels", self.block_out_channels, self.norm_num_groups)
        if self.decoder_block_out_channels is not None:
            check_block_channels("decoder_block_out_channels", self.decoder_block_out_channels, self.norm_num_groups)
            if len(self.decoder_block_out_channels) != len(self.block_out_channels):
                raise ConfigError(f"config key 'model.decoder_block_out_channels' needs one width per level of "
                                  f"model.block_out_channels ({len(self.block_out_channels)}): the decoder upsamples "
                                  "as the encoder downsamples")
        if (self.latents_mean is None) != (self.latents_std is None):
            raise ConfigError("config keys 'model.latents_mean' and 'model.latents_std' go together: pipelines "
                              "apply them only as a pair")
        for key in ("latents_mean", "latents_std"):
            values = getattr(self, key)
            if values is None:
                continue
            if self.latent_norm == "flux2":
                raise ConfigError(f"config key 'model.{key}' does not apply to model.latent_norm=flux2: FLUX.2 "
                                  "pipelines normalize with the bn statistics (AutoencoderKLFlux2 has no such key)")
            if len(values) != self.latent_channels:
                raise ConfigError(f"config key 'model.{key}' needs one value per latent channel "
                                  f"(model.latent_channels={self.latent_channels}), got {len(values)}")
