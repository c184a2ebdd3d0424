"""Tiled reconstruction: a large image goes through the encoder and the decoder in overlapping tiles, so memory
stays that of a tile whatever the image size.

Models holding a diffusers class with tiling (`vae.use_tiling`: AutoencoderKL-based, DC-AE, Tiny, Qwen-Image, Wan,
HunyuanImage) use diffusers' own, with its tile sizes. latentae's KLAutoencoder, VQTokenizer and TAESD models are
tiled here the way diffusers' AutoencoderKL does it: 512 px tiles overlapping by 128 px through the encoder, tiles
of 512 / f latent positions overlapping by 128 / f through the decoder, each seam blended linearly across the
overlap, in latent space (the KL moments, the tokenizer's pre-quantization latent, which is then quantized whole)
and in pixel space. Tiles see only their own pixels (convolution borders, GroupNorm statistics, attention), so the
result differs from the untiled one: measured in BENCHMARKS.md, "High-resolution evaluation in bounded memory".
TAESD models tile only their layers above the latent resolution (`latent_resolution_stages`); those at it see the
whole latent, so TAEF2's GroupNorm branch keeps its whole-image statistics. AutoencoderRAE reconstructs one fixed
size and is never tiled.

`auto` (the default) tiles images above TILE_ABOVE_PIXELS only where tiling was measured to leave the numbers as
they are (`tiles_proven`): the TAESD family, TAEF2 being within 0.02 dB of untiled (BENCHMARKS.md). The others
(GroupNorm and attention over each tile: 17.7 dB between tiled and untiled on a random-init KL model) are tiled on
request only (`on`).
"""
from __future__ import annotations

from contextlib import contextmanager
from fractions import Fraction
from typing import Callable

import torch
from torch import Tensor

from latentae.errors import LatentaeError
from latentae.options import TILE_ABOVE_PIXELS, TILING
from latentae.models.output import AutoencoderOutput
from latentae.models.posterior import GaussianPosterior
TILE_PX, OVERLAP_PX = 512, 128  # latentae's own tiling, in pixels (diffusers' AutoencoderKL defaults for SD)
TAEF2_SEAMS = ("measured on TAEF2 (a Kodak photo upscaled to 2048 x 2048): 60.1 dB PSNR between tiled and untiled "
               "reconstructions (at most 4 levels of 255 apart), PSNR against the input 0.017 dB lower; its evaluation "
               "(PSNR, SSIM) peaked 466 MiB above the process's memory before it, LPIPS adding up to 919 MiB "
               "(BENCHMARKS.md)")


def evaluation_forward(model, images: Tensor) -> AutoencoderOutput:
    """The model's AutoencoderOutput as evaluation reconstructs: KL posteriors decode their mean."""
    return model(images, sample_posterior=False) if model.bottleneck.samples else model(images)


def tiling_kind(model) -> str | None:
    """"diffusers", "own", or None where the model cannot be tiled."""
    if hasattr(getattr(model, "vae", None), "use_tiling"):
        return "diffusers"
    if model.family in ("kl", "vq", "taesd") and not hasattr(model, "vae"):
        return "own"
    return None


def tiles_proven(model) -> bool:
    """Whether `model`'s tiles were measured to match its untiled reconstruction (so `auto` may tile it): latentae's
    tiling of the TAESD family, whose layers at the latent resolution see the whole latent."""
    return tiling_kind(model) == "own" and hasattr(model, "latent_resolution_stages")


def use_tiling(model, images: Tensor, tiling: str) -> bool:
    """Whether `tiled_forward` reconstructs `images` under --tiling `tiling` (auto: above TILE_ABOVE_PIXELS, where
    `tiles_proven`; on: wherever the model can be tiled)."""
    if tiling not in TILING:
        raise ValueError(f"tiling must be one of {TILING}, got {tiling!r}")
    if tiling == "off":
        return False
    if tiling == "auto":
        return images.shape[-2] * images.shape[-1] > TILE_ABOVE_PIXELS and tiles_proven(model)
    if tiling_kind(model) is None:
        raise LatentaeError(f"{type(getattr(model, 'vae', model)).__name__} cannot be evaluated in tiles: "
                            "use --tiling auto or off")
    return True


def describe_tiling(model) -> str:
    if tiling_kind(model) == "diffusers":
        return f"diffusers' {type(model.vae).__name__} tiling (enable_tiling, its own tile sizes and blending)"
    f = model.downsample_factor
    tiles = (f"latentae's tiling: encoder tiles {TILE_PX} px overlapping {OVERLAP_PX} px, decoder tiles "
             f"{TILE_PX // f} latent positions overlapping {OVERLAP_PX // f}, linear blending across each overlap; ")
    if tiles_proven(model):
        return tiles + ("the layers at the latent resolution run on the whole latent; " + TAEF2_SEAMS)
    return tiles + ("tiles differ from the untiled result (per-tile GroupNorm statistics and attention): on a "
                    "random-init f8 KL model at 2048 x 2048, 17.7 dB PSNR between tiled and untiled reconstructions "
                    "(BENCHMARKS.md)")


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one side: every tile - overlap, the last one flush with the end."""
    if size <= tile:
        return [0]
    return list(range(0, size - tile, tile - overlap)) + [size - tile]


def _ramp(length: int, lead: int, trail: int, device) -> Tensor:
    """A tile's blending weights along one side: rising over the overlap with the previous tile, falling over the
    next one's (never 0, so every output position has weight)."""
    w = torch.ones(length, device=device)
    if lead:
        w[:lead] = torch.arange(1, lead + 1, device=device) / (lead + 1)
    if trail:
        w[length - trail:] = torch.minimum(w[length - trail:],
                                           torch.arange(trail, 0, -1, device=device) / (trail + 1))
    return w


def tiled_map(fn: Callable[[Tensor], Tensor], x: Tensor, tile: int, overlap: int, scale: Fraction) -> Tensor:
    """`fn` over overlapping tiles of `x` [B, C, H, W] (`tile`, `overlap` in x's positions); its outputs, `scale`
    times the size (f for a decoder, 1 / f for an encoder), blended linearly over the overlaps (float32)."""
    h, w = x.shape[-2:]
    ys, xs = _starts(h, tile, overlap), _starts(w, tile, overlap)
    blend = int(overlap * scale)
    out = weight = None
    for y in ys:
        for x0 in xs:
            piece = fn(x[..., y:y + tile, x0:x0 + tile]).float()
            if out is None:
                out = piece.new_zeros(*piece.shape[:2], int(h * scale), int(w * scale))
                weight = piece.new_zeros(int(h * scale), int(w * scale))
            oy, ox = int(y * scale), int(x0 * scale)
            ph, pw = piece.shape[-2:]
            wy = _ramp(ph, blend if y else 0, blend if y != ys[-1] else 0, x.device)
            wx = _ramp(pw, blend if x0 else 0, blend if x0 != xs[-1] else 0, x.device)
            tile_weight = wy[:, None] * wx[None, :]
            out[..., oy:oy + ph, ox:ox + pw] += piece * tile_weight
            weight[oy:oy + ph, ox:ox + pw] += tile_weight
    return out / weight


@contextmanager
def _diffusers_tiling(vae):
    was = vae.use_tiling
    vae.use_tiling = True
    try:
        yield
    finally:
        vae.use_tiling = was


def tiled_forward(model, images: Tensor) -> AutoencoderOutput:
    """The evaluation forward (KL models: the posterior mean) of `model` on `images`, in tiles."""
    if tiling_kind(model) == "diffusers":
        with _diffusers_tiling(model.vae):
            return evaluation_forward(model, images)
    f = model.downsample_factor

    def encode(fn):
        return tiled_map(fn, images, TILE_PX, OVERLAP_PX, Fraction(1, f))

    def decode(latents, fn=model.decode):
        return tiled_map(fn, latents, TILE_PX // f, OVERLAP_PX // f, Fraction(f))

    if model.bottleneck.samples:  # the moments are blended, as diffusers' tiled_encode does
        posterior = GaussianPosterior(encode(lambda t: torch.cat([(p := model.posterior(t)).mean, p.logvar], 1)))
        return AutoencoderOutput(reconstruction=decode(posterior.mean), posterior=posterior, latent=posterior.mean)
    if model.bottleneck.tokenizes:  # codes are quantized after blending: a blend of two codes is no code
        quant = model.quantize(encode(lambda t: model.quant_conv(model.encoder(t))))
        return AutoencoderOutput(reconstruction=decode(quant.quantized), quant=quant, latent=quant.quantized)
    # the TAESD family: tiles above the latent resolution only, the layers at it see the whole latent
    (encode_above, encode_at), (decode_at, decode_above) = model.latent_resolution_stages()
    latents = encode_at(encode(encode_above))
    return AutoencoderOutput(reconstruction=decode(decode_at(latents), decode_above), latent=latents)
