import itertools
import math

import pytest
import torch

from latentae.config import ConfigError
from latentae.quantizers.fsq import FSQ

GAUSSIAN_LEVELS = (2, 3, 4, 5, 8)  # both parities, L = 2 included


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


@pytest.mark.parametrize("dim,levels", [(4, (8, 5, 5, 5)), (6, (8, 5, 5, 5)), (3, (2, 3)), (5, GAUSSIAN_LEVELS)])
def test_indices_to_codes_reproduces_quantized_deterministically(dim, levels):
    torch.manual_seed(0)
    fsq = FSQ(dim, levels=levels).eval()
    z = torch.randn(2, dim, 5, 3) * 2
    out = fsq(z)
    assert out.quantized.shape == z.shape and out.quantized.dtype == torch.float32
    decoded = fsq.indices_to_codes(out.indices)
    assert torch.equal(decoded, out.quantized)
    assert torch.equal(fsq.indices_to_codes(out.indices), decoded)


def test_zero_maps_to_zero_code_for_odd_levels_without_projection():
    fsq = FSQ(4, levels=(7, 5, 5, 3))
    assert torch.equal(fsq(torch.zeros(1, 4, 1, 1)).quantized, torch.zeros(1, 4, 1, 1))


def _digits(fsq: FSQ, indices: torch.Tensor) -> torch.Tensor:
    """[N, len(levels)] level index per channel (0 .. L - 1) of flat indices."""
    return (indices.reshape(-1, 1) // fsq.basis) % fsq.levels_t


def test_levels_mirror_about_zero_and_gaussian_inputs_use_every_level():
    fsq = FSQ(len(GAUSSIAN_LEVELS), levels=GAUSSIAN_LEVELS).eval()
    z = torch.randn(1, len(GAUSSIAN_LEVELS), 20_000, 1, generator=torch.Generator().manual_seed(0))
    z = z[..., (z.abs() > 1e-6).all(1)[0, :, 0], :]  # off z = 0, the even levels' middle decision boundary
    out, mirrored = fsq(z), fsq(-z)
    digits, mirrored_digits = _digits(fsq, out.indices), _digits(fsq, mirrored.indices)
    # Exactly symmetric boundaries: -z lands on the mirror level of z, for odd and even L alike.
    assert torch.equal(mirrored_digits, fsq.levels_t - 1 - digits)
    assert torch.equal(mirrored.quantized, -out.quantized)
    for c, level_count in enumerate(GAUSSIAN_LEVELS):
        occupancy = torch.bincount(digits[:, c], minlength=level_count).float() / digits.shape[0]
        # The smallest N(0, 1) mass of any level here is 10% (L = 8's outer levels); the sampling sd of an
        # occupancy is <= 0.4%. The asymmetric bound put 0.02% on one of L = 2's levels.
        assert occupancy.min() > 0.05, (level_count, occupancy)
        codes = out.quantized[0, c].unique()
        assert torch.allclose(codes, torch.linspace(-1, 1, level_count)), codes  # evenly spaced, +-1 at the ends


def test_level_two_splits_at_zero_with_full_gradient():
    fsq = FSQ(1, levels=(2,)).train()
    z = torch.tensor([-3.0, -1e-3, 1e-3, 3.0]).reshape(1, 1, 4, 1).requires_grad_()
    out = fsq(z)
    assert out.indices.flatten().tolist() == [0, 0, 1, 1]
    assert out.quantized.flatten().tolist() == [-1.0, -1.0, 1.0, 1.0]
    out.quantized.sum().backward()
    assert z.grad.flatten()[1:3].tolist() == pytest.approx([1.0, 1.0], abs=1e-5)  # tanh'(0) = 1, not 0.002


def test_export_round_trip_with_every_level_parity(tmp_path):
    import latentae
    from latentae.exporting import export
    from latentae.models import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(family="vq", block_out_channels=[16, 32], layers_per_block=1,
                                    norm_num_groups=8, latent_channels=8, sample_size=32,
                                    quantizer={"kind": "fsq", "levels": list(GAUSSIAN_LEVELS)})).eval()
    export(model, tmp_path)
    again = latentae.load(tmp_path)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        tokens = model.tokenize(x)
        assert torch.equal(again.tokenize(x), tokens)
        assert torch.equal(again.detokenize(tokens), model.detokenize(tokens))


@pytest.mark.parametrize("dim", [4, 6])
def test_gradient_flows_straight_through(dim):
    fsq = FSQ(dim, levels=(8, 5, 5, 5)).train()
    z = torch.randn(2, dim, 3, 3, requires_grad=True)
    out = fsq(z)
    (out.quantized * torch.randn_like(out.quantized)).sum().backward()
    assert z.grad is not None and z.grad.abs().gt(0).all()



def test_bad_arguments_and_shapes_raise():
    with pytest.raises(ConfigError, match="levels"):
        FSQ(4, levels=(8, 1, 5))
    fsq = FSQ(4)
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\]"):
        fsq(torch.randn(1, 5, 2, 2))
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        fsq.indices_to_codes(torch.zeros(2, 3, dtype=torch.long))
