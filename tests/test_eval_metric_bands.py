"""PSNR / SSIM / LPIPS in bounded memory (latentae.evaluation.metrics.pieces): the same values as the whole-image
computation whatever the split, every position counted once."""
import pytest
import torch
import torch.nn.functional as F

from latentae.evaluation import metrics
from latentae.evaluation.metrics import (
    SSIM_K1,
    SSIM_K2,
    SSIM_KERNEL,
    SSIM_SIGMA,
    pieces,
    psnr_per_image,
    ssim_per_image,
)


def pair(n=3, h=70, w=53, seed=0):
    """uint8 images with texture and a reconstruction that errs more in some rows than others."""
    gen = torch.Generator().manual_seed(seed)
    real = torch.randint(0, 256, (n, 3, h, w), generator=gen).float()
    real = F.avg_pool2d(real, 3, 1, 1, count_include_pad=False)  # some structure for SSIM's variances
    noise = torch.randn(real.shape, generator=gen) * torch.linspace(2, 30, h)[:, None]
    return real.round().to(torch.uint8), (real + noise).round().clamp(0, 255).to(torch.uint8)


def whole_image_psnr(real, fake):
    return 10 * torch.log10(255.0**2 / (real.double() - fake.double()).pow(2).flatten(1).mean(1))


def whole_image_ssim(real, fake):
    """torchmetrics' map of the whole image, its border cropped: what ssim_per_image computed in one call."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _, full = structural_similarity_index_measure(
        fake.float() / 255, real.float() / 255, gaussian_kernel=True, sigma=SSIM_SIGMA, kernel_size=SSIM_KERNEL,
        data_range=1.0, k1=SSIM_K1, k2=SSIM_K2, reduction="none", return_full_image=True)
    pad = SSIM_KERNEL // 2
    return full[..., pad:-pad, pad:-pad].flatten(1).mean(1, dtype=torch.float64)


@pytest.mark.parametrize("shape,halo,budget", [((3, 3, 70, 53), 5, 3 * 53 * 12), ((3, 3, 70, 53), 5, 3 * 53 * 11),
                                               ((3, 3, 70, 53), 5, 1), ((4, 3, 20, 20), 0, 2 * 3 * 400 + 7),
                                               ((2, 3, 11, 30), 5, 10), ((2, 1, 9, 4), 0, 5)])
def test_pieces_count_every_position_once_within_the_budget(shape, halo, budget):
    b, c, h, w = shape
    seen = torch.zeros(b, h, dtype=torch.long)
    for images, rows in pieces(torch.Size(shape), halo, budget):
        n_images = len(range(*images.indices(b)))
        n_rows = rows.stop - rows.start
        assert 0 <= rows.start and rows.stop <= h and n_rows > 2 * halo
        # within the budget unless a piece is the smallest there is: one image, one position and its halo
        assert n_images * c * n_rows * w <= budget or (n_images == 1 and n_rows == 2 * halo + 1)
        seen[images, rows.start + halo:rows.stop - halo] += 1
    assert torch.equal(seen[:, halo:h - halo], torch.ones(b, h - 2 * halo, dtype=torch.long))
    assert not seen[:, :halo].any() and not seen[:, h - halo:].any()


@pytest.mark.parametrize("budget", [None, 3 * 53 * 12, 3 * 53 * 25, 3 * 70 * 53 + 1])
def test_banded_psnr_and_ssim_equal_the_whole_image_computation(monkeypatch, budget):
    real, fake = pair()
    if budget:
        monkeypatch.setattr(metrics, "PIECE_ELEMENTS", budget)
    # PSNR: exact integer sums; SSIM: float32 maps of other shapes (other convolution kernels), float64 means
    torch.testing.assert_close(psnr_per_image(real, fake), whole_image_psnr(real, fake), rtol=1e-12, atol=0)
    torch.testing.assert_close(ssim_per_image(real, fake), whole_image_ssim(real, fake), rtol=0, atol=2e-7)


def test_a_2048_px_image_goes_in_bands_with_the_same_values(monkeypatch):
    real, fake = pair(1, 2048, 96, seed=1)  # tall and narrow: many bands, still fast
    calls = []
    ssim_band = metrics._ssim_valid_sums
    monkeypatch.setattr(metrics, "_ssim_valid_sums", lambda r, f: (calls.append(r.shape), ssim_band(r, f))[1])
    monkeypatch.setattr(metrics, "PIECE_ELEMENTS", 3 * 96 * 128)
    banded = ssim_per_image(real, fake)
    assert len(calls) == 18 and max(s[2] for s in calls) == 128  # 2038 positions: bands of 118 and the halo
    torch.testing.assert_close(banded, whole_image_ssim(real, fake), rtol=0, atol=2e-7)


def test_degenerate_pairs():
    real, _ = pair(2, 11, 11)
    assert psnr_per_image(real, real).tolist() == [100.0, 100.0]  # identical: the cap
    assert ssim_per_image(real, real).tolist() == pytest.approx([1.0, 1.0])  # one window per image
    black, white = torch.zeros(1, 3, 1, 1, dtype=torch.uint8), torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)
    assert psnr_per_image(black, white).tolist() == [0.0]  # one pixel, the largest error
    with pytest.raises(Exception, match="at least 11 x 11"):
        ssim_per_image(real[..., :10], real[..., :10])


def test_lpips_goes_image_group_by_group_with_the_same_values(monkeypatch):
    from latentae.evaluation.metrics import LPIPSMetric
    from latentae.losses import PerceptualLoss

    lpips = LPIPSMetric.__new__(LPIPSMetric)  # its trunk random: no weight file needed
    torch.nn.Module.__init__(lpips)
    lpips.perceptual = PerceptualLoss("alex", random_init=True)
    real, fake = pair(3, 40, 36)
    calls = []
    forward = lpips.perceptual.forward
    monkeypatch.setattr(lpips.perceptual, "forward", lambda x, y: (calls.append(len(x)), forward(x, y))[1])
    with torch.no_grad():
        whole = lpips(real, fake)
        monkeypatch.setattr(metrics, "PIECE_ELEMENTS", 2 * 3 * 40 * 36)
        grouped = lpips(real, fake)
        monkeypatch.setattr(metrics, "PIECE_ELEMENTS", 100)  # smaller than an image: one at a time
        single = lpips(real, fake)
    assert calls == [3, 2, 1, 1, 1, 1]
    torch.testing.assert_close(grouped, whole, rtol=1e-5, atol=0)
    torch.testing.assert_close(single, whole, rtol=1e-5, atol=0)
