"""Training an RAE decoder (model.family: rae): the frozen encoder (no gradient, bit-identical after training, its
weights from transformers or one clear error), the training latent noise (its distribution, its seed), the export
loading in diffusers with the training model's outputs, a decoder-only fine-tune of an AutoencoderRAE directory,
and two gloo processes staying identical."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import free_port
from diffusers import AutoencoderRAE
from families import rae as tiny_rae_vae

from latentae.config import ConfigError
from latentae.errors import ModelFormatError
from latentae.models import ModelConfig, build_model
from latentae.trainer.config import load_run_config
from latentae.trainer.loop import Run
from latentae.weights import MissingWeightsError

ROOT = Path(__file__).resolve().parents[1]
PRESET = str(ROOT / "configs" / "rae-dinov2-b.yaml")
# a 1-layer 64-wide DINOv2-with-registers encoder (8 px patches of 32 px: 4 x 4 tokens), a 1-layer decoder
TINY = {"encoder_hidden_size": 64, "encoder_patch_size": 8, "encoder_num_hidden_layers": 1, "encoder_input_size": 32,
        "decoder_hidden_size": 32, "decoder_num_hidden_layers": 1, "decoder_num_attention_heads": 2,
        "decoder_intermediate_size": 64, "patch_size": 8}


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def tiny_model(**extra):
    torch.manual_seed(0)
    diffusers = {**TINY, **extra.pop("diffusers", {})}
    return build_model(ModelConfig(family="rae", encoder_weights="random", diffusers=diffusers, **extra))


def run_overrides(out, data, *extra) -> list[str]:
    """The preset shrunk to the tiny model, with the offline discriminator (the preset's DINO needs weights)."""
    return [f"output_dir={out}", f"data.train={data}", "data.resolution=32", "data.num_workers=0",
            "data.shuffle_buffer=8", "model.encoder_weights=random",
            *(f"model.diffusers.{k}={v}" for k, v in TINY.items()), "loss.perceptual_random_init=true",
            "loss.disc.kind=patchgan", "loss.disc.channels=16", "loss.disc.start=2", "loss.disc.warmup_steps=1", "train.batch_size=4",
            "train.max_steps=4", "train.warmup_steps=0", "train.ema_decay=null", "train.log_every=1",
            "train.image_every=0", "eval.every=0", "train.mixed_precision=fp32", *extra]


def sigmas_look_uniform(sigmas: torch.Tensor, tau: float) -> bool:
    """Kolmogorov-Smirnov distance of the per-sample noise stds to U(0, tau) below 0.08 (n = 512: the 1% critical
    value is 0.072), none above tau (5% estimation slack)."""
    s = sigmas.sort().values
    n = len(s)
    cdf = (s / tau).clamp(0, 1)
    ks = torch.maximum(torch.arange(1, n + 1) / n - cdf, cdf - torch.arange(n) / n).max().item()
    return ks < 0.08 and s.max().item() <= 1.05 * tau


def test_sigma_check_rejects_degenerate_draws():
    g = torch.Generator().manual_seed(1)
    assert sigmas_look_uniform(0.8 * torch.rand(512, generator=g), 0.8)
    assert not sigmas_look_uniform(torch.full((512,), 0.4), 0.8)  # one sigma for all
    assert not sigmas_look_uniform(0.8 * torch.rand(512, generator=g) ** 2, 0.8)  # skewed low
    assert not sigmas_look_uniform(1.6 * torch.rand(512, generator=g), 0.8)  # tau too large
    assert not sigmas_look_uniform(torch.zeros(512), 0.8)  # no noise


def test_training_noise_is_per_sample_uniform_sigma_gaussian_on_raw_tokens():
    """sigma_i ~ U(0, noise_tau), z_i + sigma_i N(0, I) on the raw tokens, before the latent scaling (scaling_factor
    2 doubles the measured stds): the authors' noising; none in eval mode or with noise_tau 0."""
    model = tiny_model(noise_tau=0.8, diffusers={"scaling_factor": 2.0})
    images = torch.rand(1, 3, 32, 32).mul(2).sub(1).expand(512, -1, -1, -1)
    clean = model.eval().encode(images)
    torch.manual_seed(3)
    noisy = model.train().forward(images).latent
    residual = (noisy - clean) / 2  # undo the scaling: the noise in token units
    sigmas = residual.flatten(1).std(dim=1)
    assert sigmas_look_uniform(sigmas, 0.8), sigmas.sort().values[::64]
    unit = residual.flatten(1) / sigmas[:, None]
    kurtosis = unit.pow(4).mean().item()  # Gaussian 3; a uniform or sign noise of the same std: 1.8 / 1
    assert abs(unit.mean().item()) < 0.01 and abs(kurtosis - 3) < 0.15
    assert torch.equal(model.eval().forward(images).latent, clean)
    quiet = tiny_model(noise_tau=0.0).train()
    assert torch.equal(quiet.forward(images[:2]).latent, quiet.eval().encode(images[:2]))


def test_training_noise_follows_the_seed():
    model = tiny_model().train()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    draws = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        draws.append(model(images).latent)
    assert torch.equal(draws[0], draws[1]) and not torch.allclose(draws[0], draws[2])


def test_training_keeps_the_encoder_bit_identical_and_exports_what_diffusers_loads(tmp_path, demo_images):
    run = Run(load_run_config(PRESET, run_overrides(tmp_path, demo_images)))
    encoder = {k: v.clone() for k, v in run.model.vae.encoder.state_dict().items()}
    decoder = {k: v.clone() for k, v in run.model.vae.decoder.state_dict().items()}
    assert run.model.noise_tau == 0.8  # the config's default: the authors'
    logs, train_step = [], run.train_step

    def recording(batches, step):
        report = train_step(batches, step)
        logs.append(report.logs)
        return report

    run.train_step = recording
    run.fit()
    assert "loss/g_adv" in logs[-1] and "loss/perceptual" in logs[-1]  # pixel + LPIPS + PatchGAN
    assert all(p.grad is None and not p.requires_grad for p in run.model.vae.encoder.parameters())
    assert all(torch.equal(v, encoder[k]) for k, v in run.model.vae.encoder.state_dict().items())
    assert any(not torch.equal(v, decoder[k]) for k, v in run.model.vae.decoder.state_dict().items())

    exported = AutoencoderRAE.from_pretrained(tmp_path / "export").eval()
    assert exported.config.noise_tau == 0.8
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    model = run.model.eval()
    with torch.no_grad():
        assert torch.equal(exported.encode((images + 1) / 2).latent, model.encode(images))
        assert torch.equal(exported(images.add(1).div(2)).sample * 2 - 1, model(images).reconstruction)
    reference = {**exported.state_dict()}
    assert all(torch.equal(v, reference[k]) for k, v in model.vae.state_dict().items())


def test_alignment_loss_is_refused_for_the_frozen_encoder(tmp_path, demo_images):
    with pytest.raises(ConfigError, match=r"loss\.vf\.weight=0"):
        Run(load_run_config(PRESET, run_overrides(tmp_path, demo_images, "loss.vf.weight=0.1")))


def test_a_training_resolution_the_decoder_does_not_make_is_named(tmp_path, demo_images):
    cfg = load_run_config(PRESET, run_overrides(tmp_path, demo_images, "data.resolution=48"))
    with pytest.raises(ConfigError, match=r"'data\.resolution' is 48, but this RAE reconstructs 32 px"):
        Run(cfg)
    preset = load_run_config(PRESET, ["data.train=x"])  # the preset: 224 px in, 16 x 16 tokens, 256 px out
    assert preset.model.at_resolution(256) is preset.model


def pretrained_rae(path: Path, noise_tau: float) -> Path:
    vae = tiny_rae_vae()
    vae.register_to_config(noise_tau=noise_tau)
    vae.save_pretrained(path)
    return path


def finetune_config(tmp_path, demo_images, pretrained, *extra):
    overrides = [o for o in run_overrides(tmp_path / "run", demo_images, "loss.disc.weight=0") if
                 not o.startswith("model.")]
    preset = {k: v for k, v in yaml.safe_load(Path(PRESET).read_text()).items() if k != "model"}
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(preset))
    return load_run_config(str(tmp_path / "ft.yaml"), [
        *overrides, f"train.init_from={pretrained}", "train.trainable=[vae.decoder]", *extra])


def test_decoder_only_finetune_of_an_autoencoder_rae_directory(tmp_path, demo_images):
    """The decoder trains, everything else stays, and the folder's noise_tau (not the default 0.8) is the one used
    and exported."""
    pretrained = pretrained_rae(tmp_path / "pretrained", noise_tau=0.3)
    before = AutoencoderRAE.from_pretrained(pretrained).state_dict()
    run = Run(finetune_config(tmp_path, demo_images, pretrained))
    assert run.model.noise_tau == 0.3 and run.model.vae.noise_tau == 0.3
    run.fit()
    exported = AutoencoderRAE.from_pretrained(tmp_path / "run" / "export")
    after = exported.state_dict()
    assert exported.config.noise_tau == 0.3
    assert all(torch.equal(after[k], v) for k, v in before.items() if not k.startswith("decoder."))
    assert any(not torch.equal(after[k], v) for k, v in before.items() if k.startswith("decoder."))


def test_an_explicit_noise_tau_overrides_the_folders(tmp_path, demo_images):
    pretrained = pretrained_rae(tmp_path / "pretrained", noise_tau=0.3)
    cfg = finetune_config(tmp_path, demo_images, pretrained, "model.noise_tau=0.5")
    assert cfg.model.family == "rae"  # filled in from the key
    run = Run(cfg)
    assert run.model.noise_tau == 0.5 and run.model.vae.config.noise_tau == 0.5
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"] == {"family": "rae", "noise_tau": 0.5}  # the saved config reloads as the same run
    assert load_run_config(str(tmp_path / "run" / "config.yaml"), []).model.noise_tau == 0.5
    with pytest.raises(ConfigError, match=r"remove model\.encoder_hidden_size"):
        finetune_config(tmp_path, demo_images, pretrained, "model.noise_tau=0.5", "model.encoder_hidden_size=8")
    from latentae.models import KLAutoencoder

    KLAutoencoder(block_out_channels=(32, 32), norm_num_groups=8, layers_per_block=1).save_pretrained(tmp_path / "kl")
    with pytest.raises(ConfigError, match=r"model\.noise_tau' applies to model\.family=rae, but .* is a kl model"):
        Run(finetune_config(tmp_path, demo_images, tmp_path / "kl", "model.noise_tau=0.5"))


@pytest.mark.slow
def test_two_process_training_keeps_ranks_identical_and_the_encoder_frozen(tmp_path, demo_images):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(ROOT / "tests" / "dist_rae_worker.py"), str(tmp_path / "run"), str(demo_images), str(tmp_path)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rank in range(2):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["world_size"] == 2 and len(report["steps"]) == 3
        for i, step in enumerate(report["steps"]):
            assert all(step.values()), f"rank {rank}, step {i}: {step}"


def dinov2_directory(path: Path, hidden: int = 64) -> Path:
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(1)
    Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
        hidden_size=hidden, num_hidden_layers=1, num_attention_heads=hidden // 64, patch_size=8, image_size=518,
        intermediate_size=4 * hidden)).save_pretrained(path)
    return path


def test_encoder_weights_come_from_a_transformers_model(tmp_path):
    from transformers import Dinov2WithRegistersModel

    source = Dinov2WithRegistersModel.from_pretrained(dinov2_directory(tmp_path / "dino")).state_dict()
    model = build_model(ModelConfig(family="rae", encoder_weights=str(tmp_path / "dino"), diffusers=TINY))
    loaded = model.vae.encoder.state_dict()
    assert set(source) - set(loaded) == {"layernorm.weight", "layernorm.bias"}  # the identity final norm, as RAE's
    assert all(torch.equal(loaded[k], source[k]) for k in loaded)

    (tmp_path / "dino" / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3,
                                                                            "image_std": [0.5] * 3}))
    with pytest.raises(ModelFormatError, match=r"model\.diffusers\.encoder_norm_mean=\[0\.5, 0\.5, 0\.5\]"):
        build_model(ModelConfig(family="rae", encoder_weights=str(tmp_path / "dino"), diffusers=TINY))
    build_model(ModelConfig(family="rae", encoder_weights=str(tmp_path / "dino"),
                            diffusers={**TINY, "encoder_norm_mean": [0.5] * 3, "encoder_norm_std": [0.5] * 3}))

    dinov2_directory(tmp_path / "wide", hidden=128)
    with pytest.raises(ModelFormatError, match=r"model\.diffusers\.encoder_hidden_size=64 \(wide has hidden_size 128"):
        build_model(ModelConfig(family="rae", encoder_weights=str(tmp_path / "wide"), diffusers=TINY))


def test_missing_encoder_weights_name_the_model_and_the_key(offline_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError) as e:
        build_model(ModelConfig(family="rae", diffusers=TINY))
    assert "facebook/dinov2-with-registers-base" in str(e.value) and "model.encoder_weights" in str(e.value)
    assert "fetch-weights --only rae-dinov2" in str(e.value)
