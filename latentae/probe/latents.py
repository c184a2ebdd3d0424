"""The latents the probe trains on: what each model's decoder consumes (KL: posterior means; VQ: quantized
codes) of the images at one fixed resolution, split train/val by position (the first `val_images` images of
the data's order are validation), and normalized to roughly unit scale per channel."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from latentae.data.config import DataConfig
from latentae.data.reader import eval_loader
from latentae.errors import LatentaeError
from latentae.inspect.latent_space import denormalize

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


@dataclass
class Normalization:
    """Per-channel affine map model latents -> probe latents: (z - offset) / scale; `kind` says where the
    constants came from ("config": the model's scaling/shift or latents_mean/std; "measured": the training
    split's own per-channel mean and std)."""
    kind: str
    offset: Tensor  # [1, C, 1, 1]
    scale: Tensor  # [1, C, 1, 1]

    def __call__(self, z: Tensor) -> Tensor:
        return (z - self.offset) / self.scale

    def invert(self, z: Tensor) -> Tensor:
        return z * self.scale + self.offset


def normalization(model, train: Tensor, kind: str) -> Normalization:
    """The probe's normalization of `model`'s latents. "config" inverts `denormalize` (the map diffusers
    pipelines apply, per-channel affine, so its coefficients are read off at 0 and 1); "measured"
    standardizes by the training latents' per-channel statistics."""
    if kind == "config":
        zero = torch.zeros(1, train.shape[1], 1, 1)
        offset = denormalize(model, zero)
        return Normalization(kind, offset, denormalize(model, zero + 1) - offset)
    if kind == "measured":
        return Normalization(kind, train.mean(dim=(0, 2, 3), keepdim=True),
                             train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8))
    raise LatentaeError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {kind!r}")


def split(latents: Tensor, val_images: int) -> tuple[Tensor, Tensor]:
    """(train, val): the first `val_images` latents are validation."""
    if len(latents) <= val_images:
        raise LatentaeError(f"the probe needs more than {val_images} images ({val_images} are held out for "
                            f"validation), got {len(latents)}")
    return latents[val_images:], latents[:val_images]
