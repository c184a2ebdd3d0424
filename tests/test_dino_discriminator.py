"""loss.disc.kind=dino, the RAE authors' discriminator: a frozen DINO ViT (a random-init tiny transformers ViT here,
written by conftest) with trained heads, DiffAugment on its inputs. The backbone stays frozen, bit-identical and in
eval mode through training, the heads train and come back on resume, the augmentation is the authors', the fakes of
D's step are 8-bit, and missing weights give one error. (D's gradients never reaching the generator: the
parametrized test in test_losses_autoencoder.py.)"""
import pytest
import torch
from test_rae_training import PRESET, fresh_accelerate_state, run_overrides  # noqa: F401 (an autouse fixture)

from latentae.config import ConfigError
from latentae.errors import ModelFormatError
from latentae.losses import AutoencoderLoss, DiscConfig, LossConfig
from latentae.losses import dino_discriminator as dino
from latentae.models import AutoencoderOutput
from latentae.trainer.config import load_run_config
from latentae.trainer.loop import Run
from latentae.weights import MissingWeightsError


def dino_loss(dino_vit, **disc):
    torch.manual_seed(0)
    return AutoencoderLoss(LossConfig(perceptual_weight=0.0, reduction="mean",
                                      disc=DiscConfig(kind="dino", weights=str(dino_vit), start=0, adaptive=False,
                                                      **disc)))


def output(reconstruction):
    return AutoencoderOutput(reconstruction=reconstruction, latent=torch.zeros(2, 4, 4, 4))


def fixed_draws(monkeypatch, values):
    """diff_augment's 7 uniform draws per image set to `values` (one per draw, the same for every image)."""
    real_rand = torch.rand

    def rand(*shape, **kwargs):
        if shape[:1] == (7,):
            return torch.tensor(values, dtype=torch.float32)[:, None].expand(*shape).clone()
        return real_rand(*shape, **kwargs)

    monkeypatch.setattr(dino.torch, "rand", rand)


def test_translation_shifts_in_zeros(monkeypatch):
    """u = 0.5 for brightness, saturation and contrast leaves the colours; the shift draw moves the image by whole
    pixels with zeros coming in (the authors' zero padding), up to 1/8 of the side."""
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    fixed_draws(monkeypatch, [0.99, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])  # dy = +2 (round(16 / 8)), dx = 0
    y = dino.diff_augment(x)
    assert torch.allclose(y[:, :, :-2], x[:, :, 2:], atol=1e-6) and torch.equal(y[:, :, -2:], torch.zeros_like(y[:, :, -2:]))
    fixed_draws(monkeypatch, [0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])  # dy = -2
    y = dino.diff_augment(x)
    assert torch.allclose(y[:, :, 2:], x[:, :, :-2], atol=1e-6) and not y[:, :, :2].any()


def test_colour_is_brightness_then_saturation_then_contrast(monkeypatch):
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    fixed_draws(monkeypatch, [0.5, 0.5, 0.75, 0.25, 1.0, 0.5, 0.5])  # +0.25, saturation x 0.5, contrast x 1.5
    bright = x + 0.25
    grey = bright.mean(1, keepdim=True)
    saturated = (bright - grey) * 0.5 + grey
    mean = saturated.mean((1, 2, 3), keepdim=True)
    assert torch.allclose(dino.diff_augment(x), (saturated - mean) * 1.5 + mean, atol=1e-6)


def test_cutout_zeroes_a_square_of_the_given_fraction(monkeypatch):
    x = torch.ones(1, 3, 16, 16)
    fixed_draws(monkeypatch, [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    assert torch.equal(dino.diff_augment(x, cutout=0.0), x)  # the authors' RAE setting: off
    y = dino.diff_augment(x, cutout=0.25)
    assert (y == 0).all(1).sum().item() == 16  # a 4 x 4 hole


def test_each_image_gets_its_own_draw_and_gradients_pass():
    """Real and fake images are augmented alike (one call over both halves, each image its own draw: what the
    authors' two calls draw) and the augmentation is differentiable, so the generator's gradient passes it."""
    x = (torch.rand(1, 3, 16, 16) * 2 - 1).expand(64, -1, -1, -1).clone().requires_grad_(True)
    torch.manual_seed(0)
    y = dino.diff_augment(x)
    assert len({tuple(row.tolist()) for row in y.flatten(1)[:, :8]}) == 64
    offsets = (y - x).mean((1, 2, 3))  # brightness U(-0.5, 0.5) dominates: both signs, within the range
    assert (offsets > 0.1).any() and (offsets < -0.1).any()
    y.sum().backward()
    assert x.grad.abs().sum() > 0
    torch.manual_seed(0)
    assert torch.equal(dino.diff_augment(x.detach()), y.detach())  # a function of the global generator's state


def test_discriminator_step_sees_both_halves_augmented_and_the_fakes_at_8_bits(dino_vit, monkeypatch):
    loss = dino_loss(dino_vit)
    seen = []
    loss.discriminator.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    real, fake = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2.4 - 1.2  # fakes overshoot
    loss(real, AutoencoderOutput(reconstruction=fake), 0, mode="discriminator")
    assert not torch.allclose(seen[-1][:2], real, atol=1e-2)  # reals augmented
    assert not torch.allclose(seen[-1][2:], dino.to_8bit_levels(fake), atol=1e-2)  # fakes too
    monkeypatch.setattr(dino, "diff_augment", lambda x, cutout=0.0: x)
    loss(real, AutoencoderOutput(reconstruction=fake), 0, mode="discriminator")
    assert torch.equal(seen[-1][:2], real)
    levels = (seen[-1][2:] + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-4) and levels.min() >= 0 and levels.max() <= 255
    assert torch.allclose(seen[-1][2:], fake.clamp(-1, 1), atol=1 / 255)
    loss(real, output(fake.requires_grad_(True)), 0)  # G pass: the fakes as decoded
    assert torch.equal(seen[-1], fake.detach())


def test_generator_gradient_flows_through_the_frozen_backbone(dino_vit):
    loss = dino_loss(dino_vit)
    backbone = loss.discriminator.backbone
    rec = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    total, logs = loss(torch.rand(2, 3, 32, 32) * 2 - 1, output(rec), 0)
    total.backward()
    assert "loss/g_adv" in logs and rec.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())
    assert all(p.grad is None and p.requires_grad for p in loss.discriminator.heads.parameters())
    assert len(loss.discriminator.heads) == 2  # the tiny ViT's 4 blocks: the last block and block 2


def test_training_keeps_the_backbone_frozen_and_resume_restores_the_heads(tmp_path, demo_images, dino_vit):
    assert load_run_config(PRESET, ["data.train=x"]).loss.disc.kind == "dino"  # the preset's, the authors'
    overrides = run_overrides(tmp_path, demo_images, "loss.disc.kind=dino", f"loss.disc.weights={dino_vit}",
                              "train.checkpoint_every=2")
    run = Run(load_run_config(PRESET, overrides))
    d = run.loss.discriminator
    backbone = {k: v.clone() for k, v in d.backbone.state_dict().items()}
    heads = {k: v.clone() for k, v in d.heads.state_dict().items()}
    from transformers import ViTModel

    source = ViTModel.from_pretrained(dino_vit, add_pooling_layer=False).state_dict()
    assert all(torch.equal(v, source[k]) for k, v in d.backbone.model.state_dict().items())
    d.train()
    run.fit()
    assert not d.backbone.training and not d.backbone.model.training
    assert all(p.grad is None and not p.requires_grad for p in d.backbone.parameters())
    assert all(torch.equal(v, backbone[k]) for k, v in d.backbone.state_dict().items())
    trained = {k: v.clone() for k, v in d.heads.state_dict().items()}
    assert any(not torch.equal(v, heads[k]) for k, v in trained.items())

    resumed = Run(load_run_config(PRESET, [*overrides, "train.max_steps=6", "train.resume=auto"]))
    assert resumed.state.step == 4
    assert all(torch.equal(v, trained[k]) for k, v in resumed.loss.discriminator.heads.state_dict().items())


def test_missing_backbone_names_the_files_the_key_and_the_fetch_command(offline_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError) as e:
        AutoencoderLoss(LossConfig(perceptual_weight=0.0, disc=DiscConfig(kind="dino")))
    message = str(e.value)
    assert "facebook/dino-vits8" in message and "model.safetensors" in message and "loss.disc.weights" in message
    assert "fetch-weights --only dino-vits8" in message and "loss.disc.kind=patchgan" in message
    with pytest.raises(MissingWeightsError, match=r"missing config\.json, model\.safetensors or pytorch_model\.bin in"):
        AutoencoderLoss(LossConfig(perceptual_weight=0.0, disc=DiscConfig(kind="dino", weights=str(tmp_path))))


def test_a_backbone_of_another_kind_is_named(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
                ).save_pretrained(tmp_path)
    with pytest.raises(ModelFormatError, match=r"loss\.disc\.weights: .* holds a 'dinov2' model, not 'vit'"):
        AutoencoderLoss(LossConfig(perceptual_weight=0.0, disc=DiscConfig(kind="dino", weights=str(tmp_path))))


@pytest.mark.parametrize("keys, message", [
    ({"weights": "facebook/dino-vits8"}, r"loss\.disc\.weights' names the backbone of loss\.disc\.kind=dino"),
    ({"kind": "dino", "head_kernel": 4}, r"loss\.disc\.head_kernel' must be an odd number"),
    ({"kind": "dino", "cutout": 1.0}, r"loss\.disc\.cutout' must be in \[0, 1\)"),
])
def test_bad_settings_are_named(keys, message):
    with pytest.raises(ConfigError, match=message):
        DiscConfig(**keys)


def test_fetched_weights_in_the_hf_cache_are_the_default(dino_vit, tmp_path, monkeypatch, capsys):
    """What `latentae fetch-weights --only dino-vits8` leaves in the Hugging Face cache is what loss.disc.kind=dino
    loads without loss.disc.weights; offline without it, fetch-weights says FAILED for it."""
    import shutil

    from huggingface_hub import constants

    from latentae.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    assert main(["fetch-weights", "--only", "dino-vits8"]) == 1
    assert capsys.readouterr().out.startswith("FAILED dino-vits8: dino-vits8 model 'facebook/dino-vits8' not found")
    repo = tmp_path / "hf-cache" / "models--facebook--dino-vits8"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(dino_vit, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    assert main(["fetch-weights", "--only", "dino-vits8"]) == 0
    assert capsys.readouterr().out.startswith(f"ok     dino-vits8: {snapshot}")
    loss = AutoencoderLoss(LossConfig(perceptual_weight=0.0, disc=DiscConfig(kind="dino")))
    assert loss.discriminator.backbone.model.config.hidden_size == 32  # the cached tiny ViT
