"""Adversarial losses on discriminator logits, LeCAM regularization and the R1 penalty.

Discriminator losses average the real and fake halves (LDM's 0.5 factor). Generator losses:
  hinge           D: relu(1 - real) + relu(1 + fake)      G: -fake           (LDM, VQGAN)
  non_saturating  D: softplus(-real) + softplus(fake)     G: softplus(-fake) (-log sigmoid(fake))
  vanilla         D: as non_saturating                    G: -softplus(fake) (the saturating minimax form)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentae.distributed import all_reduce_sum, is_distributed

GAN_LOSSES = ("hinge", "non_saturating", "vanilla")


def discriminator_loss(kind: str, logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    if kind == "hinge":
        real, fake = F.relu(1.0 - logits_real), F.relu(1.0 + logits_fake)
    elif kind in ("non_saturating", "vanilla"):
        real, fake = F.softplus(-logits_real), F.softplus(logits_fake)
    else:
        raise ValueError(f"GAN loss must be one of {', '.join(GAN_LOSSES)}, got {kind!r}")
    return 0.5 * (real.mean() + fake.mean())


def generator_loss(kind: str, logits_fake: Tensor) -> Tensor:
    if kind == "hinge":
        return -logits_fake.mean()
    if kind == "non_saturating":
        return F.softplus(-logits_fake).mean()
    if kind == "vanilla":
        return -F.softplus(logits_fake).mean()
    raise ValueError(f"GAN loss must be one of {', '.join(GAN_LOSSES)}, got {kind!r}")


def lecam_penalty(logits_real: Tensor, logits_fake: Tensor, ema_real: Tensor, ema_fake: Tensor) -> Tensor:
    """LeCAM (Tseng et al. 2021): E[relu(D(x) - ema_fake)^2] + E[relu(ema_real - D(G(z)))^2]."""
    return F.relu(logits_real - ema_fake).square().mean() + F.relu(ema_real - logits_fake).square().mean()


class LeCAMAnchors(nn.Module):
    """EMAs of the mean real and fake logits that LeCAM anchors to (buffers: checkpointed with the loss).

    The batch means are averaged over ranks (every rank calls `update` in each discriminator step), so all
    ranks hold the same anchors. The first update sets the EMAs to the batch means. `decay` is per optimizer
    step: with `micro_batches` updates per step (gradient accumulation) each applies decay ** (1 / micro_batches),
    so the anchors' memory in steps does not depend on grad_accum.
    """

    def __init__(self, decay: float = 0.99, micro_batches: int = 1):
        super().__init__()
        self.decay = decay ** (1.0 / micro_batches)
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, logits_real: Tensor, logits_fake: Tensor) -> None:
        means = torch.stack([logits_real.float().mean(), logits_fake.float().mean()])
        if is_distributed():
            means = all_reduce_sum(means) / torch.distributed.get_world_size()
        decay = torch.where(self.updates > 0, self.decay, 0.0)  # no host sync
        self.ema_real.mul_(decay).add_((1 - decay) * means[0])
        self.ema_fake.mul_(decay).add_((1 - decay) * means[1])
        self.updates += 1


def r1_penalty(logits_real: Tensor, real: Tensor) -> Tensor:
    """0.5 * E_batch |grad_x sum(D(x))|^2 (Mescheder et al. 2018); `real` must require grad and have produced
    `logits_real`. The graph is kept (create_graph) so the penalty trains the discriminator."""
    (grad,) = torch.autograd.grad(logits_real.sum(), real, create_graph=True)
    return 0.5 * grad.float().square().reshape(grad.shape[0], -1).sum(1).mean()
