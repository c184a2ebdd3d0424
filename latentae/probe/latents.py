"""The latents the probe trains on: what each model's decoder consumes (KL: posterior means; VQ: quantized
codes) of the images at one fixed resolution, split train/val by position (the first `val_images` images of
the data's order are validation), and normalized to roughly unit scale per channel."""
from __future__ import annotations

import torch
from torch import Tensor

from latentae.data.config import DataConfig
from latentae.data.eval_stream import eval_loader
from latentae.errors import LatentaeError
from latentae.models.latent_norm import _flux2, denormalize, normalize, patchify, unpatchify
from latentae.options import PROBE_NORMALIZATIONS

NORMALIZATIONS = PROBE_NORMALIZATIONS  # the first is the default
# `config` is refused when the config's constants leave the training latents' std outside this range: they were
# not measured on this model (an export's default scaling_factor is SD's 0.18215), and at t = 0.5 the flow loss
# of latents of std s is ~4 s^2 / (1 + s^2), so an unmeasured factor ranks by latent scale.
CONFIG_STD_RANGE = (0.5, 2.0)


@torch.inference_mode()
def encode_images(model, data: str, *, resolution: int, max_images: int, batch_size: int,
                  keep: int) -> tuple[Tensor, Tensor]:
    """(latents [N, C, h, w] float32 CPU, the first `keep` images [keep, 3, H, W] in [-1, 1]) of the first
    `max_images` images of `data` (a folder, shards, tar, ...), center-cropped to `resolution` px by latentae's
    evaluation loader."""
    loader = eval_loader(DataConfig(val=data, resolution=resolution, num_workers=0), batch_size=batch_size)
    device = next(model.parameters()).device
    latents, images, kept = [], [], 0
    for batch in loader.first(max_images):
        x = batch["image"]
        latents.append(model.encode(x.to(device=device, dtype=model.dtype)).float().cpu())
        if kept < keep:
            images.append(x[: keep - kept].float())
            kept += len(images[-1])
    if not latents:
        raise LatentaeError(f"{data}: no readable images")
    return torch.cat(latents), torch.cat(images)


class Normalization:
    """Model latents -> probe latents and back. `kind` says where the map comes from: "config": the model's
    pipeline normalization (scaling/shift, latents_mean/std, or FLUX.2's patchify + batch-norm statistics,
    latentae.models.latent_norm); "measured": the pipeline's layout (FLUX.2: patchified 2x2), then each channel
    standardized by the training split's own mean and std."""

    def __init__(self, kind: str, model, offset: Tensor | None = None, scale: Tensor | None = None):
        self.kind, self.model, self.offset, self.scale = kind, model, offset, scale
        self.patch = tuple(model.config["patch_size"]) if _flux2(model) else None

    def layout(self, z: Tensor) -> Tensor:
        return z if self.patch is None else patchify(z, self.patch)

    def __call__(self, z: Tensor) -> Tensor:
        return normalize(self.model, z) if self.kind == "config" else (self.layout(z) - self.offset) / self.scale

    def invert(self, z: Tensor) -> Tensor:
        if self.kind == "config":
            return denormalize(self.model, z)
        z = z * self.scale + self.offset
        return z if self.patch is None else unpatchify(z, self.patch)


def normalization(model, train: Tensor, kind: str) -> Normalization:
    """The probe's normalization of `model`'s latents (see Normalization); `config` only where the config's
    constants standardize `train` (CONFIG_STD_RANGE)."""
    if kind == "config":
        norm = Normalization(kind, model)
        std = norm(train).std().item()
        if not CONFIG_STD_RANGE[0] <= std <= CONFIG_STD_RANGE[1]:
            raise LatentaeError(
                f"--normalize config: the model's normalization constants give its latents a std of {std:.3g} "
                f"(expected {CONFIG_STD_RANGE[0]}-{CONFIG_STD_RANGE[1]}): they were not measured for this model, "
                "and the probe would rank latent scale. Measure them (`latentae stats --write`) or use "
                "--normalize measured")
        return norm
    if kind == "measured":
        z = Normalization(kind, model).layout(train)
        return Normalization(kind, model, offset=z.mean(dim=(0, 2, 3), keepdim=True),
                             scale=z.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8))
    raise LatentaeError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {kind!r}")


def split(latents: Tensor, val_images: int) -> tuple[Tensor, Tensor]:
    """(train, val): the first `val_images` latents are validation."""
    if len(latents) <= val_images:
        raise LatentaeError(f"the probe needs more than {val_images} images ({val_images} are held out for "
                            f"validation), got {len(latents)}")
    return latents[val_images:], latents[:val_images]
