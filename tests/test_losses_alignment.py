"""VA-VAE's VF alignment loss (latentae/losses/alignment.py): both margin terms against a hand computation, zero
by construction and positive otherwise; gradients to the encoder and the projection only; the adaptive weight as
the ratio of gradient norms; the one-line error for a missing DINOv2 and a run that does not start; a short run
that logs train/loss/vf, resumes the projection exactly and exports a plain AutoencoderKL. DINOv2 is a tiny
random-init Dinov2Model saved like a real one, so every test goes through the real loading path."""
import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_run_overrides
from latentae.config import ConfigError, apply_overrides, from_dict
from latentae.errors import LatentaeError, MissingWeightsError, ModelFormatError
from latentae.losses import AutoencoderLoss, LossConfig
from latentae.losses.alignment import ADAPTIVE_MAX, IMAGENET_MEAN, IMAGENET_STD, Projection, vf_terms
from latentae.losses.config import DiscConfig, KLConfig, VFConfig
from latentae.models import KLAutoencoder
from test_train import PRESET, fresh_accelerate_state  # noqa: F401 (autouse: resets accelerate after each test)

FEATURES = 16  # the tiny DINOv2's hidden size


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory):
    """config.json + model.safetensors of a random-init DINOv2 (patch 2: a 16 x 16 latent grid is a 32 px input)."""
    pytest.importorskip("transformers")
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=FEATURES, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       patch_size=2, image_size=8)
    directory = tmp_path_factory.mktemp("dinov2")
    Dinov2Model(cfg).save_pretrained(directory)
    return directory


def _loss(dinov2_dir, **vf):
    cfg = LossConfig(perceptual_weight=0.0, reduction="mean", kl=KLConfig(weight=0.0), disc=DiscConfig(weight=0.0),
                     vf=VFConfig(**{"weight": 1.0, "model": str(dinov2_dir), **vf}))
    return AutoencoderLoss(cfg, latent_channels=4)


def _model():
    torch.manual_seed(0)
    return KLAutoencoder(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                         mid_block_add_attention=False)


def _images(size=16):
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


# ----------------------------------------------------------------------------------------- the two margin terms

def _by_hand(z, f, m1, m2):
    """The paper's sums, one position (pair) at a time, in float64."""
    z, f = z.double().flatten(2), f.double().flatten(2)
    batch, _, n = z.shape

    def cos(a, b):
        return float(a @ b / (a.norm() * b.norm()))

    mcos = sum(max(0.0, 1 - m1 - cos(z[b, :, i], f[b, :, i])) for b in range(batch) for i in range(n))
    mdms = sum(max(0.0, abs(cos(z[b, :, i], z[b, :, j]) - cos(f[b, :, i], f[b, :, j])) - m2)
               for b in range(batch) for i in range(n) for j in range(n))
    return mcos / (batch * n), mdms / (batch * n * n)


def test_margin_terms_match_the_hand_computation():
    g = torch.Generator().manual_seed(0)
    z, f = torch.randn(2, 5, 2, 3, generator=g), torch.randn(2, 5, 2, 3, generator=g)
    for m1, m2 in [(0.0, 0.0), (0.5, 0.25), (1.2, 0.6)]:
        cos, dms = vf_terms(z, f, margin_cos=m1, margin_dms=m2)
        want_cos, want_dms = _by_hand(z, f, m1, m2)
        assert want_cos > 0 and want_dms > 0  # random vectors: both terms active at these margins
        # fp32 against float64: normalization and 5-element dot products round at ~1e-7 relative
        assert cos.item() == pytest.approx(want_cos, rel=1e-5) and dms.item() == pytest.approx(want_dms, rel=1e-5)


def _on_circle(angles, radii):
    """2-channel vectors at `angles` with lengths `radii`, as a [1, 2, 1, N] map."""
    return torch.stack([radii * torch.cos(angles), radii * torch.sin(angles)])[None, :, None, :]


def test_terms_vanish_by_construction_and_are_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    theta, r, s = torch.rand(6, generator=g) * 6, torch.rand(6, generator=g) + 0.5, torch.rand(6, generator=g) + 0.5
    z = _on_circle(theta, r)
    tiny = 1e-4  # absorbs fp32 rounding of cosines that are equal in exact arithmetic (~1e-7)

    # Same directions, other lengths: cosines 1 and equal similarity matrices.
    assert vf_terms(z, _on_circle(theta, s), margin_cos=tiny, margin_dms=tiny) == (0, 0)

    # All features rotated by 0.5 rad: every cosine is cos(0.5), the similarity matrices stay equal.
    rotated = _on_circle(theta + 0.5, s)
    gap = 1 - math.cos(0.5)
    assert vf_terms(z, rotated, margin_cos=gap + tiny, margin_dms=tiny) == (0, 0)
    cos, dms = vf_terms(z, rotated, margin_cos=gap - 0.01, margin_dms=tiny)
    assert cos.item() == pytest.approx(0.01, abs=1e-5) and dms == 0  # 1 - m1 - cos(0.5); fp32 cosines

    # Each feature rotated by its own angle (at most 0.3 rad): cosines >= cos(0.3), the matrices differ.
    delta = torch.linspace(0.0, 0.3, 6)
    turned = _on_circle(theta + delta, s)
    largest = max(abs(math.cos(a - b) - math.cos(a + da - b - db))
                  for a, da in zip(theta.tolist(), delta.tolist()) for b, db in zip(theta.tolist(), delta.tolist()))
    assert vf_terms(z, turned, margin_cos=1 - math.cos(0.3) + tiny, margin_dms=largest + tiny) == (0, 0)
    cos, dms = vf_terms(z, turned, margin_cos=1 - math.cos(0.3) + tiny, margin_dms=largest / 2)
    assert cos == 0 and dms > 0
    cos, dms = vf_terms(z, turned, margin_cos=0.0, margin_dms=largest + tiny)
    assert cos > 0 and dms == 0


# ----------------------------------------------------------------------------------------- DINOv2 features

def test_features_are_dinov2_patch_tokens_on_the_latent_grid(dinov2_dir):
    from transformers import Dinov2Model

    loss = _loss(dinov2_dir)
    features = loss.vf.features
    loss.train()
    assert not features.training and not features.model.training  # no dropout / drop-path, whatever the parent
    assert not any(p.requires_grad for p in features.parameters())
    images = _images(size=24)
    got = features(images, (3, 5))  # a non-square grid: the image is resized to (3 x 2, 5 x 2) px
    x = F.interpolate(images, size=(6, 10), mode="bilinear", align_corners=False)
    x = ((x + 1) / 2 - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    reference = Dinov2Model.from_pretrained(dinov2_dir).eval()
    with torch.no_grad():
        tokens = reference(pixel_values=x).last_hidden_state[:, 1:]  # without the class token
    assert got.shape == (2, FEATURES, 3, 5)
    assert torch.equal(got, tokens.transpose(1, 2).reshape(2, FEATURES, 3, 5))  # same ops, same order: exact


def test_projection_stays_fp32_under_autocast():
    """accelerate wraps a prepared module's forward in the run's autocast: the projection must not run in bf16."""
    projection, latent = Projection(4, FEATURES), torch.randn(2, 4, 3, 3)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        inside = projection(latent.bfloat16())
    assert inside.dtype == torch.float32
    assert torch.equal(inside, projection(latent.bfloat16().float()))  # the same fp32 conv


# ----------------------------------------------------------------------------------------- gradients and weight

def test_gradients_reach_encoder_and_projection_only(dinov2_dir):
    """The term alone (main reconstruction detached) trains the encoder and the projection: not the decoder,
    not DINOv2, not the discriminator."""
    model, images = _model(), _images()
    loss = _loss(dinov2_dir, adaptive=False, margin_cos=0.0, margin_dms=0.0)
    out = model(images)
    out.reconstruction = out.reconstruction.detach()
    total, logs = loss(images, out, 0)
    assert logs["loss/vf"] > 0 and float(logs["vf/weight"]) == 1.0
    total.backward()
    assert model.encoder.conv_out.weight.grad.abs().sum() > 0 and model.quant_conv.weight.grad.abs().sum() > 0
    assert loss.vf.projection.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in [*model.decoder.parameters(), *model.post_quant_conv.parameters()])
    assert all(p.grad is None and not p.requires_grad for p in loss.vf.features.parameters())
    assert all(p.grad is None for p in loss.discriminator.parameters())


def test_adaptive_weight_is_the_ratio_of_gradient_norms(dinov2_dir):
    model, images = _model(), _images()
    loss = _loss(dinov2_dir, weight=0.1)
    out = model(images)
    layer = model.encoder_last_layer()
    assert layer is model.encoder.conv_out.weight
    total, logs = loss(images, out, 0, encoder_layer=layer)
    rec = F.l1_loss(out.reconstruction, images)  # pixel_weight 1, mean reduction, no LPIPS / KL / GAN
    cos, dms = vf_terms(loss.vf.projection(out.latent), loss.vf.features(images, (8, 8)), margin_cos=0.5,
                        margin_dms=0.25)  # VFConfig's defaults, the paper's margins
    (rec_grad,) = torch.autograd.grad(rec, layer, retain_graph=True)
    (vf_grad,) = torch.autograd.grad(cos + dms, layer, retain_graph=True)
    want = 0.1 * min((rec_grad.norm() / (vf_grad.norm() + 1e-4)).item(), ADAPTIVE_MAX)
    term, rec = (cos + dms).item(), rec.item()
    # the same operations in the same order, but separate backward passes: allow fp32 rounding
    assert float(logs["vf/weight"]) == pytest.approx(want, rel=1e-5)
    assert float(logs["loss/vf"]) == pytest.approx(term, rel=1e-6)
    assert total.item() == pytest.approx(rec + want * term, rel=1e-5)  # the weight applied
    with pytest.raises(ValueError, match="encoder_layer="):
        loss(images, out, 0)
    with torch.no_grad():  # evaluation: no gradients to compare, the term gets weight 0 (as the GAN's)
        _, logs = loss(images, out, 0, encoder_layer=layer)
    assert float(logs["vf/weight"]) == 0.0 and float(logs["loss/vf"]) > 0


# ----------------------------------------------------------------------------------------- missing weights

def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_dinov2_is_one_line_naming_files_and_fetch_weights(tmp_path, monkeypatch):
    from huggingface_hub import constants

    with pytest.raises(MissingWeightsError) as err:
        _loss(tmp_path / "nowhere")
    message = _one_line(err)
    assert "'loss.vf.model': no such directory" in message and "latentae fetch-weights --only dinov2" in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingWeightsError) as err:
        _loss(tmp_path / "empty")
    assert "missing config.json, model.safetensors or pytorch_model.bin in" in _one_line(err)
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "vit"}))
    (tmp_path / "empty" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelFormatError, match="holds a 'vit' model, not DINOv2"):
        _loss(tmp_path / "empty")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))  # an empty cache
    for model_id in ("facebook/dinov2-large", "latentae-tests/no-such-dinov2"):
        with pytest.raises(MissingWeightsError) as err:
            _loss(None, model=model_id)
        message = _one_line(err)
        for part in (f"model '{model_id}' not found", "config.json, model.safetensors", str(tmp_path / "hf-cache"),
                     "HF_HUB_OFFLINE is set", "latentae fetch-weights --only dinov2", "loss.vf.weight=0"):
            assert part in message, part
    assert "hf download latentae-tests/no-such-dinov2" in message  # fetch-weights only fetches the default


def test_run_with_missing_dinov2_stops_before_step_0(tmp_path, demo_images, capsys):
    from latentae.cli import main

    out = tmp_path / "run"
    code = main(["train", "--config", PRESET, *tiny_run_overrides(out, demo_images, "loss.vf.weight=0.1",
                                                                  f"loss.vf.model={tmp_path / 'nowhere'}")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "latentae fetch-weights --only dinov2" in err
    assert not (out / "config.yaml").exists() and not (out / "checkpoints").exists()  # Run never finished


def test_without_transformers_says_pip_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails as if not installed
    with pytest.raises(LatentaeError, match=r"pip install latentae\[align\]"):
        _loss(tmp_path)


def test_fetch_weights_dinov2(tmp_path, monkeypatch, capsys):
    """Only when named; offline: FAILED with the one-line reason; online: config.json and model.safetensors."""
    import huggingface_hub
    from huggingface_hub import constants

    from latentae.cli import main

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["fetch-weights", "--only", "dinov2"]) == 1
    line = capsys.readouterr().out.strip()
    assert line.startswith("FAILED dinov2: dinov2 model 'facebook/dinov2-large' not found") and "\n" not in line

    fetched = []

    def fake_download(repo_id, filename, *, local_files_only=False, local_dir=None, **kwargs):
        path = tmp_path / "staged" / "dinov2-large" / filename
        if local_files_only and not path.is_file():
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        if not local_files_only:
            assert local_dir == str(path.parent) and repo_id == "facebook/dinov2-large"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}")
            fetched.append(filename)
        return str(path)

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert main(["fetch-weights", "--only", "dinov2", "--dir", str(tmp_path / "staged")]) == 0
    assert fetched == ["config.json", "model.safetensors"]
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"ok     dinov2: {tmp_path / 'staged' / 'dinov2-large'}")
    assert f"set loss.vf.model={tmp_path / 'staged' / 'dinov2-large'}" in line


# ----------------------------------------------------------------------------------------- config

@pytest.mark.parametrize("override, message", [
    ("loss.vf.weight=-1", "'loss.vf.weight' must be >= 0"),
    ("loss.vf.margin_cos=2.5", "'loss.vf.margin_cos' must be in \\[0, 2\\]"),
    ("loss.vf.margin_dms=-0.1", "'loss.vf.margin_dms' must be in \\[0, 2\\]"),
    ("loss.vf.margin=0.1", "unknown config key 'loss.vf.margin'"),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(LossConfig, apply_overrides({}, [override.removeprefix("loss.")]), where="loss.")


def test_frozen_encoder_layer_with_adaptive_vf_is_a_config_error(tmp_path, demo_images):
    """Decoder-only fine-tuning leaves no gradient at the encoder's last layer: the adaptive weight cannot work."""
    from latentae.trainer.config import check_adaptive_weight, load_run_config
    from latentae.trainer.optim import select_trainable

    cfg = load_run_config(PRESET, tiny_run_overrides(tmp_path, demo_images, "loss.vf.weight=0.1"))
    model = _model()
    select_trainable(model, ["decoder"])
    with pytest.raises(ConfigError, match=r"freezes encoder\.conv_out\.weight, where loss\.vf\.adaptive"):
        check_adaptive_weight(model, cfg)
    cfg.loss.vf.adaptive = False
    check_adaptive_weight(model, cfg)


# ----------------------------------------------------------------------------------------- a real run

def test_run_logs_vf_resumes_the_projection_exactly_and_exports_a_plain_autoencoder(tmp_path, demo_images,
                                                                                    dinov2_dir):
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from latentae.trainer.config import load_run_config
    from latentae.trainer.loop import Run

    def config(out, *extra):
        return load_run_config(PRESET, tiny_run_overrides(out, demo_images, "loss.vf.weight=0.1",
                                                          f"loss.vf.model={dinov2_dir}", "train.max_steps=3",
                                                          "train.checkpoint_every=2", *extra))

    run = Run(config(tmp_path / "a"))
    initial = run.loss.vf.projection.weight.detach().clone()
    export = run.fit()
    final = run.loss.vf.projection.weight.detach().clone()
    assert not torch.equal(initial, final)  # the generator's optimizer trains it

    events = EventAccumulator(str(next((tmp_path / "a" / "logs").rglob("events.out.tfevents*")).parent))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss/vf", "train/vf/weight", "train/vf/cos", "train/vf/distmat"} <= scalars
    assert all(e.value > 0 for tag in ("train/loss/vf", "train/vf/weight") for e in events.Scalars(tag))

    # Resumed from step 2, step 3 ends where the uninterrupted run did: projection and its Adam state restored.
    resumed = Run(config(tmp_path / "b", f"train.resume={tmp_path / 'a' / 'checkpoints' / 'step-00000002'}"))
    assert resumed.state.step == 2 and not torch.equal(resumed.loss.vf.projection.weight, final)
    resumed.fit()
    assert torch.equal(resumed.loss.vf.projection.weight, final)
    assert all(torch.equal(a, b) for a, b in zip(run.model.state_dict().values(),
                                                 resumed.model.state_dict().values()))

    # The export is the model alone: a plain AutoencoderKL with the model's keys.
    assert json.loads((export / "config.json").read_text())["_class_name"] == "AutoencoderKL"
    assert set(load_file(export / "diffusion_pytorch_model.safetensors")) == set(run.model.state_dict())
    AutoencoderKL.from_pretrained(export)
