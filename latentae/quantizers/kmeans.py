"""k-means for codebook initialization: k-means++ seeding, then Lloyd iterations."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _seed(x: Tensor, k: int) -> Tensor:
    """k-means++: each new centroid is a point drawn with probability proportional to its squared distance to
    the nearest centroid so far. With fewer distinct points than k, the rest are drawn uniformly (duplicates)."""
    n = x.shape[0]
    if n <= k:  # what k-means++ would pick anyway: every point, then uniform repeats
        return x[torch.cat([torch.randperm(n, device=x.device), torch.randint(n, (k - n,), device=x.device)])]
    picks = torch.empty(k, dtype=torch.long, device=x.device)
    picks[0] = torch.randint(n, (1,), device=x.device)
    d2 = (x - x[picks[0]]).pow(2).sum(1)
    for i in range(1, k):
        weights = torch.where(d2.sum() > 0, d2, torch.ones_like(d2))  # no host sync per step
        picks[i] = torch.multinomial(weights, 1)
        d2 = torch.minimum(d2, (x - x[picks[i]]).pow(2).sum(1))
    return x[picks].clone()


@torch.no_grad()
def kmeans(
    x: Tensor,
    k: int,
    *,
    iters: int = 10,  # Lloyd iterations after seeding
    spherical: bool = False,  # keep centroids on the unit sphere (for l2-normalized codebooks)
) -> Tensor:
    """Cluster the rows of `x` [N, D] (computed in fp32) into `k` centroids [k, D]. A cluster left empty keeps
    its previous centroid. Draws from the global torch RNG."""
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"kmeans needs a non-empty [N, D] tensor, got shape {tuple(x.shape)}")
    x = x.float()
    centroids = _seed(x, k)
    for _ in range(iters):
        assign = torch.cdist(x, centroids).argmin(dim=1)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        means = sums / counts.clamp_min(1).unsqueeze(1)
        if spherical:
            means = F.normalize(means, dim=1)
        centroids = torch.where(counts.unsqueeze(1) > 0, means, centroids)
    return centroids
