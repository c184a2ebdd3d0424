"""DC-AE 1.5's structured latent in training: each optimizer step encodes with the first n latent channels, n drawn
uniformly from the allowed counts (the authors' trainer: one count per step for the whole batch). The draw is a
function of (seed, step) alone, the same on every rank and for every micro-batch of the step, so a resumed run
draws what the uninterrupted one drew."""
from __future__ import annotations

from contextlib import contextmanager

import torch

from latentae.config import ConfigError


def chosen_counts(model, chosen: list[int] | None, key: str, distinct: bool = False) -> tuple[int, ...]:
    """The channel counts config key `key` names (None: every count of the model's structured latent; empty for a
    model without one), each one of the model's; one ConfigError naming the key otherwise."""
    allowed = model.bottleneck.channel_counts
    if chosen is not None and not allowed:
        raise ConfigError(f"config key '{key}' needs a structured latent: set model.structured_channels "
                          "(model.family dc)")
    counts = tuple(allowed if chosen is None else chosen)
    bad = [c for c in counts if c not in allowed]
    if bad or (chosen is not None and (not counts or (distinct and len(set(counts)) < len(counts)))):
        raise ConfigError(f"config key '{key}': {bad or list(counts)} not {'distinct counts ' if distinct else ''}"
                          f"among the model's structured_channels {list(allowed)}")
    return counts


class ChannelSchedule:
    """The counts `train.sample_channels` names (None: every count of the model's structured latent); empty for a
    model without one, which then always encodes its whole latent."""

    def __init__(self, model, sample_channels: list[int] | None, seed: int, teacher: bool = False,
                 vf: bool = False):
        counts = chosen_counts(model, sample_channels, "train.sample_channels")
        if counts and teacher:
            raise ConfigError("config key 'train.teacher' does not combine with a structured latent: the decoder "
                              "decodes the teacher's full latent, so no channel count would be trained")
        if counts and vf:
            raise ConfigError("config key 'loss.vf.weight' > 0 does not combine with a structured latent: the "
                              "alignment's projection takes the full latent's channels")
        self.model, self.counts, self.seed = model, counts, seed

    def count(self, step: int) -> int | None:
        """The channel count of optimizer step `step` (None: no structured latent)."""
        if not self.counts:
            return None
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return self.counts[int(torch.randint(len(self.counts), (1,), generator=generator))]

    @contextmanager
    def at(self, step: int):
        """The model encodes with step `step`'s count inside; its whole latent again after (validation, export)."""
        n = self.count(step)
        if n is None:
            yield None
            return
        self.model.use_channels(n)
        try:
            yield n
        finally:
            self.model.use_channels(None)
