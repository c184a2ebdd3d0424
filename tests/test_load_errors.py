"""Bad input to load/export: one clear message, from the API and from the CLI."""
import json

import pytest
import torch
from diffusers import UNet2DModel

import latentae
from latentae.cli import main
from latentae.errors import ModelFormatError
from latentae.models import KLAutoencoder

TINY = dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(ModelFormatError, match="not a model directory: no config.json"):
        latentae.load(tmp_path)


def test_missing_path():
    with pytest.raises(ModelFormatError, match="no such file or directory"):
        latentae.load("/nonexistent/vae")


def test_missing_weight_file_says_where(tmp_path):
    KLAutoencoder(**TINY).save_pretrained(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelFormatError, match="no weights: put diffusion_pytorch_model.safetensors beside it"):
        latentae.load(tmp_path)


def test_wrong_class(tmp_path):
    UNet2DModel(block_out_channels=(8, 16), norm_num_groups=8, sample_size=8,
                down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2).save_pretrained(tmp_path)
    with pytest.raises(ModelFormatError, match="holds a UNet2DModel, not an autoencoder"):
        latentae.load(tmp_path)


def test_pipeline_directory_finds_vae(tmp_path):
    KLAutoencoder(**TINY).save_pretrained(tmp_path / "vae")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    assert isinstance(latentae.load(tmp_path), KLAutoencoder)


def test_cli_export_and_errors(tmp_path, capsys):
    torch.manual_seed(0)
    KLAutoencoder(**TINY).save_pretrained(tmp_path / "src")
    assert main(["export", str(tmp_path / "src"), str(tmp_path / "out"), "--scaling-factor", "0.5"]) == 0
    assert "format AutoencoderKL" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "config.json").read_text())["scaling_factor"] == 0.5
    assert main(["export", str(tmp_path / "nothing"), str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file or directory" in err


def test_pickled_checkpoint_is_refused_with_advice(tmp_path):
    import argparse

    hyper = argparse.Namespace(lr=1e-4)  # the kind of object a Lightning checkpoint carries beside its tensors
    torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(1)}, "hyper_parameters": hyper},
               tmp_path / "lightning.ckpt")
    with pytest.raises(ModelFormatError, match="never unpickles.*safetensors"):
        latentae.load(tmp_path / "lightning.ckpt")


def test_unsupported_diffusers_autoencoder_is_named_with_what_is_supported(tmp_path):
    (tmp_path / "config.json").write_text('{"_class_name": "AutoencoderKLMochi", "latent_channels": 12}')  # a video VAE
    with pytest.raises(ModelFormatError) as err:
        latentae.load(tmp_path)
    message = str(err.value)
    assert "holds a diffusers AutoencoderKLMochi, an autoencoder latentae does not support" in message
    assert "not an autoencoder" not in message
    assert all(name in message for name in ("AutoencoderKL", "AutoencoderKLFlux2", "AutoencoderDC", "AutoencoderTiny",
                                            "VQModel", "KLAutoencoder", "VQTokenizer", ".ckpt"))
