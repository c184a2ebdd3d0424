"""DC-AE 1.5's structured latent in training: each optimizer step encodes with the first n latent channels, n drawn
uniformly from the allowed counts (the authors' trainer: one count per step for the whole batch). The draw is a
function of (seed, step) alone, the same on every rank and for every micro-batch of the step, so a resumed run
draws what the uninterrupted one drew."""
from __future__ import annotations

from contextlib import contextmanager

import torch

from latentae.config import ConfigError


class ChannelSchedule:
    """The counts `train.sample_channels` names (None: every count of the model's structured latent); empty for a
    model without one, which then always encodes its whole latent."""

    def __init__(self, model, sample_channels: list[int] | None, seed: int, teacher: bool = False,
                 vf: bool = False):
        allowed = model.bottleneck.channel_counts
        if sample_channels is not None and not allowed:
            raise ConfigError("config key 'train.sample_channels' needs a structured latent: set "
                              "model.structured_channels (model.family dc)")
        counts = tuple(allowed if sample_channels is None else sample_channels)
        bad = [c for c in counts if c not in allowed]
        if bad or (sample_channels is not None and not counts):
            raise ConfigError(f"config key 'train.sample_channels': {bad or counts} not among the model's "
                              f"structured_channels {list(allowed)}")
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
