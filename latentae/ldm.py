"""Original LDM / CompVis / taming single-file checkpoints <-> diffusers state-dict layout, both directions.

One rule table serves both directions, so the mapping round-trips exactly. The decoder's `up.i` counts from
the lowest resolution in LDM and `up_blocks.i` from the highest in diffusers: index N-1-i either way.
"""
from __future__ import annotations

import re

import torch
from torch import Tensor

# (LDM pattern, diffusers pattern); {i} is a level index, {j} a resnet index, {r} marks the reversed decoder index.
_RULES = [
    ("encoder.down.{i}.block.{j}.", "encoder.down_blocks.{i}.resnets.{j}."),
    ("encoder.down.{i}.downsample.", "encoder.down_blocks.{i}.downsamplers.0."),
    ("decoder.up.{r}.block.{j}.", "decoder.up_blocks.{r}.resnets.{j}."),
    ("decoder.up.{r}.upsample.", "decoder.up_blocks.{r}.upsamplers.0."),
    ("{p}.mid.block_1.", "{p}.mid_block.resnets.0."),
    ("{p}.mid.block_2.", "{p}.mid_block.resnets.1."),
    ("{p}.mid.attn_1.norm.", "{p}.mid_block.attentions.0.group_norm."),
    ("{p}.mid.attn_1.q.", "{p}.mid_block.attentions.0.to_q."),
    ("{p}.mid.attn_1.k.", "{p}.mid_block.attentions.0.to_k."),
    ("{p}.mid.attn_1.v.", "{p}.mid_block.attentions.0.to_v."),
    ("{p}.mid.attn_1.proj_out.", "{p}.mid_block.attentions.0.to_out.0."),
    ("{p}.norm_out.", "{p}.conv_norm_out."),
]
# Renamed wherever they occur (inside any resnet): (LDM name, diffusers name).
_PARTS = [(".nin_shortcut.", ".conv_shortcut.")]
_SEGMENT = {"i": r"(?P<i>\d+)", "j": r"(?P<j>\d+)", "r": r"(?P<r>\d+)", "p": r"(?P<p>encoder|decoder)"}
_ATTN_LINEAR = re.compile(r"mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$")
_PREFIXES = ("first_stage_model.", "vae.")


def _compile(pattern: str) -> re.Pattern:
    regex = re.escape(pattern)
    for name, group in _SEGMENT.items():
        regex = regex.replace(re.escape("{" + name + "}"), group)
    return re.compile("^" + regex)


_LDM_TO_DIFFUSERS = [(_compile(a), b) for a, b in _RULES]
_DIFFUSERS_TO_LDM = [(_compile(b), a) for a, b in _RULES]


def _rename(key: str, rules, num_levels: int, to_diffusers: bool) -> str:
    for regex, template in rules:
        m = regex.match(key)
        if m:
            groups = m.groupdict()
            if "r" in groups:
                groups["r"] = str(num_levels - 1 - int(groups["r"]))
            key = template.format(**groups) + key[m.end():]
            break
    for ldm_part, diffusers_part in _PARTS:
        key = key.replace(*((ldm_part, diffusers_part) if to_diffusers else (diffusers_part, ldm_part)))
    return key


def strip_prefix(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Keep the autoencoder's keys of a full SD checkpoint (`first_stage_model.`) or a `vae.` dump."""
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return dict(state_dict)


def num_levels_ldm(state_dict: dict[str, Tensor]) -> int:
    levels = {int(m.group(1)) for k in state_dict if (m := re.match(r"encoder\.down\.(\d+)\.", k))}
    return max(levels) + 1 if levels else 0


def ldm_to_diffusers(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """LDM keys -> diffusers keys; 1x1-conv attention projections become Linear weights."""
    n = num_levels_ldm(state_dict)
    out = {}
    for key, value in state_dict.items():
        new = _rename(key, _LDM_TO_DIFFUSERS, n, to_diffusers=True)
        if _ATTN_LINEAR.search(new) and value.ndim == 4:
            value = value[:, :, 0, 0]
        out[new] = value
    return out


def diffusers_to_ldm(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """diffusers keys -> LDM keys; Linear attention weights become 1x1 convs again."""
    levels = {int(m.group(1)) for k in state_dict if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))}
    n = max(levels) + 1 if levels else 0
    out = {}
    for key, value in state_dict.items():
        if _ATTN_LINEAR.search(key) and value.ndim == 2:
            value = value[:, :, None, None]
        out[_rename(key, _DIFFUSERS_TO_LDM, n, to_diffusers=False)] = value
    return out


def infer_config(ldm_state_dict: dict[str, Tensor]) -> dict:
    """Architecture of an LDM/taming autoencoder read off its weight shapes (GroupNorm groups: LDM's 32)."""
    sd = ldm_state_dict
    n = num_levels_ldm(sd)
    if n == 0 or "decoder.conv_in.weight" not in sd:
        raise KeyError("no 'encoder.down.N' / 'decoder.conv_in' keys: not an LDM autoencoder checkpoint")
    layers = len({k.split(".")[4] for k in sd if k.startswith("encoder.down.0.block.")})
    cfg = dict(
        in_channels=sd["encoder.conv_in.weight"].shape[1],
        out_channels=sd["decoder.conv_out.weight"].shape[0],
        block_out_channels=[sd[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] for i in range(n)],
        layers_per_block=layers,
        mid_block_add_attention="encoder.mid.attn_1.q.weight" in sd,
        norm_num_groups=32,
    )
    if "quantize.embedding.weight" in sd:  # taming VQGAN
        codes, dim = sd["quantize.embedding.weight"].shape
        cfg.update(family="vq", latent_channels=sd["post_quant_conv.weight"].shape[0], vq_embed_dim=dim,
                   quantizer={"kind": "vq", "codebook_size": codes})
    else:
        cfg.update(family="kl", latent_channels=sd["decoder.conv_in.weight"].shape[1],
                   use_quant_conv="quant_conv.weight" in sd, use_post_quant_conv="post_quant_conv.weight" in sd)
    return cfg


def read_checkpoint(path) -> dict[str, Tensor]:
    """State dict of a .safetensors or .ckpt/.pt/.pth file, never unpickling arbitrary objects."""
    from pathlib import Path

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            "it holds pickled Python objects besides tensors (e.g. a Lightning checkpoint's hyper-parameters), and "
            "latentae never unpickles; if you trust the file, re-save its state_dict as .safetensors "
            f"(torch.load(..., weights_only=False)). Detail: {str(e).splitlines()[0]}") from None
    return obj.get("state_dict", obj) if isinstance(obj, dict) else obj
