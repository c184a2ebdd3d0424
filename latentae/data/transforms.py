"""The image protocol shared by training, evaluation and encoding.

Resize so the shorter side equals the resolution (bicubic, antialiased when shrinking), crop a square
(random for training, centered for evaluation), optionally mirror, and map uint8 [0, 255] to float32
[-1, 1] as `value / 127.5 - 1`. Evaluation is `prepare_image(img, resolution)`: center crop, no flip.
Native size (resolution None): no resize, the centered crop whose sides are multiples of the model's
downsampling factor (`center_crop_to_multiple`), so the model sees the whole image but for a few border pixels.
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


def center_crop_to_multiple(img: Image.Image, multiple: int) -> Image.Image:
    """The centered crop of `img` whose sides are the largest multiples of `multiple` that fit, no resize (an
    odd remainder leaves the extra pixel on the right / bottom). The image itself when it already fits."""
    w, h = img.size
    cw, ch = w - w % multiple, h - h % multiple
    if not (cw and ch):
        raise ValueError(f"a {w} x {h} image has no crop to a multiple of {multiple}")
    if (cw, ch) == (w, h):
        return img
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


def crop_description(resolution: int | None, multiple: int) -> str:
    """How `prepare_array(img, resolution, multiple=multiple)` crops, in words (recorded with results)."""
    if resolution is None:
        return f"native size: center crop to a multiple of {multiple} px, no resize"
    return (f"shorter side resized to {resolution} (bicubic, antialiased when shrinking; smaller images upscaled), "
            f"center square crop {resolution} x {resolution}")


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


def prepare_array(img: Image.Image, resolution: int | None, *, multiple: int = 1, random_crop: bool = False,
                  hflip: bool = False, rng: random.Random | None = None) -> np.ndarray:
    """RGB image -> float32 [3, R, R] in [-1, 1]; when resolution is None the whole image, unresized, center-
    cropped to a multiple of `multiple` (1: no crop).

    random_crop / hflip draw from `rng`, which is then required: the caller owns the randomness so a
    stream can be replayed exactly.
    """
    if (random_crop or hflip) and rng is None:
        raise ValueError("random_crop and hflip need an rng")
    if resolution is not None:
        img = resize_crop(img, resolution, rng if random_crop else None)
    elif multiple > 1:
        img = center_crop_to_multiple(img, multiple)
    if hflip and rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return to_array(img)


def prepare_image(img: Image.Image, resolution: int | None, *, multiple: int = 1, random_crop: bool = False,
                  hflip: bool = False, rng: random.Random | None = None) -> torch.Tensor:
    """prepare_array as a torch tensor. Evaluation protocol: `prepare_image(img, resolution)`."""
    return torch.from_numpy(prepare_array(img, resolution, multiple=multiple, random_crop=random_crop, hflip=hflip,
                                          rng=rng))
