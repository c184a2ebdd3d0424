"""Latent spaces that carry (almost) nothing about the image, built around a real model: the cases a
diffusability probe must not rank first (tests/test_probe.py, and BENCHMARKS.md's adversarial table).

  constant    the same latent for every image (the real encoder's latent of one fixed image)
  mean-colour each image's mean colour, repeated over the latent's channels and positions; decoded as that flat
              colour (the best any decoder can do with it)
  noise       i.i.d. N(0, 1) latents drawn per image, independent of it; decoded by the real decoder
  scaled      the real encoder's latents divided by `factor`, decoded after multiplying back: the same model,
              so a probe that standardizes latents must score it as the original

They behave as deterministic latentae models (encode / decode / forward), so the probe and
latentae.evaluation take them like any model.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from latentae.models.bottleneck import Bottleneck
from latentae.models.deterministic import deterministic_forward


class Degenerate(nn.Module):
    """`kind` (see the module docstring) around `model` (a latentae KL / deterministic model)."""

    KINDS = ("constant", "mean-colour", "noise", "scaled")
    bottleneck = Bottleneck("deterministic")  # whatever the model around which it is built

    def __init__(self, model, kind: str, *, factor: float = 20.0, seed: int = 0):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {', '.join(self.KINDS)}, got {kind!r}")
        self.model, self.kind, self.factor = model, kind, factor
        self.generator = torch.Generator().manual_seed(seed)
        self.family = model.family
        self.config = {}  # no pipeline normalization: the probe measures its own
        self.constant: Tensor | None = None
        with torch.no_grad():  # the encoder's downsampling factor, for decoding flat colours at image size
            self.downsampling = 64 // model.encode(torch.zeros(1, 3, 64, 64, dtype=model.dtype,
                                                               device=next(model.parameters()).device)).shape[-1]

    @property
    def dtype(self):
        return self.model.dtype

    def encode(self, images: Tensor) -> Tensor:
        if self.kind == "scaled":
            return self.model.encode(images) / self.factor
        shape = self.model.encode(images[:1]).shape[1:]
        if self.kind == "constant":
            if self.constant is None:
                self.constant = self.model.encode(images[:1])
            return self.constant.expand(len(images), *shape)
        if self.kind == "mean-colour":
            colour = images.mean((2, 3))  # [B, 3]
            return colour.repeat(1, -(-shape[0] // 3))[:, : shape[0], None, None].expand(-1, -1, *shape[1:])
        return torch.randn(len(images), *shape, generator=self.generator).to(images.device)

    def decode(self, latents: Tensor) -> Tensor:
        if self.kind == "scaled":
            return self.model.decode(latents * self.factor)
        if self.kind == "mean-colour":
            h, w = (n * self.downsampling for n in latents.shape[2:])
            return latents[:, :3].mean((2, 3), keepdim=True).expand(-1, -1, h, w)
        return self.model.decode(latents)

    def forward(self, images: Tensor) -> object:
        return deterministic_forward(self, images)
