"""The image VAEs of current pipelines (AutoencoderKLQwenImage, AutoencoderKLWan, AutoencoderKLHunyuanImage,
AutoencoderRAE): opened by latentae.load with the outputs of their own diffusers class on the same input, exported
back weight for weight, normalized as their pipelines do, fine-tuned and compared beside another family."""
import json

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_run_overrides
from families import FAMILIES, IMAGE_VAES
from test_families import PRESET, images

import latentae
from latentae.cli import main
from latentae.errors import LatentaeError
from latentae.exporting import export
from latentae.models.latent_norm import denormalize, normalize


def own(vae, x):
    """What the diffusers class itself computes for images x in [-1, 1]: (posterior mean or latent, decode of it).
    Qwen-Image / Wan take [B, C, T, H, W] (an image is one frame); RAE works in [0, 1]."""
    if hasattr(vae, "temperal_downsample"):
        z = vae.encode(x[:, :, None]).latent_dist.mean
        return z[:, :, 0], vae.decode(z).sample[:, :, 0]
    out = vae.encode((x + 1) / 2 if type(vae).__name__ == "AutoencoderRAE" else x)
    if hasattr(out, "latent_dist"):
        z = out.latent_dist.mean
        return z, vae.decode(z).sample
    return out.latent, vae.decode(out.latent).sample * 2 - 1


@pytest.mark.parametrize("name", sorted(IMAGE_VAES))
def test_each_loads_with_the_outputs_of_its_own_class_and_exports_back(name, tmp_path):
    vae = IMAGE_VAES[name]().eval()
    vae.save_pretrained(tmp_path / "diffusers")
    model = latentae.load(tmp_path / "diffusers")
    x = images()
    with torch.no_grad():
        ref_z, ref = own(vae, x)
        z = model.encode(x)
        assert z.shape == (2, model.config["latent_channels"], 32 // model.downsample_factor,
                           32 // model.downsample_factor)
        torch.testing.assert_close(z, ref_z, rtol=0, atol=1e-5)
        torch.testing.assert_close(model.decode(z), ref, rtol=0, atol=1e-5)
        if hasattr(model, "posterior"):  # the class's own latent_dist: KL per channel, samples
            assert model.family == "kl"
            posterior = model.posterior(x)
            assert posterior.kl_per_channel().shape == (2, model.config["latent_channels"])
            out = model(x, sample_posterior=False)
            torch.testing.assert_close(out.reconstruction, ref, rtol=0, atol=1e-5)
        export(model, tmp_path / "export")
    again = type(vae).from_pretrained(tmp_path / "export")
    assert type(again) is type(vae)
    for key, value in vae.state_dict().items():  # every weight and buffer
        assert torch.equal(again.state_dict()[key], value), key
    with pytest.raises(LatentaeError) as e:  # a side off the factor (RAE: off its one image size): one clear error
        model.encode(images(size=33))
    assert "AutoencoderRAE reconstructs 32x32" in str(e.value) if name == "rae" else \
        f"multiples of {model.downsample_factor}" in str(e.value)


def test_qwenimage_normalization_and_stats_are_its_pipelines(tmp_path, demo_images, capsys):
    """normalize / denormalize are QwenImagePipeline's (z - latents_mean) * (1 / latents_std) and its inverse;
    `stats --write` at its defaults measures posterior samples (img2img's) and writes latents_mean / latents_std
    (the wan convention: Qwen-Image's config has no scaling_factor)."""
    from diffusers import AutoencoderKLQwenImage, QwenImagePipeline

    IMAGE_VAES["qwenimage"]().save_pretrained(tmp_path / "qwen")
    model = latentae.load(tmp_path / "qwen")
    z = torch.randn(2, 4, 6, 4)
    mean = torch.tensor(model.config["latents_mean"]).view(1, 4, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(model.config["latents_std"]).view(1, 4, 1, 1, 1)
    normalized = normalize(model, z)
    assert torch.equal(normalized, ((z[:, :, None] - mean) * inv_std)[:, :, 0])
    assert torch.equal(denormalize(model, normalized), (normalized[:, :, None] / inv_std + mean)[:, :, 0])
    packed = QwenImagePipeline._pack_latents(normalized, 2, 4, 6, 4)  # 2x2 latent patches: even sides
    assert torch.equal(QwenImagePipeline._unpack_latents(packed, 6 * 2, 4 * 2, 2)[:, :, 0], normalized)
    assert (model.downsample_factor, model.crop_multiple) == (2, 4)

    args = ["stats", "--model", str(tmp_path / "qwen"), "--data", str(demo_images), "--resolution", "32",
            "--precision", "fp32", "--max-images", "8"]
    assert main(args + ["--write"]) == 0
    out = capsys.readouterr().out
    assert "posterior samples: this model's default (QwenImageImg2ImgPipeline" in out and "wan convention" in out
    config = json.loads((tmp_path / "qwen" / "config.json").read_text())
    assert "scaling_factor" not in config and "shift_factor" not in config
    written = AutoencoderKLQwenImage.from_pretrained(tmp_path / "qwen").eval()
    from latentae.data import DataConfig, eval_loader

    batch = next(iter(eval_loader(DataConfig(resolution=32, num_workers=0), batch_size=8, source=str(demo_images))))
    with torch.no_grad():
        dist = written.encode(batch["image"][:, :, None]).latent_dist
    m, var = dist.mean.double(), dist.var.double()
    expected_mean = m.mean((0, 2, 3, 4))
    expected_std = ((m**2 + var).mean((0, 2, 3, 4)) - expected_mean**2).sqrt()  # sample moments: exact
    np.testing.assert_allclose(written.config.latents_mean, expected_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(written.config.latents_std, expected_std, rtol=1e-5, atol=1e-6)
    assert main(args + ["--convention", "sd", "--write"]) == 2  # no scaling_factor to hold it
    assert "AutoencoderKLQwenImage has no scaling_factor" in capsys.readouterr().err


def test_stats_defaults_of_the_other_classes(tmp_path, demo_images, capsys):
    """Wan: means (its video-to-video / image-to-video pipelines encode the argmax), wan convention;
    HunyuanImage: the sd convention (its pipeline divides by scaling_factor); RAE: --write refused (its encode
    normalizes with buffers in its weights)."""
    from diffusers import AutoencoderKLHunyuanImage

    for name in ("wan", "hunyuanimage", "rae"):
        IMAGE_VAES[name]().save_pretrained(tmp_path / name)
    args = ["--data", str(demo_images), "--resolution", "32", "--precision", "fp32", "--max-images", "4", "--write"]
    assert main(["stats", "--model", str(tmp_path / "wan"), *args]) == 0
    out = capsys.readouterr().out
    assert "posterior means: this model's default (WanVideoToVideoPipeline" in out and "wan convention" in out
    assert main(["stats", "--model", str(tmp_path / "hunyuanimage"), *args]) == 0
    assert "sd convention" in capsys.readouterr().out
    assert AutoencoderKLHunyuanImage.from_pretrained(tmp_path / "hunyuanimage").config.scaling_factor != 0.5
    before = (tmp_path / "rae" / "config.json").read_text()
    assert main(["stats", "--model", str(tmp_path / "rae"), *args]) == 2
    assert "buffers in its weights" in capsys.readouterr().err
    assert (tmp_path / "rae" / "config.json").read_text() == before


def test_commands_run_on_qwenimage(tmp_path, demo_images, capsys):
    """encode (posterior mean + logvar) -> decode, inspect kl (a posterior): nothing branches on the class."""
    from PIL import Image

    IMAGE_VAES["qwenimage"]().save_pretrained(tmp_path / "model")
    model = str(tmp_path / "model")
    assert main(["encode", "--model", model, "--data", str(demo_images), "--output", str(tmp_path / "latents"),
                 "--resolution", "32", "--precision", "fp32", "--quiet"]) == 0
    assert main(["decode", "--model", model, "--latents", str(tmp_path / "latents"), "--output",
                 str(tmp_path / "decoded"), "--precision", "fp32", "--quiet"]) == 0
    from latentae.data import DataConfig, eval_loader
    from latentae.data.transforms import to_pil

    first = next(iter(eval_loader(DataConfig(resolution=32, num_workers=0), batch_size=1, source=str(demo_images))))
    m = latentae.load(model)
    with torch.no_grad():
        expected = np.asarray(to_pil(m.decode(m.encode(first["image"]))[0]))
    decoded = sorted((tmp_path / "decoded").rglob("*.png"))
    assert len(decoded) == 24
    got = np.asarray(Image.open(next(p for p in decoded if p.stem == first["key"][0])))
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    assert main(["inspect", "kl", str(demo_images), "--model", model, "--resolution", "32",
                 "--output", str(tmp_path / "kl.png")]) == 0


def test_qwenimage_decoder_finetune_keeps_the_encoder(tmp_path, demo_images):
    """train.init_from an AutoencoderKLQwenImage directory, train.trainable=[vae.decoder], 2 steps: the export is
    the same class with encoder and quant_conv bit-identical, a moved decoder."""
    from diffusers import AutoencoderKLQwenImage

    from latentae.models import config_of
    from latentae.trainer.config import load_run_config
    from latentae.trainer.loop import Run

    vae = IMAGE_VAES["qwenimage"]()
    vae.save_pretrained(tmp_path / "pretrained")
    preset = yaml.safe_load(PRESET.read_text())
    del preset["model"]
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(preset))
    overrides = [o for o in tiny_run_overrides(tmp_path / "run", demo_images, f"train.init_from={tmp_path / 'pretrained'}",
                                               "train.trainable=[vae.decoder]", "train.max_steps=2",
                                               "train.checkpoint_every=100", "loss.disc.weight=0")
                 if not o.startswith(("model.", "loss.disc."))]
    run = Run(load_run_config(str(tmp_path / "ft.yaml"), overrides))
    assert config_of(run.model).family == "qwenimage"  # recognized; the run records it in resolved.yaml
    run.fit()
    tuned = AutoencoderKLQwenImage.from_pretrained(tmp_path / "run" / "export")
    for key, value in vae.state_dict().items():
        if key.startswith(("encoder.", "quant_conv.")):
            assert torch.equal(tuned.state_dict()[key], value), f"{key} changed"
    assert not torch.equal(tuned.decoder.conv_out.weight, vae.decoder.conv_out.weight)
    model = latentae.load(tmp_path / "run" / "export")  # the export loads again, and exports weight for weight
    export(model, tmp_path / "again")
    again = AutoencoderKLQwenImage.from_pretrained(tmp_path / "again")
    for key, value in tuned.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_eval_compares_qwenimage_with_a_kl_model(tmp_path, demo_images):
    IMAGE_VAES["qwenimage"]().save_pretrained(tmp_path / "qwen")
    FAMILIES["kl"]().save_pretrained(tmp_path / "kl")
    out = tmp_path / "cmp"
    assert main(["eval", "--model", str(tmp_path / "qwen"), "--model", str(tmp_path / "kl"), "--data",
                 str(demo_images), "--resolution", "32", "--metrics", "psnr,ssim", "--max-images", "4",
                 "--num-workers", "0", "--grids", "0", "--batch-size", "2", "--output", str(out)]) == 0
    rows = json.loads((out / "compare.json").read_text())["models"]
    assert [r["model"] for r in rows] == ["qwen", "kl"]
    assert rows[0]["latent_shape"] == [4, 16, 16] and rows[1]["latent_shape"] == [4, 16, 16]
    single = json.loads((out / "qwen" / "report.json").read_text())
    assert rows[0]["psnr"] == single["metrics"]["psnr"]
    assert len(single["metrics"]["kl_per_channel"]) == 4  # its posterior's KL, per channel
