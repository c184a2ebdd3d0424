"""DC-AE 1.5's structured latent: the sliced forward, the per-step channel schedule, resume, evaluation per count,
the export as plain AutoencoderDC."""
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from latentae.cli import main
from latentae.config import ConfigError
from latentae.models import ModelConfig, build_model
from latentae.trainer.channels import ChannelSchedule
from latentae.trainer.config import load_run_config
from latentae.trainer.loop import Run

COUNTS = [2, 4, 8]
TINY = {"latent_channels": 8, "encoder_block_types": "ResBlock", "decoder_block_types": "ResBlock",
        "encoder_block_out_channels": [16, 32], "decoder_block_out_channels": [16, 32],
        "encoder_layers_per_block": [1, 1], "decoder_layers_per_block": [1, 1],
        "encoder_qkv_multiscales": [[], []], "decoder_qkv_multiscales": [[], []],
        "encoder_out_shortcut": False, "decoder_in_shortcut": False}


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def tiny_model(counts=COUNTS, **diffusers):
    torch.manual_seed(0)
    return build_model(ModelConfig(family="dc", diffusers={**TINY, **diffusers}, structured_channels=counts))


def images(n=2, size=16, seed=1):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("shortcut", [False, True])
def test_channels_beyond_n_do_not_reach_the_output(shortcut):
    model = tiny_model(encoder_out_shortcut=shortcut, decoder_in_shortcut=shortcut).eval()
    x = images()
    with torch.no_grad():
        full = model(x).reconstruction
        at = {n: model.at_channels(n)(x).reconstruction for n in COUNTS}
        assert model.at_channels(2).encode(x).shape[1] == 2
        assert torch.equal(at[8], full)  # the full count is the plain model
        assert not torch.allclose(at[2], full) and not torch.allclose(at[2], at[4])
        # the absent channels are zeros for the decoder: the diffusers module on the zero-padded latent
        z = model.vae.encode(x).latent
        padded = torch.cat([z[:, :2], torch.zeros_like(z[:, 2:])], 1)
        assert torch.equal(at[2], model.vae.decode(padded).sample)
        model.vae.encoder.conv_out.weight[2:].add_(torch.randn_like(model.vae.encoder.conv_out.weight[2:]))
        assert torch.equal(model.at_channels(2)(x).reconstruction, at[2])  # filters beyond 2: no effect
        assert not torch.allclose(model.at_channels(4)(x).reconstruction, at[4])  # ... but on 4 they act
    model.train()
    model.use_channels(2)
    model(x).reconstruction.square().mean().backward()
    grad = model.vae.encoder.conv_out.weight.grad
    assert grad[:2].abs().sum() > 0 and torch.equal(grad[2:], torch.zeros_like(grad[2:]))


def test_counts_are_checked_and_named():
    with pytest.raises(ConfigError, match="model.structured_channels.*end with the full latent"):
        ModelConfig(family="dc", diffusers=TINY, structured_channels=[2, 4])
    with pytest.raises(ConfigError, match="model.structured_channels.*ascending"):
        ModelConfig(family="dc", diffusers=TINY, structured_channels=[4, 2, 8])
    with pytest.raises(ConfigError, match="model.structured_channels' does not apply to model.family=tiny"):
        ModelConfig(family="tiny", structured_channels=[2, 4])
    model = tiny_model()
    with pytest.raises(ValueError, match="3 latent channels: not one of"):
        model.at_channels(3)
    with pytest.raises(ConfigError, match="train.sample_channels.*\\[3\\] not among"):
        ChannelSchedule(model, [2, 3], seed=0)
    with pytest.raises(ConfigError, match="train.sample_channels' needs a structured latent"):
        ChannelSchedule(tiny_model(counts=[]), [8], seed=0)
    with pytest.raises(ConfigError, match="train.teacher"):
        ChannelSchedule(model, None, seed=0, teacher=True)
    assert tiny_model(counts=[]).bottleneck.channel_counts == ()


def test_schedule_is_a_function_of_seed_and_step():
    model = tiny_model()
    draws = [ChannelSchedule(model, None, seed=0).count(s) for s in range(200)]
    assert draws == [ChannelSchedule(model, None, seed=0).count(s) for s in range(200)]  # fresh object, same draws
    assert draws[100:] == [ChannelSchedule(model, None, seed=0).count(s) for s in range(100, 200)]  # from mid-run
    assert draws != [ChannelSchedule(model, None, seed=1).count(s) for s in range(200)]
    assert {n: draws.count(n) for n in COUNTS} == pytest.approx({n: 200 / 3 for n in COUNTS}, abs=25)  # uniform
    assert len(set(draws[:10])) > 1  # changes from step to step, not per run
    assert {ChannelSchedule(model, [2, 8], seed=0).count(s) for s in range(50)} == {2, 8}
    assert ChannelSchedule(tiny_model(counts=[]), None, seed=0).count(5) is None
    schedule = ChannelSchedule(model, None, seed=0)
    with schedule.at(0) as n:
        assert model.encode(images()).shape[1] == n == draws[0]
    assert model.encode(images()).shape[1] == 8  # the whole latent again after the step


def write_config(tmp_path: Path, data: Path, *extra) -> Path:
    cfg = {"output_dir": str(tmp_path / "run"), "seed": 0,
           "model": {"family": "dc", "structured_channels": COUNTS, "diffusers": TINY},
           "loss": {"pixel_loss": "l1", "reduction": "mean", "perceptual_weight": 0.0,
                    "disc": {"start": 2, "warmup_steps": 2, "layers": 2, "channels": 16, "norm": "group"}},
           "data": {"train": str(data), "resolution": 32, "num_workers": 0, "shuffle_buffer": 8},
           "train": {"batch_size": 4, "max_steps": 6, "checkpoint_every": 2, "lr": 1e-3, "log_every": 1,
                     "image_every": 0, "mixed_precision": "fp32"},
           "eval": {"every": 0}}
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def recorded_counts(monkeypatch) -> list:
    from latentae.models.dc import DCAutoencoder

    seen, original = [], DCAutoencoder.use_channels

    def use_channels(self, n):
        if n is not None:
            seen.append(n)
        original(self, n)
    monkeypatch.setattr(DCAutoencoder, "use_channels", use_channels)
    return seen


def test_killed_and_resumed_run_draws_the_same_counts_and_weights(tmp_path, demo_images, monkeypatch):
    seen = recorded_counts(monkeypatch)
    whole = Run(load_run_config(str(write_config(tmp_path / "whole", demo_images)), []))
    whole.fit()
    whole_counts = list(seen)
    assert len(whole_counts) == 6 and len(set(whole_counts)) > 1

    seen.clear()
    killed = Run(load_run_config(str(write_config(tmp_path / "killed", demo_images)), []))
    original_step = Run.train_step

    def dies_at_step_3(self, batches, step):
        if step == 3:
            raise KeyboardInterrupt  # the step-2 checkpoint is written, steps 2 and 3 are lost
        return original_step(self, batches, step)
    monkeypatch.setattr(Run, "train_step", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    monkeypatch.setattr(Run, "train_step", original_step)
    before_kill = list(seen)
    seen.clear()
    resumed = Run(load_run_config(str(write_config(tmp_path / "killed", demo_images)), ["train.resume=auto"]))
    assert resumed.state.step == 2
    resumed.fit()
    assert before_kill == whole_counts[:3] and seen == whole_counts[2:]
    a = load_file(tmp_path / "whole" / "run" / "checkpoints" / "step-00000006" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "run" / "checkpoints" / "step-00000006" / "model.safetensors")
    assert a.keys() == b.keys() and not [k for k in a if not torch.equal(a[k], b[k])]


def test_export_is_plain_autoencoder_dc_and_eval_reports_each_count(tmp_path, demo_images, capsys):
    from diffusers import AutoencoderDC

    from latentae.exporting import export
    from latentae.loading import load

    model = tiny_model().eval()
    export(model, tmp_path / "export", metadata={"step": 0})
    assert json.loads((tmp_path / "export" / "latentae.json").read_text())["options"] == {
        "structured_channels": COUNTS}
    vae = AutoencoderDC.from_pretrained(tmp_path / "export")
    x = images()
    with torch.no_grad():
        assert torch.equal(vae(x).sample, model(x).reconstruction)  # diffusers: the full-count function
        loaded = load(tmp_path / "export")
        assert loaded.bottleneck.channel_counts == tuple(COUNTS)
        assert torch.equal(loaded.at_channels(2)(x).reconstruction, model.at_channels(2)(x).reconstruction)

    args = ["eval", "--model", str(tmp_path / "export"), "--data", str(demo_images), "--resolution", "32",
            "--num-workers", "0", "--precision", "fp32", "--metrics", "psnr,ssim"]
    assert main([*args, "--output", str(tmp_path / "all")]) == 0
    rows = json.loads((tmp_path / "all" / "compare.json").read_text())["models"]
    assert [r["model"] for r in rows] == [f"export c{n}" for n in COUNTS]
    assert [r["latent_shape"][0] for r in rows] == COUNTS
    psnr = [r["psnr"] for r in rows]
    assert len(set(psnr)) == 3  # each count its own reconstruction
    full = json.loads((tmp_path / "all" / "export_c8" / "report.json").read_text())
    assert full["metrics"]["psnr"] == pytest.approx(psnr[2])

    assert main([*args, "--output", str(tmp_path / "two"), "--channels", "2,8"]) == 0
    rows = json.loads((tmp_path / "two" / "compare.json").read_text())["models"]
    assert [r["model"] for r in rows] == ["export c2", "export c8"] and rows[0]["psnr"] == pytest.approx(psnr[0])
    capsys.readouterr()
    assert main([*args, "--output", str(tmp_path / "bad"), "--channels", "3"]) != 0
    assert "--channels 3: export serves [2, 4, 8] channels" in capsys.readouterr().err


def test_finetuning_an_export_keeps_sampling_its_counts(tmp_path, demo_images, monkeypatch):
    from latentae.exporting import export

    export(tiny_model(), tmp_path / "pretrained")
    seen = recorded_counts(monkeypatch)
    config = write_config(tmp_path, demo_images)
    raw = yaml.safe_load(config.read_text())
    del raw["model"]
    raw["train"].update(init_from=str(tmp_path / "pretrained"), max_steps=4, sample_channels=[2, 4])
    config.write_text(yaml.safe_dump(raw))
    run = Run(load_run_config(str(config), []))
    run.fit()
    assert len(seen) == 4 and set(seen) <= {2, 4}
    assert json.loads((tmp_path / "run" / "export" / "latentae.json").read_text())["options"] == {
        "structured_channels": COUNTS}
