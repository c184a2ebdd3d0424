import pytest
import torch
import torch.nn.functional as F

from latentae.config import ConfigError
from latentae.quantizers.base import flatten_channels_last
from latentae.quantizers.residual import ResidualVQ
from latentae.quantizers.vector import VectorQuantizer


def test_reconstruction_error_decreases_with_stages():
    torch.manual_seed(0)
    rvq = ResidualVQ(4, num_stages=4, codebook_size=16, kmeans_init=True)
    z = torch.randn(4, 4, 8, 8)
    rvq.train()(z)  # k-means fits each stage to the residual the previous stages leave
    out = rvq.eval()(z)
    assert out.indices.shape == (4, 8, 8, 4) and out.indices.dtype == torch.int64
    assert out.indices.min() >= 0 and out.indices.max() < 16
    errors = [F.mse_loss(rvq.indices_to_codes(out.indices[..., :s]), z).item() for s in range(1, 5)]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.5 * errors[0]
    assert torch.equal(rvq.indices_to_codes(out.indices), out.quantized)


def test_projection_once_indices_to_codes_and_straight_through_for_the_sum():
    torch.manual_seed(1)
    rvq = ResidualVQ(8, num_stages=3, codebook_size=16, codebook_dim=3)
    assert isinstance(rvq.project_in, torch.nn.Linear) and isinstance(rvq.project_out, torch.nn.Linear)
    assert all(vq.project_in is None and vq.project_out is None for vq in rvq.quantizers)
    assert len(rvq.quantizers) == 3
    z = torch.randn(2, 8, 4, 4, requires_grad=True)
    out = rvq.eval()(z)
    assert out.indices.shape == (2, 4, 4, 3)
    assert torch.equal(rvq.indices_to_codes(out.indices), out.quantized)
    # the gradient of the whole sum passes straight through: d/dz of sum(project_out(project_in(z)))
    (gz,) = torch.autograd.grad(out.quantized.sum(), z)
    expected = (rvq.project_in.weight.T @ rvq.project_out.weight.T @ torch.ones(8)).detach()
    torch.testing.assert_close(gz, expected.view(1, 8, 1, 1).expand_as(z))


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_losses_are_summed_over_stages(ema_decay):
    torch.manual_seed(2)
    beta = 0.4
    rvq = ResidualVQ(4, num_stages=3, codebook_size=8, beta=beta, ema_decay=ema_decay)
    for vq in rvq.quantizers:
        with torch.no_grad():
            vq.embedding.weight.normal_()
    codebooks = [vq.codebook().clone() for vq in rvq.quantizers]  # before this forward's EMA updates
    z = torch.randn(2, 4, 4, 4)
    out = rvq(z)
    residual, commitment, codebook = flatten_channels_last(z), 0.0, 0.0
    for s in range(3):
        idx = torch.cdist(residual, codebooks[s]).argmin(1)
        assert torch.equal(out.indices[..., s].reshape(-1), idx)
        code = codebooks[s][idx]
        commitment += beta * F.mse_loss(residual, code).item()
        codebook += F.mse_loss(code, residual).item()
        residual = residual - code
    assert out.losses["commitment"].item() == pytest.approx(commitment, rel=1e-5)
    if ema_decay is None:
        assert out.losses["codebook"].item() == pytest.approx(codebook, rel=1e-5)
    else:
        assert set(out.losses) == {"commitment"}


def test_stats_report_overall_and_per_stage_usage():
    torch.manual_seed(3)
    rvq = ResidualVQ(4, num_stages=3, codebook_size=8)
    out = rvq(torch.randn(2, 4, 4, 4))
    assert set(out.stats) == {"usage", "perplexity", "entropy", "usage/stage0", "usage/stage1", "usage/stage2"}
    per_stage = torch.stack([out.stats[f"usage/stage{s}"] for s in range(3)])
    torch.testing.assert_close(out.stats["usage"], per_stage.mean())
    for s in range(3):  # each stage's usage comes from its own indices
        used = out.indices[..., s].unique().numel() / 8
        assert out.stats[f"usage/stage{s}"].item() == pytest.approx(used)


def test_shared_codebook_uses_one_codebook_updated_from_all_stages():
    torch.manual_seed(4)
    decay = 0.9
    rvq = ResidualVQ(4, num_stages=3, codebook_size=8, shared_codebook=True, ema_decay=decay)
    assert len(rvq.quantizers) == 1 and isinstance(rvq.quantizers[0], VectorQuantizer)
    assert sum(isinstance(m, torch.nn.Embedding) for m in rvq.modules()) == 1
    out = rvq(torch.randn(2, 4, 4, 4))
    # one EMA update counting the assignments of every stage
    counts = torch.bincount(out.indices.reshape(-1), minlength=8).float()
    torch.testing.assert_close(rvq.quantizers[0].ema_cluster_size, decay + (1 - decay) * counts)
    assert out.stats["usage"].item() == pytest.approx(out.indices.unique().numel() / 8)  # pooled over stages
    for s in range(3):
        assert out.stats[f"usage/stage{s}"].item() == pytest.approx(out.indices[..., s].unique().numel() / 8)
    rvq.eval()
    out = rvq(torch.randn(2, 4, 4, 4))
    assert torch.equal(rvq.indices_to_codes(out.indices), out.quantized)


def test_bad_options_and_inputs_raise_clear_errors():
    with pytest.raises(ConfigError, match="l2_normalize"):
        ResidualVQ(4, l2_normalize=True)
    with pytest.raises(ConfigError, match="num_stages"):
        ResidualVQ(4, num_stages=0)
    with pytest.raises(TypeError):
        ResidualVQ(4, codebook_sise=8)  # a typo is not silently ignored
    rvq = ResidualVQ(4, num_stages=2, codebook_size=8)
    with pytest.raises(ValueError, match="1 <= s <= 2"):
        rvq.indices_to_codes(torch.zeros(1, 2, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\]"):
        rvq(torch.randn(1, 4, 2))
