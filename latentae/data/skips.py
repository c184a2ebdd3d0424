"""Bad samples: the exception that drops one, and the counter that says how many were dropped and why.

A bad sample is skipped, never fatal. Worker processes count into their own `SkipCounter` and attach
`counter.delta()` to every batch as `batch["skipped"]`; the main process adds those up with `update()`.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Mapping

logger = logging.getLogger("latentae.data")

# Every reason a sample can be skipped for.
REASONS = (
    "read_error",       # the tar / file / pipe could not be read (missing, truncated archive, I/O error)
    "empty",            # the image member has zero bytes
    "no_image",         # the sample has no member with an image extension
    "decode_error",     # the bytes are not an image Pillow can decode (garbage, truncated, corrupt)
    "too_many_pixels",  # above max_pixels (decompression bomb)
    "too_small",        # shorter side below the crop size while small_images='skip'
)


class SkipSample(Exception):
    """Raised by decoding to drop one sample; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; expected one of {REASONS}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SkipCounter:
    """Skipped-sample counts by reason. `state_dict`/`load_state_dict` let a trainer checkpoint the totals."""

    def __init__(self, counts: Mapping[str, int] | None = None):
        self.counts: Counter[str] = Counter()
        self._reported: Counter[str] = Counter()
        if counts:
            self.update(counts)

    def add(self, reason: str, where: str = "", detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; expected one of {REASONS}")
        self.counts[reason] += 1
        logger.debug("skipped %s (%s): %s", where, reason, detail)

    def update(self, counts: Mapping[str, int]) -> None:
        for reason, n in counts.items():
            if reason not in REASONS:
                raise ValueError(f"unknown skip reason {reason!r}; expected one of {REASONS}")
            self.counts[reason] += int(n)

    def delta(self) -> dict[str, int]:
        """Counts added since the previous call (what a worker ships with each batch)."""
        out = {r: self.counts[r] - self._reported[r] for r in REASONS if self.counts[r] != self._reported[r]}
        self._reported = Counter(self.counts)
        return out

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return {r: self.counts[r] for r in REASONS if self.counts[r]}

    def __str__(self) -> str:
        return ", ".join(f"{r}={n}" for r, n in self.as_dict().items()) or "none"

    def __repr__(self) -> str:
        return f"SkipCounter({self.as_dict()})"

    def state_dict(self) -> dict:
        return {"counts": self.as_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.counts = Counter()
        self._reported = Counter()
        self.update(state["counts"])
