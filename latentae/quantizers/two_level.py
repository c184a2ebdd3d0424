"""Two-level hierarchical quantization (VQ-VAE-2: Razavi, van den Oord and Vinyals 2019, "Generating Diverse
High-Fidelity Images with VQ-VAE-2", NeurIPS; arXiv 1906.00446).

The encoder's output z [B, dim, H, W] is the *bottom* feature map. A stride-2 top encoder turns it into the *top*
features at H/2 x W/2, which a first codebook quantizes (global structure). A top decoder upsamples the top codes
back to H x W; the bottom codebook quantizes a 1x1 mix of z and that upsampled top, so the bottom codes are
conditioned on the top ones and only have to add the local detail. The decoder receives a 1x1 merge of the
upsampled top codes and the bottom codes, with `dim` channels like every other quantizer's output (VQ-VAE-2
concatenates the two; the merge keeps the model's post_quant_conv unchanged).

As in the paper: stride-2 4x4 convolutions / transposed convolutions with ReLU residual blocks around the top
level, two codebooks of the same size, commitment beta 0.25, EMA codebooks with decay 0.99 (`ema_decay: null`
learns them by gradient instead). Each level is a `VectorQuantizer`, so every option of `vq` applies to both
(l2_normalize, codebook_dim, dead-code restart, k-means init, rotation trick) and their codebook statistics are
all-reduced over ranks as the plain quantizer's are.
Measured (BENCHMARKS.md, codebook study): with the paper's EMA codebooks alone, 2 x 1024 codes collapse to ~1%
usage at small scale; `dead_code_threshold: 1.0` keeps 90%+ in use (the vqvae2-f4 preset sets it).

Tokens are a (top, bottom) pair per bottom position: indices [B, H, W, 2], [..., 0] the top token of the 2x2
block the position lies in (so each top token appears 4 times), [..., 1] the bottom token. `split_tokens` gives
the two grids at their own resolutions ([B, H/2, W/2] and [B, H, W], what a two-level prior models) and
`pair_tokens` joins them back. Histogram statistics (usage, perplexity, entropy) are unchanged by the 4x
repetition; `tokens_per_position` lets the evaluation count a top token once in bits per pixel.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from latentae.config import ConfigError
from latentae.quantizers.base import Quantizer, QuantizerOutput, check_input, full_precision, project
from latentae.quantizers.vector import VectorQuantizer

TOP, BOTTOM = 0, 1


class _Residual(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))): VQ-VAE's residual block."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.block = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(hidden, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def _stack(*layers: nn.Module, residual_blocks: int, channels: int, hidden: int, tail: list[nn.Module]):
    return nn.Sequential(*layers, *(_Residual(channels, hidden) for _ in range(residual_blocks)), nn.ReLU(), *tail)


def split_tokens(indices: Tensor) -> tuple[Tensor, Tensor]:
    """Pair tokens [B, H, W, 2] -> (top [B, H/2, W/2], bottom [B, H, W])."""
    _check_pairs(indices)
    return indices[:, ::2, ::2, TOP].contiguous(), indices[..., BOTTOM].contiguous()


def pair_tokens(top: Tensor, bottom: Tensor) -> Tensor:
    """(top [B, H/2, W/2], bottom [B, H, W]) -> pair tokens [B, H, W, 2] (each top token over its 2x2 block)."""
    b, h, w = bottom.shape
    if top.shape != (b, h // 2, w // 2) or h % 2 or w % 2:
        raise ValueError(f"pair_tokens expects top [B, H/2, W/2] and bottom [B, H, W] with H, W even, got "
                         f"{tuple(top.shape)} and {tuple(bottom.shape)}")
    return torch.stack([top.repeat_interleave(2, 1).repeat_interleave(2, 2), bottom], dim=-1)


def _check_pairs(indices: Tensor) -> None:
    if indices.ndim != 4 or indices.shape[-1] != 2 or indices.shape[1] % 2 or indices.shape[2] % 2:
        raise ValueError(f"two-level tokens must have shape [B, H, W, 2] with H and W even, got "
                         f"{tuple(indices.shape)}")
    top = indices[..., TOP]
    if not torch.equal(top, top[:, ::2, ::2].repeat_interleave(2, 1).repeat_interleave(2, 2)):
        raise ValueError("two-level tokens: the top token [..., 0] must be the same over each 2x2 block "
                         "(build pairs with latentae.quantizers.two_level.pair_tokens)")


class TwoLevelVQ(Quantizer):
    """forward(z [B, dim, H, W], H and W even) -> QuantizerOutput with indices [B, H, W, 2] (top, bottom)."""

    spatial_multiple = 2  # the latent's sides must be even (the model's crop_multiple includes it)
    num_stages = 2  # token components per position (the evaluation's per-stage statistics: top, bottom)
    tokens_per_position = (0.25, 1.0)  # distinct tokens per bottom position: one top token per 2x2 block

    def __init__(
        self,
        dim: int,  # channels of the input z [B, dim, H, W]
        *,
        codebook_size: int = 512,  # codes per level (VQ-VAE-2: 512 each)
        hidden: int | None = None,  # channels of the top encoder / decoder (None: dim)
        residual_blocks: int = 2,  # residual blocks in the top encoder and in the top decoder (VQ-VAE-2: 2)
        residual_hidden: int | None = None,  # channels inside a residual block (None: hidden // 4, as VQ-VAE-2)
        ema_decay: float | None = 0.99,  # both codebooks: EMA updates (VQ-VAE-2) or null: learned by gradient
        **vq_options,  # the remaining VectorQuantizer options for both levels (beta, l2_normalize, ...)
    ):
        super().__init__()
        hidden = dim if hidden is None else hidden
        residual_hidden = max(1, hidden // 4) if residual_hidden is None else residual_hidden
        for name, value in (("hidden", hidden), ("residual_hidden", residual_hidden)):
            if value < 1:
                raise ConfigError(f"quantizer option '{name}' must be a positive integer, got {value}")
        if residual_blocks < 0:
            raise ConfigError(f"quantizer option 'residual_blocks' must be >= 0, got {residual_blocks}")
        self.dim = dim
        self.codebook_size = codebook_size
        blocks = dict(residual_blocks=residual_blocks, channels=hidden, hidden=residual_hidden)
        # z -> top features at half resolution (4x4 stride-2 convolution, 3x3, residual blocks)
        self.top_encoder = _stack(nn.Conv2d(dim, hidden, 4, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(hidden, hidden, 3, padding=1), **blocks, tail=[nn.Conv2d(hidden, dim, 1)])
        self.top = VectorQuantizer(dim, codebook_size=codebook_size, ema_decay=ema_decay, **vq_options)
        # top codes -> conditioning features at the bottom's resolution
        self.top_decoder = _stack(nn.Conv2d(dim, hidden, 3, padding=1), **blocks,
                                  tail=[nn.ConvTranspose2d(hidden, dim, 4, stride=2, padding=1)])
        self.bottom_in = nn.Conv2d(2 * dim, dim, 1)  # [z, decoded top] -> what the bottom codebook quantizes
        self.bottom = VectorQuantizer(dim, codebook_size=codebook_size, ema_decay=ema_decay, **vq_options)
        self.top_upsample = nn.ConvTranspose2d(dim, dim, 4, stride=2, padding=1)  # top codes for the decoder
        self.merge = nn.Conv2d(2 * dim, dim, 1)  # [upsampled top codes, bottom codes] -> the decoder's input

    def _combine(self, top_codes: Tensor, bottom_codes: Tensor) -> Tensor:
        """fp32 [upsampled top codes, bottom codes] -> the decoder's input, fp32."""
        return project(self.merge, torch.cat([project(self.top_upsample, top_codes), bottom_codes], dim=1))

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Pair tokens [B, H, W, 2] -> [B, dim, H, W], equal to forward's `quantized`."""
        top, bottom = split_tokens(indices)
        with full_precision(indices):
            codes = self._combine(self.top.indices_to_codes(top).float(), self.bottom.indices_to_codes(bottom).float())
        return codes.to(self.merge.weight.dtype)

    def random_indices(self, batch: int, height: int, width: int, generator: torch.Generator) -> Tensor:
        top = torch.randint(0, self.codebook_size, (batch, height // 2, width // 2), generator=generator)
        return pair_tokens(top, torch.randint(0, self.codebook_size, (batch, height, width), generator=generator))

    def forward(self, z: Tensor) -> QuantizerOutput:
        check_input(z, self.dim)
        if z.shape[2] % 2 or z.shape[3] % 2:
            raise ValueError(f"the two-level quantizer needs an even latent size (its top level is at half of it), "
                             f"got {z.shape[2]}x{z.shape[3]}: use images whose sides are a multiple of 2x the "
                             "model's downsampling factor")
        # fp32 throughout (autocast off), like every quantizer: under bf16 autocast the convolutions that choose
        # the codes would otherwise pick other tokens than the fp32 model and than indices_to_codes' decode
        with full_precision(z):
            x = z.float()
            top = self.top(project(self.top_encoder, x))
            condition = project(self.top_decoder, top.quantized)
            bottom = self.bottom(project(self.bottom_in, torch.cat([x, condition], dim=1)))
            quantized = self._combine(top.quantized, bottom.quantized)
        levels = (("top", top), ("bottom", bottom))
        losses = {f"{name}/{level}": value for level, out in levels for name, value in out.losses.items()}
        stats = {name: (top.stats[name] + bottom.stats[name]) / 2 for name in top.stats}
        stats.update({f"{name}/{level}": value for level, out in levels for name, value in out.stats.items()})
        return QuantizerOutput(quantized.to(z.dtype), pair_tokens(top.indices, bottom.indices), losses, stats)
