"""How good the probe's samples are: the Fréchet distance between the images each model decodes from the DiT's
samples and the held-out images of the same data, through latentae.evaluation's FIDMetric, in up to three
feature spaces (SAMPLE_METRICS; the ranking reads the first one available):

  fid        Inception-v3 pool features (2048-d), the torch-fidelity weights (`latentae fetch-weights`): FIDMetric's
             own protocol (299 px bilinear resize, antialiased)
  fd-dinov2  DINOv2 ViT-L/14 (facebook/dinov2-large, `latentae fetch-weights --only dinov2`), NVlabs edm2's
             FD-DINOv2 protocol: bicubic resize to 224 px (antialiased), ImageNet mean/std, the final-normed CLS
             token (1024-d)
  fd-pixel   the offline fallback (no pretrained weights, no download; not comparable with published FIDs): the
             PixelFeatures below, each standardized by the held-out images' own mean and std

Real features are recomputed for every model (FIDMetric resets both sides); the held-out images are few.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentae.errors import LatentaeError
from latentae.evaluation.fd_dinov2 import DINOv2Features

SAMPLE_METRICS = ("fid", "fd-dinov2", "fd-pixel")


class PixelFeatures(nn.Module):
    """55 weight-free features of an image, on uint8 [B, 3, H, W] resized to 64 x 64 (bilinear, antialiased) in
    [0, 1]: layout and colour (the 4 x 4 average-pooled thumbnail, 48), contrast (each channel's std, 3) and
    texture (the log mean energy of the luminance's four band-pass levels of a Laplacian pyramid, 4). `calibrate`
    standardizes each feature by the reference images' mean and std, so a feature's weight in the distance is
    its spread over real images: one image repeated (a constant latent) has no spread at all, flat colour (one
    number per image) no texture, noise the wrong texture; blurry but varied samples lose only texture.
    (tests/test_probe.py checks this order on real photos.)"""

    num_features = 55
    SIZE, BANDS = 64, 4

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros(self.num_features))
        self.register_buffer("std", torch.ones(self.num_features))

    def raw(self, images: Tensor) -> Tensor:
        x = F.interpolate(images.float() / 255, size=(self.SIZE, self.SIZE), mode="bilinear", antialias=True,
                          align_corners=False)
        lum = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        bands = []
        for _ in range(self.BANDS):
            low = F.avg_pool2d(lum, 2)
            bands.append(torch.log((lum - F.interpolate(low, scale_factor=2.0)).pow(2).mean((1, 2, 3)) + 1e-6))
            lum = low
        return torch.cat([F.adaptive_avg_pool2d(x, 4).flatten(1), x.flatten(2).std(2), torch.stack(bands, 1)], 1)

    def calibrate(self, images: Tensor) -> None:
        f = self.raw(images)
        self.mean, self.std = f.mean(0), f.std(0).clamp_min(1e-6)

    def forward(self, images: Tensor) -> Tensor:
        return (self.raw(images) - self.mean) / self.std


DESCRIPTIONS = {
    "fid": "FID: Inception-v3 pool features (2048-d, torch-fidelity weights), torchmetrics' 299 px bilinear resize",
    "fd-dinov2": "FD-DINOv2: DINOv2 ViT-L/14 CLS features, bicubic 224 px, ImageNet mean/std (NVlabs edm2)",
    "fd-pixel": "FD-pixel (offline fallback, no pretrained weights; not a FID): 4x4 colour thumbnail, channel std "
                "and luminance band energies, standardized by the held-out images (latentae/probe/samples.py)",
}


class SampleJudge:
    """The sample metrics available here; `measure(real, fake)` gives each one's distance (lower is better)."""

    def __init__(self, device="cpu"):
        from latentae.evaluation.metrics import FIDMetric

        self.device = device
        self.pixel = PixelFeatures()
        self.metrics, self.unavailable = {}, {}
        for name, feature in (("fid", lambda: 2048), ("fd-dinov2", DINOv2Features), ("fd-pixel", lambda: self.pixel)):
            try:
                self.metrics[name] = FIDMetric(feature()).to(device)
            except (LatentaeError, ImportError) as e:  # weights missing (MissingWeightsError), transformers absent
                self.unavailable[name] = str(e)
        self.rank_by = next(n for n in SAMPLE_METRICS if n in self.metrics)

    @torch.no_grad()
    def measure(self, real: Tensor, fake: Tensor, batch_size: int = 64) -> dict[str, float]:
        """uint8 [N, 3, H, W] held-out images and [M, 3, H, W] decoded samples -> {metric: distance}."""
        real, fake = real.to(self.device), fake.to(self.device)
        self.pixel.calibrate(real)
        chunks = min(-(-max(len(real), len(fake)) // batch_size), len(real), len(fake))  # none empty
        out = {}
        for name, metric in self.metrics.items():
            for r, f in zip(real.tensor_split(chunks), fake.tensor_split(chunks)):
                metric.update(r, f)
            out[name] = metric.compute()
        return out
