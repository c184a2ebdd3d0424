"""Frozen foundation models as feature extractors of 8-bit images, for the metrics that compare inputs and
reconstructions in a pretrained network's feature space (FD-DINOv2, CMMD).

The network is a transformers class loaded from a HUB_MODELS entry of latentae.weights: the Hugging Face cache or a
local directory, downloaded only when online; offline, resolve_hub_model's MissingWeightsError names the files and
`latentae fetch-weights --only NAME`, and the evaluator reports the metric unavailable with that message. A missing
`transformers` package (ImportError) is reported the same way.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from latentae.errors import ModelFormatError
from latentae.weights import HUB_MODELS, resolve_hub_model


def load_hub_model(name: str, source: str | None, model_class: str, model_type: str) -> tuple[nn.Module, Path]:
    """(transformers `model_class` loaded from `source`, its directory); `source` is a local directory or a hub id
    (default: HUB_MODELS[name]'s), whose config.json must declare `model_type`."""
    import transformers  # ImportError: the metric is unavailable, with the reason

    directory = resolve_hub_model(name, source)
    found = json.loads((directory / "config.json").read_text()).get("model_type")
    if found != model_type:
        raise ModelFormatError(f"{HUB_MODELS[name].config_key}: {directory} holds a '{found}' model, not "
                               f"'{model_type}' (e.g. {HUB_MODELS[name].repo_id})")
    from transformers.utils import logging as hf_logging

    level, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # unused weights (CLIP's text tower) are expected; missing ones refused below
    hf_logging.disable_progress_bar()
    try:
        model, info = getattr(transformers, model_class).from_pretrained(str(directory), local_files_only=True,
                                                                       output_loading_info=True)
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()
    missing = sorted(info["missing_keys"])
    if missing:  # transformers would leave them random
        raise ModelFormatError(f"{HUB_MODELS[name].config_key}: {directory} lacks {len(missing)} weights of "
                               f"{model_class} ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    return model, directory


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
