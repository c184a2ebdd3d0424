"""Walking the latent space: interpolation (linear and spherical), arithmetic, and decodes of prior samples.

KL images are encoded to their posterior mean; VQ images to their quantized latents (interpolations then
leave the codebook, which shows how the decoder treats latents between codes).
"""
from __future__ import annotations

import torch
from torch import Tensor

from latentae.models.blocks import model_downsample_factor
from latentae.models.latent_norm import denormalize, normalized_shape


def lerp(a: Tensor, b: Tensor, t: float) -> Tensor:
    return (1 - t) * a + t * b


def slerp(a: Tensor, b: Tensor, t: float, eps: float = 1e-7) -> Tensor:
    """Spherical interpolation of whole latents (flattened): follows the shell Gaussian samples live on
    (White, "Sampling generative networks", 2016); linear when a and b are (anti)parallel."""
    fa, fb = a.flatten().double(), b.flatten().double()
    cos = torch.dot(fa, fb) / (fa.norm() * fb.norm()).clamp_min(eps)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if omega.abs() < 1e-4 or (torch.pi - omega).abs() < 1e-4:
        return lerp(a, b, t)
    so = torch.sin(omega)
    out = (torch.sin((1 - t) * omega) / so) * fa + (torch.sin(t * omega) / so) * fb
    return out.reshape(a.shape).to(a.dtype)


@torch.inference_mode()
def interpolate(model, image_a: Tensor, image_b: Tensor, steps: int = 8) -> dict[str, list[Tensor]]:
    """Decodes along the linear and spherical paths between two images' latents: {"linear": [...],
    "spherical": [...]}, each `steps` images [3, H, W] from A (t=0) to B (t=1)."""
    za, zb = model.encode(torch.stack([image_a, image_b])).unbind(0)
    ts = [i / (steps - 1) for i in range(steps)]
    out = {}
    for name, path in (("linear", lerp), ("spherical", slerp)):
        out[name] = list(model.decode(torch.stack([path(za, zb, t) for t in ts])).float().cpu())
    return out


@torch.inference_mode()
def arithmetic(model, a: Tensor, b: Tensor, c: Tensor) -> dict[str, Tensor]:
    """decode(z_a - z_b + z_c) next to the three reconstructions: {"a", "b", "c", "result"} images."""
    za, zb, zc = model.encode(torch.stack([a, b, c])).unbind(0)
    recs = model.decode(torch.stack([za, zb, zc, za - zb + zc])).float().cpu()
    return dict(zip(("a", "b", "c", "result"), recs.unbind(0)))



@torch.inference_mode()
def prior_samples(model, n: int, *, resolution: int, seed: int = 0, normalized: bool = False) -> list[Tensor]:
    """Decodes of `n` draws from the prior, `resolution` px square. KL: z ~ N(0, I), the prior the KL term
    pulls towards; with `normalized`, N(0, I) in the config's normalized space (see `denormalize`), i.e. the
    latent distribution the scaling constants claim. VQ: uniformly random token ids."""
    g = torch.Generator().manual_seed(seed)
    split = model.crop_multiple // model_downsample_factor(model)  # a side the 2x2 splits can take
    side = max(1, resolution // model.crop_multiple) * split
    if model.bottleneck.tokenizes:
        return list(model.detokenize(model.quantize.random_indices(n, side, side, generator=g)).float())
    shape = (int(model.config["latent_channels"]), side, side)
    if normalized:
        return list(model.decode(denormalize(model, torch.randn(n, *normalized_shape(model, *shape), generator=g)))
                    .float())
    return list(model.decode(torch.randn(n, *shape, generator=g)).float())
