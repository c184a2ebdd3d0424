"""`model:` of family vq: the constructor arguments of VQTokenizer (latentae/models/vq.py), with its defaults."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from latentae.models.config import ModelConfig, check_block_channels


@dataclass
class VQConfig(ModelConfig):
    """The standard VAE blocks around a quantizer, in diffusers' VQModel layout."""

    family: Literal["vq"] = "vq"
    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: list[int] = field(default_factory=lambda: [128, 128, 256, 256, 512])  # f = 2^(n-1)
    layers_per_block: int = 2  # resnets per encoder level (the decoder uses one more, as in diffusers)
    latent_channels: int = 256  # encoder output channels before quant_conv
    vq_embed_dim: int | None = None  # channels entering the quantizer (null: latent_channels)
    norm_num_groups: int = 32
    mid_block_add_attention: bool = True
    sample_size: int = 256  # diffusers' tiling tile size; a training run sets it to data.resolution
    scaling_factor: float = 0.18215
    force_upcast: bool = True
    # {kind: vq|simvq|ibq|bsq|fsq|lfq|gumbel|residual|vqvae2, **its options}; see latentae.quantizers
    quantizer: dict = field(default_factory=lambda: {"kind": "vq"})

    def __post_init__(self):
        from latentae.quantizers import check_quantizer_spec

        super().__post_init__()
        check_block_channels("block_out_channels", self.block_out_channels, self.norm_num_groups)
        self.quantizer = check_quantizer_spec(self.quantizer, where="model.quantizer")
