"""Batches of equal-size images: native-size reading (no resize) gives images of many sizes, and a batch
never mixes sizes.

`SizeBatcher` keeps one pending bucket per image size and hands out a bucket when it holds `batch_size`
items. At most `max_pending` items wait in all (2 batches by default): when one more would exceed that,
the bucket that has waited longest goes out first as a partial batch, so a set of many different sizes cannot pile
up images in memory. Images of one size keep their order; batches of different sizes interleave.
"""
from __future__ import annotations

from typing import Generic, Hashable, TypeVar

T = TypeVar("T")


class SizeBatcher(Generic[T]):
    def __init__(self, batch_size: int, max_pending: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.max_pending = max(max_pending or 2 * batch_size, batch_size)
        self.buckets: dict[Hashable, list[T]] = {}  # insertion order: the oldest bucket first
        self.pending = 0

    def add(self, item: T, size: Hashable) -> list[list[T]]:
        """Queue `item` of image size `size` (any hashable, e.g. its shape); returns the batches that are
        ready now (none, one, or an early partial one and a full one)."""
        ready = []
        if self.pending == self.max_pending:
            ready.append(self._pop(next(iter(self.buckets))))
        bucket = self.buckets.setdefault(size, [])
        bucket.append(item)
        self.pending += 1
        if len(bucket) == self.batch_size:
            ready.append(self._pop(size))
        return ready

    def flush(self) -> list[list[T]]:
        """Every pending item, as batches, the bucket that has waited longest first."""
        return [self._pop(size) for size in list(self.buckets)]

    def _pop(self, size: Hashable) -> list[T]:
        batch = self.buckets.pop(size)
        self.pending -= len(batch)
        return batch
