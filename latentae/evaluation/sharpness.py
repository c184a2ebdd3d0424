"""A sharpness statistic that needs no downloaded weights: high-frequency energy of reconstructions vs inputs.

Autoencoders trained on pixel losses blur: they lose energy at high spatial frequencies, and an adversarial term
is meant to bring it back. `high_frequency_ratio` compares that energy in reconstructions and in their inputs,
summed over a set of images: 1.0 means as much fine detail as the inputs (not necessarily the same detail),
below 1 blurrier, above 1 more high-frequency content than the inputs (noise, ringing, invented texture).

How: luminance (Rec. 601 weights) of the 8-bit RGB images scaled to [0, 1], each image's mean removed, times a
2-D Hann window (so the image borders add no spurious edges), |FFT|^2 summed over the frequencies whose radius
exceeds `cutoff` cycles per pixel (Nyquist is 0.5; the default 0.25 keeps the upper half of the band).

    from latentae.evaluation.sharpness import high_frequency_ratio
    high_frequency_ratio(inputs_u8, reconstructions_u8)   # uint8 [N, 3, H, W] each
"""
from __future__ import annotations

import torch
from torch import Tensor

from latentae.errors import LatentaeError

HF_CUTOFF = 0.25  # cycles per pixel
LUMA = (0.299, 0.587, 0.114)
CHUNK = 64  # images per FFT batch (complex128 [CHUNK, H, W] stays small at 256 px)

DESCRIPTION = (f"high-frequency energy ratio: sum over images of the reconstructions' energy above {HF_CUTOFF} "
               "cycles/pixel (luminance, mean removed, 2-D Hann window, |FFT|^2) divided by the same sum for the "
               "inputs; 1 = as much fine detail as the inputs, < 1 blurrier")


def high_frequency_energy(images_u8: Tensor, cutoff: float = HF_CUTOFF) -> Tensor:
    """[N] float64: energy above `cutoff` cycles/pixel of each image's windowed luminance (uint8 [N, 3, H, W])."""
    if images_u8.ndim != 4 or images_u8.shape[1] != 3:
        raise LatentaeError(f"expected RGB images [N, 3, H, W], got shape {tuple(images_u8.shape)}")
    h, w = images_u8.shape[-2:]
    f64 = torch.float64
    window = torch.hann_window(h, periodic=False, dtype=f64)[:, None] * torch.hann_window(w, periodic=False, dtype=f64)
    radius = (torch.fft.fftfreq(h, dtype=f64)[:, None].square() + torch.fft.fftfreq(w, dtype=f64).square()).sqrt()
    high = radius > cutoff
    luma = torch.tensor(LUMA, dtype=f64).view(1, 3, 1, 1)
    out = []
    for chunk in images_u8.split(CHUNK):
        y = (chunk.to(f64) / 255 * luma).sum(dim=1)
        y = (y - y.mean(dim=(-2, -1), keepdim=True)) * window
        out.append((torch.fft.fft2(y).abs().square() * high).sum(dim=(-2, -1)))
    return torch.cat(out) if out else torch.zeros(0, dtype=f64)


def high_frequency_ratio(inputs_u8: Tensor, reconstructions_u8: Tensor, cutoff: float = HF_CUTOFF) -> float:
    """Summed high-frequency energy of the reconstructions over that of their inputs (see the module docstring)."""
    if inputs_u8.shape != reconstructions_u8.shape:
        raise LatentaeError(f"inputs {tuple(inputs_u8.shape)} and reconstructions {tuple(reconstructions_u8.shape)} "
                            "differ in shape")
    reference = high_frequency_energy(inputs_u8, cutoff).sum()
    if reference <= 0:
        raise LatentaeError("the inputs have no energy above the cutoff frequency (flat images): no ratio")
    return float(high_frequency_energy(reconstructions_u8, cutoff).sum() / reference)
