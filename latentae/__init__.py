"""latentae: train, evaluate and export the autoencoders latent generative models stand on."""
from __future__ import annotations

__version__ = "0.1.0"

# Heavy imports (torch, diffusers) happen on first use, so `latentae --help` stays fast.
_LAZY = {"load": "latentae.loading", "export": "latentae.exporting", "build_model": "latentae.models",
         "KLAutoencoder": "latentae.models", "VQTokenizer": "latentae.models", "ModelConfig": "latentae.models"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'latentae' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
