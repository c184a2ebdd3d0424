"""Optimizers and learning-rate schedules: explicit rates, stepped once per optimizer step by the trainer."""
from __future__ import annotations

import math

import torch
from torch import nn

from latentae.config import ConfigError
from latentae.quantizers.base import Quantizer
from latentae.trainer.config import TrainConfig


def select_trainable(model: nn.Module, prefixes: list[str]) -> list[str]:
    """Freeze every parameter whose name starts with none of `prefixes` ("all": train everything).

    Returns the trainable names. Frozen parameters get requires_grad False, so DDP and AdamW skip them, and a
    quantizer outside the selection stops its codebook updates: frozen parts stay bit-identical (decoder-only
    fine-tuning keeps an existing latent space).
    """
    names = [n for n, _ in model.named_parameters()]
    if prefixes != ["all"]:
        for prefix in prefixes:
            if not any(n.startswith(prefix) for n in names):
                tops = sorted({n.split(".")[0] for n in names})
                raise ConfigError(f"config key 'train.trainable': no parameter starts with {prefix!r} "
                                  f"(top-level modules: {', '.join(tops)})")
    def selected(name: str) -> bool:
        return prefixes == ["all"] or any(name.startswith(prefix) for prefix in prefixes)

    trainable = []
    for name, p in model.named_parameters():
        if not selected(name):
            p.requires_grad_(False)
        elif p.requires_grad:  # e.g. an EMA codebook stays frozen
            trainable.append(name)
    for name, module in model.named_modules():
        if isinstance(module, Quantizer):  # no EMA / restart / k-means rewrites of a codebook that is not trained
            module.codebook_updates = selected(name + ".")
    if not trainable:
        raise ConfigError("config key 'train.trainable' leaves no trainable parameter")
    return trainable


def adamw(params, lr: float, betas, weight_decay: float) -> torch.optim.AdamW:
    params = [p for p in params if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base lr at optimizer step `step`: linear warm-up, then constant or cosine."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def disc_lr(cfg: TrainConfig) -> float:
    return cfg.lr if cfg.disc_lr is None else cfg.disc_lr


def set_lr(optimizer, lr: float) -> None:
    """The schedule is a pure function of the step (lr_factor), set before each update: nothing to checkpoint,
    and it cannot drift from the step counter on resume or when a non-finite step is skipped."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def build_optimizers(generator_params, discriminator: nn.Module, cfg: TrainConfig):
    """(generator AdamW, discriminator AdamW) over the parameters that require grad. `generator_params`: the
    model's, plus those the loss trains with it (loss.vf's projection)."""
    opt_g = adamw(generator_params, cfg.lr, cfg.betas, cfg.weight_decay)
    opt_d = adamw(discriminator.parameters(), disc_lr(cfg), cfg.disc_betas or cfg.betas, cfg.weight_decay)
    return opt_g, opt_d
