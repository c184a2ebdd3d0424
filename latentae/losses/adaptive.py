"""Adaptive adversarial weight (Esser et al. 2021, VQGAN): balance the GAN gradient against the
reconstruction gradient at the decoder's last layer."""
from __future__ import annotations

import torch
from torch import Tensor


def adaptive_weight(
    rec_loss: Tensor,  # reconstruction objective (pixel + perceptual terms, as weighted in the total)
    adv_loss: Tensor,  # generator adversarial loss (before its weight)
    last_layer: Tensor,  # the decoder's output conv weight
    *,
    max_weight: float = 1e4,  # LDM's clamp: keeps the weight finite when the adversarial gradient vanishes
    eps: float = 1e-4,  # LDM's denominator guard
) -> Tensor:
    """|d rec / d last_layer| / (|d adv / d last_layer| + eps), in fp32, clamped to [0, max_weight], detached.

    Both gradients come from `torch.autograd.grad(..., retain_graph=True)`, so the graph survives for the
    caller's backward and no `.grad` is touched (safe under DDP).
    """
    (rec_grad,) = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    (adv_grad,) = torch.autograd.grad(adv_loss, last_layer, retain_graph=True)
    weight = rec_grad.float().norm() / (adv_grad.float().norm() + eps)
    return weight.clamp(0.0, max_weight).detach()
