"""Trainer behaviour in one process: resume after kill -9, atomic checkpoints, bf16, fine-tuning, NaN guard."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_run_overrides
from latentae.config import ConfigError
from latentae.errors import LatentaeError
from latentae.trainer import checkpoint
from latentae.trainer.config import load_run_config
from latentae.trainer.loop import Run

ROOT = Path(__file__).resolve().parents[1]
PRESET = str(ROOT / "configs" / "tiny-kl.yaml")


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps one process-wide state; runs with other precision settings need it cleared."""
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def config(tmp_path, demo_images, *extra):
    return load_run_config(PRESET, tiny_run_overrides(tmp_path, demo_images, *extra))


def train_cli(tmp_path, demo_images, *extra) -> subprocess.Popen:
    args = [sys.executable, "-m", "latentae.cli", "train", "--config", PRESET,
            *tiny_run_overrides(tmp_path, demo_images, *extra)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def final_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    ckpt = run_dir / "checkpoints" / f"step-{step:08d}"
    model = {f"g.{k}": v for k, v in load_file(ckpt / "model.safetensors").items()}
    disc = {f"d.{k}": v for k, v in load_file(ckpt / "model_1.safetensors").items()}
    return model | disc


def test_kill9_then_resume_equals_uninterrupted(tmp_path, demo_images):
    steps = ["train.max_steps=10", "train.checkpoint_every=2"]
    whole = train_cli(tmp_path / "whole", demo_images, *steps)
    assert whole.wait(timeout=300) == 0, whole.stdout.read()

    killed = train_cli(tmp_path / "killed", demo_images, *steps)
    marker = tmp_path / "killed" / "checkpoints" / "step-00000004"
    deadline = time.time() + 300
    while not marker.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert not (tmp_path / "killed" / "checkpoints" / "step-00000010").exists(), "finished before the kill"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    resumed = train_cli(tmp_path / "killed", demo_images, *steps, "train.resume=auto")
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    a, b = final_weights(tmp_path / "whole", 10), final_weights(tmp_path / "killed", 10)
    assert a.keys() == b.keys()
    # exact: both runs train on the same batches in the same shapes on one thread, so the kernels are the same
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, differing
    assert any((a[k] != 0).any() for k in a if k.startswith("d."))  # D trained too (disc from step 0)


def test_kill_during_checkpoint_write_keeps_previous(tmp_path, demo_images, monkeypatch):
    cfg = config(tmp_path, demo_images, "train.max_steps=2", "train.checkpoint_every=1")
    run = Run(cfg)
    run.fit()
    ckpts = tmp_path / "checkpoints"
    assert [p.name for p in checkpoint.checkpoints(ckpts)] == ["step-00000001", "step-00000002"]

    def dies_halfway(output_dir, **kwargs):
        Path(output_dir).mkdir(parents=True)
        (Path(output_dir) / "model.safetensors").write_bytes(b"trunc")
        raise KeyboardInterrupt  # as if killed in the middle of writing

    monkeypatch.setattr(run.accelerator, "save_state", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(run.accelerator, ckpts, 3, keep=2)
    assert (ckpts / ".tmp-step-00000003").exists()
    assert checkpoint.resolve_resume("auto", ckpts).name == "step-00000002"
    monkeypatch.undo()
    resumed = Run(config(tmp_path, demo_images, "train.max_steps=2", "train.resume=auto"))
    assert resumed.state.step == 2
    for (name, p), q in zip(run.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), name


def test_bf16_autocast_keeps_fp32_weights(tmp_path, demo_images):
    run = Run(config(tmp_path, demo_images, "train.max_steps=3", "train.mixed_precision=bf16",
                     "train.checkpoint_every=100"))
    seen = []
    run.model.decoder.conv_in.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    run.fit()
    assert torch.bfloat16 in seen  # autocast really ran the model in bf16
    for module in (run.model, run.loss.discriminator):
        for name, p in module.named_parameters():
            assert p.dtype == torch.float32, name
    assert any(not torch.equal(before[k], v) for k, v in run.model.state_dict().items())


def test_resolved_values_are_recorded_beside_the_config(tmp_path, demo_images, monkeypatch):
    """config.yaml holds the config as given (auto stays auto, model.sample_size as written); resolved.yaml what the
    run settled; validation runs in the run's precision."""
    import yaml

    import latentae.evaluation
    from latentae import precision

    monkeypatch.setenv(precision.ENV_FORCE, "bf16")
    monkeypatch.setattr(precision, "_chosen", {})
    seen = []
    real = latentae.evaluation.evaluate_many
    monkeypatch.setattr(latentae.evaluation, "evaluate_many",
                        lambda *a, **kw: seen.append(kw["precision"]) or real(*a, **kw))
    overrides = [o for o in tiny_run_overrides(tmp_path, demo_images, "train.max_steps=1", f"data.val={demo_images}",
                                               "eval.max_images=4", "eval.metrics=[psnr]")
                 if o != "train.mixed_precision=fp32"]
    run = Run(load_run_config(PRESET, overrides))
    run.fit()
    given = yaml.safe_load((tmp_path / "config.yaml").read_text())
    resolved = yaml.safe_load((tmp_path / "resolved.yaml").read_text())
    assert given["train"]["mixed_precision"] == "auto" and run.cfg.train.mixed_precision == "auto"
    assert given["model"]["sample_size"] == 256 and resolved["model"] == {"sample_size": 32}
    assert resolved["train"]["mixed_precision"] == "bf16" == run.placement.precision
    assert resolved["runtime"]["threads"] == torch.get_num_threads()
    assert seen == ["bf16"]


def test_decoder_only_finetune_from_diffusers_dir(tmp_path, demo_images):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(16, 32), norm_num_groups=8, layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    vae.save_pretrained(tmp_path / "pretrained")
    overrides = [f"train.init_from={tmp_path / 'pretrained'}", "train.trainable=[decoder,post_quant_conv]",
                 "train.max_steps=3", "train.checkpoint_every=100"]
    args = [o for o in tiny_run_overrides(tmp_path / "run", demo_images, *overrides) if not o.startswith("model.")]
    with pytest.raises(ConfigError, match="cannot be combined with 'train.init_from'"):
        load_run_config(PRESET, tiny_run_overrides(tmp_path / "run", demo_images, *overrides))
    import yaml

    preset = yaml.safe_load(Path(PRESET).read_text())
    del preset["model"]
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(preset))
    run = Run(load_run_config(str(tmp_path / "ft.yaml"), args))
    run.fit()
    tuned = AutoencoderKL.from_pretrained(tmp_path / "run" / "export")
    original = vae.state_dict()
    for name, value in tuned.state_dict().items():
        same = torch.equal(value, original[name])
        if name.startswith(("encoder.", "quant_conv.")):
            assert same, f"{name} changed"
    assert not torch.equal(tuned.decoder.conv_out.weight, original["decoder.conv_out.weight"])


def test_nan_losses_skipped_counted_then_stop(tmp_path, demo_images, monkeypatch):
    from latentae.losses import AutoencoderLoss

    real = AutoencoderLoss.forward
    bad_steps = {1}

    def poisoned(self, images, output, step, mode="generator", **kw):
        total, logs = real(self, images, output, step, mode=mode, **kw)
        return (total * float("nan") if mode == "generator" and step in bad_steps else total), logs

    monkeypatch.setattr(AutoencoderLoss, "forward", poisoned)
    run = Run(config(tmp_path / "a", demo_images, "train.max_steps=3", "train.checkpoint_every=100"))
    snapshots = []
    original_step = run.train_step

    def recording(batches, step):
        snapshots.append(run.model.decoder.conv_out.weight.detach().clone())
        return original_step(batches, step)

    run.train_step = recording
    run.fit()
    assert run.state.nan_skipped == 1 and run.state.consecutive_nan == 0
    assert torch.equal(snapshots[1], snapshots[2])  # the poisoned step changed nothing
    assert not torch.equal(snapshots[0], snapshots[1])

    bad_steps.update(range(1, 100))
    run = Run(config(tmp_path / "b", demo_images, "train.max_steps=10", "train.max_consecutive_nan=3"))
    with pytest.raises(LatentaeError, match="3 non-finite losses in a row"):
        run.fit()
    saved = checkpoint.resolve_resume("auto", tmp_path / "b" / "checkpoints")
    assert saved.name == "step-00000003"
    resumed = Run(config(tmp_path / "b", demo_images, "train.max_steps=10", "train.resume=auto"))
    assert resumed.state.nan_skipped == 3 and resumed.state.step == 3


def test_config_errors_name_the_key(tmp_path, demo_images):
    with pytest.raises(ConfigError, match="train.max_stpes.*max_steps"):
        load_run_config(PRESET, ["train.max_stpes=3"])
    with pytest.raises(ConfigError, match="loss.disc.norm"):
        load_run_config(PRESET, ["loss.disc.norm=layer"])


def test_ema_export_and_tensorboard_keys(tmp_path, demo_images):
    """The export holds the EMA weights (restored on resume); TensorBoard gets the namespaced scalars."""
    from diffusers import AutoencoderKL
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = ["train.max_steps=3", "train.checkpoint_every=3", "train.ema_decay=0.5", "train.image_every=3",
            f"data.val={demo_images}", "eval.every=3"]
    run = Run(config(tmp_path, demo_images, *args))
    run.fit()
    exported = AutoencoderKL.from_pretrained(tmp_path / "export").state_dict()
    raw = dict(run.model.named_parameters())
    for (name, _), shadow in zip(run.model.named_parameters(), run.ema.shadow_params):
        assert torch.equal(exported[name], shadow), name
    assert any(not torch.equal(exported[n], p) for n, p in raw.items())  # EMA differs from the raw weights
    resumed = Run(config(tmp_path, demo_images, *args, "train.resume=auto"))
    assert all(torch.equal(a, b) for a, b in zip(run.ema.shadow_params, resumed.ema.shadow_params))

    events = EventAccumulator(str(next((tmp_path / "logs").rglob("events.out.tfevents*")).parent))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    expected = {"train/loss/total", "train/loss/rec", "train/loss/kl", "train/loss/g_adv", "train/adaptive_weight",
                "train/disc/logits_real", "train/disc/logits_fake", "train/disc/g_logits_fake", "train/kl/channel_00",
                "train/latent/active_channels", "train/lr/generator", "train/lr/discriminator",
                "train/grad_norm/generator", "train/grad_norm/discriminator", "train/img_per_s",
                "train/data_wait_s", "train/skipped/decode_error", "val/psnr", "val/ssim"}
    assert expected <= scalars, expected - scalars
    assert {"train/input_reconstruction_difference", "val/input_reconstruction_difference"} <= set(events.Tags()["images"])


def test_fp16_scaler_unscales_each_optimizer_once(tmp_path, demo_images, monkeypatch):
    """With a GradScaler and two optimizers, both gradients are divided by the scale exactly once."""
    run = Run(config(tmp_path, demo_images, "train.max_steps=1", "train.grad_clip=10.0", "train.disc_grad_clip=null"))
    acc = run.accelerator
    monkeypatch.setattr(acc, "native_amp", True)
    monkeypatch.setattr(type(acc), "mixed_precision", property(lambda self: "fp16"))
    acc.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    acc.scaler.scale(torch.ones(()))  # what accelerator.backward does first: sets up the scale
    run.opt_g.scaler = run.opt_d.scaler = acc.scaler  # as accelerate's prepare wires them under fp16
    torch.manual_seed(0)
    true = {}
    for module in (run.model, run.loss.discriminator):
        for p in module.parameters():
            if p.requires_grad:
                true[p] = torch.randn_like(p) * 1e-3
                p.grad = true[p] * 1024.0
    logs = run._update(d_active=True)
    norm = lambda ps: torch.stack([true[p].norm() for p in ps if p in true]).norm()  # noqa: E731
    # the same fp32 gradients, their norms summed in another order: ~1e-7 relative (a double unscale is x1024)
    assert torch.allclose(logs["grad_norm/generator"], norm(run.model.parameters()), rtol=1e-5)
    assert torch.allclose(logs["grad_norm/discriminator"], norm(run.loss.discriminator.parameters()), rtol=1e-5)
    for p, g in true.items():
        assert torch.allclose(p.grad, g, rtol=1e-5, atol=0), "a gradient was unscaled twice (or not at all)"


def test_nonfinite_discriminator_loss_never_reaches_its_weights(tmp_path, demo_images, monkeypatch):
    from latentae.losses import AutoencoderLoss

    real = AutoencoderLoss.forward

    def poisoned(self, images, output, step, mode="generator", **kw):
        total, logs = real(self, images, output, step, mode=mode, **kw)
        return (total * float("inf") if mode == "discriminator" and step == 1 else total), logs

    monkeypatch.setattr(AutoencoderLoss, "forward", poisoned)
    run = Run(config(tmp_path, demo_images, "train.max_steps=3", "train.checkpoint_every=100"))
    run.fit()
    assert run.state.nan_skipped == 1
    assert all(torch.isfinite(p).all() for p in run.loss.discriminator.parameters())


def test_decoder_only_finetune_keeps_an_ema_codebook(tmp_path, demo_images):
    """EMA / dead-code maintenance of a quantizer outside train.trainable must not move its codebook."""
    import yaml

    from latentae.models import VQTokenizer

    torch.manual_seed(0)
    spec = {"kind": "vq", "codebook_size": 16, "ema_decay": 0.5, "dead_code_threshold": 0.5}
    VQTokenizer(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, latent_channels=8,
                quantizer=spec).save_pretrained(tmp_path / "pretrained")
    before = VQTokenizer.from_pretrained(tmp_path / "pretrained").quantize.embedding.weight.clone()
    preset = yaml.safe_load((ROOT / "configs" / "tiny-vq.yaml").read_text())
    del preset["model"]
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(preset))
    args = [o for o in tiny_run_overrides(tmp_path / "run", demo_images) if not o.startswith("model.")]
    run = Run(load_run_config(str(tmp_path / "ft.yaml"), args + [
        f"train.init_from={tmp_path / 'pretrained'}", "train.trainable=[decoder]", "train.max_steps=2"]))
    run.fit()
    assert torch.equal(run.model.quantize.embedding.weight, before)
    assert load_run_config(str(tmp_path / "run" / "config.yaml"), []).train.init_from  # the saved config reloads


def test_config_errors_for_clipping_and_tuples():
    with pytest.raises(ConfigError, match="train.grad_clip.*> 0 or null"):
        load_run_config(PRESET, ["train.grad_clip=0"])
    with pytest.raises(ConfigError, match="train.betas.*expected 2 values"):
        load_run_config(PRESET, ["train.betas=[0.9,0.95,0.99]"])


def test_default_clipping_matches_the_recipe():
    """The defaults are LDM's SD KL-f8 recipe, which does not clip (under reduction 'sum' a norm of 1 would clip
    every step)."""
    from latentae.trainer.config import TrainConfig

    assert TrainConfig().grad_clip is None and TrainConfig().disc_grad_clip is None


def test_frozen_last_layer_with_adaptive_weight_is_a_config_error(tmp_path, demo_images):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(16, 32), norm_num_groups=8, layers_per_block=1,
                  down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2).save_pretrained(tmp_path / "pretrained")
    args = [o for o in tiny_run_overrides(tmp_path / "run", demo_images, f"train.init_from={tmp_path / 'pretrained'}",
                                          "train.trainable=[encoder]", "train.max_steps=1")
            if not o.startswith("model.")]
    import yaml

    preset = yaml.safe_load(Path(PRESET).read_text())
    del preset["model"]
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(preset))
    with pytest.raises(ConfigError, match=r"freezes decoder\.conv_out\.weight.*loss\.disc\.adaptive=false"):
        Run(load_run_config(str(tmp_path / "ft.yaml"), args))
    Run(load_run_config(str(tmp_path / "ft.yaml"), [*args, "loss.disc.adaptive=false"])).fit()  # fixed weight trains


def test_resume_says_where_it_resumed(tmp_path, demo_images, capsys):
    Run(config(tmp_path, demo_images, "train.max_steps=2", "train.checkpoint_every=1")).fit()
    capsys.readouterr()
    Run(config(tmp_path, demo_images, "train.max_steps=5", "train.resume=auto"))
    assert "resumed from checkpoints/step-00000002 at step 2 of 5" in capsys.readouterr().out


def test_codebook_ema_updates_once_per_optimizer_step(tmp_path, demo_images, monkeypatch):
    """Under gradient accumulation the VQ codebook's EMA (decay per optimizer step) moves once per step, from
    the counts of all the step's micro-batches."""
    from latentae.quantizers.vector import VectorQuantizer

    preset = str(ROOT / "configs" / "tiny-vq.yaml")
    overrides = [o for o in tiny_run_overrides(tmp_path, demo_images, "train.max_steps=2", "train.grad_accum=3",
                                               "train.checkpoint_every=100", "model.quantizer.ema_decay=0.9")
                 if not o.startswith("model.norm")]
    rows = []
    original = VectorQuantizer._ema_update
    monkeypatch.setattr(VectorQuantizer, "_ema_update",
                        lambda self, counts, sums: (rows.append(int(counts.sum())), original(self, counts, sums)))
    run = Run(load_run_config(preset, [*overrides, "model.norm_num_groups=8"]))
    run.fit()
    latents_per_image = (32 // 2 ** (len(run.cfg.model.block_out_channels) - 1)) ** 2  # 32-px images
    assert rows == [3 * 4 * latents_per_image] * 2  # one update per step, over its 3 micro-batches of 4 images
