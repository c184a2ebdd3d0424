"""CMMD (Jayasumana et al. 2024, "Rethinking FID"; reference code google-research/google-research `cmmd/`): the
maximum mean discrepancy between CLIP image embeddings of two image sets.

The reference's protocol, followed step by step:
- io_util.py: each image is center-cropped to a square (side min(H, W), offsets (H - side) // 2, (W - side) // 2)
  and resized by PIL to 336 x 336 with Image.BICUBIC (PIL's antialiased filter, on the 8-bit image, rounded to
  8 bits), then cast to float32 and divided by 255. Here each uint8 image goes through PIL the same way.
- embedding.py: `jax.image.resize(..., 336, "bicubic")` (the identity at 336: Keys' cubic is 1 at 0 and 0 at the
  other integers), CLIP's mean / std, scenic's CLIP ViT-L/14@336px `encode_image`: the final-normed CLS token
  through the visual projection (768-d), divided by its L2 norm. transformers' CLIPVisionModelWithProjection from
  openai/clip-vit-large-patch14-336 (the same OpenAI weights) gives that projection as `image_embeds`.
- distance.py: the biased (minimum-variance, V-statistic) estimate of MMD^2 of Gretton et al. 2012, Eq. 5, with
  all pairs including i = j: mean k(x, x') + mean k(y, y') - 2 mean k(x, y), Gaussian RBF kernel
  k(a, b) = exp(-|a - b|^2 / (2 sigma^2)) with sigma = 10, times 1000.
Two departures, both stated in the protocol card: the sums run in float64, in row blocks (the reference: float32
on full matrices), and no image is dropped (the reference drops the remainder after batching).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from latentae.errors import LatentaeError
from latentae.evaluation.foundation import FrozenFeatures
from latentae.evaluation.gather import gather_cat

SIGMA = 10.0  # the reference's _SIGMA
SCALE = 1000.0  # the reference's _SCALE
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # scenic clip/model.py IMAGE_MEAN (OpenAI's)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
KERNEL_BLOCK = 1 << 24  # kernel entries per block: 128 MiB of float64 whatever the image count


def crop_and_resize(images: Tensor, size: int) -> Tensor:
    """The reference's center square crop and PIL bicubic resize of uint8 [B, 3, H, W] -> float32 [B, 3, size,
    size] in [0, 1] (on the CPU: PIL's filter is the reference)."""
    from PIL import Image

    out = []
    for image in images.cpu():
        im = Image.fromarray(image.permute(1, 2, 0).numpy())
        w, h = im.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side)).resize((size, size), resample=Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32)))
    return torch.stack(out).permute(0, 3, 1, 2) / 255.0


class CLIPFeatures(FrozenFeatures):
    """The reference's L2-normalized CLIP image embeddings of uint8 [B, 3, H, W] images (see the module docstring)."""

    def __init__(self, source: str | None = None):  # a local directory or hub id; default the 336 px ViT-L/14
        super().__init__("clip", source, "CLIPVisionModelWithProjection", "clip")
        self.size = self.model.config.image_size
        self.num_features = self.model.config.projection_dim
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: Tensor) -> Tensor:
        x = crop_and_resize(images, self.size).to(self.mean.device)
        return (x - self.mean) / self.std

    def embed(self, pixel_values: Tensor) -> Tensor:
        e = self.model(pixel_values=pixel_values).image_embeds
        return e / e.norm(dim=-1, keepdim=True)


def _mean_kernel(a: Tensor, b: Tensor, gamma: float) -> Tensor:
    """mean over all (i, j) of exp(-gamma |a_i - b_j|^2), in row blocks of at most KERNEL_BLOCK entries."""
    b_sq = b.pow(2).sum(1)
    total = a.new_zeros(())
    for rows in a.split(max(1, KERNEL_BLOCK // len(b))):
        d2 = rows.pow(2).sum(1, keepdim=True) + b_sq - 2 * rows @ b.T
        total += torch.exp(-gamma * d2).sum()
    return total / (len(a) * len(b))


def mmd(x: Tensor, y: Tensor, sigma: float = SIGMA, scale: float = SCALE) -> float:
    """The reference's CMMD distance between embeddings x [n, d] and y [m, d]: scale x the biased MMD^2 estimate
    with a Gaussian RBF kernel of bandwidth sigma, in float64. 0 for identical sets; symmetric; invariant to the
    order of each set."""
    if not len(x) or not len(y):
        raise LatentaeError(f"CMMD needs at least one embedding on each side, got {len(x)} and {len(y)}")
    x, y = x.double(), y.double()
    gamma = 1 / (2 * sigma**2)
    value = _mean_kernel(x, x, gamma) + _mean_kernel(y, y, gamma) - 2 * _mean_kernel(x, y, gamma)
    return float(scale * value)


class CMMDMetric(nn.Module):
    """CMMD between inputs (real) and reconstructions (fake): their embeddings are kept (768 floats per image) and
    gathered over ranks in `compute`, which every rank must call."""

    min_images = 1  # the V-statistic is defined from one image per side

    STATE = ("real", "fake")  # the embeddings so far (latentae.evaluation.resume)

    def __init__(self, source: str | None = None):
        super().__init__()
        self.features = CLIPFeatures(source)
        self.weight_files = self.features.weight_files
        self.real: list[Tensor] = []
        self.fake: list[Tensor] = []

    def update(self, real: Tensor, fake: Tensor) -> None:
        self.real.append(self.features(real).float())
        self.fake.append(self.features(fake).float())

    def _gathered(self, parts: list[Tensor]) -> Tensor:
        local = torch.cat(parts) if parts else self.features.mean.new_zeros((0, self.features.num_features))
        return gather_cat(local)

    def compute(self) -> float:
        """CMMD of every rank's images together (collective: every rank calls it)."""
        real, fake = self._gathered(self.real), self._gathered(self.fake)
        self.real, self.fake = [], []
        return mmd(real, fake)

    def describe(self) -> str:
        return (f"CMMD (Jayasumana et al. 2024, google-research cmmd): each 8-bit image center-cropped to a square "
                f"and resized to {self.features.size} x {self.features.size} by PIL (Image.BICUBIC), / 255, CLIP "
                f"mean/std, CLIP image embeddings ({self.features.num_features}-d, transformers' "
                f"CLIPVisionModelWithProjection from {self.weight_files[0]}) divided by their L2 norm; "
                f"{SCALE:g} x the biased (all pairs) MMD^2 estimate with a Gaussian RBF kernel, sigma {SIGMA:g}, "
                "between inputs and reconstructions, in float64 over all images (the reference: float32, drops the "
                "images beyond a multiple of its batch size)")
