"""Images in: webdataset shards, tars, pipe: URLs and plain folders, decoded robustly, for training,
evaluation and encoding. `latentae shards` (latentae/data/shards.py) writes the shards.

    from latentae.data import DataConfig, train_loader, eval_loader, read_shard, expand_urls, SkipCounter
"""
from latentae.data.config import DEFAULT_MAX_PIXELS, DataConfig
from latentae.data.decode import ALPHA_BACKGROUND, IMAGE_EXTS, decode_image
from latentae.data.reader import (BatchLoader, EvalStream, TrainStream, eval_loader, load_image, read_shard,
                                  train_loader)
from latentae.data.skips import REASONS, SkipCounter, SkipSample
from latentae.data.sources import Source, expand_sources, expand_urls
from latentae.data.transforms import prepare_image, to_pil, to_tensor

__all__ = [
    "ALPHA_BACKGROUND", "DEFAULT_MAX_PIXELS", "IMAGE_EXTS", "REASONS", "BatchLoader", "DataConfig", "EvalStream",
    "SkipCounter", "SkipSample", "Source", "TrainStream", "decode_image", "eval_loader", "expand_sources",
    "expand_urls", "load_image", "prepare_image", "read_shard", "to_pil", "to_tensor", "train_loader",
]

