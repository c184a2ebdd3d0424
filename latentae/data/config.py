"""`data:` section of a run config: where images come from and how they become training tensors."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from latentae.config import ConfigError

# Pillow's own decompression-bomb threshold (it warns above this and refuses twice this).
DEFAULT_MAX_PIXELS = 89_478_485


@dataclass
class DataConfig:
    # training images: shard pattern (data-{00000..00099}.tar), tar, pipe: URL, image folder, glob, or a
    # comma-separated list of these
    train: str = ""
    # held-out images for evaluation, same forms as `train`; None: no validation source
    val: Optional[str] = None
    # side of the square crops (pixels); images are resized so their shorter side equals it
    resolution: int = 256
    # training crop position: random (True) or centered (False); evaluation always crops the center
    random_crop: bool = True
    # training only: mirror half of the crops left-right
    hflip: bool = True
    # DataLoader worker processes per rank (0: decode in the main process)
    num_workers: int = 4
    # images whose shorter side is below `resolution`: upscale them, or skip them (counted as too_small)
    small_images: Literal["upscale", "skip"] = "upscale"
    # decompression-bomb limit: images with more pixels are skipped (counted as too_many_pixels)
    max_pixels: int = DEFAULT_MAX_PIXELS
    # samples held (as encoded bytes) by each training worker's shuffle buffer; 1 disables shuffling
    shuffle_buffer: int = 1000
    # training only: decode JPEGs at least twice the resolution at a reduced DCT scale (2-4x faster on large
    # photos; the crops then differ slightly from the full decode + bicubic resize that evaluation uses)
    fast_jpeg: bool = False
    # training samples per worker between reseeds: resuming replays (decodes) at most this many per worker,
    # and each chunk refills the shuffle buffer, reading `shuffle_buffer` samples it never uses
    chunk_size: int = 4096

    def __post_init__(self):
        for name in ("resolution", "max_pixels", "shuffle_buffer", "chunk_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key 'data.{name}' must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ConfigError(f"config key 'data.num_workers' must be >= 0, got {self.num_workers}")
