"""Checks that keep latents that carry nothing about the image out of the probe's top ranks: a constant latent,
one number per image, or noise can be nearly free for the DiT and still decode to nothing like the data.

  variation      the latents' variance between images (at a position, over images) and within an image (over
                 positions), each as a share of their sum, per channel of the probe's training latents, averaged
                 over channels. A constant latent has no between-image share, one value per image (e.g. its mean
                 colour) no within-image share; real encoders and noise have both.
                 Floor: the smaller share >= VARIATION_FLOOR.
  reconstruction PSNR of the model's reconstructions of the probe's validation images (latentae.evaluation's
                 protocol), against the PSNR of each image's own flat mean colour, which a latent of one colour
                 per image reaches. Floor: at least PSNR_MARGIN_DB above that.

A model below either floor gets a warning in the report and ranks after every model above both.
"""
from __future__ import annotations

import torch
from torch import Tensor

VARIATION_FLOOR = 0.05
PSNR_MARGIN_DB = 2.0


def variation(latents: Tensor) -> dict[str, float]:
    """Between- and within-image shares of the variance of `latents` [N, C, h, w] (see the module docstring)."""
    z = latents.double().flatten(2)  # [N, C, positions]
    between = z.var(0).mean(1)  # per channel: over images at each position
    within = z.var(2).mean(0) if z.shape[2] > 1 else torch.zeros_like(between)  # over positions in each image
    share = (between / (between + within).clamp_min(1e-30)).mean().item()
    return {"between_share": share, "within_share": 1 - share}


def flat_colour_psnr(images: Tensor) -> float:
    """Mean PSNR (dB, 8-bit) of each image [-1, 1] against its own mean colour."""
    from latentae.evaluation.metrics import psnr_per_image, to_uint8

    real = to_uint8(images)
    flat = real.double().mean((2, 3), keepdim=True).round().expand_as(real).to(torch.uint8)
    return psnr_per_image(real, flat).mean().item()


def reconstruction(model, images: Tensor, *, batch_size: int) -> dict:
    """PSNR and the rate of `model` on `images` [-1, 1] (latentae.evaluation.evaluate): KL in nats per latent
    element for KL models, bits per pixel for tokenizers, none for deterministic latents."""
    from latentae.evaluation import evaluate

    batches = [{"image": x, "key": [str(i + j) for j in range(len(x))]}
               for i, x in zip(range(0, len(images), batch_size), images.split(batch_size))]
    m = evaluate(model, batches, metrics=("psnr",)).metrics
    if "kl" in m:
        rate = {"rate": m["kl"], "rate_unit": "KL nats/element"}
    elif "bits_per_pixel" in m:
        rate = {"rate": m["bits_per_pixel"], "rate_unit": "bits/pixel"}
    else:
        rate = {"rate": None, "rate_unit": "n/a (deterministic latent)"}
    return {"psnr": m["psnr"], **rate}


def warnings(var: dict[str, float], psnr: float, flat_psnr: float) -> list[str]:
    """The report's warnings for a model (empty: above both floors)."""
    out = []
    low = min(var["between_share"], var["within_share"])
    if low < VARIATION_FLOOR:
        which = "between images" if var["between_share"] < var["within_share"] else "within an image"
        out.append(f"latents barely vary {which} ({low:.3f} of the variance, floor {VARIATION_FLOOR})")
    if psnr < flat_psnr + PSNR_MARGIN_DB:
        out.append(f"reconstruction PSNR {psnr:.2f} dB is not {PSNR_MARGIN_DB:g} dB above each image's flat mean "
                   f"colour ({flat_psnr:.2f} dB)")
    return out
