"""What the training and evaluation streams share (the sample decoder, this process's rank and DataLoader worker)
and the readers that run in the calling process: one shard in order, one image file."""
from __future__ import annotations

from typing import Iterator, Literal

import torch
from PIL import Image
from torch.utils.data import get_worker_info

from latentae.data.config import DEFAULT_MAX_PIXELS
from latentae.data.decode import decode_image, pick_image
from latentae.data.skips import SkipCounter, SkipSample
from latentae.data.sources import iter_samples, source_for
from latentae.data.transforms import prepare_image
from latentae.errors import LatentaeError


class SampleDecoder:
    """Raw webdataset sample -> (image extension, 8-bit RGB image) under the data limits, or SkipSample.
    fast_jpeg: decode large JPEGs at a reduced DCT scale that keeps the shorter side >= resolution."""

    def __init__(self, *, resolution: int | None, max_pixels: int, small_images: Literal["upscale", "skip"],
                 fast_jpeg: bool = False):
        self.max_pixels = max_pixels
        self.min_side = resolution if small_images == "skip" else None
        self.draft_side = resolution if fast_jpeg else None

    def __call__(self, sample: dict) -> tuple[str, Image.Image]:
        ext, data = pick_image(sample)
        img = decode_image(data, max_pixels=self.max_pixels, min_side=self.min_side, draft_side=self.draft_side)
        return ext, img


def worker_slot() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def check_rank(rank: int, world_size: int, batch_size: int) -> None:
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def read_shard(url: str, *, resolution: int | None, max_pixels: int = DEFAULT_MAX_PIXELS,
               small_images: Literal["upscale", "skip"] = "upscale",
               skipped: SkipCounter | None = None) -> Iterator[dict]:
    """Decoded samples of one tar / URL / image file, in stored order, in this process:
    `{"key": str, "url": str, "image": float32 [3, R, R] in [-1, 1] (whole image when resolution is None),
    "extras": {ext: bytes} (the sample's other members: json, txt, ...)}`. Bad samples are skipped and
    counted in `skipped`."""
    skipped = skipped if skipped is not None else SkipCounter()
    decoder = SampleDecoder(resolution=resolution, max_pixels=max_pixels, small_images=small_images)
    for sample in iter_samples(source_for(url), skipped):
        try:
            ext, img = decoder(sample)
        except SkipSample as e:
            skipped.add(e.reason, f"{sample['__url__']}:{sample['__key__']}", e.detail)
            continue
        extras = {k: v for k, v in sample.items() if not k.startswith("__") and k != ext}
        yield {"key": sample["__key__"], "url": sample["__url__"], "image": prepare_image(img, resolution),
               "extras": extras}


def load_image(path: str, resolution: int | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """One image file -> float32 [3, R, R] in [-1, 1] by the evaluation protocol (center crop), or the whole
    image when resolution is None. A missing or undecodable file raises LatentaeError."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise LatentaeError(f"cannot read image {path}: {e}") from None
    try:
        img = decode_image(data, max_pixels=max_pixels)
    except SkipSample as e:
        raise LatentaeError(f"cannot use image {path}: {e}") from None
    return prepare_image(img, resolution)
