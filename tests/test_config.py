"""Typed configs: YAML + dot-list overrides; unknown keys and wrong types are named."""
from dataclasses import dataclass, field

import pytest

from latentae.config import ConfigError, apply_overrides, load_config, to_dict
from latentae.models import ModelConfig


@dataclass
class Inner:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass
class Outer:
    name: str = "run"
    steps: int = 10
    inner: Inner = field(default_factory=Inner)
    model: ModelConfig = field(default_factory=ModelConfig)


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 5\ninner:\n  lr: 1e-3\nmodel:\n  latent_channels: 16\n")
    cfg = load_config(Outer, path, ["inner.betas=[0.5, 0.9]", "model.block_out_channels=[32, 64]", "name=x"])
    assert cfg.steps == 5 and cfg.inner.lr == 1e-3 and cfg.inner.betas == (0.5, 0.9)
    assert cfg.model.latent_channels == 16 and cfg.model.block_out_channels == [32, 64] and cfg.name == "x"
    assert to_dict(cfg)["inner"]["betas"] == [0.5, 0.9]


def test_misspelled_key_named_with_valid_keys():
    with pytest.raises(ConfigError) as e:
        load_config(Outer, {"model": {"latent_chanels": 8}})
    msg = str(e.value)
    assert "model.latent_chanels" in msg and "latent_channels" in msg and "Did you mean" in msg
    with pytest.raises(ConfigError, match="inner.lrr"):
        load_config(Outer, {}, ["inner.lrr=3"])


def test_wrong_type_names_field():
    with pytest.raises(ConfigError, match="'steps'.*expected int"):
        load_config(Outer, {"steps": "ten"})
    with pytest.raises(ConfigError, match="model.family"):
        load_config(Outer, {"model": {"family": "gan"}})
    with pytest.raises(ConfigError, match=r"inner.betas\[1\]"):
        load_config(Outer, {}, ["inner.betas=[0.9, fast]"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["steps"])


def test_family_specific_keys_checked():
    with pytest.raises(ConfigError, match="model.quantizer.*family=kl"):
        ModelConfig(family="kl", quantizer={"kind": "vq"})
    with pytest.raises(ConfigError, match="model.use_quant_conv.*family=vq"):
        ModelConfig(family="vq", use_quant_conv=False, quantizer={"kind": "fsq"})
    with pytest.raises(ConfigError, match="model.quantizer.kind"):
        ModelConfig(family="vq", quantizer={"kind": "pq"})
    with pytest.raises(ConfigError, match="model.quantizer.codebook_sise.*codebook_size"):
        ModelConfig(family="vq", quantizer={"kind": "vq", "codebook_sise": 8})


def test_quantizer_options_are_typed():
    cfg = load_config(Outer, {"model": {"family": "vq", "quantizer": {"kind": "vq", "ema_decay": "1e-2",
                                                                     "codebook_size": 64}}})
    assert cfg.model.quantizer["ema_decay"] == 0.01  # YAML's '1e-2' string became the float the option declares
    with pytest.raises(ConfigError, match="model.quantizer.l2_normalize.*expected bool"):
        load_config(Outer, {"model": {"family": "vq", "quantizer": {"kind": "vq", "l2_normalize": "false"}}})
