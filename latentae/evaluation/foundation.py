"""Frozen foundation models as feature extractors of 8-bit images, for the metrics that compare inputs and
reconstructions in a pretrained network's feature space (FD-DINOv2, CMMD).

The network is a transformers class loaded from a HUB_MODELS entry of latentae.weights: the Hugging Face cache or a
local directory, downloaded only when online; offline, resolve_hub_model's MissingWeightsError names the files and
`latentae fetch-weights --only NAME`, and the evaluator reports the metric unavailable with that message. A missing
`transformers` package (ImportError) is reported the same way.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from latentae.weights import load_hub_model


class FrozenFeatures(nn.Module):
    """uint8 [B, 3, H, W] images -> features [B, d] through a frozen network: `preprocess` (the metric's reference
    resize and normalization) then `embed`, both given by the subclass. Always in eval mode, no gradients."""

    num_features: int  # d

    def __init__(self, hub_name: str, source: str | None, model_class: str, model_type: str):
        super().__init__()
        model, directory = load_hub_model(hub_name, source, model_class, model_type)
        self.model = model.eval().requires_grad_(False)
        self.weight_files = [str(directory.absolute())]

    def train(self, mode: bool = True) -> FrozenFeatures:
        """Always eval: a parent's `.train()` must not switch on dropout."""
        return super().train(False)

    def preprocess(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def embed(self, pixel_values: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return self.embed(self.preprocess(images))
