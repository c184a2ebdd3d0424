"""Every autoencoder family pipelines load today (AutoencoderKL, AutoencoderKLFlux2, AutoencoderDC, AutoencoderTiny):
opened by latentae.load with the outputs of their own diffusers class, exported back to that class, FLUX.2's
batch-norm latent statistics, and several models side by side on the same images."""
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import latentae
from conftest import tiny_run_overrides
from families import FAMILIES
from latentae.cli import main
from latentae.exporting import export
from latentae.models.latent_norm import denormalize, normalize

PRESET = Path(__file__).resolve().parents[1] / "configs" / "tiny-kl.yaml"


def images(n=2, size=32, seed=1):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def diffusers_latents(vae, x):
    """What the diffusers class itself encodes: the posterior mean, DC-AE's latent, TAESD's latents."""
    out = vae.encode(x)
    if hasattr(out, "latent_dist"):
        return out.latent_dist.mean
    return out.latent if hasattr(out, "latent") else out.latents


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_loads_with_the_outputs_of_its_own_class_and_exports_back(family, tmp_path):
    vae = FAMILIES[family]().eval()
    vae.save_pretrained(tmp_path / "diffusers")
    model = latentae.load(tmp_path / "diffusers")
    x = images()
    with torch.no_grad():
        ref_z = diffusers_latents(vae, x)
        ref = vae.decode(ref_z).sample
        z, rec = model.encode(x), model.decode(model.encode(x))
        # the same modules on the same inputs in one process: the fp32 bound (<= 1e-5), met exactly here
        torch.testing.assert_close(z, ref_z, rtol=0, atol=1e-5)
        torch.testing.assert_close(rec, ref, rtol=0, atol=1e-5)
        # and the other way round: latentae's model exported loads with the same diffusers class
        export(model, tmp_path / "export")
        again = type(vae).from_pretrained(tmp_path / "export").eval()
        assert type(again) is type(vae)
        torch.testing.assert_close(diffusers_latents(again, x), z, rtol=0, atol=1e-5)
        torch.testing.assert_close(again.decode(z).sample, rec, rtol=0, atol=1e-5)
        for name, value in vae.state_dict().items():  # every weight and buffer (FLUX.2's bn statistics too)
            assert torch.equal(again.state_dict()[name], value), name


def test_flux2_normalization_is_the_pipelines(tmp_path):
    """normalize / denormalize equal Flux2Pipeline's patchify + bn normalization and its inverse."""
    from diffusers import Flux2Pipeline

    vae = FAMILIES["flux2"]().eval()
    vae.save_pretrained(tmp_path)
    model = latentae.load(tmp_path)
    z = torch.randn(2, 8, 6, 4)
    patched = Flux2Pipeline._patchify_latents(z)
    mean = vae.bn.running_mean.view(1, -1, 1, 1)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
    normalized = normalize(model, z)
    assert torch.equal(normalized, (patched - mean) / std)
    assert torch.equal(denormalize(model, normalized), Flux2Pipeline._unpatchify_latents(normalized * std + mean))
    torch.testing.assert_close(denormalize(model, normalized), z, rtol=1e-6, atol=1e-6)  # fp32 (z-m)/s*s+m
    assert torch.equal(Flux2Pipeline._unpatchify_latents(patched), z)


@pytest.mark.parametrize("of", ["mean", "sample"])
def test_stats_write_fills_the_flux2_bn_statistics(of, tmp_path, demo_images, capsys):
    """`latentae stats --write` on an AutoencoderKLFlux2 directory: bn.running_mean / running_var equal a numpy
    computation over the patchified latents of the same images (posterior samples: exact moments from mean and
    logvar)."""
    from diffusers import AutoencoderKLFlux2

    FAMILIES["flux2"]().save_pretrained(tmp_path / "flux2")
    assert main(["stats", "--model", str(tmp_path / "flux2"), "--data", str(demo_images), "--resolution", "32",
                 "--of", of, "--write", "--precision", "fp32"]) == 0
    assert "flux2 convention" in capsys.readouterr().out
    written = AutoencoderKLFlux2.from_pretrained(tmp_path / "flux2")
    reference = FAMILIES["flux2"]().eval()
    from latentae.data import DataConfig, eval_loader

    batches = list(eval_loader(DataConfig(resolution=32, num_workers=0), batch_size=8, source=str(demo_images)))
    with torch.no_grad():
        dists = [reference.encode(b["image"]).latent_dist for b in batches]
    mean = np.concatenate([d.mean.numpy() for d in dists]).astype(np.float64)
    var = np.concatenate([d.var.numpy() for d in dists]).astype(np.float64)

    def patchify(a):  # [N, C, H, W] -> [N, 4C, H/2, W/2], channel-major (the pipeline's layout)
        n, c, h, w = a.shape
        return a.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, h // 2, w // 2)

    m, second = patchify(mean), patchify(mean**2 + (var if of == "sample" else 0.0))
    expected_mean = m.mean(axis=(0, 2, 3))
    expected_var = second.mean(axis=(0, 2, 3)) - expected_mean**2
    # float64 sums of fp32 latents in another order: the float32 rounding of the stored buffers dominates
    np.testing.assert_allclose(written.bn.running_mean.numpy(), expected_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(written.bn.running_var.numpy(), expected_var, rtol=1e-5, atol=1e-6)
    assert written.bn.running_mean.shape == (32,)


def test_stats_conventions_fit_the_family(tmp_path, demo_images, capsys):
    FAMILIES["flux2"]().save_pretrained(tmp_path / "flux2")
    assert main(["stats", "--model", str(tmp_path / "flux2"), "--data", str(demo_images), "--convention", "sd"]) == 2
    assert "flux2 is the convention of FLUX.2 models" in capsys.readouterr().err
    FAMILIES["dc"]().save_pretrained(tmp_path / "dc")  # deterministic: statistics of its latents, sd convention
    assert main(["stats", "--model", str(tmp_path / "dc"), "--data", str(demo_images), "--resolution", "32",
                 "--write", "--precision", "fp32"]) == 0
    from diffusers import AutoencoderDC

    assert AutoencoderDC.from_pretrained(tmp_path / "dc").config.scaling_factor != 0.4


def test_side_by_side_equals_single_evaluations(tmp_path, demo_images):
    """evaluate_many over several families equals each model's own evaluate, image for image."""
    from latentae.data import DataConfig, eval_loader
    from latentae.evaluation import evaluate, evaluate_many

    for name in ("kl", "tiny", "dc"):
        FAMILIES[name]().save_pretrained(tmp_path / name)
    models = {name: latentae.load(tmp_path / name) for name in ("kl", "tiny", "dc")}

    def loader():
        return eval_loader(DataConfig(resolution=32, num_workers=0), batch_size=5, source=str(demo_images))

    together = evaluate_many(models, loader(), metrics=("psnr", "ssim"), max_images=12, examples=3)
    for name, model in models.items():
        alone = evaluate(model, loader(), metrics=("psnr", "ssim"), max_images=12, examples=3)
        assert together[name].image_keys == alone.image_keys
        assert together[name].per_image == alone.per_image  # the same kernels on the same batches: equal
        assert together[name].metrics == alone.metrics
        assert torch.equal(together[name].examples["reconstruction"], alone.examples["reconstruction"])
    assert len({tuple(r.per_image["psnr"]) for r in together.values()}) == 3  # three different models


def test_eval_cli_compares_models(tmp_path, demo_images, capsys):
    for name in ("kl", "tiny"):
        FAMILIES[name]().save_pretrained(tmp_path / name)
    out = tmp_path / "cmp"
    assert main(["eval", "--model", str(tmp_path / "kl"), "--model", str(tmp_path / "tiny"), "--data",
                 str(demo_images), "--resolution", "32", "--metrics", "psnr,ssim", "--max-images", "6",
                 "--num-workers", "0", "--grids", "2", "--output", str(out)]) == 0
    import json

    rows = json.loads((out / "compare.json").read_text())["models"]
    assert [r["model"] for r in rows] == ["kl", "tiny"]
    assert rows[0]["latent_shape"] == [4, 16, 16] and rows[0]["compression"] == pytest.approx(3 * 32 * 32 / 1024)
    assert rows[1]["latent_shape"] == [4, 8, 8] and rows[1]["compression"] == pytest.approx(3 * 32 * 32 / 256)
    for r in rows:
        single = json.loads((out / r["model"] / "report.json").read_text())
        assert r["psnr"] == single["metrics"]["psnr"] and r["encode_ms_per_image"] > 0
    assert (out / "grid.png").is_file() and "| `tiny` | tiny |" in (out / "compare.md").read_text()


def test_flux2_decoder_finetune_keeps_the_encoder_and_statistics(tmp_path, demo_images):
    """The flux2-decoder-finetune preset's recipe from an AutoencoderKLFlux2 directory: encoder, quant_conv and
    the bn statistics bit-identical in the exported AutoencoderKLFlux2, the decoder moved."""
    from diffusers import AutoencoderKLFlux2

    vae = FAMILIES["flux2"]()
    vae.save_pretrained(tmp_path / "pretrained")
    preset = yaml.safe_load((PRESET.parent / "flux2-decoder-finetune.yaml").read_text())
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(preset))
    overrides = [o for o in tiny_run_overrides(tmp_path / "run", demo_images, f"train.init_from={tmp_path / 'pretrained'}",
                                               "train.max_steps=2", "train.checkpoint_every=100", "train.ema_decay=null",
                                               "loss.perceptual_weight=0")
                 if not o.startswith(("model.", "loss.disc."))]
    from latentae.trainer.config import load_run_config
    from latentae.trainer.loop import Run

    Run(load_run_config(str(tmp_path / "ft.yaml"), overrides)).fit()
    tuned = AutoencoderKLFlux2.from_pretrained(tmp_path / "run" / "export")
    for name, value in vae.state_dict().items():
        if name.startswith(("encoder.", "quant_conv.", "bn.")):
            assert torch.equal(tuned.state_dict()[name], value), f"{name} changed"
    assert not torch.equal(tuned.decoder.conv_out.weight, vae.decoder.conv_out.weight)


def test_flux2_preset_trains_from_scratch_and_exports_flux2(tmp_path, demo_images):
    from diffusers import AutoencoderKLFlux2

    from latentae.trainer.config import load_run_config
    from latentae.trainer.loop import Run

    overrides = tiny_run_overrides(tmp_path, demo_images, "train.max_steps=2", "model.latent_channels=8",
                                   "model.layers_per_block=1", "model.mid_block_add_attention=false",
                                   "loss.perceptual_weight=0")
    run = Run(load_run_config(str(PRESET.parent / "flux2-kl-f8c32.yaml"), overrides))
    run.fit()
    vae = AutoencoderKLFlux2.from_pretrained(tmp_path / "export").eval()
    x = images()
    with torch.no_grad():
        ours = run.model.eval()
        torch.testing.assert_close(vae.encode(x).latent_dist.mean, ours.encode(x), rtol=0, atol=1e-5)


def tiny_overrides(tmp_path, demo_images, *extra):
    """tiny_run_overrides without the kl-only model keys: a 2-block AutoencoderTiny (f2, 4 channels)."""
    return [o for o in tiny_run_overrides(tmp_path, demo_images, *extra) if not o.startswith("model.")] + [
        "model.family=tiny", "model.diffusers={encoder_block_out_channels: [16, 16], decoder_block_out_channels: "
        "[16, 16], num_encoder_blocks: [1, 1], num_decoder_blocks: [1, 1], latent_channels: 4}"]


def test_tiny_distillation_learns_the_teachers_latents(tmp_path, demo_images):
    """A few steps of taesd-distill against a random-init KL teacher lower the latent-matching loss on fixed images;
    the export is an AutoencoderTiny whose encoder gives the trained student's latents."""
    from diffusers import AutoencoderTiny

    from latentae.trainer.config import load_run_config
    from latentae.trainer.loop import Run

    FAMILIES["kl"]().save_pretrained(tmp_path / "teacher")
    teacher = latentae.load(tmp_path / "teacher")
    overrides = tiny_overrides(tmp_path / "run", demo_images, f"train.teacher={tmp_path / 'teacher'}",
                               "train.max_steps=12", "train.lr=2e-3", "train.warmup_steps=0", "loss.disc.weight=0",
                               "loss.perceptual_weight=0")
    run = Run(load_run_config(str(PRESET.parent / "taesd-distill.yaml"), overrides))
    x = images(4)
    with torch.no_grad():
        target = normalize(teacher, teacher.encode(x))

    def mismatch():
        with torch.no_grad():
            return torch.nn.functional.mse_loss(run.model.encode(x), target).item()

    before = mismatch()
    run.fit()
    after = mismatch()
    assert after < 0.5 * before, (before, after)
    tiny = AutoencoderTiny.from_pretrained(tmp_path / "run" / "export").eval()
    with torch.no_grad():
        torch.testing.assert_close(tiny.encode(x).latents, run.model.eval().encode(x), rtol=0, atol=1e-5)


def test_distillation_checks_the_latent_shapes(tmp_path, demo_images):
    from latentae.config import ConfigError
    from latentae.trainer.config import load_run_config
    from latentae.trainer.loop import Run

    FAMILIES["flux2"]().save_pretrained(tmp_path / "teacher")  # 8 channels -> 32 patchified at f4
    overrides = tiny_overrides(tmp_path / "run", demo_images, f"train.teacher={tmp_path / 'teacher'}",
                               "loss.perceptual_weight=0")
    with pytest.raises(ConfigError, match="32 channels at f4; the student has 4 latent channels at f2"):
        Run(load_run_config(str(PRESET.parent / "taesd-distill.yaml"), overrides))
    kl = tiny_run_overrides(tmp_path / "kl", demo_images, f"train.teacher={tmp_path / 'teacher'}")
    with pytest.raises(ConfigError, match="distills into model.family dc / tiny"):
        Run(load_run_config(str(PRESET), kl))


def test_dc_config_keys_pass_through_and_train(tmp_path, demo_images):
    from diffusers import AutoencoderDC

    from latentae.config import ConfigError
    from latentae.trainer.config import load_run_config
    from latentae.trainer.loop import Run

    keys = ("model.diffusers={latent_channels: 8, attention_head_dim: 8, encoder_block_types: [ResBlock, "
            "EfficientViTBlock], decoder_block_types: [ResBlock, EfficientViTBlock], encoder_block_out_channels: "
            "[16, 32], decoder_block_out_channels: [16, 32], encoder_layers_per_block: [1, 1], "
            "decoder_layers_per_block: [1, 1], encoder_qkv_multiscales: [[], [5]], decoder_qkv_multiscales: [[], [5]]}")
    base = [o for o in tiny_run_overrides(tmp_path, demo_images, "train.max_steps=2", "loss.perceptual_weight=0")
            if not o.startswith("model.")]
    with pytest.raises(ConfigError, match="model.diffusers.latent_chanels"):
        load_run_config(str(PRESET.parent / "dc-ae-f32c32.yaml"), base + ["model.diffusers.latent_chanels=8"])
    with pytest.raises(ConfigError, match="'model.layers_per_block' does not apply to model.family=dc"):
        load_run_config(str(PRESET.parent / "dc-ae-f32c32.yaml"), base + ["model.layers_per_block=1"])
    run = Run(load_run_config(str(PRESET.parent / "dc-ae-f32c32.yaml"), base + [keys]))
    run.fit()
    vae = AutoencoderDC.from_pretrained(tmp_path / "export").eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(vae.encode(x).latent).sample, run.model.eval()(x).reconstruction,
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["flux2", "dc", "tiny"])
def test_commands_run_on_every_family(family, tmp_path, demo_images, capsys):
    """encode -> decode (the images of model.decode(model.encode(x))), inspect prior / anomaly: no command branches
    on the diffusers class."""
    from PIL import Image

    FAMILIES[family]().save_pretrained(tmp_path / "model")
    model = str(tmp_path / "model")
    assert main(["encode", "--model", model, "--data", str(demo_images), "--output", str(tmp_path / "latents"),
                 "--resolution", "32", "--precision", "fp32", "--quiet"]) == 0
    assert main(["decode", "--model", model, "--latents", str(tmp_path / "latents"), "--output",
                 str(tmp_path / "decoded"), "--precision", "fp32", "--quiet"]) == 0
    decoded = sorted((tmp_path / "decoded").rglob("*.png"))
    assert len(decoded) == 24
    from latentae.data import DataConfig, eval_loader
    from latentae.data.transforms import to_pil

    first = next(iter(eval_loader(DataConfig(resolution=32, num_workers=0), batch_size=1, source=str(demo_images))))
    m = latentae.load(model)
    with torch.no_grad():
        expected = np.asarray(to_pil(m.decode(m.encode(first["image"]))[0]))
    got = np.asarray(Image.open(next(p for p in decoded if p.stem == first["key"][0])))
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # 8-bit rounding of equal decodes
    for tool in (["prior", "--normalized"], ["anomaly", str(demo_images)]):
        assert main(["inspect", *tool, "--model", model, "--resolution", "32",
                     "--output", str(tmp_path / f"{tool[0]}.png")]) == 0
        assert (tmp_path / f"{tool[0]}.png").is_file()
    if family != "flux2":  # KL per channel needs a posterior: one clear error
        assert main(["inspect", "kl", str(demo_images), "--model", model, "--resolution", "32",
                     "--output", str(tmp_path / "kl.png")]) == 2
        assert "needs a KL autoencoder" in capsys.readouterr().err


def test_tiny_decoder_finetune_from_a_diffusers_dir_keeps_the_encoder(tmp_path, demo_images):
    """train.init_from an AutoencoderTiny directory (whose config.json carries a key its class does not take) with
    train.trainable=[vae.decoder]: the exported AutoencoderTiny has the same encoder, a moved decoder."""
    from diffusers import AutoencoderTiny

    from latentae.trainer.config import load_run_config
    from latentae.trainer.loop import Run

    vae = FAMILIES["tiny"]()
    vae.save_pretrained(tmp_path / "pretrained")
    preset = yaml.safe_load((PRESET.parent / "taesd-distill.yaml").read_text())
    del preset["model"]
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(preset))
    overrides = [o for o in tiny_run_overrides(tmp_path / "run", demo_images, f"train.init_from={tmp_path / 'pretrained'}",
                                               "train.trainable=[vae.decoder]", "train.max_steps=2",
                                               "loss.perceptual_weight=0", "loss.disc.weight=0")
                 if not o.startswith(("model.", "loss.disc.channels", "loss.disc.start", "loss.disc.warmup"))]
    Run(load_run_config(str(tmp_path / "ft.yaml"), overrides)).fit()
    tuned = AutoencoderTiny.from_pretrained(tmp_path / "run" / "export")
    for name, value in vae.state_dict().items():
        if name.startswith("encoder."):
            assert torch.equal(tuned.state_dict()[name], value), f"{name} changed"
    assert any(not torch.equal(tuned.state_dict()[n], v) for n, v in vae.state_dict().items() if n.startswith("decoder."))


def test_native_crops_fit_the_2x2_splits(tmp_path, capsys):
    """FLUX.2's patchify and VQ-VAE-2's top level need even latent sides: native crops are multiples of
    crop_multiple (2 x the downsampling factor), so a 50-px image is cropped to 48 px, not to a 25-wide latent."""
    from PIL import Image

    from latentae.models import ModelConfig, build_model

    (tmp_path / "img").mkdir()
    Image.new("RGB", (50, 50), (120, 80, 40)).save(tmp_path / "img" / "a.png")
    FAMILIES["flux2"]().save_pretrained(tmp_path / "flux2")
    flux2 = latentae.load(tmp_path / "flux2")
    assert (flux2.downsample_factor, flux2.crop_multiple) == (2, 4)
    assert main(["stats", "--model", str(tmp_path / "flux2"), "--data", str(tmp_path / "img"), "--precision",
                 "fp32"]) == 0
    assert "144 positions per image" in capsys.readouterr().out  # 48 px -> 24 x 24 latent -> 12 x 12 patchified
    vq2 = build_model(ModelConfig(family="vq", block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8,
                                  latent_channels=8, quantizer={"kind": "vqvae2", "codebook_size": 8}))
    assert (vq2.downsample_factor, vq2.crop_multiple) == (2, 4)


def test_deterministic_families_stats_of_their_encoded_latents_and_checkpointing(tmp_path, demo_images, capsys):
    FAMILIES["dc"]().save_pretrained(tmp_path / "dc")
    assert main(["encode", "--model", str(tmp_path / "dc"), "--data", str(demo_images), "--output",
                 str(tmp_path / "latents"), "--resolution", "32", "--precision", "fp32", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["stats", "--model", str(tmp_path / "dc"), "--latents", str(tmp_path / "latents")]) == 0
    assert "latent statistics of posterior means: 24 images, 8 channels" in capsys.readouterr().out
    from latentae.config import ConfigError

    with pytest.raises(ConfigError, match="AutoencoderDC does not support gradient checkpointing"):
        latentae.load(tmp_path / "dc").enable_gradient_checkpointing()
    FAMILIES["tiny"]().save_pretrained(tmp_path / "tiny")
    tiny = latentae.load(tmp_path / "tiny")
    tiny.enable_gradient_checkpointing()  # train.gradient_checkpointing reaches the diffusers module
    assert tiny.vae.is_gradient_checkpointing


def test_teachers_that_cannot_distill_are_refused(tmp_path, demo_images):
    from latentae.config import ConfigError
    from latentae.trainer.config import load_run_config
    from latentae.trainer.loop import Run

    FAMILIES["kl"]().save_pretrained(tmp_path / "teacher")
    overrides = tiny_overrides(tmp_path / "run", demo_images, f"train.teacher={tmp_path / 'teacher'}",
                               "loss.perceptual_weight=0", "loss.vf.weight=0.1")
    with pytest.raises(ConfigError, match="'train.teacher' and 'loss.vf.weight' > 0 do not combine"):
        load_run_config(str(PRESET.parent / "taesd-distill.yaml"), overrides)
    from latentae.models import ModelConfig, build_model

    build_model(ModelConfig(family="vq", block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8,
                            latent_channels=4, quantizer={"kind": "vq", "codebook_size": 8})
                ).save_pretrained(tmp_path / "vq")
    overrides = tiny_overrides(tmp_path / "run2", demo_images, f"train.teacher={tmp_path / 'vq'}",
                               "loss.perceptual_weight=0")
    with pytest.raises(ConfigError, match="is a tokenizer"):
        Run(load_run_config(str(PRESET.parent / "taesd-distill.yaml"), overrides))


def test_flux2_stats_default_to_the_posterior_means_its_pipeline_normalizes(tmp_path, demo_images, capsys):
    """Flux2Pipeline encodes images to posterior means (argmax) and normalizes them with bn: after `stats --write`
    at its defaults, the pipeline's own _encode_vae_image gives latents of mean 0 and std 1 per channel."""
    from types import SimpleNamespace

    from diffusers import AutoencoderKLFlux2, Flux2Pipeline

    from latentae.data import DataConfig, eval_loader

    FAMILIES["flux2"]().save_pretrained(tmp_path / "flux2")
    assert main(["stats", "--model", str(tmp_path / "flux2"), "--data", str(demo_images), "--resolution", "32",
                 "--write", "--precision", "fp32"]) == 0
    assert "posterior means: this model's default (Flux2Pipeline" in capsys.readouterr().out
    pipe = SimpleNamespace(vae=AutoencoderKLFlux2.from_pretrained(tmp_path / "flux2").eval(),
                           _patchify_latents=Flux2Pipeline._patchify_latents)
    batches = eval_loader(DataConfig(resolution=32, num_workers=0), batch_size=8, source=str(demo_images))
    with torch.no_grad():
        z = torch.cat([Flux2Pipeline._encode_vae_image(pipe, b["image"], None) for b in batches]).double()
    np.testing.assert_allclose(z.mean((0, 2, 3)), 0.0, atol=1e-3)
    np.testing.assert_allclose(z.std((0, 2, 3), correction=0), 1.0, rtol=1e-2)  # var / (var + bn eps)


def test_stats_write_leaves_a_tiny_autoencoders_normalized_latents_alone(tmp_path, demo_images, capsys):
    """AutoencoderTiny's latents already are its teacher's normalized ones, which pipelines still scale by its
    config's 1.0 / 0.0: --write is one clear error and config.json stays as it was; measuring still works."""
    from latentae.errors import LatentaeError
    from latentae.latents import write_normalization
    from latentae.latents.stats import LatentStats

    FAMILIES["tiny"]().save_pretrained(tmp_path / "tiny")
    before = (tmp_path / "tiny" / "config.json").read_text()
    args = ["stats", "--model", str(tmp_path / "tiny"), "--data", str(demo_images), "--resolution", "32",
            "--precision", "fp32"]
    assert main(args + ["--write"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already normalized" in err[0], err
    stats = LatentStats(of="mean", images=1, positions=1, mean=[0.0] * 4, std=[2.0] * 4, global_mean=0.0,
                        global_std=2.0)
    with pytest.raises(LatentaeError, match="already normalized"):  # the library function refuses alike
        write_normalization(tmp_path / "tiny", stats)
    assert (tmp_path / "tiny" / "config.json").read_text() == before
    assert main(args) == 0 and "latent statistics of posterior means" in capsys.readouterr().out
