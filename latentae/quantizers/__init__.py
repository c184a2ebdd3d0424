"""Quantizers, one file each, one uniform return (`QuantizerOutput`). Chosen by `kind` in the model config:

    quantizer: {kind: vq, codebook_size: 16384, codebook_dim: 8, l2_normalize: true}

Every other key is a keyword argument of the class (see its docstring); unknown keys are named in the error.
"""
from __future__ import annotations

import importlib
import inspect
import typing

from latentae.config import ConfigError, convert_value, unknown_key_error
from latentae.quantizers.base import QuantizerOutput, Quantizer

# kind -> (module, class); imported on use so one quantizer's import cost is not everyone's.
KINDS = {
    "vq": ("latentae.quantizers.vector", "VectorQuantizer"),
    "simvq": ("latentae.quantizers.simvq", "SimVQ"),
    "fsq": ("latentae.quantizers.fsq", "FSQ"),
    "lfq": ("latentae.quantizers.lfq", "LFQ"),
    "ibq": ("latentae.quantizers.ibq", "IBQ"),
    "bsq": ("latentae.quantizers.bsq", "BSQ"),
    "gumbel": ("latentae.quantizers.gumbel", "GumbelQuantizer"),
    "residual": ("latentae.quantizers.residual", "ResidualVQ"),
    "vqvae2": ("latentae.quantizers.two_level", "TwoLevelVQ"),
}


def quantizer_class(kind: str) -> type[Quantizer]:
    module, name = KINDS[kind]
    return getattr(importlib.import_module(module), name)


def check_quantizer_spec(spec: dict, where: str = "quantizer") -> dict:
    """`spec` with its values converted to the types the quantizer's keyword arguments declare; ConfigError
    naming the key when a key or a value does not fit the quantizer it names."""
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"config key '{where}.kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    cls = quantizer_class(kind)
    params = inspect.signature(cls).parameters
    hints = typing.get_type_hints(cls.__init__)
    valid = [p for p in params if p != "dim" and params[p].kind == inspect.Parameter.KEYWORD_ONLY]
    accepts_any = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())
    checked = {"kind": kind}
    for key, value in spec.items():
        if key == "kind":
            continue
        if key not in valid and not accepts_any:
            raise unknown_key_error(key, f"{where}.", valid + ["kind"])
        checked[key] = convert_value(value, hints[key], f"{where}.{key}") if key in hints else value
    return checked


def build_quantizer(dim: int, spec: dict) -> Quantizer:
    """The quantizer described by `spec` ({"kind": ..., **options}) for `dim` input channels."""
    spec = check_quantizer_spec(spec)
    options = {k: v for k, v in spec.items() if k != "kind"}
    try:
        return quantizer_class(spec["kind"])(dim, **options)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"quantizer {spec['kind']!r}: {e}") from None


__all__ = ["KINDS", "Quantizer", "QuantizerOutput", "build_quantizer", "check_quantizer_spec", "quantizer_class"]
