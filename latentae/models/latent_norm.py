"""The map diffusers pipelines apply between an autoencoder's latents and the diffusion model's (normalized)
latents, read off the model's config, one function pair for every family:

  flux2 (latent_norm: flux2)   2x2 patchify, then (z - bn.running_mean) / sqrt(bn.running_var + eps)  (FLUX.2)
  latents_mean / latents_std   (z - mean) * scaling_factor / std, per channel                        (SDXL-style;
                               Qwen-Image and Wan have no scaling_factor: (z - mean) * (1 / std), as
                               QwenImagePipeline / WanPipeline compute it)
  otherwise                    (z - shift_factor) * scaling_factor                                   (SD, SD3, FLUX.1,
                                                                                                     DC-AE, TAESD,
                                                                                                     HunyuanImage)
  normalizes_in_encode         none: its encode output already is the diffusion latent               (RAE: its own
                                                                                                     latents_mean /
                                                                                                     std buffers)
"""
from __future__ import annotations

import torch
from torch import Tensor


def patchify(z: Tensor, patch: tuple[int, int] = (2, 2)) -> Tensor:
    """[B, C, H, W] -> [B, C * ph * pw, H / ph, W / pw], channel-major as the FLUX.2 pipeline packs it."""
    b, c, h, w = z.shape
    ph, pw = patch
    if h % ph or w % pw:
        from latentae.errors import LatentaeError

        raise LatentaeError(f"latents of {h}x{w} cannot be patchified {ph}x{pw} (FLUX.2 normalization): crop images "
                            "to a multiple of the model's crop_multiple (downsampling factor x patch)")
    return z.reshape(b, c, h // ph, ph, w // pw, pw).permute(0, 1, 3, 5, 2, 4).reshape(b, c * ph * pw, h // ph, w // pw)


def unpatchify(z: Tensor, patch: tuple[int, int] = (2, 2)) -> Tensor:
    b, c, h, w = z.shape
    ph, pw = patch
    return z.reshape(b, c // (ph * pw), ph, pw, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // (ph * pw), h * ph, w * pw)


def _flux2(model) -> bool:
    return model.config.get("latent_norm") == "flux2"


def _bn_statistics(model, z: Tensor) -> tuple[Tensor, Tensor]:
    bn = model.bn
    mean = bn.running_mean.to(device=z.device, dtype=z.dtype).view(1, -1, 1, 1)
    std = torch.sqrt(bn.running_var + bn.eps).to(device=z.device, dtype=z.dtype).view(1, -1, 1, 1)
    return mean, std


def _affine(model, z: Tensor) -> tuple[Tensor | float, Tensor | float]:
    """(offset, scale) with normalized = (z - offset) * scale, for the non-flux2 conventions."""
    if getattr(model, "normalizes_in_encode", False):
        return 0.0, 1.0
    cfg = model.config
    scale = cfg.get("scaling_factor") or 1.0
    if cfg.get("latents_mean") is not None and cfg.get("latents_std") is not None:
        mean = torch.tensor(cfg["latents_mean"], dtype=z.dtype, device=z.device).view(1, -1, 1, 1)
        std = torch.tensor(cfg["latents_std"], dtype=z.dtype, device=z.device).view(1, -1, 1, 1)
        return mean, scale / std
    return cfg.get("shift_factor") or 0.0, scale


def normalize(model, z: Tensor) -> Tensor:
    """The model's latents -> what a diffusion model of its pipeline trains on."""
    if _flux2(model):
        z = patchify(z, tuple(model.config["patch_size"]))
        mean, std = _bn_statistics(model, z)
        return (z - mean) / std
    offset, scale = _affine(model, z)
    return (z - offset) * scale


def denormalize(model, z: Tensor) -> Tensor:
    """Normalized latents (what a diffusion model generates) -> the model's latents, as its pipeline decodes."""
    if _flux2(model):
        mean, std = _bn_statistics(model, z)
        return unpatchify(z * std + mean, tuple(model.config["patch_size"]))
    offset, scale = _affine(model, z)
    return z / scale + offset


def normalized_shape(model, channels: int, height: int, width: int) -> tuple[int, int, int]:
    """[C, h, w] of the normalized latents of a [channels, height, width] latent."""
    if _flux2(model):
        ph, pw = model.config["patch_size"]
        return channels * ph * pw, height // ph, width // pw
    return channels, height, width
