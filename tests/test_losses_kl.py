"""KL schedules, free bits, the reduction convention and the posterior-collapse monitor."""
import pytest
import torch

from latentae.config import ConfigError, load_config
from latentae.losses import AutoencoderLoss, DiscConfig, KLConfig, LossConfig
from latentae.losses.kl import kl_term, kl_weight
from latentae.models import AutoencoderOutput, GaussianPosterior
from latentae.models.posterior import active_channels


def test_constant_schedule():
    cfg = KLConfig(weight=1e-6)
    assert [kl_weight(cfg, s) for s in (0, 1, 10**6)] == [1e-6] * 3


def test_linear_schedule():
    cfg = KLConfig(weight=1.0, schedule="linear", anneal_start=100, anneal_steps=200)
    assert [kl_weight(cfg, s) for s in (0, 99, 100, 200, 250, 300, 10**6)] == [0, 0, 0, 0.5, 0.75, 1, 1]


def test_cyclical_schedule():
    cfg = KLConfig(weight=2.0, schedule="cyclical", anneal_start=10, anneal_steps=100, cycle_ratio=0.5)
    steps = (0, 10, 35, 60, 85, 110, 135, 160)
    assert [kl_weight(cfg, s) for s in steps] == [0, 0, 1.0, 2.0, 2.0, 0, 1.0, 2.0]


def test_schedule_config_checks():
    with pytest.raises(ConfigError, match="cycle_ratio"):
        KLConfig(schedule="cyclical", cycle_ratio=0.0)
    with pytest.raises(ConfigError, match="anneal_steps"):
        KLConfig(anneal_steps=0)
    cfg = load_config(LossConfig, {"kl": {"weight": "1e-5", "schedule": "linear"}}, ["disc.norm=group"])
    assert cfg.kl.weight == 1e-5 and cfg.kl.schedule == "linear" and cfg.disc.norm == "group"


def test_free_bits_floor_value_and_gradient():
    per_channel = torch.tensor([0.5, 0.01], requires_grad=True)
    term = kl_term(per_channel, spatial_size=16, free_bits=0.1, reduction="mean")
    assert term.item() == pytest.approx((0.5 + 0.1) / 2)
    term.backward()
    assert per_channel.grad.tolist() == [0.5, 0.0]  # the channel under the floor gets no gradient
    assert kl_term(per_channel, spatial_size=16, free_bits=0.1, reduction="sum").item() == pytest.approx(0.6 * 16)


def _posterior(batch=3, channels=4, size=5, collapsed=()):
    moments = torch.randn(batch, 2 * channels, size, size)
    for c in collapsed:  # q(z_c|x) = N(0, 1): exactly the prior, KL 0
        moments[:, c] = 0.0
        moments[:, channels + c] = 0.0
    return GaussianPosterior(moments)


def test_kl_reductions_match_ldm_and_elementwise_mean():
    posterior = _posterior()
    per_channel = posterior.kl_per_element()
    kl_sum = kl_term(per_channel, spatial_size=25, free_bits=0.0, reduction="sum")
    assert kl_sum.item() == pytest.approx(posterior.kl().mean().item(), rel=1e-5)  # LDM: sum(C,H,W) / B
    elementwise = 0.5 * (posterior.mean**2 + posterior.var - 1 - posterior.logvar)
    kl_mean = kl_term(per_channel, spatial_size=25, free_bits=0.0, reduction="mean")
    assert kl_mean.item() == pytest.approx(elementwise.mean().item(), rel=1e-5)


def test_collapsed_channel_is_reported_inactive():
    posterior = _posterior(collapsed=(2,))
    per_channel = posterior.kl_per_element()
    assert per_channel[2].item() == 0.0 and (per_channel[[0, 1, 3]] > 0.01).all()
    assert active_channels(per_channel, 0.01).item() == 3

    loss = AutoencoderLoss(LossConfig(perceptual_weight=0.0, kl=KLConfig(active_threshold=0.01)))
    images = torch.rand(3, 3, 10, 10)
    _, logs = loss(images, AutoencoderOutput(reconstruction=images * 0.9, posterior=posterior), 0)
    assert logs["latent/active_channels"].item() == 3
    assert logs["kl/channel_02"].item() == 0.0 and logs["kl/channel_00"].item() > 0.01
    assert logs["kl/weight"] == 1e-6


def test_mean_reduction_equivalent_kl_weight():
    """The documented conversion: sum objective / N_pix == mean objective with weight * N_lat / N_pix."""
    images, rec = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    posterior = _posterior(batch=2, channels=4, size=4)
    n_pix, n_lat = 3 * 16 * 16, 4 * 4 * 4
    beta = 1e-2
    no_gan = DiscConfig(weight=0.0)
    loss_sum = AutoencoderLoss(LossConfig(perceptual_weight=0.0, reduction="sum", kl=KLConfig(weight=beta),
                                          disc=no_gan))
    loss_mean = AutoencoderLoss(LossConfig(perceptual_weight=0.0, reduction="mean",
                                           kl=KLConfig(weight=beta * n_lat / n_pix), disc=no_gan))
    out = AutoencoderOutput(reconstruction=rec, posterior=posterior)
    total_sum, _ = loss_sum(images, out, 0)
    total_mean, _ = loss_mean(images, out, 0)
    assert (total_sum / n_pix).item() == pytest.approx(total_mean.item(), rel=1e-5)
