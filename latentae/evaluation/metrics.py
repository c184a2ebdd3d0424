"""Image metrics of a reconstruction, all computed on 8-bit images.

Input and reconstruction are both rounded to uint8 exactly like a saved PNG (`to_uint8`) before any metric
sees them, so the numbers are those of the files a user would compare. Per-image metrics (PSNR, SSIM, LPIPS)
return one value per image; the evaluator averages them over the whole set. rFID accumulates feature
statistics; `FIDMetric.compute` sums them over ranks itself.

Metrics that need pretrained weights (LPIPS trunk, Inception) are built through latentae.weights: a missing file
raises MissingWeightsError with one message, which the evaluator reports as the metric's unavailability.

Memory: PSNR and SSIM go through a batch in pieces of at most PIECE_ELEMENTS elements (`pieces`: whole images while
they fit, else row bands of one image, SSIM's with the window's halo), so a 2048 x 2048 or 4096 x 4096 image costs
them a band's memory, not a full-image map's; the values equal the whole-image computation's. LPIPS has no exact
band split (each layer averages over the whole map; AlexNet's windows span 195 px), so it takes whole images, one
group of at most PIECE_ELEMENTS elements at a time (one image when an image is larger).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from latentae.distributed import all_reduce_sum
from latentae.errors import LatentaeError
from latentae.evaluation.fid_protocols import DEFAULT_PROTOCOL, PROTOCOLS
from latentae.losses.perceptual import TRUNK_WEIGHTS, PerceptualLoss
from latentae.options import IMAGE_METRICS  # noqa: F401  (re-exported by latentae.evaluation)
from latentae.weights import resolve

PSNR_CAP_DB = 100.0  # PSNR of two identical 8-bit images (MSE 0): a finite cap keeps the mean finite
SSIM_KERNEL, SSIM_SIGMA = 11, 1.5  # torchmetrics' (and Wang et al. 2004's) gaussian window
SSIM_K1, SSIM_K2 = 0.01, 0.03


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] floats -> uint8 [0, 255], rounded to nearest like `latentae.data.to_pil` (what a PNG stores)."""
    return ((images.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


PIECE_ELEMENTS = 2**20  # elements (images x channels x rows x columns) per metric call: whole-image PSNR + SSIM
# peaked at ~230 bytes per element (measured at 2048 and 4096 px), so ~250 MB a piece; a 256 px batch of 4 is one


def image_groups(shape: torch.Size, budget: int | None = None) -> list[slice]:
    """Consecutive groups of whole images of a [B, ...] batch, at most `budget` elements each (one image when one
    is larger; budget None: PIECE_ELEMENTS)."""
    step = max(1, (budget or PIECE_ELEMENTS) // shape[1:].numel())
    return [slice(i, i + step) for i in range(0, shape[0], step)]


def pieces(shape: torch.Size, halo: int = 0, budget: int | None = None) -> Iterator[tuple[slice, slice]]:
    """(images, rows) covering a [B, C, H, W] batch in pieces of at most `budget` elements: `image_groups` while
    one image fits, else row bands of one image. A window metric's positions are those whose window (`halo` rows
    either side) lies inside the image; the bands share them out, each band's rows being its positions and their
    halo. A band has at least one position, whatever the budget (None: PIECE_ELEMENTS)."""
    b, c, h, w = shape
    budget = budget or PIECE_ELEMENTS
    if c * h * w <= budget:
        for images in image_groups(shape, budget):
            yield images, slice(0, h)
        return
    rows = max(1, budget // (c * w) - 2 * halo)
    for i in range(b):
        for r in range(halo, h - halo, rows):
            end = min(r + rows, h - halo)
            yield slice(i, i + 1), slice(r - halo, end + halo)


def per_image_sums(fn: Callable[[Tensor, Tensor], Tensor], real: Tensor, fake: Tensor, halo: int = 0) -> Tensor:
    """Per-image sums [B] (float64) over the `pieces` of a batch of `fn(real_piece, fake_piece)`: a piece's sums
    per image over its positions (its rows less `halo` either side)."""
    total = torch.zeros(len(real), dtype=torch.float64, device=real.device)
    for images, rows in pieces(real.shape, halo):
        total[images] += fn(real[images, :, rows], fake[images, :, rows]).double()
    return total


def psnr_per_image(real: Tensor, fake: Tensor) -> Tensor:
    """PSNR (dB) per image of uint8 [B, 3, H, W] pairs: MSE over channels and pixels, peak 255, float64. The
    squared errors are summed exactly in int64, band by band."""
    sse = per_image_sums(lambda r, f: (r.int() - f.int()).square().flatten(1).sum(1), real, fake)
    psnr = 10 * torch.log10(255.0**2 / (sse / real.shape[1:].numel()))
    return psnr.clamp(max=PSNR_CAP_DB)  # mse 0 -> inf -> cap


PSNR_DESCRIPTION = (f"per-image PSNR (dB) on the 8-bit images (input and reconstruction rounded to uint8 like a saved "
                    f"PNG), MSE over channels and pixels, peak 255, capped at {PSNR_CAP_DB:g} dB; mean over images")


def _ssim_valid_sums(real: Tensor, fake: Tensor) -> Tensor:
    """Per-image sums [B] (float64) of torchmetrics' SSIM map over the positions whose window lies inside the
    given rows and columns (its reflect-padded border cropped)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _, full = structural_similarity_index_measure(
        fake.float() / 255, real.float() / 255, gaussian_kernel=True, sigma=SSIM_SIGMA, kernel_size=SSIM_KERNEL,
        data_range=1.0, k1=SSIM_K1, k2=SSIM_K2, reduction="none", return_full_image=True)
    if full.shape[-2:] != real.shape[-2:]:
        raise RuntimeError(f"unexpected SSIM map of shape {tuple(full.shape)} for images {tuple(real.shape)}")
    pad = SSIM_KERNEL // 2
    return full[..., pad:-pad, pad:-pad].flatten(1).sum(1, dtype=torch.float64)


def ssim_per_image(real: Tensor, fake: Tensor) -> Tensor:
    """SSIM per image of uint8 [B, 3, H, W] pairs, on [0, 1] images with data_range=1, averaged over the valid
    region: the positions whose window lies inside the image (Wang et al.'s reference code, skimage,
    pytorch-msssim). torchmetrics computes the same map, but its own mean (in 1.9) also counts the border
    positions of a reflect-padded image; its full map is cropped here instead. Large images go in row bands with
    the window's halo (`pieces`): the same valid positions, the same values. Float32 on the images' device:
    float64 costs ~20x more on a CPU and on most GPUs (see SSIM_FLOAT32_ERROR). Returns float64 [B]."""
    if min(real.shape[-2:]) < SSIM_KERNEL:
        raise LatentaeError(f"SSIM needs images of at least {SSIM_KERNEL} x {SSIM_KERNEL} pixels, got "
                            f"{tuple(real.shape[-2:])}")
    pad = SSIM_KERNEL // 2
    valid = real.shape[1] * (real.shape[2] - 2 * pad) * (real.shape[3] - 2 * pad)
    return per_image_sums(_ssim_valid_sums, real, fake, halo=pad) / valid


SSIM_FLOAT32_ERROR = 5e-5  # |float32 - float64| per image: half a unit of the 4th digit the report prints.
# tests/test_eval_metrics.py checks it on real photos; the largest found there is quoted in SSIM_DESCRIPTION
SSIM_DESCRIPTION = (f"torchmetrics structural_similarity_index_measure (Wang et al. 2004) on the 8-bit images scaled "
                    f"to [0, 1], data_range=1, gaussian window {SSIM_KERNEL}x{SSIM_KERNEL} sigma {SSIM_SIGMA}, "
                    f"k1={SSIM_K1}, k2={SSIM_K2}, per channel, averaged over the valid region (windows inside the "
                    "image, as Wang et al.'s code and skimage; torchmetrics' mean also counts its reflect-padded "
                    "border), per image; mean over images. "
                    f"Computed in float32: within {SSIM_FLOAT32_ERROR:g} of float64 per image (largest difference "
                    "found against blurred and JPEG-20 reconstructions: 2.4e-05 on the 24 Kodak photos at native "
                    "size, 3.8e-05 on the 200 BSDS500 test photos at 256 px). Images of more than "
                    f"{PIECE_ELEMENTS} elements (channels x pixels) go in row bands with the window's halo: the same "
                    "positions and values, in bounded memory")


def uint8_to_unit(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] (the model's and LPIPS's range)."""
    return images.float() / 127.5 - 1


class LPIPSMetric(nn.Module):
    """LPIPS per image (lower is better) with the same frozen trunk loading as the training loss."""

    def __init__(self, net: str = "alex", trunk_path: str | Path | None = None):
        super().__init__()
        self.perceptual = PerceptualLoss(net, trunk_path=trunk_path)  # raises MissingWeightsError first
        self.net = net
        self.weight_files = [str(resolve(TRUNK_WEIGHTS[net], trunk_path)), str(resolve(f"lpips-{net}"))]

    def forward(self, real: Tensor, fake: Tensor) -> Tensor:
        return torch.cat([self.perceptual(uint8_to_unit(fake[g]), uint8_to_unit(real[g]))
                          for g in image_groups(real.shape)]).double()

    def describe(self) -> str:
        from importlib.metadata import version

        return (f"LPIPS-{self.net} (lpips {version('lpips')} linear heads v0.1 on the torchvision "
                f"{TRUNK_WEIGHTS[self.net]} trunk) on the 8-bit images mapped to [-1, 1]; mean over images")


class FIDMetric(nn.Module):
    """A Fréchet distance between inputs (real) and reconstructions (fake) with torchmetrics'
    FrechetInceptionDistance: rFID under a named protocol, or FD in any feature space.

    Images go in as uint8 (normalize=False): torchmetrics' normalize=True path converts floats with
    `(x * 255).byte()`, which truncates instead of rounding. `feature` is a protocol name of
    latentae.evaluation.fid_protocols.PROTOCOLS (its Inception file via latentae.weights, or `weights_path`), an
    Inception layer size of the default protocol (64, 192, 768, 2048), or any module mapping uint8
    [B, 3, H, W] to features [B, d] (its `describe()` and `weight_files`, when it has them, go into the report).
    States are summed over ranks in `compute` (not by torchmetrics' own sync), which every rank must call.
    """

    min_images = 2  # covariances need two
    STATE = tuple(f"fid.{side}_features_{s}" for side in ("real", "fake") for s in ("sum", "cov_sum", "num_samples"))

    def __init__(self, feature: int | str | nn.Module = DEFAULT_PROTOCOL, weights_path: str | Path | None = None):
        super().__init__()
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.feature = feature
        self.protocol: str | None = None  # the FID protocol's name (None: a custom extractor)
        self.weight_files: list[str] = list(getattr(feature, "weight_files", []))
        if isinstance(feature, nn.Module):
            kwargs = {"feature": feature}
            self.card = feature.describe() if hasattr(feature, "describe") else \
                f"torchmetrics FrechetInceptionDistance with the custom feature extractor {type(feature).__name__}"
        else:
            if feature not in PROTOCOLS and not isinstance(feature, int):
                raise LatentaeError(f"unknown FID protocol '{feature}'; choose from {', '.join(PROTOCOLS)}")
            protocol = PROTOCOLS[feature if isinstance(feature, str) else DEFAULT_PROTOCOL]
            path = resolve(protocol.weights, weights_path)
            kwargs = protocol.build(path)
            if isinstance(feature, int):
                kwargs["feature"] = feature
            self.protocol = protocol.name
            self.weight_files.append(str(path))
            self.card = protocol.card(path)
        self.fid = FrechetInceptionDistance(normalize=False, sync_on_compute=False, **kwargs)

    def update(self, real: Tensor, fake: Tensor) -> None:
        self.fid.update(real, real=True)
        self.fid.update(fake, real=False)

    def compute(self) -> float:
        """The FID of every rank's images together (collective: every rank calls it)."""
        for side in ("real", "fake"):
            for state in ("features_sum", "features_cov_sum", "features_num_samples"):
                name = f"{side}_{state}"
                setattr(self.fid, name, all_reduce_sum(getattr(self.fid, name)))
        if not hasattr(self.fid, "orig_dtype"):  # set by update(); a rank that read no image never called it
            self.fid.orig_dtype = torch.float32
        value = float(self.fid.compute())
        self.fid.reset()
        return value

    def features(self, images: Tensor) -> Tensor:
        """The extractor's features of uint8 images [B, 3, H, W] (what `update` accumulates on either side)."""
        return self.fid.inception(images)

    def update_fake(self, fake: Tensor) -> None:
        self.fid.update(fake, real=False)

    def compute_against(self, reference) -> float:
        """The FID of every rank's fake images against a FIDReference (latentae.evaluation.reference) of the real
        ones, in torchmetrics' arithmetic (collective: every rank calls it)."""
        from torchmetrics.image.fid import _compute_fid

        from latentae.evaluation.reference import moments

        total, cov_total, n = (all_reduce_sum(getattr(self.fid, f"fake_{state}"))
                               for state in ("features_sum", "features_cov_sum", "features_num_samples"))
        mean, cov = moments(total, cov_total, int(n))
        real_mean, real_cov = (torch.from_numpy(a).to(mean.device) for a in (reference.mean, reference.cov))
        value = _compute_fid(real_mean, real_cov, mean, cov).to(getattr(self.fid, "orig_dtype", torch.float32))
        self.fid.reset()
        return float(value)

    def sample_note(self, n_images: int) -> str | None:
        """A warning for the report when there are too few images for a stable FID."""
        dim = int(self.fid.real_features_sum.shape[0])
        if n_images > dim:
            return None
        return (f"rFID from {n_images} images with {dim}-dimensional features: the covariances are rank-deficient "
                "and the value depends strongly on the image count; compare only at equal counts")

    def describe(self) -> str:
        return self.card
