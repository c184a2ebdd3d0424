"""Training model <-> diffusers modules, and `export(model, dir)`.

KL models become `AutoencoderKL` (`AutoencoderKLFlux2` with latent_norm: flux2); DC-AE and tiny models the
`AutoencoderDC` / `AutoencoderTiny` they hold; vector-quantizer tokenizers (vq, simvq) become `VQModel` with the quantizer's
normalization and projections folded in (unit-norm codebook, SimVQ's W(C), projections composed into quant_conv /
post_quant_conv), so tokens and decodes are identical; a SimVQ export re-imports as a plain `vq` tokenizer.
Quantizers `VQModel` cannot express (IBQ, BSQ, FSQ, LFQ, Gumbel, residual, two-level) are saved in latentae's own directory format:
config.json + safetensors, loaded by `latentae.load`.
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, AutoencoderKLFlux2, VQModel
from torch import Tensor, nn

from latentae.errors import ModelFormatError
from latentae.models import KLAutoencoder, VQTokenizer
from latentae.models.config import init_keys
from latentae.models.taesd import TAESDAutoencoder
from latentae.models.wrapped import WrappedAutoencoder

SIDE_FILE = "latentae.json"  # training-side facts diffusers' config.json must not carry (it warns on unknown keys)
VQMODEL_KINDS = ("vq", "simvq")  # nearest-code lookup in one codebook: what VQModel's quantizer computes
_DIFFUSERS_INTERNAL = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")


def _standard_blocks(config) -> dict:
    n = len(config["block_out_channels"])
    return dict(down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                act_fn="silu")


def _check_standard_blocks(config, cls_name: str) -> None:
    n = len(config["block_out_channels"])
    expected = _standard_blocks(config)
    for key in ("down_block_types", "up_block_types", "act_fn"):
        value = config.get(key, expected[key])
        value = tuple(value) if isinstance(value, list) else value
        if value != expected[key]:
            raise ModelFormatError(f"{cls_name} with {key}={value!r} is not the standard VAE architecture "
                                   f"(expected {expected[key]!r} for {n} levels)")
    if config.get("norm_type", "group") != "group":
        raise ModelFormatError(f"{cls_name} with norm_type={config['norm_type']!r} (MoVQ) is not supported")


def _fused_1x1(outer: nn.Conv2d | None, inner: nn.Linear | None, conv: nn.Conv2d) -> tuple[Tensor, Tensor]:
    """Weight and bias of one 1x1 conv computing outer(conv(x)) or conv(inner(x)) (Linear on channels)."""
    w, b = conv.weight[:, :, 0, 0], conv.bias
    if outer is not None:  # linear after conv: W_o (W x + b) + b_o
        w, b = outer.weight @ w, outer.weight @ b + outer.bias
    if inner is not None:  # conv after linear: W (W_i x + b_i) + b
        w, b = w @ inner.weight, w @ inner.bias + b
    return w[:, :, None, None].contiguous(), b.contiguous()


def _init_kwargs(cls, config) -> dict:
    """The entries of a diffusers config that `cls.__init__` takes."""
    takes = init_keys(cls)
    return {k: v for k, v in config.items() if k in takes}


# ---------------------------------------------------------------- KL
_FLUX2_ONLY = ("latent_norm", "decoder_block_out_channels", "batch_norm_eps", "batch_norm_momentum", "patch_size")


def kl_to_diffusers(model: KLAutoencoder) -> AutoencoderKL | AutoencoderKLFlux2:
    """AutoencoderKL, or AutoencoderKLFlux2 (with its `bn` statistics) for latent_norm: flux2."""
    config = {k: v for k, v in model.config.items() if k not in _DIFFUSERS_INTERNAL}
    if config.get("latent_norm") == "flux2":
        vae = AutoencoderKLFlux2(**_init_kwargs(AutoencoderKLFlux2, config), **_standard_blocks(config))
    else:
        vae = AutoencoderKL(**{k: v for k, v in config.items() if k not in _FLUX2_ONLY}, **_standard_blocks(config))
    vae.load_state_dict(model.state_dict(), strict=True)
    return vae


def kl_from_diffusers(vae: AutoencoderKL | AutoencoderKLFlux2) -> KLAutoencoder:
    name = type(vae).__name__
    _check_standard_blocks(vae.config, name)
    kwargs = _init_kwargs(KLAutoencoder, vae.config)
    if isinstance(vae, AutoencoderKLFlux2):  # its pipeline normalizes with `bn`, not with a scaling factor
        kwargs.update(latent_norm="flux2", scaling_factor=1.0)
    with torch.device("meta"):  # no random init to overwrite: loading an SD-size VAE stays fast
        model = KLAutoencoder(**kwargs)
    model.load_state_dict(vae.state_dict(), strict=True, assign=True)
    return model


# ---------------------------------------------------------------- VQ
def vq_to_diffusers(model: VQTokenizer) -> VQModel:
    spec = model.config["quantizer"] or {"kind": "vq"}
    if spec.get("kind") not in VQMODEL_KINDS:
        raise ModelFormatError(f"a {spec.get('kind')!r} quantizer has no VQModel equivalent; "
                               "export writes latentae's own format for it")
    q = model.quantize
    config = {k: v for k, v in model.config.items() if k not in _DIFFUSERS_INTERNAL + ("quantizer", "vq_embed_dim")}
    vq = VQModel(**config, **_standard_blocks(config), num_vq_embeddings=q.codebook_size,
                 vq_embed_dim=q.embedding.weight.shape[1], norm_type="group", lookup_from_codebook=True)
    state = {k: v for k, v in model.state_dict().items() if k.startswith(("encoder.", "decoder."))}
    with torch.no_grad():
        proj_in = getattr(q, "project_in", None)
        proj_out = getattr(q, "project_out", None)
        proj_in = proj_in if isinstance(proj_in, nn.Linear) else None
        proj_out = proj_out if isinstance(proj_out, nn.Linear) else None
        fused_in = _fused_1x1(proj_in, None, model.quant_conv)
        fused_out = _fused_1x1(None, proj_out, model.post_quant_conv)
        state["quant_conv.weight"], state["quant_conv.bias"] = fused_in
        state["post_quant_conv.weight"], state["post_quant_conv.bias"] = fused_out
        state["quantize.embedding.weight"] = q.codebook().detach().clone()
    vq.load_state_dict(state, strict=True)
    return vq


def vq_from_diffusers(vq: VQModel, quantizer_options: dict | None = None) -> VQTokenizer:
    """`quantizer_options` restores lookup behaviour recorded at export (e.g. l2_normalize)."""
    _check_standard_blocks(vq.config, "VQModel")
    init = _init_kwargs(VQTokenizer, vq.config)
    init["quantizer"] = {"kind": "vq", "codebook_size": vq.config["num_vq_embeddings"], **(quantizer_options or {})}
    init["vq_embed_dim"] = vq.config.get("vq_embed_dim") or vq.config["latent_channels"]
    model = VQTokenizer(**init)
    missing, unexpected = model.load_state_dict(vq.state_dict(), strict=False)
    if unexpected or any(not k.startswith("quantize.") for k in missing):  # usage/EMA buffers start fresh
        raise ModelFormatError(f"VQModel weights do not fit: missing {missing}, unexpected {unexpected}")
    return model


# ---------------------------------------------------------------- export
def to_diffusers(model):
    """The diffusers module computing the same function as `model` (AutoencoderKL / AutoencoderKLFlux2, VQModel,
    or the AutoencoderDC / AutoencoderTiny a wrapped model holds)."""
    if isinstance(model, KLAutoencoder):
        return kl_to_diffusers(model)
    if isinstance(model, VQTokenizer):
        return vq_to_diffusers(model)
    if isinstance(model, WrappedAutoencoder):
        return model.vae
    if isinstance(model, TAESDAutoencoder):
        return model.to_tiny()  # raises where AutoencoderTiny cannot hold it
    raise ModelFormatError(f"cannot convert {type(model).__name__} to diffusers")


def _obstacle(model) -> str | None:
    """Why no diffusers class computes the same function as `model` (None: one does, and export writes it)."""
    if isinstance(model, TAESDAutoencoder):
        return model.tiny_obstacle and f"AutoencoderTiny cannot hold this TAESD model ({model.tiny_obstacle})"
    if isinstance(model, KLAutoencoder):
        config = model.config
        decoder = config.get("decoder_block_out_channels")
        if config.get("latent_norm") != "flux2" and decoder is not None and \
                list(decoder) != list(config["block_out_channels"]):
            return ("AutoencoderKL cannot hold this KL model (its decoder has the encoder's widths; "
                    "decoder_block_out_channels takes latent_norm: flux2, AutoencoderKLFlux2)")
        return None
    if isinstance(model, VQTokenizer):
        kind = (model.config.get("quantizer") or {}).get("kind", "vq")
        return None if kind in VQMODEL_KINDS else f"VQModel has no {kind} quantizer"
    return None  # a wrapped model holds its diffusers module


def export(model, output_dir: str | Path, *, metadata: dict | None = None) -> Path:
    """Write `model` where diffusers (KL, vector VQ) or latentae (other quantizers) loads it; return the dir.

    `metadata` (e.g. training step, source run) goes to latentae.json beside config.json.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).float() if model.dtype != torch.float32 else model  # never cast the caller's model
    side = {"family": model.family, "metadata": metadata or {}}
    spec = model.config.get("quantizer") or {}
    obstacle = _obstacle(model)
    if obstacle is None:
        module = to_diffusers(model)
        side["format"] = type(module).__name__
        if isinstance(model, VQTokenizer):  # lookup and training options that a re-imported model keeps
            side["quantizer"] = {k: v for k, v in spec.items() if k in ("l2_normalize", "beta", "grad_estimator")}
        if isinstance(model, WrappedAutoencoder) and model.latentae_options:  # e.g. a structured latent's counts
            side["options"] = model.latentae_options
    else:
        if not isinstance(model, VQTokenizer):  # the other quantizers' format is latentae's by design: no news
            print(f"export: {obstacle}: written in latentae's format, which latentae.load opens", file=sys.stderr)
        module = model
        side["format"] = "latentae"
    module.save_pretrained(output_dir, safe_serialization=True)
    (output_dir / SIDE_FILE).write_text(json.dumps(side, indent=2) + "\n")
    return output_dir
