"""Dataset-level diagnostics: KL per latent channel, codebook usage, and an anomaly ranking.

Scores for the anomaly ranking, per image x with posterior q(z|x) and reconstruction x' = decode(mean):
  recon  mean squared error of x' against x, pixels in [-1, 1]
  elbo   negative ELBO in nats with a unit-variance Gaussian decoder, the additive constant dropped:
         0.5 * sum((x - x')^2) + KL(q(z|x) || N(0, I)); the expectation over q is taken at its mean
High scores are images the model represents poorly: out-of-distribution or unusual inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal

import torch

from latentae.data.sources import expand_sources
from latentae.errors import LatentaeError
from latentae.inspection import SCORES
from latentae.latents.jobs import job_loader, plan_jobs



def batches(spec: str, *, resolution: int, batch_size: int = 8, workers: int = 0) -> Iterator[dict]:
    """Image batches of a data spec (folder, shards, files), center-cropped: {"image": Tensor, "key": [...]}.
    Keys of a folder are the files' relative paths (without extension)."""
    jobs = plan_jobs(expand_sources(spec), images_per_shard=1000)
    for batch in job_loader(jobs, batch_size=batch_size, resolution=resolution, workers=workers):
        if batch["items"]:
            yield {"image": torch.as_tensor(batch["image"]), "key": [i["key"] for i in batch["items"]]}


@torch.inference_mode()
def kl_per_channel(model, spec: str, *, resolution: int, batch_size: int = 8) -> tuple[torch.Tensor, int]:
    """Mean over images of KL(q || N(0, I)) per latent channel (nats, summed over positions): ([C], images).
    Channels near 0 carry no information (posterior collapse)."""
    if not model.bottleneck.samples:
        raise LatentaeError(f"KL per channel needs a KL autoencoder (a posterior), not a {type(model).__name__}")
    total, n = None, 0
    for batch in batches(spec, resolution=resolution, batch_size=batch_size):
        kl = model.posterior(batch["image"]).kl_per_channel().double().sum(0)
        total = kl if total is None else total + kl
        n += len(batch["key"])
    if not n:
        raise LatentaeError(f"no images could be read from {spec}")
    return (total / n).float(), n


@torch.inference_mode()
def code_counts(model, spec: str, *, resolution: int, batch_size: int = 8) -> torch.Tensor:
    """How often each code is chosen over the images of `spec`: [K] ([S, K] per stage for residual
    quantizers)."""
    if not model.bottleneck.tokenizes:
        raise LatentaeError(f"codebook usage needs a VQ tokenizer, not a {type(model).__name__}")
    size = model.quantize.codebook_size
    counts = None
    for batch in batches(spec, resolution=resolution, batch_size=batch_size):
        idx = model.tokenize(batch["image"])
        idx = idx.reshape(-1, idx.shape[-1]).T if idx.ndim == 4 else idx.reshape(1, -1)
        c = torch.stack([torch.bincount(row, minlength=size) for row in idx])
        counts = c if counts is None else counts + c
    if counts is None:
        raise LatentaeError(f"no images could be read from {spec}")
    return counts[0] if counts.shape[0] == 1 else counts


@dataclass
class Scored:
    key: str
    score: float
    image: torch.Tensor | None  # [3, H, W] in [-1, 1]; kept for the `keep_images` highest scores only


@torch.inference_mode()
def anomaly_scores(model, spec: str, *, score: Literal["elbo", "recon"] = "elbo", resolution: int,
                   batch_size: int = 8, keep_images: int = 16) -> list[Scored]:
    """Every image of `spec` with its score (see the module docstring), highest first; the images
    themselves are kept for the first `keep_images` (memory stays flat on large folders)."""
    if score not in SCORES:
        raise LatentaeError(f"score must be one of {SCORES}, got {score!r}")
    if score == "elbo" and not model.bottleneck.samples:
        raise LatentaeError(f"the ELBO needs a KL autoencoder (a posterior); rank a {type(model).__name__} with "
                            "--score recon")
    out: list[Scored] = []
    for batch in batches(spec, resolution=resolution, batch_size=batch_size):
        x = batch["image"]
        if score == "elbo":
            posterior = model.posterior(x)
            rec = model.decode(posterior.mean)
        else:  # KL: the posterior mean; VQ: the quantized latent
            posterior, rec = None, model.decode(model.encode(x))
        sq = (rec.float() - x).pow(2).flatten(1)
        values = 0.5 * sq.sum(1) + posterior.kl() if score == "elbo" else sq.mean(1)
        out += [Scored(k, float(v), img.clone()) for k, v, img in zip(batch["key"], values, x)]
        out.sort(key=lambda s: -s.score)
        for s in out[keep_images:]:
            s.image = None
    if not out:
        raise LatentaeError(f"no images could be read from {spec}")
    return out
