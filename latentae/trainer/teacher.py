"""Distillation (`train.teacher`): a small deterministic autoencoder (tiny / dc) learns a teacher's latent space,
TAESD's recipe (github.com/madebyollin/taesd). For every batch the frozen teacher encodes the images (KL: the
posterior mean) and normalizes them as its pipeline does (scaling / shift, latents_mean / std, or FLUX.2's patchify
+ bn statistics: latentae.models.latent_norm); the student's decoder reconstructs the images from those latents,
and its encoder is pulled to them (loss.distill_weight x L2). The result decodes the teacher's diffusion latents
directly (scaling_factor 1, shift 0), as a drop-in preview / fast decoder for that latent space.
"""
from __future__ import annotations

import torch
from torch import Tensor

from latentae.config import ConfigError
from latentae.models.latent_norm import normalize, normalized_shape


class Teacher:
    def __init__(self, source: str, student, device: torch.device):
        from latentae.loading import load

        if not student.bottleneck.distills:
            raise ConfigError(f"config key 'train.teacher' distills into model.family dc / tiny, not "
                              f"{student.family}")
        self.model = load(source, device=device).requires_grad_(False).eval()
        self.source = source
        if self.model.bottleneck.tokenizes:
            raise ConfigError(f"config key 'train.teacher': {source} is a tokenizer; distillation learns a continuous "
                              "latent space (a KL, FLUX.2, DC-AE or tiny teacher)")
        c = int(self.model.config["latent_channels"])
        side = 4 * self.model.downsample_factor  # 4 latent positions per side before normalization
        channels, h, _ = normalized_shape(self.model, c, 4, 4)
        factor = side // h
        want = (int(student.config["latent_channels"]), student.downsample_factor)
        if want != (channels, factor):
            raise ConfigError(f"config key 'train.teacher': {source} has normalized latents of {channels} channels at "
                              f"f{factor}; the student has {want[0]} latent channels at f{want[1]}: set them to match")

    @torch.no_grad()
    def targets(self, images: Tensor) -> Tensor:
        """The teacher's normalized latents of `images`, in the teacher's precision (fp32 unless cast)."""
        return normalize(self.model, self.model.encode(images.to(self.model.dtype))).float()
