"""The evaluation stream: every sample exactly once across ranks and workers, or the first N of the global order
whatever the number of processes.

Batches are dicts: `{"image": float32 [B, 3, H, W] in [-1, 1], "key": list[str], "position": [[source index,
sample index], ...], "skipped": {reason: n}}`, one image size per batch (center crops to the resolution, or
native-size images cropped to a multiple of the model's downsampling); the `EvalLoader` sums the skip counts into
`loader.skipped`. Decoding and transforms run in the DataLoader workers.
"""
from __future__ import annotations

import copy
import math
from typing import Iterator, Literal, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from latentae.data.batching import SizeBatcher
from latentae.data.config import DEFAULT_MAX_PIXELS, DataConfig
from latentae.data.reading import SampleDecoder, check_rank, worker_slot
from latentae.data.skips import SkipCounter, SkipSample
from latentae.data.sources import Source, expand_sources, iter_samples
from latentae.data.transforms import prepare_array
from latentae.errors import LatentaeError


def crop_decoder(*, resolution: int | None, multiple: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS,
                 small_images: Literal["upscale", "skip"] = "upscale") -> SampleDecoder:
    """The decoder of center crops to `resolution` (evaluation, encoding), or of native size when resolution is
    None: then an image with a side below `multiple` has no crop to a multiple of it and is skipped (too_small)."""
    if resolution is None:
        return SampleDecoder(resolution=multiple, max_pixels=max_pixels, small_images="skip")
    return SampleDecoder(resolution=resolution, max_pixels=max_pixels, small_images=small_images)


def _eval_image(sample: dict, position: list[int], decoder: SampleDecoder, resolution: int | None,
                multiple: int) -> dict:
    """A raw sample -> {"key", "position", "image": numpy [3, H, W]}; raises SkipSample."""
    _, img = decoder(sample)
    return {"key": sample["__key__"], "position": position,
            "image": prepare_array(img, resolution, multiple=multiple)}


def _eval_batch(items: list[dict], skipped: dict[str, int]) -> dict:
    """An evaluation batch of equal-size items (see _eval_image)."""
    # np.stack, not torch.stack: see transforms.to_array
    image = np.stack([i["image"] for i in items]) if items else np.empty((0, 3, 0, 0), np.float32)
    return {"image": torch.from_numpy(image), "key": [i["key"] for i in items],
            "position": [i["position"] for i in items], "skipped": skipped}


class EvalStream(IterableDataset):
    """Every sample exactly once across ranks and workers: rank r, worker w of W reads the static slice
    sources[r + world_size * w :: world_size * W] in order, in batches of equal-size images (data/batching.py;
    some partial). A worker whose slice is empty yields nothing; one that ends on skipped samples yields an
    empty batch carrying their counts (EvalLoader drops it after counting)."""

    def __init__(self, sources: Sequence[Source], *, decoder: SampleDecoder, batch_size: int, rank: int,
                 world_size: int, resolution: int | None, multiple: int = 1):
        self.sources = list(sources)
        self.decoder = decoder
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.resolution = resolution
        self.multiple = multiple

    def batches(self, worker: int = 0, num_workers: int = 1) -> Iterator[dict]:
        skipped = SkipCounter()
        batcher: SizeBatcher[dict] = SizeBatcher(self.batch_size)
        for index in range(self.rank + self.world_size * worker, len(self.sources), self.world_size * num_workers):
            for ordinal, sample in enumerate(iter_samples(self.sources[index], skipped)):
                try:
                    item = _eval_image(sample, [index, ordinal], self.decoder, self.resolution, self.multiple)
                except SkipSample as e:
                    skipped.add(e.reason, f"{sample['__url__']}:{sample['__key__']}", e.detail)
                    continue
                for items in batcher.add(item, item["image"].shape):
                    yield _eval_batch(items, skipped.delta())
        for items in batcher.flush():
            yield _eval_batch(items, skipped.delta())
        rest = skipped.delta()
        if rest:
            yield _eval_batch([], rest)

    def __iter__(self) -> Iterator[dict]:
        return self.batches(*worker_slot())


class _SkipsInOrder:
    """Skip counter of a PrefixStream: records each skip as an outcome {"skip": reason}, in order."""

    def __init__(self):
        self.pending: list[dict] = []

    def add(self, reason: str, where: str = "", detail: str = "") -> None:
        self.pending.append({"skip": reason})

    def take(self) -> list[dict]:
        taken, self.pending = self.pending, []
        return taken


class PrefixStream(IterableDataset):
    """The global order from its start, on every rank (for `EvalLoader.first`): the sources in order, each in
    stored order. Every worker reads all samples; worker w of W decodes chunks c = w, w + W, ... of `chunk`
    consecutive samples and yields one list per chunk, in order (an empty one too), of each sample's outcome:
    {"key", "position", "image"} or {"skip": reason} (a read error joins the chunk of the sample before it).
    The main process numbers the good images, keeps its rank's and stops at the cap."""

    def __init__(self, sources: Sequence[Source], *, decoder: SampleDecoder, chunk: int, resolution: int | None,
                 multiple: int = 1):
        self.sources = list(sources)
        self.decoder = decoder
        self.chunk = chunk
        self.resolution = resolution
        self.multiple = multiple

    def batches(self, worker: int = 0, num_workers: int = 1) -> Iterator[list[dict]]:
        def own(raw: int) -> bool:  # whether this worker decodes the chunk of sample `raw`
            return raw // self.chunk % num_workers == worker

        reads = _SkipsInOrder()
        outcomes: list[dict] = []  # of the current chunk
        raw = 0  # samples read so far
        for index, source in enumerate(self.sources):
            for ordinal, sample in enumerate(iter_samples(source, reads)):
                outcomes += reads.take()
                if raw and raw % self.chunk == 0:  # a chunk begins: the previous one is complete
                    if own(raw - 1):
                        yield outcomes
                    outcomes = []
                if own(raw):
                    try:
                        outcomes.append(_eval_image(sample, [index, ordinal], self.decoder, self.resolution,
                                                    self.multiple))
                    except SkipSample as e:
                        outcomes.append({"skip": e.reason})
                raw += 1
        outcomes += reads.take()
        if own(max(raw - 1, 0)):
            yield outcomes

    def __iter__(self) -> Iterator[list[dict]]:
        return self.batches(*worker_slot())


def _as_is(batch):
    return batch


class EvalLoader:
    """One rank's evaluation batches (see eval_loader): `{"image": float32 [B, 3, H, W], "key": [...],
    "position": [[source index, sample index], ...]}`, one image size per batch, decoded in `num_workers`
    processes; skip counts go to `self.skipped`. Not for accelerate's `prepare`: move batches to the device
    yourself."""

    def __init__(self, sources: Sequence[Source], *, decoder: SampleDecoder, batch_size: int, rank: int,
                 world_size: int, resolution: int | None, multiple: int, num_workers: int):
        self.sources = list(sources)
        self.decoder = decoder
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.resolution = resolution
        self.multiple = multiple
        self.num_workers = num_workers
        self.max_images: int | None = None
        self.skipped = SkipCounter()

    def first(self, n: int) -> "EvalLoader":
        """This rank's share of the first `n` good images of the global order (sources in order, each in stored
        order): image j goes to rank j % world_size, so the images evaluated never depend on the number of
        processes or workers. Every rank reads and decodes the whole prefix. Samples skipped before the n-th
        image are counted once (by rank 0) into the same `skipped` as this loader's."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        capped = copy.copy(self)
        capped.max_images = n
        return capped

    def __iter__(self) -> Iterator[dict]:
        return self._split() if self.max_images is None else self._prefix()

    def _split(self) -> Iterator[dict]:
        # The same worker count on every rank (it depends only on global sizes), so the slices partition.
        workers = min(self.num_workers, math.ceil(len(self.sources) / self.world_size))
        stream = EvalStream(self.sources, decoder=self.decoder, batch_size=self.batch_size, rank=self.rank,
                            world_size=self.world_size, resolution=self.resolution, multiple=self.multiple)
        for batch in DataLoader(stream, batch_size=None, num_workers=workers, in_order=True,
                                pin_memory=torch.cuda.is_available()):
            self.skipped.update(batch["skipped"])
            if batch["key"]:
                yield batch

    def _prefix(self) -> Iterator[dict]:
        stream = PrefixStream(self.sources, decoder=self.decoder, chunk=self.batch_size, resolution=self.resolution,
                              multiple=self.multiple)
        workers = min(self.num_workers, math.ceil(self.max_images / self.batch_size))
        loader = DataLoader(stream, batch_size=None, num_workers=workers, in_order=True, collate_fn=_as_is)
        outcomes = (outcome for chunk in loader for outcome in chunk)
        batcher: SizeBatcher[dict] = SizeBatcher(self.batch_size)
        good = 0
        try:
            for outcome in outcomes:
                if "skip" in outcome:
                    if self.rank == 0:
                        self.skipped.add(outcome["skip"])
                    continue
                if good % self.world_size == self.rank:
                    for items in batcher.add(outcome, outcome["image"].shape):
                        yield _eval_batch(items, {})
                good += 1
                if good == self.max_images:
                    break
        finally:
            outcomes.close()  # stops the decoding workers
        for items in batcher.flush():
            yield _eval_batch(items, {})


def eval_loader(cfg: DataConfig, *, batch_size: int, rank: int = 0, world_size: int = 1,
                source: str | None = None, native_multiple: int | None = None) -> EvalLoader:
    """Every sample of `source` (default `cfg.val`) exactly once across all ranks and workers, center-cropped
    to cfg.resolution, or at native size when `native_multiple` is set (whole images center-cropped to a
    multiple of it: the model's downsampling factor), in batches of one image size. Each image carries its
    position in the global order (sources in order, each in stored order); `.first(n)` gives the first n
    images of that order whatever the number of ranks. Ranks with nothing to read yield nothing (they still
    must take part in any collective the caller runs afterwards)."""
    check_rank(rank, world_size, batch_size)
    spec = source or cfg.val
    if not spec:
        raise LatentaeError("no evaluation data: set data.val or pass a source")
    resolution = None if native_multiple else cfg.resolution
    decoder = crop_decoder(resolution=resolution, multiple=native_multiple or 1, max_pixels=cfg.max_pixels,
                           small_images=cfg.small_images)
    return EvalLoader(expand_sources(spec), decoder=decoder, batch_size=batch_size, rank=rank, world_size=world_size,
                      resolution=resolution, multiple=native_multiple or 1, num_workers=cfg.num_workers)
