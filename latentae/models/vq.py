"""VQ tokenizer: the same encoder/decoder around a swappable quantizer (VQ, SimVQ, IBQ, BSQ, FSQ, LFQ, Gumbel, residual)."""
from __future__ import annotations

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

from latentae.models.blocks import StandardBlocks, make_decoder, make_encoder
from latentae.models.bottleneck import CODEBOOK
from latentae.models.output import AutoencoderOutput
from latentae.quantizers import build_quantizer


class VQTokenizer(StandardBlocks, ModelMixin, ConfigMixin):
    """encoder -> quant_conv -> quantizer -> post_quant_conv -> decoder (diffusers VQModel's layout)."""

    family = "vq"
    bottleneck = CODEBOOK
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (128, 128, 256, 256, 512),
        layers_per_block: int = 2,
        latent_channels: int = 256,
        vq_embed_dim: int | None = None,
        norm_num_groups: int = 32,
        mid_block_add_attention: bool = True,
        sample_size: int = 256,
        scaling_factor: float = 0.18215,
        force_upcast: bool = True,
        quantizer: dict | None = None,  # {"kind": "vq", **options}; see latentae.quantizers
    ):
        super().__init__()
        common = dict(block_out_channels=block_out_channels, layers_per_block=layers_per_block,
                      norm_num_groups=norm_num_groups, mid_block_add_attention=mid_block_add_attention)
        dim = vq_embed_dim or latent_channels
        self.encoder = make_encoder(in_channels=in_channels, out_channels=latent_channels, double_z=False, **common)
        self.quant_conv = nn.Conv2d(latent_channels, dim, 1)
        self.quantize = build_quantizer(dim, quantizer or {"kind": "vq"})  # VQModel's name: codebook keys match
        self.post_quant_conv = nn.Conv2d(dim, latent_channels, 1)
        self.decoder = make_decoder(in_channels=latent_channels, out_channels=out_channels, **common)

    def _quantize(self, images: Tensor):
        return self.quantize(self.quant_conv(self.encoder(images)))

    def encode(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] -> quantized latents [B, vq_embed_dim, h, w] (what `decode` takes)."""
        return self._quantize(images).quantized

    def tokenize(self, images: Tensor) -> Tensor:
        """Images -> token indices [B, h, w] ([B, h, w, S] for residual quantizers)."""
        return self._quantize(images).indices

    def decode(self, latents: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(latents))

    def detokenize(self, indices: Tensor) -> Tensor:
        return self.decode(self.quantize.indices_to_codes(indices))

    def forward(self, images: Tensor) -> AutoencoderOutput:
        quant = self._quantize(images)
        return AutoencoderOutput(reconstruction=self.decode(quant.quantized), quant=quant, latent=quant.quantized)

    def last_layer(self) -> nn.Parameter:
        return self.decoder.conv_out.weight

    def encoder_last_layer(self) -> nn.Parameter:
        """The encoder's output weight (before quant_conv): loss.vf's adaptive weight compares gradient norms here."""
        return self.encoder.conv_out.weight
