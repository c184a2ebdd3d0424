"""AutoencoderLoss: gradient isolation between generator and discriminator, LPIPS gradient, the adaptive
weight, GAN start / warm-up, every kind of bottleneck, and one step of the tiny real KL model."""
import pytest
import torch
from torch import nn

from conftest import assert_close_across_kernels, weight_layers
from latentae.config import ConfigError
from latentae.losses import AutoencoderLoss, DiscConfig, KLConfig, LossConfig
from latentae.losses import autoencoder_loss as loss_module
from latentae.models import AutoencoderOutput, GaussianPosterior, KLAutoencoder, VQTokenizer
from latentae.quantizers.base import QuantizerOutput


class ToyAutoencoder(nn.Module):
    """latent moments -> posterior -> small conv decoder whose last conv weight is `last_layer()`."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.decoder = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.SiLU(), nn.Upsample(scale_factor=2),
                                     nn.Conv2d(16, 3, 3, padding=1))

    def forward(self, images):
        posterior = GaussianPosterior(self.encoder(images))
        z = posterior.sample()
        return AutoencoderOutput(reconstruction=self.decoder(z), posterior=posterior, latent=z)

    def last_layer(self):
        return self.decoder[-1].weight


def _images(batch=2, size=32):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _cfg(**disc):
    return LossConfig(perceptual_net="alex", perceptual_random_init=True,
                      disc=DiscConfig(start=0, channels=16, norm="group", **disc))


@pytest.fixture(scope="module")
def loss():
    torch.manual_seed(0)
    return AutoencoderLoss(_cfg())


def test_lpips_gives_decoder_gradient_and_never_changes(loss):
    model = ToyAutoencoder()
    frozen = {k: v.clone() for k, v in loss.perceptual.state_dict().items()}
    only_lpips = AutoencoderLoss(LossConfig(pixel_weight=0.0, perceptual_net="alex", perceptual_random_init=True,
                                            kl=KLConfig(weight=0.0), disc=DiscConfig(weight=0.0)))
    only_lpips.perceptual = loss.perceptual  # reuse the module-scoped LPIPS
    optimizer = torch.optim.Adam(list(model.parameters()) + list(only_lpips.parameters()), lr=1e-2)
    images = _images()
    total, logs = only_lpips(images, model(images), 0)
    assert total.item() == pytest.approx(logs["loss/perceptual"].item())
    total.backward()
    assert model.last_layer().grad.abs().sum() > 0 and model.decoder[0].weight.grad.abs().sum() > 0
    optimizer.step()
    assert all(p.grad is None for p in loss.perceptual.parameters())
    assert all(torch.equal(v, frozen[k]) for k, v in loss.perceptual.state_dict().items())


@pytest.fixture(params=["patchgan", "dino"])
def either_discriminator(request, loss, dino_vit):
    """The module's PatchGAN loss, and one with the RAE authors' discriminator (a random tiny DINO ViT); with the
    trainable parameters of its discriminator (the DINO backbone is frozen)."""
    if request.param == "patchgan":
        return loss, list(loss.discriminator.named_parameters())
    torch.manual_seed(0)
    dino = AutoencoderLoss(_cfg_kind("dino", dino_vit))
    dino.perceptual = loss.perceptual  # reuse the module-scoped LPIPS
    return dino, list(dino.discriminator.heads.named_parameters())


def _cfg_kind(kind, weights):
    cfg = _cfg()
    cfg.disc.kind, cfg.disc.weights = kind, str(weights)
    return cfg


def test_discriminator_update_leaves_generator_gradients_untouched(either_discriminator):
    loss, trainable = either_discriminator
    model = ToyAutoencoder()
    images = _images()
    out = model(images)
    frozen_before = [p.requires_grad for p in loss.discriminator.parameters()]
    g_total, _ = loss(images, out, 0, last_layer=model.last_layer())
    g_total.backward(retain_graph=True)
    after_generator = [p.grad.clone() for p in model.parameters()]
    assert all(p.grad is None for p in loss.discriminator.parameters())  # generator update: D's grads empty
    assert [p.requires_grad for p in loss.discriminator.parameters()] == frozen_before  # D's flags come back
    assert all(p.requires_grad for _, p in trainable)

    d_total, d_logs = loss(images, out, 0, mode="discriminator")  # the reconstruction not detached by the caller
    d_total.backward()
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), after_generator))
    # (the last bias may get exactly 0: with every hinge active, real and fake pull it equally)
    assert all(p.grad is not None for _, p in trainable)
    assert all(p.grad.abs().sum() > 0 for n, p in trainable if n.endswith("weight") or n.endswith("original"))
    assert all(p.grad is None for p in loss.discriminator.parameters() if not p.requires_grad)  # a frozen backbone
    assert {"loss/disc", "disc/logits_real", "disc/logits_fake", "loss/total"} <= set(d_logs)
    loss.discriminator.zero_grad(set_to_none=True)


def test_adaptive_weight_equals_hand_computation(loss):
    model = ToyAutoencoder()
    images = _images()
    out = model(images)
    rec = out.reconstruction
    total, logs = loss(images, out, 0, last_layer=model.last_layer())

    # by hand: the reconstruction part and the generator's hinge loss, gradients at the last layer
    reconstruction = logs["loss/rec"] + logs["loss/perceptual"]  # values only; recompute with graph below
    rec_part = (rec - images).abs().sum(dim=(1, 2, 3)).mean() \
        + loss.perceptual(images, rec).mean() * images[0].numel()
    assert rec_part.item() == pytest.approx(reconstruction.item(), rel=1e-5)
    g_adv = -loss.discriminator(rec).mean()
    assert g_adv.item() == pytest.approx(logs["loss/g_adv"].item(), rel=1e-5)
    (grad_rec,) = torch.autograd.grad(rec_part, model.last_layer(), retain_graph=True)
    (grad_adv,) = torch.autograd.grad(g_adv, model.last_layer(), retain_graph=True)
    expected = 0.5 * (grad_rec.norm() / (grad_adv.norm() + 1e-4)).clamp(0, 1e4)
    assert logs["adaptive_weight"].item() == pytest.approx(expected.item(), rel=1e-4)

    # the total is the weighted sum of the logged terms
    weighted = reconstruction + logs["kl/weight"] * logs["loss/kl"] + logs["adaptive_weight"] * logs["loss/g_adv"]
    assert total.item() == pytest.approx(weighted.item(), rel=1e-5)
    loss.discriminator.zero_grad(set_to_none=True)


def test_adaptive_weight_clamped_and_fixed_weight():
    d = DiscConfig(start=0, adaptive_max=0.25, weight=2.0, channels=8, norm="none")
    clamped = AutoencoderLoss(LossConfig(perceptual_weight=0.0, disc=d))
    model = ToyAutoencoder()
    images = _images()
    out = model(images)
    _, logs = clamped(images, out, 0, last_layer=model.last_layer())
    assert logs["adaptive_weight"].item() == pytest.approx(2.0 * 0.25)  # sum-reduced rec dwarfs g_adv

    fixed = AutoencoderLoss(LossConfig(perceptual_weight=0.0, disc=DiscConfig(start=0, adaptive=False, weight=0.5)))
    total, logs = fixed(images, out, 0)  # no last_layer needed
    assert logs["adaptive_weight"].item() == 0.5
    expected = logs["loss/rec"] + 1e-6 * logs["loss/kl"] + 0.5 * logs["loss/g_adv"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)

    with torch.no_grad():  # validation: no gradients to compare
        _, logs = clamped(images, out, 0, last_layer=model.last_layer())
    assert logs["adaptive_weight"].item() == 0.0


def test_disc_start_and_warmup(monkeypatch):
    cfg = LossConfig(perceptual_weight=0.0, disc=DiscConfig(start=100, warmup_steps=30, channels=8))
    loss = AutoencoderLoss(cfg)
    assert [loss.discriminator_active(s) for s in (0, 69, 70, 100)] == [False, False, True, True]
    assert [loss.generator_adversarial_active(s) for s in (70, 99, 100, 10**6)] == [False, False, True, True]

    def must_not_run(*args, **kwargs):
        raise AssertionError("adaptive weight computed before disc.start")

    monkeypatch.setattr(loss_module, "adaptive_weight", must_not_run)
    model = ToyAutoencoder()
    images = _images()
    out = model(images)
    _, logs = loss(images, out, 80, last_layer=model.last_layer())
    assert "loss/g_adv" not in logs and "adaptive_weight" not in logs
    _, d_logs = loss(images, out, 80, mode="discriminator")  # the discriminator warms up already
    assert "loss/disc" in d_logs
    with pytest.raises(RuntimeError, match="discriminator_active"):
        loss(images, out, 60, mode="discriminator")

    off = AutoencoderLoss(LossConfig(perceptual_weight=0.0, disc=DiscConfig(start=0, weight=0.0)))
    assert not off.discriminator_active(10**6) and not off.generator_adversarial_active(10**6)


def test_codebook_adds_quantizer_losses_and_logs_codebook_stats():
    cfg = LossConfig(pixel_loss="l2", reduction="mean", perceptual_weight=0.0,
                     disc=DiscConfig(start=0, adaptive=False, channels=8, norm="none"))
    loss = AutoencoderLoss(cfg, VQTokenizer.bottleneck)
    images = _images()
    rec = (images * 0.8).requires_grad_(True)
    quant = QuantizerOutput(quantized=torch.randn(2, 8, 4, 4), indices=torch.zeros(2, 4, 4, dtype=torch.long),
                            losses={"commitment": torch.tensor(0.25), "codebook": torch.tensor(1.0)},
                            stats={"usage": torch.tensor(0.5), "perplexity": torch.tensor(3.0),
                                   "entropy": torch.tensor(1.5)})
    total, logs = loss(images, AutoencoderOutput(reconstruction=rec, quant=quant, latent=quant.quantized), 0)
    expected = ((rec - images) ** 2).mean() + 1.25 + 0.5 * logs["loss/g_adv"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert logs["loss/commitment"] == 0.25 and logs["loss/codebook"] == 1.0
    assert (logs["codebook/usage"], logs["codebook/perplexity"], logs["codebook/entropy"]) == (0.5, 3.0, 1.5)
    assert "loss/kl" not in logs and {"latent/mean", "latent/std"} <= set(logs)
    with pytest.raises(ValueError, match="no latent"):
        loss(images, AutoencoderOutput(reconstruction=rec), 0)
    with pytest.raises(ConfigError, match="loss.reduction"):
        AutoencoderLoss(LossConfig(perceptual_weight=0.0), VQTokenizer.bottleneck)


def test_tiny_kl_model_trains_one_step_under_bf16_autocast(loss):
    torch.manual_seed(0)
    model = KLAutoencoder(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=8)
    opt_g = torch.optim.Adam(model.parameters(), lr=1e-4)
    opt_d = torch.optim.Adam(loss.discriminator.parameters(), lr=1e-4)
    images = _images(size=32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images)
        total, logs = loss(images, out, 0, last_layer=model.last_layer())
    assert total.dtype == torch.float32
    total.backward()
    opt_g.step()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d_total, d_logs = loss(images, out, 0, mode="discriminator")
    d_total.backward()
    opt_d.step()
    expected = {"loss/total", "loss/rec", "loss/perceptual", "loss/kl", "loss/g_adv", "adaptive_weight",
                "kl/weight", "kl/channel_00", "kl/channel_03", "latent/active_channels", "latent/mean", "latent/std",
                "disc/g_logits_fake"}
    assert expected <= set(logs) and not any(k.startswith("train/") for k in logs)
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in {**logs, **d_logs}.values())
    assert model.last_layer().grad.abs().sum() > 0



@pytest.mark.parametrize("norm", ["batch", "spectral", "group"])
def test_generator_sees_the_logits_of_the_discriminator_step(norm):
    """The generator is judged by the D its own step trains: for a batch-norm D the fakes are normalized with
    the statistics of cat([real, fake]) in both passes, and the generator pass leaves D's buffers alone."""
    torch.manual_seed(0)
    loss = AutoencoderLoss(LossConfig(perceptual_weight=0.0, kl=KLConfig(weight=0.0),
                                      disc=DiscConfig(start=0, channels=8, norm=norm, adaptive=False)))
    d = loss.discriminator
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-2)
    make = torch.Generator().manual_seed(1)

    def batch():  # reals bright, fakes dark: a few D steps learn to separate them
        return torch.rand(4, 3, 32, 32, generator=make) * 0.5 + 0.5, torch.rand(4, 3, 32, 32, generator=make) - 1

    for step in range(4):
        real, fake = batch()
        d_total, _ = loss(real, AutoencoderOutput(reconstruction=fake), step, mode="discriminator")
        opt_d.zero_grad()
        d_total.backward()
        opt_d.step()
    opt_d.zero_grad(set_to_none=True)

    seen = []
    hook = d.register_forward_hook(lambda module, args, out: seen.append(out.detach().clone()))
    images, rec = batch()
    buffers = {k: v.clone() for k, v in d.state_dict().items()}
    posterior = GaussianPosterior(torch.zeros(4, 8, 8, 8))
    g_total, g_logs = loss(images, AutoencoderOutput(reconstruction=rec.requires_grad_(True), posterior=posterior), 4)
    g_total.backward()
    assert rec.grad.abs().sum() > 0 and all(p.grad is None for p in d.parameters())
    assert all(torch.equal(v, buffers[k]) for k, v in d.state_dict().items())  # G pass: D's buffers untouched
    _, d_logs = loss(images, AutoencoderOutput(reconstruction=rec), 4, mode="discriminator")
    hook.remove()
    if d.mixes_batch:  # same module, batch shape and values in one process (same kernels): bit for bit
        assert torch.equal(seen[0][-4:], seen[1][-4:])
        assert torch.equal(g_logs["disc/g_logits_fake"], d_logs["disc/logits_fake"])
    else:  # a per-sample D runs the fakes alone in the G pass: other oneDNN kernels for the smaller batch
        assert_close_across_kernels(seen[0][-4:], seen[1][-4:], layers=weight_layers(d))
        assert_close_across_kernels(g_logs["disc/g_logits_fake"], d_logs["disc/logits_fake"], layers=weight_layers(d),
                                    scale=seen[1][-4:].abs().max().item())  # the mean of those logits
    assert d_logs["disc/logits_fake"] < d_logs["disc/logits_real"]  # the trained D does tell them apart
