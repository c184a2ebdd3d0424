"""Latent regularizers (EQ-VAE equivariance, scale equivariance, latent noise): zero for a model that is
equivariant by construction, positive otherwise, gradients to encoder and decoder only, logged in a real run,
and the default config untouched (no new keys, no random draws)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_run_overrides
from latentae.config import ConfigError, apply_overrides, from_dict
from latentae.losses import AutoencoderLoss, LossConfig
from latentae.losses.config import (DiscConfig, EquivarianceConfig, KLConfig, LatentNoiseConfig,
                                    ScaleEquivarianceConfig)
from latentae.losses.equivariance import transform
from latentae.models import AutoencoderOutput, GaussianPosterior
from test_train import PRESET, fresh_accelerate_state  # noqa: F401 (autouse: resets accelerate after each test)

FACTOR = 2  # the toy autoencoders' spatial factor


def _blocky_images(batch=2, size=32, block=8):
    """Images constant on block x block squares of multiples of 1/256: average pooling and nearest upsampling
    invert each other on them, and bilinear downsampling by 2 or 4 averages equal numbers (all exact in fp32)."""
    low = torch.randint(-256, 256, (batch, 3, size // block, size // block),
                        generator=torch.Generator().manual_seed(0)) / 256
    return F.interpolate(low, scale_factor=block, mode="nearest")


def _ramp(width):  # multiples of 1/8: adding and subtracting it is exact
    return torch.arange(width, dtype=torch.float32) / 8


class PoolingAutoencoder(nn.Module):
    """encode: 2x average pooling times a gain, plus `skew` x a horizontal ramp; decode: removes the ramp of the
    latent's width, then 2x nearest upsampling times a gain. A perfect autoencoder of block images for any skew
    (gains 1); equivariant under halving and quarter turns only at skew 0: the ramp does not rotate with the
    latent, and a halved ramp is not the ramp of the halved width."""

    def __init__(self, skew=0.0):
        super().__init__()
        self.enc_gain = nn.Parameter(torch.ones(()))
        self.dec_gain = nn.Parameter(torch.ones(()))
        self.skew = nn.Parameter(torch.tensor(float(skew)))

    def encode(self, images):
        return self.enc_gain * F.avg_pool2d(images, FACTOR) + self.skew * _ramp(images.shape[-1] // FACTOR)

    def decode(self, latent):
        return self.dec_gain * F.interpolate(latent - self.skew * _ramp(latent.shape[-1]), scale_factor=FACTOR,
                                             mode="nearest")


def _loss(**sections):
    cfg = LossConfig(perceptual_weight=0.0, reduction="mean", disc=DiscConfig(weight=0.0), kl=KLConfig(weight=0.0),
                     **sections)
    return AutoencoderLoss(cfg)


def _output(model, latent, detach=False):  # a zero-variance posterior around `latent` (no KL weight in these tests)
    posterior = GaussianPosterior(torch.cat([latent, torch.full_like(latent, -30.0)], dim=1))
    rec = model.decode(latent)
    return AutoencoderOutput(reconstruction=rec.detach() if detach else rec, posterior=posterior, latent=latent)


def _term(name, section, model, images, seed=0):
    loss = _loss(**{name: section})
    latent = model.encode(images)
    torch.manual_seed(seed)
    total, logs = loss(images, _output(model, latent), 0, decode=model.decode)
    return total, logs


CASES = {
    "equivariance": EquivarianceConfig(weight=1.0, p=1.0, scales=(0.5, 1.0), rotations=(0, 1, 2, 3)),
    "scale_equivariance": ScaleEquivarianceConfig(weight=1.0, factors=(2, 4)),
    "latent_noise": LatentNoiseConfig(weight=1.0),
}


@pytest.mark.parametrize("name", ["equivariance", "scale_equivariance"])
def test_equivariance_terms_vanish_for_an_equivariant_model(name):
    images = _blocky_images()
    for seed in range(8):  # several draws of scale and rotation
        _, logs = _term(name, CASES[name], PoolingAutoencoder(), images, seed=seed)
        # exact: pooling, nearest upsampling and bilinear halving of block images are exact averages of equal
        # numbers, the same arithmetic on both sides
        assert logs[f"loss/{name}"].item() == 0.0
        _, logs = _term(name, CASES[name], PoolingAutoencoder(skew=1.0), images, seed=seed)
        assert logs["loss/rec"].item() == 0.0  # exact: still a perfect autoencoder, the term alone sees the flaw
        if name == "scale_equivariance" or _drew_a_transform(seed):
            assert logs[f"loss/{name}"].item() > 1e-3  # ramp errors are multiples of 1/16


def _drew_a_transform(seed) -> bool:
    """Whether EQ-VAE's draw for this seed is not the identity (scale 1, no rotation): replays its draws."""
    torch.manual_seed(seed)
    torch.rand(())  # the p draw
    scale = CASES["equivariance"].scales[int(torch.randint(2, ()))]
    turns = CASES["equivariance"].rotations[int(torch.randint(4, ()))]
    return (scale, turns) != (1.0, 0)


def test_latent_noise_vanishes_only_without_noise():
    images = _blocky_images()
    clean = LatentNoiseConfig(weight=1.0, t_min=0.0, t_max=0.0)
    _, logs = _term("latent_noise", clean, PoolingAutoencoder(), images)
    assert logs["loss/latent_noise"].item() == 0.0  # exact: t = 0 decodes the latent itself, a perfect inverse
    _, logs = _term("latent_noise", CASES["latent_noise"], PoolingAutoencoder(), images)
    assert logs["loss/latent_noise"].item() > 0.1  # t ~ U[0, 1] with gamma 3 destroys most of the signal


def test_transform_matches_torch_ops():
    """Rotation direction and the matching sizes: the image goes to exactly decoder-factor x the latent."""
    latent, images = torch.randn(1, 4, 7, 5), torch.randn(1, 3, 14, 10)
    t_latent, t_images = transform(latent, images, scale=0.5, quarter_turns=1)
    assert t_latent.shape[-2:] == (2, 3) and t_images.shape[-2:] == (4, 6)  # floor(7/2)=3, floor(5/2)=2, rotated
    expected = torch.rot90(F.interpolate(latent, size=(3, 2), mode="bilinear", align_corners=False), 1, (-2, -1))
    assert torch.equal(t_latent, expected)


@pytest.mark.parametrize("name", list(CASES))
def test_gradients_reach_encoder_and_decoder_only(name):
    """The term alone (main reconstruction weight 0) trains encoder and decoder; D gets nothing."""
    model = PoolingAutoencoder(skew=1.0)
    section = EquivarianceConfig(weight=1.0, p=1.0, scales=(0.5,), rotations=(1,)) if name == "equivariance" \
        else CASES[name]  # never the identity transform, whose zero L1 error has zero gradient
    loss = AutoencoderLoss(LossConfig(perceptual_weight=0.0, reduction="mean", kl=KLConfig(weight=0.0),
                                      disc=DiscConfig(start=0, adaptive=False, channels=8, norm="group"),
                                      **{name: section}))
    images = _blocky_images()
    latent = model.encode(images)
    torch.manual_seed(0)
    total, logs = loss(images, _output(model, latent, detach=True), 0,
                       decode=model.decode)  # main reconstruction detached: any gradient comes from the term
    assert f"loss/{name}" in logs
    total.backward()
    assert model.enc_gain.grad.abs() > 0 and model.dec_gain.grad.abs() > 0
    assert all(p.grad is None for p in loss.discriminator.parameters())


def test_default_config_adds_no_term_and_draws_nothing():
    """Defaults off: same logs, same total, and the global RNG is where it was (resume stays exact)."""
    model, images = PoolingAutoencoder(skew=1.0), _blocky_images()
    latent = model.encode(images)
    calls = []

    def decode(z):
        calls.append(z)
        return model.decode(z)

    loss = _loss()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    total, logs = loss(images, _output(model, latent), 0, decode=decode)
    assert torch.equal(torch.get_rng_state(), before) and not calls
    plain_total, plain_logs = loss(images, _output(model, latent), 0)
    assert logs.keys() == plain_logs.keys() and torch.equal(total, plain_total)
    assert not any(k.startswith(("loss/equivariance", "loss/scale_equ", "loss/latent_noise")) for k in logs)


def test_equivariance_is_drawn_with_probability_p():
    images = _blocky_images()
    never = EquivarianceConfig(weight=1.0, p=0.0)
    total, logs = _term("equivariance", never, PoolingAutoencoder(skew=1.0), images)
    assert "loss/equivariance" not in logs
    drawn = [("loss/equivariance" in _term("equivariance", EquivarianceConfig(weight=1.0, p=0.5, scales=(0.5,)),
                                           PoolingAutoencoder(), images, seed=s)[1]) for s in range(40)]
    assert 5 < sum(drawn) < 35  # about half of 40 seeded draws (binomial: outside [6, 34] has p < 1e-4)


def test_regularizer_needs_latent_and_decoder():
    loss = _loss(latent_noise=CASES["latent_noise"])
    model, images = PoolingAutoencoder(), _blocky_images()
    latent = model.encode(images)
    with pytest.raises(ValueError, match="loss.latent_noise needs .* decode="):
        loss(images, _output(model, latent), 0)


def test_lpips_too_small_for_the_strongest_downscaling_is_a_config_error():
    cfg = LossConfig(perceptual_net="alex", perceptual_random_init=True, disc=DiscConfig(weight=0.0),
                     scale_equivariance=ScaleEquivarianceConfig(weight=1.0, factors=(2, 4)))
    loss = AutoencoderLoss(cfg)
    model, images = PoolingAutoencoder(), _blocky_images(size=64)  # 64 / 4 = 16 px < alex's 31
    latent = model.encode(images)
    with pytest.raises(ConfigError, match="'loss.scale_equivariance.factors'.*16x16.*LPIPS-alex"):
        loss(images, _output(model, latent), 0, decode=model.decode)


@pytest.mark.parametrize("override, message", [
    ("loss.equivariance.p=1.5", "'loss.equivariance.p' must be in \\[0, 1\\]"),
    ("loss.equivariance.p=-0.1", "'loss.equivariance.p' must be in \\[0, 1\\]"),
    ("loss.equivariance.scales=[0.5,1.5]", "'loss.equivariance.scales'"),
    ("loss.equivariance.rotations=[4]", "'loss.equivariance.rotations'"),
    ("loss.scale_equivariance.factors=[1]", "'loss.scale_equivariance.factors'"),
    ("loss.latent_noise.t_max=2", "'loss.latent_noise.t_min' and 't_max'"),
    ("loss.latent_noise.weight=-1", "'loss.latent_noise.weight'"),
    ("loss.latent_noise.sigma=1", "unknown config key 'loss.latent_noise.sigma'"),
    ("loss.equivariance.rotation=[1]", "unknown config key 'loss.equivariance.rotation'.*mean 'rotations'"),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(LossConfig, apply_overrides({}, [override.removeprefix("loss.")]), where="loss.")


def test_tiny_run_logs_each_term(tmp_path, demo_images):
    """Two steps of the tiny KL model with all three terms on: each shows up as train/loss/<name>."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from latentae.trainer.config import load_run_config
    from latentae.trainer.loop import Run

    cfg = load_run_config(PRESET, tiny_run_overrides(
        tmp_path, demo_images, "train.max_steps=2", "train.checkpoint_every=100", "loss.equivariance.weight=1",
        "loss.equivariance.p=1", "loss.scale_equivariance.weight=0.5", "loss.latent_noise.weight=0.5"))
    Run(cfg).fit()
    events = EventAccumulator(str(next((tmp_path / "logs").rglob("events.out.tfevents*")).parent))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    expected = {"train/loss/equivariance", "train/loss/scale_equivariance", "train/loss/latent_noise"}
    assert expected <= scalars, expected - scalars
    for tag in expected:
        assert all(e.value > 0 for e in events.Scalars(tag))
