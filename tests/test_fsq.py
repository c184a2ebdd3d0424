import itertools
import math

import pytest
import torch
from quantizer_checks import check_low_precision

from latentae.config import ConfigError
from latentae.quantizers.fsq import FSQ


def _per_channel_representatives(fsq: FSQ) -> list[list[float]]:
    """For each channel, one input value per distinct level reached over a dense grid (other channels 0)."""
    grid = torch.linspace(-6, 6, 2001)
    reps = []
    for c in range(len(fsq.levels)):
        z = torch.zeros(1, len(fsq.levels), grid.numel(), 1)
        z[0, c, :, 0] = grid
        values = fsq.eval()(z).quantized[0, c, :, 0]
        reps.append([grid[(values == v).nonzero()[0, 0]].item() for v in values.unique()])
    return reps


@pytest.mark.parametrize("levels", [(8, 5, 5, 5), (2, 3), (4, 7, 6)])
def test_every_code_reachable_and_in_range(levels):
    fsq = FSQ(len(levels), levels=levels)
    reps = _per_channel_representatives(fsq)
    assert [len(r) for r in reps] == list(levels)  # exactly L levels per channel, odd and even
    points = torch.tensor(list(itertools.product(*reps)))  # [prod(levels), channels]
    z = points.T.reshape(1, len(levels), -1, 1)
    out = fsq(z)
    assert fsq.codebook_size == math.prod(levels)
    assert out.indices.dtype == torch.int64 and out.indices.shape == (1, points.shape[0], 1)
    assert out.indices.min() >= 0 and out.indices.max() < fsq.codebook_size
    assert out.indices.unique().numel() == fsq.codebook_size
    assert out.quantized.abs().max() <= 1
    assert out.losses == {}
    assert out.stats["usage"] == 1.0  # every code appears in this batch
    assert out.stats["perplexity"] == pytest.approx(fsq.codebook_size, rel=1e-4)


@pytest.mark.parametrize("dim,levels", [(4, (8, 5, 5, 5)), (6, (8, 5, 5, 5)), (3, (2, 3))])
def test_indices_to_codes_reproduces_quantized_deterministically(dim, levels):
    torch.manual_seed(0)
    fsq = FSQ(dim, levels=levels).eval()
    z = torch.randn(2, dim, 5, 3) * 2
    out = fsq(z)
    assert out.quantized.shape == z.shape and out.quantized.dtype == torch.float32
    decoded = fsq.indices_to_codes(out.indices)
    assert torch.equal(decoded, out.quantized)
    assert torch.equal(fsq.indices_to_codes(out.indices), decoded)


def test_zero_maps_to_zero_code_without_projection():
    fsq = FSQ(4, levels=(8, 5, 5, 5))
    assert torch.equal(fsq(torch.zeros(1, 4, 1, 1)).quantized, torch.zeros(1, 4, 1, 1))


@pytest.mark.parametrize("dim", [4, 6])
def test_gradient_flows_straight_through(dim):
    fsq = FSQ(dim, levels=(8, 5, 5, 5)).train()
    z = torch.randn(2, dim, 3, 3, requires_grad=True)
    out = fsq(z)
    (out.quantized * torch.randn_like(out.quantized)).sum().backward()
    assert z.grad is not None and z.grad.abs().gt(0).all()


def test_low_precision_inputs_and_models():
    check_low_precision(FSQ(6, levels=(8, 5, 5, 5)), 6)



def test_bad_arguments_and_shapes_raise():
    with pytest.raises(ConfigError, match="levels"):
        FSQ(4, levels=(8, 1, 5))
    fsq = FSQ(4)
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\]"):
        fsq(torch.randn(1, 5, 2, 2))
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        fsq.indices_to_codes(torch.zeros(2, 3, dtype=torch.long))
