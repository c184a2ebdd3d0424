"""Bytes -> PIL image: any format Pillow opens, EXIF orientation applied, every mode turned into 8-bit RGB.

Problems become `SkipSample` with a reason (see skips.py), never another exception.
"""
from __future__ import annotations

import io
import math
import warnings
from typing import Any, Mapping

import numpy as np
from PIL import Image, ImageOps

from latentae.data.skips import SkipSample

# Member / file extensions read as images, in order of preference when a sample holds several.
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "avif", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "pbm", "pnm",
              "jp2", "j2k", "tga")

# Transparent pixels are composited on white: a fixed colour, so the same file always gives the same tensor.
ALPHA_BACKGROUND = (255, 255, 255)


def pick_image(sample: Mapping[str, Any]) -> tuple[str, bytes]:
    """The image member of a webdataset sample dict (`{"__key__": .., "jpg": bytes, "json": bytes}`)."""
    for ext in IMAGE_EXTS:
        if ext in sample:
            return ext, sample[ext]
    members = sorted(k for k in sample if not k.startswith("__"))
    raise SkipSample("no_image", f"members: {', '.join(members) or 'none'}")


def open_image(data: bytes, *, max_pixels: int, min_side: int | None = None,
               draft_side: int | None = None) -> Image.Image:
    """Decode fully (so corrupt data fails here) and apply EXIF orientation; the mode is left as stored.

    min_side: skip images whose shorter side is below it (too_small) before paying for the decode.
    draft_side: JPEGs at least twice this on their shorter side are decoded at a reduced DCT scale that
    keeps the shorter side >= draft_side (several times faster for large photos that are resized anyway).
    """
    if not data:
        raise SkipSample("empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bomb warnings, odd metadata: handled or harmless
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise SkipSample("too_many_pixels", str(e)) from None
    except Exception as e:  # noqa: BLE001 - garbage bytes raise all kinds of errors
        raise SkipSample("decode_error", f"{type(e).__name__}: {e}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise SkipSample("too_many_pixels", f"{w}x{h} > {max_pixels} pixels")
    if min_side is not None and min(w, h) < min_side:
        raise SkipSample("too_small", f"{w}x{h}, shorter side < {min_side}")
    if draft_side and img.format == "JPEG" and min(w, h) >= 2 * draft_side:
        s = min(w, h)
        img.draft(None, (math.ceil(w * draft_side / s), math.ceil(h * draft_side / s)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
    except Exception as e:  # noqa: BLE001 - truncated / corrupt data
        raise SkipSample("decode_error", f"{type(e).__name__}: {e}") from None
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except Exception:  # noqa: BLE001 - a broken EXIF block is no reason to lose the pixels
        pass
    return img


def _full_scale(img: Image.Image) -> float:
    """The value that means white in a high-depth grayscale image ("I*" or "F" mode).

    Integer modes: 65535. "I;16*" is 16-bit by definition; "I" (32-bit) is what Pillow opens 16-bit PGM / PPM
    as (scaled to 0..65535), so 16-bit range as well. Floats ("F", e.g. 32-bit TIFF) carry no range: by their
    maximum (NaN and infinities ignored), 1 when no value exceeds 1 (the float image convention), else 255 when
    none exceeds 255 (8-bit data stored as floats), else 65535 (16-bit data). Not each image's own min-max:
    that would stretch every image to full contrast, changing the data. Linear-light HDR floats (above 1) are
    not tone-mapped: they read as 0..255 data, so convert them first.
    """
    if img.mode != "F":
        return 65535.0
    arr = np.asarray(img)
    finite = arr[np.isfinite(arr)]
    top = float(finite.max()) if finite.size else 0.0
    return 1.0 if top <= 1 else 255.0 if top <= 255 else 65535.0


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; alpha (RGBA, LA, palette or colour-key transparency) on ALPHA_BACKGROUND;
    high-depth grayscale ("I*", "F") scaled from its _full_scale, values outside clipped, NaN black."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I") or mode == "F":
        white = _full_scale(img)
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=white, neginf=0.0)
        gray = np.floor(np.clip(arr / white, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)  # rounded to nearest
        return Image.fromarray(gray).convert("RGB")
    if "transparency" in img.info and mode in ("P", "L", "RGB"):
        img = img.convert("RGBA")
    elif mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        out = Image.new("RGB", img.size, ALPHA_BACKGROUND)
        out.paste(img, mask=img.getchannel("A"))
        return out
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def decode_image(data: bytes, *, max_pixels: int, min_side: int | None = None,
                 draft_side: int | None = None) -> Image.Image:
    """Encoded bytes -> oriented 8-bit RGB image, or SkipSample."""
    return to_rgb(open_image(data, max_pixels=max_pixels, min_side=min_side, draft_side=draft_side))
