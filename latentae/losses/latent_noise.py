"""Noise-robust decoding: the decoder also reconstructs the image from a heavily noised latent.

    z' = (1 - t) z + t * gamma * eps,   eps ~ N(0, I),   t ~ U[t_min, t_max] per sample
    term = L_rec(x, D(z'))

The interpolative form and its defaults (gamma 3, t ~ U[0, 1]) are those of l-DeTok (Yang et al. 2025, "Latent
Denoising Makes Good Visual Tokenizers", arXiv:2507.15856; code github.com/Jiawei-Yang/DeTok). Why this form and
not z + sigma * eps: it is the corruption the downstream flow-matching / diffusion model applies to the latents
(t = 1 is pure noise), so t spans every signal-to-noise ratio from clean to none with one bounded parameter, and
the latent is shrunk as the noise grows instead of keeping its full scale. l-DeTok's other corruption, masking
the encoder's input patches, belongs to its ViT encoder and is not part of this term.

z is the latent the decoder decoded (KL: the posterior sample), and gradients reach the encoder (through (1-t) z)
and the decoder, as in l-DeTok, which trains the whole tokenizer on the denoising task: the encoder learns latents
that stay decodable under corruption. Differences, by design: l-DeTok decodes *only* noised latents during
training (then fine-tunes the decoder on clean ones); here the term is added with `weight` to the plain
reconstruction, which stays. L_rec is the main reconstruction's pixel + perceptual terms; the adversarial term
stays on the plain reconstruction. t and eps come from the global RNG, seeded per (seed, rank, step) by the
trainer, so a resumed run repeats them; nothing is drawn while the term is off.
"""
from __future__ import annotations

import torch
from torch import Tensor

from latentae.losses.config import LatentNoiseConfig
from latentae.losses.equivariance import Decode, Reconstruction


def noised(latent: Tensor, cfg: LatentNoiseConfig) -> Tensor:
    """(1 - t) z + t * gamma * eps with t ~ U[t_min, t_max] per sample, in fp32."""
    latent = latent.float()
    t = torch.rand((latent.shape[0],) + (1,) * (latent.dim() - 1), device=latent.device)
    t = cfg.t_min + (cfg.t_max - cfg.t_min) * t
    eps = torch.randn(latent.shape, device=latent.device)
    return (1 - t) * latent + t * cfg.gamma * eps


def latent_noise_loss(reconstruction: Reconstruction, decode: Decode, latent: Tensor, images: Tensor,
                      cfg: LatentNoiseConfig) -> Tensor:
    """L_rec(images, decode(noised latent))."""
    return reconstruction(images, decode(noised(latent, cfg)).float())
