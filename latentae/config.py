"""Typed configs: dataclasses filled from YAML and `key.sub=value` overrides, with errors that name the key.

Every section of a run is a dataclass. `load_config(Cls, "preset.yaml", ["model.latent_channels=16"])` reads
the YAML, applies the overrides, and builds `Cls`, checking every key and every value's type on the way, so a
typo fails before anything is built.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A config key or value is wrong; the message names it."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def unknown_key_error(key: str, where: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{where}{key}'.{hint} Valid keys here: {', '.join(sorted(valid))}")


def convert_value(value: Any, tp: Any, name: str) -> Any:
    """Check `value` against the annotation `tp` (converting lists to tuples and ints to floats)."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return convert_value(value, arg, name)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"config key '{name}': {value!r} is not a {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key '{name}': {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{name}': expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where=f"{name}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{name}': expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:  # fixed length, e.g. betas: (b1, b2)
            if len(value) != len(args):
                raise ConfigError(f"config key '{name}': expected {len(args)} values, got {len(value)}: {value!r}")
            return tuple(convert_value(v, t, f"{name}[{i}]") for i, (v, t) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [convert_value(v, item, f"{name}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{name}': expected a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML reads '1e-6' (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(tp, type) and not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"config key '{name}': expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    return value


def from_dict(cls: type, data: dict, where: str = ""):
    """Build dataclass `cls` from a plain dict; unknown keys and wrong types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{where.rstrip('.') or cls.__name__}' must be a mapping, got {data!r}")
    if hasattr(cls, "section_class"):  # a section whose keys depend on one of its values (model.family)
        cls = cls.section_class(data, where)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise unknown_key_error(key, where, list(fields))
    kwargs = {k: convert_value(v, hints[k], f"{where}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field without default
        raise ConfigError(f"config section '{where.rstrip('.') or cls.__name__}': {e}") from None


def to_dict(obj) -> dict:
    """Dataclass -> plain dict of YAML/JSON-able values (tuples become lists)."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(obj)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings to a nested dict (values parsed as YAML: 3, 1e-4, [1,2], true, null)."""
    data = yaml.safe_load(yaml.safe_dump(data)) or {}  # deep copy
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.max_steps=100)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            if not isinstance(node.setdefault(p, {}), dict):
                raise ConfigError(f"override '{item}': '{p}' is a value, not a section")
            node = node[p]
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return data


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def load_config(cls: type, source: str | Path | dict | None = None, overrides: list[str] | None = None):
    """YAML file (or dict) + dot-list overrides -> validated dataclass `cls`."""
    data = source if isinstance(source, dict) else read_yaml(source) if source else {}
    return from_dict(cls, apply_overrides(data, list(overrides or [])))
