"""Latent-space tools from the VAE literature, as PNG figures: interpolation (linear / spherical), latent
arithmetic, prior samples, KL per channel, codebook usage and an anomaly ranking. CLI: `latentae inspect`."""
from __future__ import annotations

SCORES = ("elbo", "recon")  # anomaly scores, see diagnostics.py (here: the CLI's parser needs no torch)

_LAZY = {
    "Scored": "diagnostics", "anomaly_scores": "diagnostics", "code_counts": "diagnostics",
    "kl_per_channel": "diagnostics", "bar_chart": "drawing", "image_grid": "drawing",
    "stack_vertically": "drawing", "arithmetic": "latent_space", "denormalize": "latent_space",
    "interpolate": "latent_space", "lerp": "latent_space", "prior_samples": "latent_space", "slerp": "latent_space",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"latentae.inspection.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'latentae.inspection' has no attribute {name!r}")


__all__ = ["SCORES", *sorted(_LAZY)]
