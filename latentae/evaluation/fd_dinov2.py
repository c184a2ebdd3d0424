"""FD-DINOv2 (NVlabs edm2's `calculate_metrics.py`, the "torch" resize mode): the Fréchet distance between DINOv2
ViT-L/14 features of two image sets.

edm2's DINOv2 detector resizes the uint8 images as float32 [0, 255] to 224 x 224 (bicubic, antialiased), divides
by 255, normalizes with ImageNet's mean and std and keeps the final-normed CLS token (1024-d). Here the network is
transformers' Dinov2Model from facebook/dinov2-large (the Hugging Face port of `dinov2_vitl14`, which edm2 loads
with torch.hub; `pooler_output` is that CLS token), loaded as latentae.evaluation.foundation loads any frozen
feature network (`latentae fetch-weights --only dinov2`). The distance is FIDMetric's (torchmetrics' formula,
float64 statistics summed over ranks), edm2's formula on the same statistics (tests/test_fd_dinov2.py checks it
against a scipy reimplementation).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from latentae.evaluation.foundation import FrozenFeatures

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIZE = 224


class DINOv2Features(FrozenFeatures):
    """edm2's FD-DINOv2 features of uint8 [B, 3, H, W] images (see the module docstring)."""

    def __init__(self, source: str | None = None):  # a local directory or hub id; default facebook/dinov2-large
        super().__init__("dinov2", source, "Dinov2Model", "dinov2")
        self.num_features = self.model.config.hidden_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: Tensor) -> Tensor:
        x = F.interpolate(images.float(), size=(SIZE, SIZE), mode="bicubic", antialias=True) / 255
        return (x - self.mean) / self.std

    def embed(self, pixel_values: Tensor) -> Tensor:
        return self.model(pixel_values=pixel_values).pooler_output

    def describe(self) -> str:
        return (f"FD-DINOv2 (NVlabs edm2 protocol): the 8-bit images resized to {SIZE} x {SIZE} (bicubic, antialiased, "
                "on float32 [0, 255]), / 255, ImageNet mean/std, DINOv2 ViT-L/14 final-normed CLS features "
                f"({self.num_features}-d, transformers' Dinov2Model from {self.weight_files[0]}); Fréchet distance "
                "between inputs and reconstructions (torchmetrics' formula, float64 statistics)")
