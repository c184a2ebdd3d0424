"""Datasets in latent space: encode images to latent / token shards, decode them back, and measure the
latent statistics diffusion pipelines normalize with.

    from latentae.latents import encode_dataset, write_manifest, iter_encoded, decode_encoded, latent_stats
"""
from __future__ import annotations

# Loaded on first use: importing the package costs no torch.
_LAZY = {
    "EncodeReport": "encode", "LatentEncoder": "encode", "encode_dataset": "encode", "write_manifest": "encode",
    "decode_encoded": "decode", "save_decoded": "decode", "iter_encoded": "format", "read_manifest": "format",
    "LatentStats": "stats", "latent_stats": "stats",
    "latent_stats_of_images": "stats", "write_normalization": "stats",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"latentae.latents.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'latentae.latents' has no attribute {name!r}")


__all__ = sorted(_LAZY)
