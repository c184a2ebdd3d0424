"""Images in: webdataset shards, tars, pipe: URLs and plain folders, decoded robustly, for training,
evaluation and encoding. `latentae shards` (latentae/data/shards.py) writes the shards.

    from latentae.data import DataConfig, train_loader, eval_loader, read_shard, expand_urls, SkipCounter

Names load on first use, so importing the config (e.g. for `latentae --help`) does not import torch.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "DataConfig": "config", "DEFAULT_MAX_PIXELS": "config",
    "ALPHA_BACKGROUND": "decode", "IMAGE_EXTS": "decode", "decode_image": "decode",
    "BatchLoader": "train_stream", "TrainStream": "train_stream", "train_loader": "train_stream",
    "EvalLoader": "eval_stream", "EvalStream": "eval_stream", "eval_loader": "eval_stream",
    "SampleDecoder": "reading", "load_image": "reading", "read_shard": "reading",
    "REASONS": "skips", "SkipCounter": "skips", "SkipSample": "skips",
    "Source": "sources", "expand_sources": "sources", "expand_urls": "sources",
    "prepare_image": "transforms", "to_pil": "transforms", "to_tensor": "transforms",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"latentae.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'latentae.data' has no attribute {name!r}")


__all__ = sorted(_LAZY)
