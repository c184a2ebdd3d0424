import math

import pytest
import torch

from latentae.config import ConfigError
from latentae.quantizers.gumbel import GumbelQuantizer


def _logits(gq: GumbelQuantizer, z: torch.Tensor) -> torch.Tensor:
    """[N, K] logits by hand: the 1x1 projection as a matrix product."""
    w = gq.proj.weight[:, :, 0, 0]
    return z.movedim(1, -1).reshape(-1, z.shape[1]) @ w.T + gq.proj.bias


def _assert_is_argmax(indices: torch.Tensor, logits: torch.Tensor) -> None:
    """indices pick the largest logit (up to conv-vs-matmul rounding, which could flip a near tie)."""
    picked = logits.gather(-1, indices.reshape(-1, 1)).squeeze(-1)
    assert torch.allclose(picked, logits.max(-1).values, atol=1e-5)


@pytest.mark.parametrize("step", [0, 1, 1000, 50_000, 149_000, 10**7])
def test_temperature_follows_formula(step):
    gq = GumbelQuantizer(4, codebook_size=8, temperature_start=1.0, temperature_end=1 / 16,
                         temperature_decay=1.85e-5)
    gq.step.fill_(step)
    expected = max(1 / 16, math.exp(-1.85e-5 * step))
    assert gq.temperature().item() == pytest.approx(expected, rel=1e-6)
    gq.eval()
    assert gq(torch.randn(1, 4, 2, 2)).stats["temperature"].item() == pytest.approx(expected, rel=1e-6)


def test_default_schedule_reaches_end_near_150k_steps():
    gq = GumbelQuantizer(4, codebook_size=8)
    gq.step.fill_(140_000)
    assert gq.temperature() > 1 / 16
    gq.step.fill_(160_000)
    assert gq.temperature().item() == pytest.approx(1 / 16)


def test_step_advances_only_in_training_and_is_checkpointed():
    gq = GumbelQuantizer(4, codebook_size=8)
    z = torch.randn(2, 4, 3, 3)
    gq.train()
    gq(z)
    gq(z)
    assert gq.step.item() == 2 and gq.step.dtype == torch.int64
    gq.eval()
    gq(z)
    assert gq.step.item() == 2
    restored = GumbelQuantizer(4, codebook_size=8)
    restored.load_state_dict(gq.state_dict())
    assert restored.step.item() == 2 and restored.temperature() == gq.temperature()


@pytest.mark.parametrize("codebook_dim", [None, 3])
def test_eval_is_deterministic_argmax_and_indices_to_codes_matches(codebook_dim):
    torch.manual_seed(0)
    gq = GumbelQuantizer(4, codebook_size=16, codebook_dim=codebook_dim).eval()
    z = torch.randn(2, 4, 5, 3)
    first, second = gq(z), gq(z)
    assert torch.equal(first.quantized, second.quantized) and torch.equal(first.indices, second.indices)
    assert first.quantized.shape == z.shape and first.quantized.dtype == torch.float32
    assert first.indices.shape == (2, 5, 3) and first.indices.dtype == torch.int64
    _assert_is_argmax(first.indices, _logits(gq, z))
    assert torch.equal(gq.indices_to_codes(first.indices), first.quantized)
    assert torch.equal(gq.indices_to_codes(first.indices), gq.indices_to_codes(first.indices))


def test_training_samples_hard_codes_with_noise():
    torch.manual_seed(1)
    gq = GumbelQuantizer(4, codebook_size=16).train()
    z = torch.randn(4, 4, 8, 8) * 0.1  # flat logits: noise decides most samples
    out = gq(z)
    rows = out.quantized.movedim(1, -1).reshape(-1, 4)
    # straight-through: every output is exactly one codebook row ...
    matches = (rows[:, None, :] == gq.embed.weight[None]).all(-1)
    assert matches.any(-1).all()
    # ... but sampled, so not always the argmax token (which `indices` reports)
    assert (matches.float().argmax(-1) != out.indices.flatten()).any()
    assert out.indices.max() < 16 and out.indices.min() >= 0


def test_soft_mode_mixes_codes():
    torch.manual_seed(2)
    gq = GumbelQuantizer(4, codebook_size=16, straight_through=False).train()
    out = gq(torch.randn(1, 4, 4, 4))
    rows = out.quantized.movedim(1, -1).reshape(-1, 4)
    assert not (rows[:, None, :] == gq.embed.weight[None]).all(-1).any(-1).all()


def test_kl_matches_hand_computation():
    torch.manual_seed(3)
    gq = GumbelQuantizer(4, codebook_size=8, kl_weight=0.3)
    z = torch.randn(2, 4, 3, 3)
    out = gq.eval()(z)
    q = torch.softmax(_logits(gq, z).double(), -1)
    kl = (q * torch.log(q / (1 / 8))).sum(-1).mean()
    assert out.losses["kl"].item() == pytest.approx(0.3 * kl.item(), rel=1e-5)
    assert set(out.losses) == {"kl"} and out.losses["kl"].dtype == torch.float32
    uniform = GumbelQuantizer(4, codebook_size=8)
    torch.nn.init.zeros_(uniform.proj.weight)
    torch.nn.init.zeros_(uniform.proj.bias)
    assert uniform(z).losses["kl"].abs().item() < 1e-6  # uniform logits: no KL


def test_gradients_reach_projection_and_codebook_through_quantized():
    torch.manual_seed(4)
    gq = GumbelQuantizer(6, codebook_size=16, codebook_dim=3).train()
    z = torch.randn(2, 6, 4, 4, requires_grad=True)
    out = gq(z)
    (out.quantized * torch.randn_like(out.quantized)).sum().backward()  # no KL: only the straight-through path
    assert gq.proj.weight.grad.abs().sum() > 0 and z.grad.abs().sum() > 0
    assert gq.embed.weight.grad.abs().sum() > 0 and gq.project_out.weight.grad.abs().sum() > 0
    # hard one-hot forward: only the sampled rows of the codebook receive gradient
    assert (gq.embed.weight.grad.abs().sum(-1) > 0).sum() <= out.indices.numel()


def test_stats_and_bad_arguments():
    gq = GumbelQuantizer(4, codebook_size=8)
    stats = gq(torch.randn(1, 4, 2, 2)).stats
    assert {"usage", "perplexity", "entropy", "temperature"} <= set(stats)
    with pytest.raises(ConfigError, match="temperature_end"):
        GumbelQuantizer(4, temperature_start=0.5, temperature_end=1.0)
    with pytest.raises(ConfigError, match="temperature_decay"):
        GumbelQuantizer(4, temperature_decay=-1.0)
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\]"):
        gq(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        gq.indices_to_codes(torch.zeros(6, dtype=torch.long))
