"""Pixel reconstruction loss and the reduction convention shared by all generator terms (see config.py)."""
from __future__ import annotations

from torch import Tensor


def reduce_elements(per_element: Tensor, reduction: str) -> Tensor:
    """[B, ...] -> scalar: 'sum' sums all but the batch dimension and averages over the batch (LDM);
    'mean' averages over everything."""
    if reduction == "sum":
        return per_element.reshape(per_element.shape[0], -1).sum(1).mean()
    if reduction == "mean":
        return per_element.mean()
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def pixel_loss(images: Tensor, reconstruction: Tensor, *, kind: str, reduction: str) -> Tensor:
    """L1 (|x - y|) or L2 ((x - y)^2) between images and reconstruction, reduced per `reduction`."""
    diff = reconstruction - images
    if kind == "l1":
        per_element = diff.abs()
    elif kind == "l2":
        per_element = diff.square()
    else:
        raise ValueError(f"pixel loss must be 'l1' or 'l2', got {kind!r}")
    return reduce_elements(per_element, reduction)
