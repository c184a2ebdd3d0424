"""The latents the probe trains on: what each model's decoder consumes (KL: posterior means; VQ: quantized
codes) of the images at one fixed resolution, split train/val by position (the first `val_images` images of
the data's order are validation), and normalized to roughly unit scale per channel."""
from __future__ import annotations

import torch
from torch import Tensor

from latentae.data.config import DataConfig
from latentae.data.reader import eval_loader
from latentae.errors import LatentaeError
from latentae.models.latent_norm import denormalize, normalize

NORMALIZATIONS = ("config", "measured")


@torch.inference_mode()
def encode_images(model, data: str, *, resolution: int, max_images: int, batch_size: int) -> Tensor:
    """Latents [N, C, h, w] (float32, CPU) of the first `max_images` images of `data` (a folder, shards, tar,
    ...), center-cropped to `resolution` px by latentae's evaluation loader."""
    loader = eval_loader(DataConfig(val=data, resolution=resolution, num_workers=0), batch_size=batch_size)
    device = next(model.parameters()).device
    out = [model.encode(batch["image"].to(device=device, dtype=model.dtype)).float().cpu()
           for batch in loader.first(max_images)]
    if not out:
        raise LatentaeError(f"{data}: no readable images")
    return torch.cat(out)


class Normalization:
    """Model latents -> probe latents and back. `kind` says where the map comes from: "config": the model's
    pipeline normalization (scaling/shift, latents_mean/std, or FLUX.2's patchify + batch-norm statistics,
    latentae.models.latent_norm); "measured": standardizing each channel by the training split's own mean and
    std."""

    def __init__(self, kind: str, model=None, offset: Tensor | None = None, scale: Tensor | None = None):
        self.kind, self.model, self.offset, self.scale = kind, model, offset, scale

    def __call__(self, z: Tensor) -> Tensor:
        return normalize(self.model, z) if self.kind == "config" else (z - self.offset) / self.scale

    def invert(self, z: Tensor) -> Tensor:
        return denormalize(self.model, z) if self.kind == "config" else z * self.scale + self.offset


def normalization(model, train: Tensor, kind: str) -> Normalization:
    """The probe's normalization of `model`'s latents (see Normalization)."""
    if kind == "config":
        return Normalization(kind, model=model)
    if kind == "measured":
        return Normalization(kind, offset=train.mean(dim=(0, 2, 3), keepdim=True),
                             scale=train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8))
    raise LatentaeError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {kind!r}")


def split(latents: Tensor, val_images: int) -> tuple[Tensor, Tensor]:
    """(train, val): the first `val_images` latents are validation."""
    if len(latents) <= val_images:
        raise LatentaeError(f"the probe needs more than {val_images} images ({val_images} are held out for "
                            f"validation), got {len(latents)}")
    return latents[val_images:], latents[:val_images]
