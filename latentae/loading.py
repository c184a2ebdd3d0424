"""`latentae.load(path)`: open any autoencoder latentae knows, as a latentae model of its family.

Accepted: latentae exports, diffusers `AutoencoderKL` / `AutoencoderKLFlux2` (family kl), `VQModel` (vq),
`AutoencoderDC` (dc), `AutoencoderTiny` (tiny), `AutoencoderKLQwenImage` / `AutoencoderKLWan` /
`AutoencoderKLHunyuanImage` (kl, held untouched: latentae/models/image_vaes.py) and `AutoencoderRAE` (rae)
directories (also a pipeline directory with a `vae/` or `vqvae/` folder), original LDM / CompVis / taming single
files (.ckpt, .safetensors), and the TAESD family's own `<name>_encoder` / `<name>_decoder` files (taesd; see
latentae.models.taesd_files). Nothing is unpickled: safetensors, or `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from latentae import ldm
from latentae.errors import ModelFormatError
from latentae.exporting import SIDE_FILE, kl_from_diffusers, vq_from_diffusers
from latentae.models import WRAPPED_CLASSES, KLAutoencoder, ModelConfig, VQTokenizer, build_model
from latentae.models.taesd import TAESDAutoencoder
from latentae.models.taesd_files import find_taesd, load_taesd

_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth")
_LATENTAE_SAVED = {cls.__name__: cls for cls in (KLAutoencoder, VQTokenizer, TAESDAutoencoder)}  # classes saved as
# themselves (_class_name); wrapped models save their diffusers class


def model_dir(path: Path) -> Path:
    """`path`, or its `vae/` / `vqvae/` folder when `path` is a whole pipeline directory."""
    if (path / "config.json").is_file():
        return path
    for sub in ("vae", "vqvae"):  # a whole pipeline directory
        if (path / sub / "config.json").is_file():
            return path / sub
    raise ModelFormatError(f"{path} is not a model directory: no config.json. {SUPPORTED}")


def _is_diffusers_autoencoder(class_name: str) -> bool:
    import diffusers.models.autoencoders

    return class_name[:1].isupper() and hasattr(diffusers.models.autoencoders, class_name)


def _from_vq_model(path: Path):
    from diffusers import VQModel

    side = json.loads((path / SIDE_FILE).read_text()) if (path / SIDE_FILE).is_file() else {}
    return vq_from_diffusers(VQModel.from_pretrained(path), side.get("quantizer"))


def _from_kl(cls_name: str):
    def load_kl(path: Path):
        import diffusers

        return kl_from_diffusers(getattr(diffusers, cls_name).from_pretrained(path))
    return load_kl


def _from_wrapped(cls):
    def load_wrapped(path: Path):  # with latentae's own options an export keeps beside config.json
        side = json.loads((path / SIDE_FILE).read_text()) if (path / SIDE_FILE).is_file() else {}
        return cls.from_pretrained(path, options=side.get("options"))
    return load_wrapped


# The one place that maps a diffusers class to the latentae model that runs it (an adapter per family): the
# commands see only latentae models (latentae/models/families.py), never diffusers classes.
DIFFUSERS_ADAPTERS = {
    "AutoencoderKL": _from_kl("AutoencoderKL"),
    "AutoencoderKLFlux2": _from_kl("AutoencoderKLFlux2"),
    "VQModel": _from_vq_model,
    **{name: _from_wrapped(cls) for name, cls in WRAPPED_CLASSES.items()},
}
SUPPORTED = (f"latentae.load opens diffusers {', '.join(DIFFUSERS_ADAPTERS)} directories (standard VAE blocks for "
             f"the KL and VQ classes; a pipeline directory's vae/ or vqvae/), latentae exports ({', '.join(_LATENTAE_SAVED)}), "
             "LDM/taming .ckpt/.safetensors files and TAESD-family <name>_encoder / <name>_decoder "
             "(.safetensors/.pth) files")


def _load_dir(path: Path):
    path = model_dir(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ModelFormatError(f"{path / 'config.json'} is not valid JSON: {e}") from None
    name = config.get("_class_name")
    if name not in (*DIFFUSERS_ADAPTERS, *_LATENTAE_SAVED):
        if isinstance(name, str) and _is_diffusers_autoencoder(name):
            raise ModelFormatError(f"{path} holds a diffusers {name}, an autoencoder latentae does not support: "
                                   f"{SUPPORTED}")
        raise ModelFormatError(f"{path} holds a {name or 'model without _class_name'}, not an autoencoder: "
                               f"{SUPPORTED}")
    if not any((path / f).is_file() for f in _WEIGHT_FILES):
        raise ModelFormatError(f"{path} has config.json but no weights: put {_WEIGHT_FILES[0]} beside it")
    if name in _LATENTAE_SAVED:
        return _LATENTAE_SAVED[name].from_pretrained(path)
    return DIFFUSERS_ADAPTERS[name](path)


def load_ldm_checkpoint(path: Path, **overrides):
    """An LDM/taming single file; the architecture is read off the weight shapes (`overrides` adjust it,
    e.g. scaling_factor=0.13025 for SDXL, which the file does not record)."""
    try:
        state = ldm.strip_prefix(ldm.read_checkpoint(path))
        arch = ldm.infer_config(state)
    except (KeyError, RuntimeError, OSError, ValueError) as e:
        raise ModelFormatError(f"{path} is not a readable LDM autoencoder checkpoint: {e}") from None
    arch.update(overrides)
    model = build_model(ModelConfig(**arch))
    weights = ldm.ldm_to_diffusers(state)
    weights = {k: v for k, v in weights.items() if not k.startswith("loss.")}  # LDM keeps its LPIPS/D in the file
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.startswith("quantize.") or k.endswith("embedding.weight")]
    if missing or unexpected:
        raise ModelFormatError(f"{path}: weights do not match the inferred architecture "
                               f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model


def load(path: str | Path, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
         **ldm_overrides):
    """Open an autoencoder from `path` in eval mode; see the module docstring for what `path` may be."""
    path = Path(path)
    taesd = None if path.is_dir() and (path / "config.json").is_file() else find_taesd(path)
    if taesd and ldm_overrides:
        raise ModelFormatError(f"architecture overrides {sorted(ldm_overrides)} only apply to LDM files")
    if taesd:
        model = load_taesd(taesd)
    elif path.is_dir():
        if ldm_overrides:
            raise ModelFormatError(f"architecture overrides {sorted(ldm_overrides)} only apply to LDM files")
        model = _load_dir(path)
    elif path.is_file() and path.suffix in _CHECKPOINT_SUFFIXES:
        model = load_ldm_checkpoint(path, **ldm_overrides)
    elif path.exists():
        raise ModelFormatError(f"{path}: expected a model directory or a {'/'.join(_CHECKPOINT_SUFFIXES)} file")
    else:
        raise ModelFormatError(f"{path}: no such file or directory")
    if device is not None:
        model = model.to(device)
    if dtype is not None and dtype != model.dtype:
        model = model.to(dtype)
    return model.eval()
