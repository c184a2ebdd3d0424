"""One config per family: its fields are its model class's constructor arguments; the family registry; the KL keys
diffusers' AutoencoderKL configs carry (latents_mean / latents_std) and a decoder of other widths."""
import dataclasses
import inspect
import json

import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderKLFlux2

import latentae
from latentae.config import ConfigError, load_config, to_dict
from latentae.exporting import export
from latentae.models import FAMILIES, KLConfig, ModelConfig, VQConfig, WrappedConfig, build_model, config_of
from latentae.models.config import config_keys

TINY = dict(block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8, sample_size=32)


def images(n=2, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("family", ["kl", "vq"])
def test_config_fields_are_the_constructor_arguments(family):
    config, model = FAMILIES[family].config, FAMILIES[family].model
    params = {k: p for k, p in inspect.signature(model.__init__).parameters.items() if k != "self"}
    assert [k for k in config_keys(config) if k != "family"] == list(params)
    for f in dataclasses.fields(config)[1:]:  # after family
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        expected = params[f.name].default
        if isinstance(expected, tuple) and isinstance(default, list):  # YAML lists
            expected = list(expected)
        if f.name == "quantizer":  # the constructor's None: a plain VQ
            expected = {"kind": "vq"}
        assert default == expected, f.name


def test_registry_names_every_family_once():
    assert all(issubclass(f.config, WrappedConfig) for f in FAMILIES.values() if f.name not in ("kl", "vq"))
    assert {f.model.family for f in FAMILIES.values()} == {"kl", "vq", "dc", "tiny", "taesd", "rae"}
    assert len({f.model for f in FAMILIES.values()}) == len(FAMILIES)


def test_yaml_builds_the_family_config():
    cfg = load_config(ModelConfig, {"family": "vq", "latent_channels": 8, "quantizer": {"kind": "fsq", "levels": [5]}})
    assert type(cfg) is VQConfig and cfg.block_out_channels == [128, 128, 256, 256, 512]  # VQ's own defaults
    assert type(ModelConfig()) is KLConfig and type(ModelConfig(family="tiny")) is WrappedConfig
    with pytest.raises(ConfigError, match="'model.family': 'gan' is not a model family.*kl: .*hunyuanimage: "):
        ModelConfig(family="gan")
    with pytest.raises(ConfigError, match="'model.latents_mean' does not apply to model.family=vq.*model.family kl"):
        ModelConfig(family="vq", latents_mean=[0.0])
    with pytest.raises(ConfigError, match="'model.diffusers' does not apply to model.family=kl"):
        ModelConfig(family="kl", diffusers={"latent_channels": 4})
    with pytest.raises(ConfigError, match="model.scaling_factor' does not apply to model.family=taesd.*"
                                          "TAESDAutoencoder's own keys under model.diffusers"):
        ModelConfig(family="taesd", scaling_factor=1.0)
    with pytest.raises(ConfigError, match="model.diffusers.latent_chanels.*Did you mean 'latent_channels'"):
        ModelConfig(family="dc", diffusers={"latent_chanels": 4})


def test_kl_keys_checked():
    with pytest.raises(ConfigError, match="latents_mean' and 'model.latents_std' go together"):
        KLConfig(latents_mean=[0.0] * 4)
    with pytest.raises(ConfigError, match="latents_std' needs one value per latent channel"):
        KLConfig(latents_mean=[0.0] * 4, latents_std=[1.0] * 3)
    with pytest.raises(ConfigError, match="latents_mean' does not apply to model.latent_norm=flux2"):
        KLConfig(latent_norm="flux2", latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    with pytest.raises(ConfigError, match="decoder_block_out_channels' needs one width per level"):
        KLConfig(**TINY, decoder_block_out_channels=[16])
    with pytest.raises(ConfigError, match=r"decoder_block_out_channels': \[12\] not divisible"):
        KLConfig(**TINY, decoder_block_out_channels=[12, 32])


def test_config_of_round_trips_every_built_family():
    for cfg in (KLConfig(**TINY, latents_mean=[0.1, 0.2, 0.3, 0.4], latents_std=[1.0, 2.0, 3.0, 4.0]),
                KLConfig(**TINY, latent_norm="flux2", decoder_block_out_channels=[32, 64]),
                VQConfig(**TINY, latent_channels=8, quantizer={"kind": "fsq", "levels": [5, 5, 5]}, vq_embed_dim=3)):
        assert to_dict(config_of(build_model(cfg))) == to_dict(cfg)
    taesd = config_of(build_model(ModelConfig(family="taesd", diffusers={"latent_channels": 4, "variant": "flux_2"})))
    assert taesd.family == "taesd" and taesd.diffusers["variant"] == "flux_2"  # with its class's defaults spelled out


def test_latent_statistics_export_and_load(tmp_path):
    mean, std = [0.1, -0.2, 0.3, 0.0], [1.5, 0.5, 2.0, 1.0]
    cfg = load_config(KLConfig, {**TINY, "latents_mean": mean, "latents_std": std, "scaling_factor": 1.0})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    export(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderKL" and config["latents_mean"] == mean and config["latents_std"] == std
    vae = AutoencoderKL.from_pretrained(tmp_path).eval()
    x = images()
    with torch.no_grad():
        assert torch.equal(model(x, sample_posterior=False).reconstruction, vae(x).sample)
    again = latentae.load(tmp_path)  # a fine-tuning run's init_from: the statistics stay
    assert to_dict(config_of(again)) == to_dict(cfg)


def test_wider_decoder_exports(tmp_path, capsys):
    x = images()
    flux2 = build_model(KLConfig(**TINY, latent_norm="flux2", decoder_block_out_channels=[32, 64])).eval()
    export(flux2, tmp_path / "flux2")
    vae = AutoencoderKLFlux2.from_pretrained(tmp_path / "flux2").eval()
    assert list(vae.config.decoder_block_out_channels) == [32, 64]
    with torch.no_grad():
        assert torch.equal(flux2.decode(flux2.encode(x)), vae.decode(vae.encode(x).latent_dist.mode()).sample)
    kl = build_model(KLConfig(**TINY, decoder_block_out_channels=[32, 64])).eval()
    export(kl, tmp_path / "kl")  # AutoencoderKL builds its decoder with the encoder's widths: latentae's format
    assert "AutoencoderKL cannot hold this KL model" in capsys.readouterr().err
    again = latentae.load(tmp_path / "kl")
    with torch.no_grad():
        assert torch.equal(kl(x, sample_posterior=False).reconstruction,
                           again(x, sample_posterior=False).reconstruction)
    same = build_model(KLConfig(**TINY, decoder_block_out_channels=[16, 32]))
    export(same, tmp_path / "same")  # the encoder's widths spelled out: AutoencoderKL holds it
    assert json.loads((tmp_path / "same" / "config.json").read_text())["_class_name"] == "AutoencoderKL"
