"""The real images' side of rFID, computed once per run and cached as an npz that says what it was computed from.

`evaluate_many` runs the feature extractor on each real batch once, whatever the number of models, and every
model's FID is taken against the same `FIDReference` (mean, covariance, count of the real features). Saved with
`save_reference`, a later evaluation of another model on the same data reads it instead of recomputing it
(`latentae eval --reference-stats PATH`). The file holds a fingerprint: the feature extractor (Inception pool size
and the weight file's sha256, or a custom module's class and parameters' hash), the data protocol (resolution and
crop) and the evaluated images (count and sha256 of their keys in order). Reading it for other data or another
extractor is refused with the fields that differ: FIDs against another reference are not the same metric.

Only npz files are read, with allow_pickle=False. ADM's reference batches (`mu`, `sigma` arrays) carry no
fingerprint and describe generated-sample benchmarks (gFID), not this data's reconstructions; edm2's references are
pickles, which are never opened. Both are refused with that reason.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from latentae.distributed import all_reduce_sum
from latentae.errors import LatentaeError
from latentae.evaluation.resume import module_sha256

FORMAT = "latentae-fid-reference-1"
FINGERPRINT = ("extractor", "protocol", "n_images", "keys_sha256")


@dataclass
class FIDReference:
    mean: np.ndarray  # float64 [d]
    cov: np.ndarray  # float64 [d, d], unbiased (n - 1), as torchmetrics computes it
    count: int
    fingerprint: dict[str, str]  # FINGERPRINT fields
    source: str = ""  # where it came from, for the report and messages


def extractor_identity(meter) -> str:
    """The features' part of a fingerprint, from a FIDMetric: its protocol / layer and the weight file's sha256, or a
    custom extractor's class and a hash of its parameters and buffers (never a path: caches move between machines)."""
    if not isinstance(meter.feature, nn.Module):
        digest = hashlib.sha256()
        path = Path(meter.weight_files[-1])
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return f"FID features {meter.feature!r} ({meter.protocol}), {path.name} sha256 {digest.hexdigest()}"
    return f"{type(meter.feature).__name__} (parameters sha256 {module_sha256(meter.feature)})"


def keys_fingerprint(image_keys: list[str]) -> dict[str, str]:
    """The evaluated images' part of a fingerprint: their count and the sha256 of their keys in order."""
    return {"n_images": str(len(image_keys)),
            "keys_sha256": hashlib.sha256("\n".join(image_keys).encode()).hexdigest()}


def moments(total: Tensor, cov_total: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance from float64 feature sums, in torchmetrics' FrechetInceptionDistance order."""
    mean = (total / n).unsqueeze(0)
    return mean.squeeze(0), (cov_total - n * mean.t().mm(mean)) / (n - 1)


class RealFeatures:
    """This rank's sums of the real images' features (float64, like torchmetrics' states)."""

    STATE = ("total", "cov_total", "n")  # what latentae.evaluation.resume saves

    def __init__(self):
        self.total: Tensor | None = None
        self.cov_total: Tensor | None = None
        self.n = 0

    def update(self, features: Tensor) -> None:
        features = features.double()
        if self.total is None:
            self.total = torch.zeros(features.shape[1], dtype=torch.float64, device=features.device)
            self.cov_total = torch.zeros(features.shape[1], features.shape[1], dtype=torch.float64,
                                         device=features.device)
        self.total += features.sum(0)
        self.cov_total += features.t().mm(features)
        self.n += len(features)

    def reference(self, dim: int, device: torch.device, fingerprint: dict[str, str], source: str) -> FIDReference:
        """Every rank's features together (collective: every rank calls it, also one that read no image)."""
        if self.total is None:
            self.update(torch.zeros(0, dim, device=device))
        total, cov_total = all_reduce_sum(self.total), all_reduce_sum(self.cov_total)
        n = int(all_reduce_sum(torch.tensor(self.n, device=device)))
        mean, cov = moments(total, cov_total, n)
        return FIDReference(mean.cpu().numpy(), cov.cpu().numpy(), n, dict(fingerprint), source)


def save_reference(reference: FIDReference, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object: np.savez would add .npz to a name without it
        np.savez(f, format=np.array(FORMAT), mean=reference.mean, cov=reference.cov,
                 count=np.array(reference.count), **{k: np.array(v) for k, v in reference.fingerprint.items()})
    return path


def load_reference(path: str | Path) -> FIDReference:
    """A reference written by `save_reference`; anything else is refused with one message saying why."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:  # not a zip / npy (e.g. an edm2 pickle), or object arrays
        raise LatentaeError(f"{path} is not an npz of plain arrays ({type(e).__name__}: {e}); reference statistics "
                            "are read from latentae's npz only (pickles, such as edm2's, are never opened)") from None
    if "format" not in arrays or str(arrays["format"]) != FORMAT:
        kind = "an ADM-style reference (mu, sigma) " if {"mu", "sigma"} <= arrays.keys() else ""
        raise LatentaeError(f"{path} is {kind}not a latentae reference ({FORMAT}): without the fingerprint of the "
                            "images, crop and feature extractor it was computed from, an rFID against it cannot be "
                            "checked to be one (ADM's batches are references for generated samples)")
    return FIDReference(arrays["mean"], arrays["cov"], int(arrays["count"]),
                        {k: str(arrays[k]) for k in FINGERPRINT}, f"read from {path}")


def check_fingerprint(reference: FIDReference, expected: dict[str, str], source: str) -> None:
    """Refuse a reference computed from other data or with another extractor (only the fields in `expected`)."""
    differ = [f"{k}: the file has {reference.fingerprint.get(k)!r}, this evaluation {v!r}"
              for k, v in expected.items() if reference.fingerprint.get(k) != v]
    if differ:
        raise LatentaeError(f"refusing the FID reference statistics {source}: they were computed from other images "
                            f"or with another feature extractor ({'; '.join(differ)}). Omit --reference-stats (or "
                            "give another path) to compute them for this data")
