import math

import pytest
import torch
import torch.nn.functional as F
from gloo_ranks import run_gloo_ranks
from test_quantizer_contract import check_tokens

from latentae.config import ConfigError
from latentae.quantizers import build_quantizer
from latentae.quantizers.bsq import BSQ
from latentae.quantizers.lfq import lfq_entropies


def _flat(z: torch.Tensor) -> torch.Tensor:
    return z.movedim(1, -1).reshape(-1, z.shape[1])


def _all_signs(bits: int) -> torch.Tensor:
    """[2**bits, bits] in {-1, 1}; row k is the code of token k (bit i of k = channel i)."""
    k = torch.arange(2**bits)
    return torch.stack([(k >> i) & 1 for i in range(bits)], -1).double() * 2 - 1


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.log() + (1 - p) * (1 - p).log())


def _published(z: torch.Tensor, tau: float) -> dict[str, torch.Tensor]:
    """The paper's / authors' equations in float64, by brute force over every code c in {-1, 1}^L / sqrt(L):
    u = z / ||z||, code sign(u) / sqrt(L), q(c | u) = softmax_c(2 tau c.u) (the authors' soft assignment),
    per-sample entropy = mean_n H(q(. | u_n)), codebook entropy = sum over bits of the binary entropy of the bit's
    batch-mean probability (their per-bit groups)."""
    u = F.normalize(_flat(z).double(), dim=1)
    bits = u.shape[1]
    codes = _all_signs(bits) / math.sqrt(bits)
    probs = F.softmax(2 * tau * u @ codes.T, dim=-1)  # [N, 2**bits]
    on = (codes > 0).double()  # [2**bits, bits]
    bit_means = (probs @ on).mean(0)  # P(bit i on), averaged over rows
    return {
        "u": u,
        "code": torch.where(u > 0, 1.0, -1.0) / math.sqrt(bits),
        "per_sample": -(probs * probs.log()).sum(-1).mean(),
        "codebook": _binary_entropy(bit_means).sum(),
    }


@pytest.mark.parametrize("bits", [3, 5])
def test_matches_the_published_equations(bits):
    torch.manual_seed(bits)
    bsq = BSQ(bits, codebook_size=2**bits, inv_temperature=1.3, entropy_weight=0.3, diversity_gamma=1.5,
              commitment_weight=0.2)
    z = torch.randn(2, bits, 3, 2, dtype=torch.float64).float().requires_grad_()
    out = bsq(z)
    ref = _published(z.detach(), 1.3)
    # the code itself is exact: +-1 times the fp32 1/sqrt(L)
    assert torch.equal(_flat(out.quantized), torch.where(ref["u"] > 0, 1.0, -1.0).float() / math.sqrt(bits))
    tokens = ((ref["u"] > 0).long() * 2 ** torch.arange(bits)).sum(-1)
    assert torch.equal(out.indices.flatten(), tokens)
    weight = 0.3 / 1.3  # the authors divide the entropy penalty by tau
    # fp32 against float64 over a handful of terms: relative error ~1e-6
    assert out.stats["per_sample_entropy"].item() == pytest.approx(ref["per_sample"].item(), rel=1e-5)
    assert out.stats["codebook_entropy"].item() == pytest.approx(ref["codebook"].item(), rel=1e-5)
    assert out.losses["entropy_per_sample"].item() == pytest.approx(weight * ref["per_sample"].item(), rel=1e-5)
    assert out.losses["entropy_codebook"].item() == pytest.approx(-weight * 1.5 * ref["codebook"].item(), rel=1e-5)
    commitment = (ref["u"] - ref["code"]).pow(2).sum(-1).mean()  # a sum over channels, a mean over rows
    assert out.losses["commitment"].item() == pytest.approx(0.2 * commitment.item(), rel=1e-5)

    # Gradient of the whole loss plus a decoder-like use of the code (straight-through: d code / d u = 1/sqrt(L)).
    r = torch.randn(out.quantized.shape, dtype=torch.float64)
    (out.loss + (out.quantized * r.float()).sum()).backward()
    z64 = z.detach().double().requires_grad_()
    ref = _published(z64, 1.3)
    total = (weight * (ref["per_sample"] - 1.5 * ref["codebook"])
             + 0.2 * (ref["u"] - ref["code"]).pow(2).sum(-1).mean() + (ref["u"] / math.sqrt(bits) * _flat(r)).sum())
    total.backward()
    assert torch.allclose(z.grad.double(), z64.grad, rtol=1e-4, atol=1e-6)


def test_factorized_codebook_entropy_bounds_the_exact_one_and_is_cheap():
    """The per-bit estimate is the exact entropy for independent bits and above it otherwise; at 2^18 codes it
    costs O(rows x bits)."""
    bits = 4
    bsq = BSQ(bits, codebook_size=2**bits, inv_temperature=50.0)  # confident assignments
    every_code = _all_signs(bits).float().repeat(2, 1)  # all 16 codes: independent, uniform bits
    assert bsq(every_code.T.reshape(1, bits, -1, 1)).stats["codebook_entropy"].item() == pytest.approx(
        bits * math.log(2), rel=1e-4)
    two_codes = torch.tensor([[1.0, 1, 1, 1], [-1, -1, -1, -1]]).repeat(4, 1)  # perfectly correlated bits
    out = bsq(two_codes.T.reshape(1, bits, -1, 1))
    assert out.stats["codebook_entropy"].item() == pytest.approx(bits * math.log(2), rel=1e-4)
    u = F.normalize(two_codes, dim=1)  # the exact entropy of the same soft assignments: ln 2 (two codes)
    _, exact = lfq_entropies(u, math.sqrt(bits) / 50.0)
    assert exact.item() == pytest.approx(math.log(2), rel=1e-4)
    big = BSQ(18, codebook_size=2**18)
    z = torch.randn(2, 18, 16, 16, requires_grad=True)
    out = big(z)
    out.loss.backward()
    assert 0 < out.stats["codebook_entropy"] <= 18 * math.log(2) and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("dim,codebook_size", [(4, 16), (8, 64), (3, 2**12)])
def test_indices_in_range_and_tokens_to_codes_deterministic(dim, codebook_size):
    torch.manual_seed(3)
    bsq = build_quantizer(dim, {"kind": "bsq", "codebook_size": codebook_size})
    check_tokens(bsq.train(), torch.randn(2, dim, 5, 4))
    check_tokens(bsq.eval(), torch.randn(2, dim, 5, 4))


def test_codes_lie_on_the_unit_sphere():
    bsq = BSQ(5, codebook_size=32)
    codes = bsq.indices_to_codes(torch.arange(32).reshape(1, 32, 1))
    assert torch.allclose(codes.norm(dim=1), torch.ones(1, 32, 1))  # fp32 sum of 5 squares: ulps


def test_gradient_reaches_the_encoder_and_the_projections():
    torch.manual_seed(4)
    bsq = BSQ(6, codebook_size=2**4).train()
    z = torch.randn(2, 6, 3, 3, requires_grad=True)
    out = bsq(z)
    (out.quantized * torch.randn_like(out.quantized)).sum().backward()
    assert z.grad.abs().gt(0).all()
    assert bsq.project_in.weight.grad.abs().sum() > 0 and bsq.project_out.weight.grad.abs().sum() > 0


def test_bad_arguments_and_shapes_raise():
    with pytest.raises(ConfigError, match="power of 2"):
        BSQ(8, codebook_size=1000)
    with pytest.raises(ConfigError, match="inv_temperature"):
        BSQ(8, codebook_size=16, inv_temperature=0.0)
    bsq = BSQ(4, codebook_size=16)
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\]"):
        bsq(torch.randn(4, 2, 2))
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        bsq.indices_to_codes(torch.zeros(1, 2, 3, 4, dtype=torch.long))


@pytest.mark.slow
def test_statistics_over_two_ranks_equal_the_union_batch(tmp_path, monkeypatch):
    """2 gloo ranks with different batches, one of them empty (see dist_entropy_worker.py)."""
    monkeypatch.setenv("DIST_QUANTIZER", "bsq")
    run_gloo_ranks("dist_entropy_worker.py", tmp_path)
