"""The image protocol shared by training, evaluation and encoding.

Resize so the shorter side equals the resolution (bicubic, antialiased when shrinking), crop a square
(random for training, centered for evaluation), optionally mirror, and map uint8 [0, 255] to float32
[-1, 1] as `value / 127.5 - 1`. Evaluation is `prepare_image(img, resolution)`: center crop, no flip.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Scale so that min(width, height) == size, keeping the aspect ratio (upscales small images)."""
    w, h = img.size
    if min(w, h) == size:
        return img
    if w <= h:
        new = (size, max(size, round(h * size / w)))
    else:
        new = (max(size, round(w * size / h)), size)
    return img.resize(new, Image.Resampling.BICUBIC)


def crop_square(img: Image.Image, size: int, rng: random.Random | None = None) -> Image.Image:
    """A size x size crop: centered, or uniformly placed when `rng` is given. Needs both sides >= size."""
    w, h = img.size
    if rng is None:
        left, top = (w - size) // 2, (h - size) // 2
    else:
        left, top = rng.randint(0, w - size), rng.randint(0, h - size)
    return img.crop((left, top, left + size, top + size))


def to_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit RGB image -> float32 [3, H, W] in [-1, 1]."""
    arr = np.array(img, dtype=np.uint8)  # a copy: torch wants a writable buffer
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def to_pil(image: torch.Tensor) -> Image.Image:
    """float [3, H, W] in [-1, 1] -> 8-bit RGB image (the inverse of to_tensor, rounding to nearest)."""
    arr = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).numpy())


def prepare_image(img: Image.Image, resolution: int | None, *, random_crop: bool = False, hflip: bool = False,
                  rng: random.Random | None = None) -> torch.Tensor:
    """RGB image -> [3, R, R] tensor in [-1, 1] (the whole image, unresized, when resolution is None).

    random_crop / hflip draw from `rng`, which is then required: the caller owns the randomness so a
    stream can be replayed exactly.
    """
    if (random_crop or hflip) and rng is None:
        raise ValueError("random_crop and hflip need an rng")
    if resolution is not None:
        img = crop_square(resize_shorter(img, resolution), resolution, rng if random_crop else None)
    if hflip and rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return to_tensor(img)
