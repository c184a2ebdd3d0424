import math

import pytest
import torch
import torch.nn.functional as F
from gloo_ranks import run_gloo_ranks

from latentae.config import ConfigError
from latentae.quantizers.lfq import LFQ


def _all_codes(bits: int) -> torch.Tensor:
    """[2**bits, bits] codes in {-1, 1}; row k is the code of index k (bit i of k = channel i)."""
    k = torch.arange(2**bits)
    return torch.stack([(k >> i) & 1 for i in range(bits)], -1).float() * 2 - 1


def _brute_force_entropies(h: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit softmax over every code of -||h - c||^2 / T (float64)."""
    h = h.double()
    codes = _all_codes(h.shape[1]).double()
    probs = F.softmax(-torch.cdist(h, codes).pow(2) / temperature, dim=-1)  # [N, K]
    per_sample = -(probs * probs.clamp_min(1e-300).log()).sum(-1).mean()
    mean = probs.mean(0)
    return per_sample, -(mean * mean.clamp_min(1e-300).log()).sum()


def _flat(z: torch.Tensor) -> torch.Tensor:
    return z.movedim(1, -1).reshape(-1, z.shape[1])


@pytest.mark.parametrize("bits", [1, 4, 5])
def test_entropy_terms_match_brute_force(bits):
    torch.manual_seed(bits)
    lfq = LFQ(bits, codebook_size=2**bits, temperature=0.7, entropy_weight=0.3, diversity_gamma=1.5)
    z = torch.randn(2, bits, 4, 3)
    out = lfq(z)
    per_sample, codebook = _brute_force_entropies(_flat(z), 0.7)
    assert out.stats["per_sample_entropy"].item() == pytest.approx(per_sample.item(), rel=1e-5)
    assert out.stats["codebook_entropy"].item() == pytest.approx(codebook.item(), rel=1e-5)
    assert out.losses["entropy_per_sample"].item() == pytest.approx(0.3 * per_sample.item(), rel=1e-5)
    assert out.losses["entropy_codebook"].item() == pytest.approx(-0.3 * 1.5 * codebook.item(), rel=1e-5)
    combined = out.losses["entropy_per_sample"] + out.losses["entropy_codebook"]
    assert combined.item() == pytest.approx(0.3 * (per_sample - 1.5 * codebook).item(), rel=1e-4, abs=1e-6)
    assert set(out.losses) == {"entropy_per_sample", "entropy_codebook", "commitment"}
    assert out.loss.item() == pytest.approx(sum(v.item() for v in out.losses.values()), rel=1e-6)
    assert all(v.dtype == torch.float32 for v in out.losses.values())


def test_entropy_gradient_matches_brute_force():
    torch.manual_seed(1)
    lfq = LFQ(4, codebook_size=16, temperature=0.5, commitment_weight=0.0)
    z = torch.randn(1, 4, 3, 3, dtype=torch.float32, requires_grad=True)
    lfq(z).loss.backward()
    z64 = z.detach().double().requires_grad_()
    per_sample, codebook = _brute_force_entropies(_flat(z64), 0.5)
    (0.1 * (per_sample - codebook)).backward()
    assert torch.allclose(z.grad.double(), z64.grad, rtol=1e-4, atol=1e-7)


def test_confident_inputs_have_low_per_sample_entropy_and_uniform_use_high_codebook_entropy():
    bits = 4
    lfq = LFQ(bits, codebook_size=2**bits)  # default temperature 0.01
    every_code = _all_codes(bits).repeat(3, 1)  # each code used 3 times, inputs exactly on the codes
    z = every_code.T.reshape(1, bits, -1, 1)
    out = lfq(z)
    assert out.stats["per_sample_entropy"] < 1e-6
    assert out.stats["codebook_entropy"].item() == pytest.approx(bits * math.log(2), rel=1e-5)
    assert out.stats["usage"] == 1.0
    one_code = lfq(torch.ones(1, bits, 8, 1) * 0.9)  # everyone on the same code
    assert one_code.stats["codebook_entropy"] < 1e-6
    unsure = lfq(torch.zeros(1, bits, 2, 1))  # on every decision boundary: all codes equally likely
    assert unsure.stats["per_sample_entropy"].item() == pytest.approx(bits * math.log(2), rel=1e-5)


def test_commitment_term_pulls_encoder_only():
    torch.manual_seed(2)
    lfq = LFQ(4, codebook_size=16, commitment_weight=0.25, entropy_weight=0.0)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = lfq(z)
    signs = torch.where(z > 0, 1.0, -1.0)
    assert out.losses["commitment"].item() == pytest.approx(0.25 * F.mse_loss(z, signs).item(), rel=1e-6)
    out.losses["commitment"].backward()
    # d/dz of 0.25 * mean((z - sg(sign z))^2): the code is a constant, all gradient goes to the encoder.
    assert torch.allclose(z.grad, 0.25 * 2 * (z - signs).detach() / z.numel(), atol=1e-7)


@pytest.mark.parametrize("dim,codebook_size", [(4, 16), (8, 64), (3, 2**12)])
def test_indices_in_range_and_round_trip(dim, codebook_size):
    torch.manual_seed(3)
    lfq = LFQ(dim, codebook_size=codebook_size).eval()
    z = torch.randn(2, dim, 5, 4)
    out = lfq(z)
    assert out.quantized.shape == z.shape and out.quantized.dtype == torch.float32
    assert out.indices.shape == (2, 5, 4) and out.indices.dtype == torch.int64
    assert out.indices.min() >= 0 and out.indices.max() < codebook_size
    decoded = lfq.indices_to_codes(out.indices)
    assert torch.equal(decoded, out.quantized)
    assert torch.equal(lfq.indices_to_codes(out.indices), decoded)


def test_index_is_sum_of_positive_bits():
    lfq = LFQ(3, codebook_size=8)
    z = torch.tensor([[0.5, -0.2, 0.1], [-1.0, -1.0, -1.0], [-0.3, 0.4, 0.0]]).T.reshape(1, 3, 3, 1)
    out = lfq(z)
    assert out.indices.flatten().tolist() == [1 + 4, 0, 2]  # 0.0 is not > 0: bit off
    assert torch.equal(out.quantized[0, :, 2, 0], torch.tensor([-1.0, 1.0, -1.0]))


def test_gradient_flows_through_projection():
    torch.manual_seed(4)
    lfq = LFQ(6, codebook_size=2**4).train()
    z = torch.randn(2, 6, 3, 3, requires_grad=True)
    out = lfq(z)
    (out.quantized * torch.randn_like(out.quantized)).sum().backward()
    assert z.grad.abs().gt(0).all()
    assert lfq.project_in.weight.grad.abs().sum() > 0 and lfq.project_out.weight.grad.abs().sum() > 0


def test_full_size_codebook_entropy_is_cheap_and_finite():
    lfq = LFQ(18, codebook_size=2**18)
    z = torch.randn(2, 18, 16, 16, requires_grad=True)
    out = lfq(z)
    out.loss.backward()
    assert 0 < out.stats["codebook_entropy"] <= 18 * math.log(2)
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize("size", [1000, 0, 3, 1])
def test_codebook_size_not_power_of_two_raises(size):
    with pytest.raises(ConfigError, match="power of 2"):
        LFQ(8, codebook_size=size)


def test_bad_shapes_raise():
    lfq = LFQ(4, codebook_size=16)
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\]"):
        lfq(torch.randn(4, 2, 2))
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        lfq.indices_to_codes(torch.zeros(1, 2, 3, 4, dtype=torch.long))


@pytest.mark.slow
def test_codebook_entropy_over_two_ranks_equals_the_union_batch(tmp_path):
    """2 gloo ranks with different batches, one of them empty (see dist_lfq_worker.py)."""
    run_gloo_ranks("dist_lfq_worker.py", tmp_path)
