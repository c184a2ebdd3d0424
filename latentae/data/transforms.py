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


def shorter_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) scaled so that the shorter side is `size`, keeping the aspect ratio."""
    if width <= height:
        return size, max(size, round(height * size / width))
    return max(size, round(width * size / height)), size


def resize_crop(img: Image.Image, size: int, rng: random.Random | None = None) -> Image.Image:
    """Resize so the shorter side is `size` (bicubic; upscales small images), then take a size x size crop:
    centered, or uniformly placed when `rng` is given. One resampling pass over the crop only: the same
    pixels as resizing the whole image and cropping, for less work."""
    w, h = img.size
    rw, rh = shorter_side_size(w, h, size)
    if rng is None:
        left, top = (rw - size) // 2, (rh - size) // 2
    else:
        left, top = rng.randint(0, rw - size), rng.randint(0, rh - size)
    if (rw, rh) == (w, h):
        return img.crop((left, top, left + size, top + size))
    sx, sy = rw / w, rh / h
    return img.resize((size, size), Image.Resampling.BICUBIC,
                      box=(left / sx, top / sy, (left + size) / sx, (top + size) / sy))


def to_array(img: Image.Image) -> np.ndarray:
    """8-bit RGB image -> float32 [3, H, W] in [-1, 1], as a numpy array.

    numpy, not torch: torch's intra-op threads stall badly when decoding processes share the CPUs.
    """
    out = np.empty((3, img.height, img.width), dtype=np.float32)
    np.divide(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1), np.float32(127.5), out=out, dtype=np.float32)
    out -= 1.0
    return out


def to_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit RGB image -> float32 tensor [3, H, W] in [-1, 1]."""
    return torch.from_numpy(to_array(img))


def to_pil(image: torch.Tensor) -> Image.Image:
    """float [3, H, W] in [-1, 1] -> 8-bit RGB image (the inverse of to_tensor, rounding to nearest)."""
    arr = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).numpy())


def prepare_array(img: Image.Image, resolution: int | None, *, random_crop: bool = False, hflip: bool = False,
                  rng: random.Random | None = None) -> np.ndarray:
    """RGB image -> float32 [3, R, R] in [-1, 1] (the whole image, unresized, when resolution is None).

    random_crop / hflip draw from `rng`, which is then required: the caller owns the randomness so a
    stream can be replayed exactly.
    """
    if (random_crop or hflip) and rng is None:
        raise ValueError("random_crop and hflip need an rng")
    if resolution is not None:
        img = resize_crop(img, resolution, rng if random_crop else None)
    if hflip and rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return to_array(img)


def prepare_image(img: Image.Image, resolution: int | None, *, random_crop: bool = False, hflip: bool = False,
                  rng: random.Random | None = None) -> torch.Tensor:
    """prepare_array as a torch tensor. Evaluation protocol: `prepare_image(img, resolution)`."""
    return torch.from_numpy(prepare_array(img, resolution, random_crop=random_crop, hflip=hflip, rng=rng))
