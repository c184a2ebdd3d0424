"""The TAESD family in its authors' layout (<name>_encoder / <name>_decoder files): variants read off the shapes,
one half alone, AutoencoderTiny where it can hold the model, every command and training path, and the real TAEF2
weights reproducing the figures its authors' code gives (when ../shared/models is present)."""
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

import latentae
from conftest import tiny_run_overrides
from latentae.cli import main
from latentae.errors import ModelFormatError
from latentae.exporting import export
from latentae.models.taesd import TAESDAutoencoder

TAEF2 = Path(__file__).resolve().parents[2] / "shared" / "models" / "taef2"
PRESETS = Path(__file__).resolve().parents[1] / "configs"


def write_taesd(folder: Path, name: str, *, latent_channels=4, variant="taesd", halves=("encoder", "decoder"),
                suffix=".safetensors", dtype=torch.float16, seed=0) -> TAESDAutoencoder:
    """A random-init model saved as the authors ship theirs: plain Sequential state dicts, fp16 tensors."""
    torch.manual_seed(seed)
    model = TAESDAutoencoder(latent_channels=latent_channels, variant=variant).eval()
    with torch.no_grad():  # the exact fp16 values the files will hold
        for p in model.parameters():
            p.copy_(p.to(dtype).float())
    folder.mkdir(parents=True, exist_ok=True)
    for half in halves:
        state = {k: v.to(dtype).contiguous() for k, v in getattr(model, half).state_dict().items()}
        path = folder / f"{name}_{half}{suffix}"
        save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    return model


def images(n=2, h=32, w=48, seed=1):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("latent_channels,variant,suffix", [(4, "taesd", ".pth"), (16, "taesd", ".safetensors"),
                                                             (32, "flux_2", ".safetensors"), (32, "f32", ".pth")])
def test_variants_are_read_off_the_shapes_not_the_file_names(tmp_path, latent_channels, variant, suffix):
    # named like another variant on purpose: the shapes decide
    ref = write_taesd(tmp_path, "taef2" if variant != "flux_2" else "taesd", latent_channels=latent_channels,
                      variant=variant, suffix=suffix)
    model = latentae.load(tmp_path)
    assert (model.config["latent_channels"], model.config["variant"]) == (latent_channels, variant)
    assert model.dtype == torch.float32 and model.family == "taesd"
    f = model.downsample_factor
    assert f == (32 if variant == "f32" else 8)
    x = images(h=2 * f, w=3 * f)
    with torch.no_grad():
        z = model.encode(x)
        assert z.shape == (2, latent_channels, 2, 3)
        torch.testing.assert_close(z, ref.encode(x), rtol=0, atol=0)
        torch.testing.assert_close(model.decode(z), ref.decode(z), rtol=0, atol=0)


def test_the_interface_is_minus_one_to_one_and_the_networks_zero_to_one(tmp_path):
    model = write_taesd(tmp_path, "taesd")
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x), model.encoder((x + 1) / 2), rtol=0, atol=0)
        z = model.encode(x)
        torch.testing.assert_close(model.decode(z), model.decoder(z) * 2 - 1, rtol=0, atol=0)
        # the decoder's first layer softly clamps latents to (-3, 3): far-out latents saturate
        assert torch.equal(model.decoder(torch.full_like(z, 1e4)), model.decoder(torch.full_like(z, 100.0)))
        assert not torch.equal(model.decoder(torch.full_like(z, 2.0)), model.decoder(torch.full_like(z, 3.0)))


def test_the_taesd_variant_equals_diffusers_autoencoder_tiny_and_exports_to_it(tmp_path, capsys):
    """AutoencoderTiny is an independent implementation of the same network: equal outputs on the same weights,
    and the export is that class (pipelines load it as their tiny VAE)."""
    from diffusers import AutoencoderTiny

    write_taesd(tmp_path / "taesd", "taesd", latent_channels=16)
    model = latentae.load(tmp_path / "taesd")
    export(model, tmp_path / "export")
    assert "cannot hold" not in capsys.readouterr().err
    assert json.loads((tmp_path / "export" / "config.json").read_text())["_class_name"] == "AutoencoderTiny"
    tiny = AutoencoderTiny.from_pretrained(tmp_path / "export").eval()
    x = images()
    with torch.no_grad():
        z = model.encode(x)
        torch.testing.assert_close(tiny.encode(x).latents, z, rtol=0, atol=1e-5)
        torch.testing.assert_close(tiny.decode(z).sample, model.decode(z), rtol=0, atol=1e-5)
    again = latentae.load(tmp_path / "export")  # and back, as the tiny family
    assert again.family == "tiny"


def test_taef2s_pool_branch_adds_to_the_block_input(tmp_path):
    """With each pool branch's last 1x1 conv zeroed the flux_2 variant is the plain TAESD network (checked through
    AutoencoderTiny); with it, the output moves: the branch is in the path, before the block."""
    write_taesd(tmp_path, "taef2", latent_channels=32, variant="flux_2")
    model = latentae.load(tmp_path)
    pools = [m for m in model.modules() if getattr(m, "pool", None) is not None]
    assert len(pools) == 6  # three latent-resolution blocks in each half
    assert all(p.pool[1].num_groups == 4 and p.pool[0].out_channels == 256 for p in pools)
    x = images()
    with torch.no_grad():
        with_pool = model.decode(model.encode(x))
        for p in pools:
            p.pool[3].weight.zero_()
        plain = TAESDAutoencoder(latent_channels=32).eval()
        plain.encoder.load_state_dict(model.encoder.state_dict(), strict=False)
        plain.decoder.load_state_dict(model.decoder.state_dict(), strict=False)
        tiny = plain.to_tiny().eval()
        torch.testing.assert_close(model.decode(model.encode(x)), tiny.decode(tiny.encode(x).latents).sample,
                                   rtol=0, atol=1e-5)
        assert (with_pool - model.decode(model.encode(x))).abs().max() > 1e-3


def test_one_half_alone_says_which_half_it_lacks(tmp_path):
    write_taesd(tmp_path / "dec", "taef1", latent_channels=16, halves=("decoder",))
    decoder_only = latentae.load(tmp_path / "dec")
    assert decoder_only.decode(torch.zeros(1, 16, 2, 2)).shape == (1, 3, 16, 16)
    with pytest.raises(ModelFormatError, match="no encoder: put its <name>_encoder"):
        decoder_only.encode(images())
    write_taesd(tmp_path / "enc", "taef1", latent_channels=16, halves=("encoder",), suffix=".pth")
    encoder_only = latentae.load(tmp_path / "enc" / "taef1_encoder.pth")  # one file opens that half
    assert encoder_only.encode(images()).shape[1] == 16
    with pytest.raises(ModelFormatError, match="no decoder"):
        encoder_only.decode(torch.zeros(1, 16, 2, 2))
    assert main(["eval", "--model", str(tmp_path / "dec"), "--data", str(tmp_path),
                 "--output", str(tmp_path / "e")]) == 2


def test_a_folder_of_several_models_is_named_and_a_prefix_picks_one(tmp_path):
    write_taesd(tmp_path, "taesd", latent_channels=4)
    write_taesd(tmp_path, "taef1", latent_channels=16, suffix=".pth")
    with pytest.raises(ModelFormatError, match="2 models \\(taef1, taesd\\)"):
        latentae.load(tmp_path)
    assert latentae.load(tmp_path / "taef1").config["latent_channels"] == 16
    assert latentae.load(tmp_path / "taesd").config["latent_channels"] == 4


def test_pth_files_are_never_unpickled_and_mismatches_are_named(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))

    write_taesd(tmp_path / "a", "taesd")
    torch.save({"0.weight": Payload()}, tmp_path / "a" / "taesd_encoder.pth")
    (tmp_path / "a" / "taesd_encoder.safetensors").unlink()
    with pytest.raises(ModelFormatError, match="never unpickles"):
        latentae.load(tmp_path / "a")
    write_taesd(tmp_path / "b", "x", latent_channels=4, halves=("encoder",))
    write_taesd(tmp_path / "c", "x", latent_channels=16, halves=("decoder",))
    (tmp_path / "c" / "x_decoder.safetensors").rename(tmp_path / "b" / "x_decoder.safetensors")
    with pytest.raises(ModelFormatError, match="not one TAESD model"):
        latentae.load(tmp_path / "b")


def test_export_of_a_variant_autoencoder_tiny_cannot_hold_is_latentaes_format(tmp_path, capsys):
    write_taesd(tmp_path / "m", "taef2", latent_channels=32, variant="flux_2")
    model = latentae.load(tmp_path / "m")
    export(model, tmp_path / "export")
    assert "AutoencoderTiny cannot hold this TAESD model (variant flux_2" in capsys.readouterr().err
    again = latentae.load(tmp_path / "export")
    for name, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name
    assert again.config["variant"] == "flux_2"


# ------------------------------------------------------------------ commands and training
def test_commands_run_on_a_taesd_model(tmp_path, demo_images, capsys):
    write_taesd(tmp_path / "m", "taef2", latent_channels=32, variant="flux_2")
    model = str(tmp_path / "m")
    assert main(["encode", "--model", model, "--data", str(demo_images), "--output", str(tmp_path / "latents"),
                 "--resolution", "32", "--precision", "fp32", "--quiet"]) == 0
    assert main(["decode", "--model", model, "--latents", str(tmp_path / "latents"), "--output",
                 str(tmp_path / "decoded"), "--precision", "fp32", "--quiet"]) == 0
    assert len(list((tmp_path / "decoded").rglob("*.png"))) == 24
    assert main(["eval", "--model", model, "--model", model, "--data", str(demo_images), "--resolution", "32",
                 "--metrics", "psnr,ssim", "--output", str(tmp_path / "eval"), "--precision", "fp32"]) == 0
    assert "taesd" in (tmp_path / "eval" / "compare.md").read_text()
    for tool in (["prior", "--normalized"], ["anomaly", str(demo_images)]):
        assert main(["inspect", *tool, "--model", model, "--resolution", "32",
                     "--output", str(tmp_path / f"{tool[0]}.png")]) == 0
    capsys.readouterr()
    assert main(["stats", "--model", model, "--latents", str(tmp_path / "latents")]) == 0  # measuring is fine
    out = capsys.readouterr().out
    assert "no normalization constants to recommend: they are its teacher's" in out and "recommended:" not in out
    assert main(["stats", "--model", model, "--latents", str(tmp_path / "latents"), "--write"]) == 2
    assert "already normalized" in capsys.readouterr().err


def _taesd_config(tmp_path, demo_images, *extra):
    preset = yaml.safe_load((PRESETS / "taesd-distill.yaml").read_text())
    del preset["model"]
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(preset))
    overrides = [o for o in tiny_run_overrides(tmp_path / "run", demo_images, "train.max_steps=2",
                                               "loss.perceptual_weight=0", "loss.disc.weight=0", *extra)
                 if not o.startswith(("model.", "loss.disc.channels", "loss.disc.start", "loss.disc.warmup"))]
    return str(tmp_path / "ft.yaml"), overrides


def test_decoder_finetune_keeps_the_encoder_and_exports_the_same_format(tmp_path, demo_images):
    from latentae.trainer.config import load_run_config
    from latentae.trainer.loop import Run

    ref = write_taesd(tmp_path / "pretrained", "taef2", latent_channels=32, variant="flux_2")
    path, overrides = _taesd_config(tmp_path, demo_images, f"train.init_from={tmp_path / 'pretrained'}",
                                    "train.trainable=[decoder]", "train.lr=1e-3")
    Run(load_run_config(path, overrides)).fit()
    tuned = latentae.load(tmp_path / "run" / "export")
    assert tuned.config["variant"] == "flux_2"
    for name, value in ref.state_dict().items():
        if name.startswith("encoder."):
            assert torch.equal(tuned.state_dict()[name], value), f"{name} changed"
    assert any(not torch.equal(tuned.state_dict()[n], v) for n, v in ref.state_dict().items()
               if n.startswith("decoder."))


def test_eqvae_preset_trains_both_halves_of_a_taesd_model_through_the_term(tmp_path, demo_images):
    """configs/taef2-eqvae-finetune.yaml on a deterministic TAESD model: the equivariance term is computed on its
    latent (no posterior) and the fine-tune moves encoder and decoder alike."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from latentae.trainer.config import load_run_config
    from latentae.trainer.loop import Run

    ref = write_taesd(tmp_path / "pretrained", "taef2", latent_channels=32, variant="flux_2")
    overrides = [o for o in tiny_run_overrides(tmp_path / "run", demo_images, "train.max_steps=2",
                                               f"train.init_from={tmp_path / 'pretrained'}", "loss.equivariance.p=1",
                                               "train.lr=1e-3", "data.resolution=64")
                 if not o.startswith(("model.", "loss.disc."))]
    cfg = load_run_config(str(PRESETS / "taef2-eqvae-finetune.yaml"), overrides)
    assert (cfg.loss.equivariance.weight, cfg.train.trainable) == (2.0, ["all"])
    Run(cfg).fit()
    events = EventAccumulator(str(next((tmp_path / "run" / "logs").rglob("events.out.tfevents*")).parent))
    events.Reload()
    assert [e.value > 0 for e in events.Scalars("train/loss/equivariance")] == [True, True]
    tuned = latentae.load(tmp_path / "run" / "export")
    assert tuned.config["variant"] == "flux_2"
    for half in ("encoder.", "decoder."):
        assert any(not torch.equal(tuned.state_dict()[n], v) for n, v in ref.state_dict().items()
                   if n.startswith(half)), f"the {half[:-1]} did not move"


def test_taesd_distills_as_student_and_teaches(tmp_path, demo_images):
    """A TAESD model trains as a student (model.family taesd) of a tiny teacher, and is itself a teacher."""
    from diffusers import AutoencoderTiny

    from latentae.trainer.config import load_run_config
    from latentae.trainer.loop import Run

    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                    num_encoder_blocks=(1,) * 4, num_decoder_blocks=(1,) * 4).save_pretrained(tmp_path / "teacher")
    path, overrides = _taesd_config(tmp_path / "s", demo_images, f"train.teacher={tmp_path / 'teacher'}")
    student = Run(load_run_config(path, overrides + ["model.family=taesd",
                                                     "model.diffusers={latent_channels: 4}"]))
    student.fit()
    assert latentae.load(tmp_path / "s" / "run" / "export").family == "tiny"  # the taesd variant exports to Tiny
    write_taesd(tmp_path / "taesd-teacher", "taef1", latent_channels=16)
    path, overrides = _taesd_config(tmp_path / "t", demo_images, f"train.teacher={tmp_path / 'taesd-teacher'}")
    Run(load_run_config(path, overrides + [
        "model.family=tiny", ("model.diffusers={latent_channels: 16, encoder_block_out_channels: [8, 8, 8, 8], "
                              "decoder_block_out_channels: [8, 8, 8, 8], num_encoder_blocks: [1, 1, 1, 1], "
                              "num_decoder_blocks: [1, 1, 1, 1]}")])).fit()


# ------------------------------------------------------------------ the real weights
@pytest.fixture
def taef2() -> Path:
    if not (TAEF2 / "taef2_encoder.safetensors").is_file():
        pytest.skip(f"TAEF2 weights not found at {TAEF2} (see shared/models/README.md)")
    return TAEF2


def test_real_taef2_reproduces_its_authors_figures_on_kodak(taef2, shared_data, tmp_path):
    """The README of ../shared/models/taef2 gives 29.37 dB / SSIM 0.878 on Kodak at 256 px, measured with the
    authors' own code in fp32."""
    model = latentae.load(taef2)
    assert (model.config["variant"], model.config["latent_channels"]) == ("flux_2", 32)
    assert main(["eval", "--model", str(taef2), "--data", str(shared_data / "kodak"), "--resolution", "256",
                 "--metrics", "psnr,ssim", "--precision", "fp32", "--output", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["metrics"]["psnr"] == pytest.approx(29.37, abs=0.05)
    assert report["metrics"]["ssim"] == pytest.approx(0.878, abs=0.001)
