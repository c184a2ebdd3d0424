"""Equivariance regularizers: decoding a transformed latent must give the same transform of the image.

    term = L_rec(T(x), D(T(z)))      z: the latent the decoder decoded (KL: the posterior sample; VQ: the codes)

L_rec is the main reconstruction's own pixel + perceptual terms, weights and reduction ('sum' sums over the
smaller image's elements, as the papers' code calls the same loss on it). Gradients reach the encoder (through z)
and the decoder: the point is to shape the latent space, not only to teach the decoder. The adversarial term stays
on the plain reconstruction. One function, `transformed_reconstruction`, serves both regularizers:

- EQ-VAE (Kouzelis et al. 2025, "EQ-VAE: Equivariance Regularized Latent Space for Improved Generative Image
  Modeling", arXiv:2502.09509; code github.com/zelaki/eqvae). With probability p = 0.5 per batch, T = downscale
  by s, drawn from {8/32, 9/32, ..., 31/32}, then rotate by k quarter turns, k from {1, 2, 3}; bilinear, no
  antialiasing, align_corners=False (the paper's code: `F.interpolate(..., mode='bilinear')`, `torch.rot90`).
  Differences, by design: the paper *replaces* that batch's reconstruction with the transformed one (so its GAN and
  discriminator see transformed images too); here the term is *added* with `weight`, so the plain reconstruction
  and its adaptive GAN weight stay as they are. In expectation the paper's objective is (1-p) L_rec + p L_eq and
  this one L_rec + weight p L_eq: the same ratio at weight = 1 / (1 - p) (2 at p = 0.5). Its "prior
  preservation" branch (plain autoencoding of downscaled images, p_prior_s) is not part of this term. The latent
  goes to floor(s h) x floor(s w) and the image to exactly that times the decoder's factor, so the two always
  match (the paper scales both by s, which can differ by a pixel when s h is fractional).
- Scale equivariance (Skorokhodov et al. 2025, "Improving the Diffusability of Autoencoders", ICML 2025,
  arXiv:2502.14831). T = bilinear downsampling by a factor f (the paper: 2x and 4x); the term is the mean over
  the configured factors, every batch (each costs 1/f^2 of a full decode, and no random draw is needed).

Random choices come from the global RNG, which the trainer seeds per (seed, rank, step) before the forward, so a
resumed run repeats them; nothing is drawn while a term is off.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from latentae.losses.config import EquivarianceConfig, ScaleEquivarianceConfig

Decode = Callable[[Tensor], Tensor]  # latent -> image (the model's decoder)
Reconstruction = Callable[[Tensor, Tensor], Tensor]  # (target, decoded) -> the weighted reconstruction loss


def transformed_sizes(latent_hw: tuple[int, int], image_hw: tuple[int, int],
                      scale: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """Sizes after downscaling by `scale`: the latent's floor(scale * side) (at least 1) and the image's, exactly
    the decoder's factor (image side / latent side) times the latent's."""
    latent = tuple(max(1, math.floor(side * scale)) for side in latent_hw)
    image = tuple(t * (big // small) for t, big, small in zip(latent, image_hw, latent_hw))
    return latent, image


def transform(latent: Tensor, images: Tensor, *, scale: float, quarter_turns: int) -> tuple[Tensor, Tensor]:
    """(T(latent), T(images)): bilinear downscaling (no antialiasing, align_corners=False), then rotation by
    `quarter_turns` x 90 degrees in the H, W plane."""
    latent_size, image_size = transformed_sizes(tuple(latent.shape[-2:]), tuple(images.shape[-2:]), scale)
    if latent_size != tuple(latent.shape[-2:]):
        latent = F.interpolate(latent, size=latent_size, mode="bilinear", align_corners=False)
        images = F.interpolate(images, size=image_size, mode="bilinear", align_corners=False)
    if quarter_turns % 4:
        latent = torch.rot90(latent, quarter_turns, dims=(-2, -1))
        images = torch.rot90(images, quarter_turns, dims=(-2, -1))
    return latent, images


def transformed_reconstruction(reconstruction: Reconstruction, decode: Decode, latent: Tensor, images: Tensor, *,
                               scale: float, quarter_turns: int = 0) -> Tensor:
    """L_rec(T(images), decode(T(latent)))."""
    t_latent, t_images = transform(latent.float(), images, scale=scale, quarter_turns=quarter_turns)
    return reconstruction(t_images, decode(t_latent).float())


def choice(options) -> float | int:
    """One of `options`, uniformly, from the global RNG."""
    return options[int(torch.randint(len(options), ()))]


def equivariance_loss(reconstruction: Reconstruction, decode: Decode, latent: Tensor, images: Tensor,
                      cfg: EquivarianceConfig) -> Tensor | None:
    """EQ-VAE's term for this batch, or None when the batch is not drawn (probability 1 - p)."""
    if float(torch.rand(())) >= cfg.p:
        return None
    return transformed_reconstruction(reconstruction, decode, latent, images, scale=choice(cfg.scales),
                                      quarter_turns=choice(cfg.rotations))


def scale_equivariance_loss(reconstruction: Reconstruction, decode: Decode, latent: Tensor, images: Tensor,
                            cfg: ScaleEquivarianceConfig) -> Tensor:
    """Skorokhodov et al.'s term: the mean over `cfg.factors` of the downsampled reconstruction loss."""
    terms = [transformed_reconstruction(reconstruction, decode, latent, images, scale=1 / f) for f in cfg.factors]
    return torch.stack(terms).mean()


def strongest_downscaling(loss_cfg) -> list[tuple[str, float]]:
    """(config key, smallest scale) of each active equivariance term of a LossConfig."""
    found = []
    if loss_cfg.equivariance.weight > 0:
        found.append(("loss.equivariance.scales", min(loss_cfg.equivariance.scales)))
    if loss_cfg.scale_equivariance.weight > 0:
        found.append(("loss.scale_equivariance.factors", 1 / max(loss_cfg.scale_equivariance.factors)))
    return found
