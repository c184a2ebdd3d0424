"""Adversarial losses, LeCAM and R1 on fixed logits; the PatchGAN discriminator's norms and single forward."""
import pytest
import torch
from torch import nn

from latentae.config import ConfigError, load_config
from latentae.losses import AutoencoderLoss, DiscConfig, LossConfig, NLayerDiscriminator
from latentae.losses.gan import LeCAMAnchors, discriminator_loss, generator_loss, lecam_penalty, r1_penalty
from latentae.models import AutoencoderOutput

REAL = torch.tensor([2.0, 0.5, -1.0])
FAKE = torch.tensor([-2.0, 0.0, 1.5])


@pytest.mark.parametrize("kind, d_value, g_value", [
    # hinge: 0.5 * (mean[0, .5, 2] + mean[0, 1, 2.5]); G: -mean(fake)
    ("hinge", 1.0, 0.5 / 3),
    # BCE on logits: 0.5 * (mean softplus(-real) + mean softplus(fake)); G: mean softplus(-fake)
    ("non_saturating", 0.7392925253878286, 1.0071628231952234),
    # same D; G: -mean softplus(fake)
    ("vanilla", 0.7392925253878286, -0.8404961565285567),
])
def test_gan_losses_known_values(kind, d_value, g_value):
    assert discriminator_loss(kind, REAL, FAKE).item() == pytest.approx(d_value, abs=1e-6)
    assert generator_loss(kind, FAKE).item() == pytest.approx(g_value, abs=1e-6)


def test_unknown_gan_loss_is_rejected():
    with pytest.raises(ValueError, match="hinge"):
        generator_loss("wgan", FAKE)
    with pytest.raises(ConfigError, match="disc.loss"):
        load_config(LossConfig, {"disc": {"loss": "wgan"}})


def test_lecam_known_value():
    # relu(real + 0.5) = [2.5, 1, 0] -> 7.25 / 3; relu(0.5 - fake) = [2.5, .5, 0] -> 6.5 / 3
    value = lecam_penalty(REAL, FAKE, torch.tensor(0.5), torch.tensor(-0.5))
    assert value.item() == pytest.approx(13.75 / 3, abs=1e-6)


def test_lecam_anchors_start_at_first_means_then_decay():
    anchors = LeCAMAnchors(decay=0.9)
    anchors.update(REAL, FAKE)  # means 0.5 and -1/6
    assert anchors.ema_real.item() == pytest.approx(0.5) and anchors.ema_fake.item() == pytest.approx(-1 / 6)
    anchors.update(torch.full((3,), 1.5), torch.full((3,), -2.0))
    assert anchors.ema_real.item() == pytest.approx(0.9 * 0.5 + 0.1 * 1.5)
    assert anchors.ema_fake.item() == pytest.approx(0.9 * (-1 / 6) + 0.1 * -2.0)
    assert set(anchors.state_dict()) == {"ema_real", "ema_fake", "updates"}  # checkpointed


def test_r1_known_value_and_gradient_to_discriminator():
    # D(x) = sum_c w_c x_c per pixel: grad_x sum D = w at every pixel, so |grad|^2 = H * W * |w|^2 per image.
    disc = nn.Conv2d(3, 1, 1, bias=False)
    with torch.no_grad():
        disc.weight.copy_(torch.tensor([1.0, 2.0, -2.0]).view(1, 3, 1, 1))
    real = torch.randn(2, 3, 4, 4, requires_grad=True)
    penalty = r1_penalty(disc(real), real)
    assert penalty.item() == pytest.approx(0.5 * 16 * 9)
    penalty.backward()  # d/dw (0.5 * 16 * |w|^2) = 16 w: the penalty trains D
    assert torch.allclose(disc.weight.grad.flatten(), 16 * torch.tensor([1.0, 2.0, -2.0]))


def test_discriminator_step_adds_weighted_lecam_and_r1():
    cfg = LossConfig(perceptual_weight=0.0, disc=DiscConfig(start=0, norm="group", lecam_weight=0.1, r1_weight=2.0))
    loss = AutoencoderLoss(cfg)
    images, rec = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    total, logs = loss(images, AutoencoderOutput(reconstruction=rec), 0, mode="discriminator")
    expected = logs["loss/disc"] + 0.1 * logs["loss/lecam"] + 2.0 * logs["loss/r1"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6) and logs["loss/r1"] > 0
    total.backward()
    assert all(p.grad is not None for p in loss.discriminator.parameters())
    assert loss.lecam.updates.item() == 1


@pytest.mark.parametrize("norm, layer_type", [("batch", nn.BatchNorm2d), ("group", nn.GroupNorm),
                                              ("none", None), ("spectral", None)])
def test_discriminator_norms(norm, layer_type):
    disc = NLayerDiscriminator(3, channels=16, layers=3, norm=norm)
    out = disc(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1, 6, 6)  # 64 -> 32 -> 16 -> 8 (stride 2), -> 7 -> 6 (4x4 stride 1)
    norms = [m for m in disc.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
    assert len(norms) == (3 if layer_type else 0) and all(isinstance(m, layer_type) for m in norms)
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    assert sum(hasattr(c, "parametrizations") for c in convs) == (5 if norm == "spectral" else 0)
    # convs followed by a norm layer carry no bias
    assert sum(c.bias is None for c in convs) == (3 if layer_type else 0)


def test_batchnorm_discriminator_sees_real_and_fake_in_one_forward():
    cfg = LossConfig(perceptual_weight=0.0, disc=DiscConfig(start=0, norm="batch", channels=8))
    loss = AutoencoderLoss(cfg)
    batches = []
    loss.discriminator.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    images = torch.rand(3, 3, 32, 32)
    loss(images, AutoencoderOutput(reconstruction=images.flip(0)), 0, mode="discriminator")
    assert batches == [6]


def test_lecam_decay_is_per_optimizer_step_under_grad_accum():
    """Two micro-batches of one optimizer step move the anchors as far as one update without accumulation."""
    first, later = torch.tensor([2.0]), torch.tensor([-1.0])
    plain, accumulated = LeCAMAnchors(decay=0.9), LeCAMAnchors(decay=0.9, micro_batches=2)
    for anchors in (plain, accumulated):
        anchors.update(first, -first)  # the first update sets the anchors
    plain.update(later, -later)
    accumulated.update(later, -later)
    accumulated.update(later, -later)
    assert accumulated.ema_real.item() == pytest.approx(plain.ema_real.item(), rel=1e-6)
    assert accumulated.ema_fake.item() == pytest.approx(plain.ema_fake.item(), rel=1e-6)
