"""The evaluation stream: every sample exactly once across ranks and workers, or the first N of the global order
whatever the number of processes.

Batches are dicts: `{"image": float32 [B, 3, H, W] in [-1, 1], "key": list[str], "position": [[source index,
sample index], ...], "skipped": {reason: n}}`, one image size per batch (center crops to the resolution, or
native-size images cropped to a multiple of the model's downsampling); the `EvalLoader` sums the skip counts into
`loader.skipped`. Decoding and transforms run in the DataLoader workers.
"""
from __future__ import annotations

import copy
import hashlib
import math
import os
from typing import Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from latentae.data.batching import SizeBatcher
from latentae.data.config import DEFAULT_MAX_PIXELS, DataConfig
from latentae.data.reading import SampleDecoder, check_rank, worker_slot
from latentae.data.skips import SkipCounter, SkipSample
from latentae.data.labels import catalog, per_class as class_subset
from latentae.data.sources import Source, _is_local_tar, expand_sources, iter_samples, tar_index
from latentae.data.transforms import prepare_array
from latentae.errors import LatentaeError


def crop_decoder(*, resolution: int | None, multiple: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS,
                 small_images: Literal["upscale", "skip"] = "upscale") -> SampleDecoder:
    """The decoder of center crops to `resolution` (evaluation, encoding), or of native size when resolution is
    None: then an image with a side below `multiple` has no crop to a multiple of it and is skipped (too_small)."""
    if resolution is None:
        return SampleDecoder(resolution=multiple, max_pixels=max_pixels, small_images="skip")
    return SampleDecoder(resolution=resolution, max_pixels=max_pixels, small_images=small_images)


def _eval_batch(items: list[dict], skipped: dict[str, int]) -> dict:
    """An evaluation batch of equal-size items (see _eval_image)."""
    # np.stack, not torch.stack: see transforms.to_array
    image = np.stack([i["image"] for i in items]) if items else np.empty((0, 3, 0, 0), np.float32)
    return {"image": torch.from_numpy(image), "key": [i["key"] for i in items],
            "position": [i["position"] for i in items], "skipped": skipped}


class _Reader:
    """What every evaluation reader holds: the sources, how a sample becomes an image, and which samples to read
    (`keep`: sample indices per source index, e.g. a class-balanced subset; None: all)."""

    def __init__(self, sources: Sequence[Source], *, decoder: SampleDecoder, resolution: int | None, multiple: int = 1,
                 keep: Mapping[int, frozenset[int]] | None = None):
        self.sources = list(sources)
        self.decoder = decoder
        self.resolution = resolution
        self.multiple = multiple
        self.keep = keep

    def reading(self) -> dict:
        """The constructor arguments of _Reader (to build a stream of the same reading)."""
        return {"sources": self.sources, "decoder": self.decoder, "resolution": self.resolution,
                "multiple": self.multiple, "keep": self.keep}

    def _samples(self, index: int, skipped) -> Iterator[tuple[int, dict]]:
        """(sample index, raw sample) of source `index` that `keep` keeps; an image file outside it is not read."""
        if self.keep is not None and index not in self.keep:
            return
        for ordinal, sample in enumerate(iter_samples(self.sources[index], skipped)):
            if self.keep is None or ordinal in self.keep[index]:
                yield ordinal, sample

    def _image(self, sample: dict, position: list[int]) -> dict:
        """A raw sample -> {"key", "position", "image": numpy [3, H, W]}; raises SkipSample."""
        _, img = self.decoder(sample)
        return {"key": sample["__key__"], "position": position,
                "image": prepare_array(img, self.resolution, multiple=self.multiple)}


class EvalStream(_Reader, IterableDataset):
    """Every sample of the sources `indices` exactly once across workers: worker w of W reads indices[w::W] in order,
    in batches of equal-size images (data/batching.py; some partial). A worker whose slice is empty yields nothing;
    one that ends on skipped samples yields an empty batch carrying their counts (EvalLoader drops it after
    counting)."""

    def __init__(self, sources: Sequence[Source], *, batch_size: int, indices: Sequence[int], **reading):
        super().__init__(sources, **reading)
        self.batch_size = batch_size
        self.indices = list(indices)

    def batches(self, worker: int = 0, num_workers: int = 1) -> Iterator[dict]:
        skipped = SkipCounter()
        batcher: SizeBatcher[dict] = SizeBatcher(self.batch_size)
        for index in self.indices[worker::num_workers]:
            for ordinal, sample in self._samples(index, skipped):
                try:
                    item = self._image(sample, [index, ordinal])
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


class PrefixStream(_Reader, IterableDataset):
    """The global order from its start, on every rank (for `EvalLoader.first`): the sources in order, each in
    stored order. Every worker reads all samples; worker w of W decodes chunks c = w, w + W, ... of `chunk`
    consecutive samples and yields one list per chunk, in order (an empty one too), of each sample's outcome:
    {"key", "position", "image"} or {"skip": reason} (a read error joins the chunk of the sample before it).
    The main process numbers the good images, keeps its rank's and stops at the cap."""

    def __init__(self, sources: Sequence[Source], *, chunk: int, **reading):
        super().__init__(sources, **reading)
        self.chunk = chunk

    def batches(self, worker: int = 0, num_workers: int = 1) -> Iterator[list[dict]]:
        def own(raw: int) -> bool:  # whether this worker decodes the chunk of sample `raw`
            return raw // self.chunk % num_workers == worker

        reads = _SkipsInOrder()
        outcomes: list[dict] = []  # of the current chunk
        raw = 0  # samples read so far
        for index in range(len(self.sources)):
            for ordinal, sample in self._samples(index, reads):
                outcomes += reads.take()
                if raw and raw % self.chunk == 0:  # a chunk begins: the previous one is complete
                    if own(raw - 1):
                        yield outcomes
                    outcomes = []
                if own(raw):
                    try:
                        outcomes.append(self._image(sample, [index, ordinal]))
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


def plan_chunks(sources: Sequence[Source], images_per_chunk: int,
                keep: Mapping[int, frozenset[int]] | None = None) -> list[list[int]]:
    """Source indices in units of resumable work: each tar alone, image files in runs of `images_per_chunk` (in
    order; a run continues past a tar), sources `keep` leaves out omitted. Depends on the data only."""
    chunks: list[list[int]] = []
    pending: list[int] = []
    for index, source in enumerate(sources):
        if keep is not None and index not in keep:
            continue
        if not source.is_image:
            chunks.append([index])
            continue
        pending.append(index)
        if len(pending) == images_per_chunk:
            chunks.append(pending)
            pending = []
    return chunks + ([pending] if pending else [])


class EvalLoader(_Reader):
    """One rank's evaluation batches (see eval_loader): `{"image": float32 [B, 3, H, W], "key": [...],
    "position": [[source index, sample index], ...]}` (and "class": [...] when `classes` is set), one image size per
    batch, decoded in `num_workers` processes; skip counts go to `self.skipped`. Not for accelerate's `prepare`:
    move batches to the device yourself."""

    def __init__(self, sources: Sequence[Source], *, batch_size: int, rank: int, world_size: int, num_workers: int,
                 classes: Mapping[tuple[int, int], str] | None = None, **reading):
        super().__init__(sources, **reading)
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.classes = classes  # (source index, sample index) -> class (latentae.data.labels)
        self.class_counts: dict[str, int] | None = None  # images per class, when classes are known
        self.indices: list[int] | None = None  # the sources read (chunks); None: this rank's static slice
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

    def chunks(self, images_per_chunk: int) -> list[tuple[int, "EvalLoader"]]:
        """This rank's units of resumable work (plan_chunks; chunk j goes to rank j % world_size), each a loader of
        its sources sharing this one's `skipped`: (chunk index, loader), in order. Runs of image files are shortened
        to give every rank some when there are fewer than images_per_chunk x world_size."""
        files = sum(1 for i, s in enumerate(self.sources) if s.is_image and (self.keep is None or i in self.keep))
        per_chunk = max(1, min(images_per_chunk, math.ceil(files / self.world_size)))
        plan = plan_chunks(self.sources, per_chunk, self.keep)
        out = []
        for j, indices in enumerate(plan):
            if j % self.world_size == self.rank:
                part = copy.copy(self)
                part.indices = indices
                out.append((j, part))
        return out

    def count(self) -> int | None:
        """Images this loader reads before any is skipped (local sources only; None when a stream is among them)."""
        total = 0
        for index in self._indices():
            source = self.sources[index]
            if self.keep is not None:
                total += len(self.keep.get(index, ()))
            elif source.is_image:
                total += 1
            elif _is_local_tar(source.url):
                total += len(tar_index(source.url)[0])
            else:
                return None
        return total

    def fingerprint(self) -> str:
        """sha256 of what decides the images read: every source (with a local file's size and modification time),
        the kept samples, the classes and the crop."""
        digest = hashlib.sha256()
        for source in self.sources:
            stat = os.stat(source.url) if os.path.exists(source.url) else None
            digest.update(f"{source.url}|{source.key}|{stat and (stat.st_size, stat.st_mtime_ns)}\n".encode())
        for part in (sorted((i, sorted(o)) for i, o in (self.keep or {}).items()), sorted((self.classes or {}).items()),
                     (self.resolution, self.multiple, self.decoder.max_pixels, self.decoder.min_side)):
            digest.update(repr(part).encode())
        return digest.hexdigest()

    def _indices(self) -> list[int]:
        return self.indices if self.indices is not None else list(range(self.rank, len(self.sources), self.world_size))

    def __iter__(self) -> Iterator[dict]:
        batches = self._split() if self.max_images is None else self._prefix()
        for batch in batches:
            if self.classes is not None:
                batch["class"] = [self.classes[tuple(p)] for p in batch["position"]]
            yield batch

    def _split(self) -> Iterator[dict]:
        indices = self._indices()
        stream = EvalStream(batch_size=self.batch_size, indices=indices, **self.reading())
        for batch in DataLoader(stream, batch_size=None, num_workers=min(self.num_workers, len(indices)),
                                in_order=True, pin_memory=torch.cuda.is_available()):
            self.skipped.update(batch["skipped"])
            if batch["key"]:
                yield batch

    def _prefix(self) -> Iterator[dict]:
        stream = PrefixStream(chunk=self.batch_size, **self.reading())
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
                source: str | None = None, native_multiple: int | None = None, labels: str | None = None,
                per_class: int | None = None) -> EvalLoader:
    """Every sample of `source` (default `cfg.val`) exactly once across all ranks and workers, center-cropped
    to cfg.resolution, or at native size when `native_multiple` is set (whole images center-cropped to a
    multiple of it: the model's downsampling factor), in batches of one image size. Each image carries its
    position in the global order (sources in order, each in stored order); `.first(n)` gives the first n
    images of that order whatever the number of ranks. Ranks with nothing to read yield nothing (they still
    must take part in any collective the caller runs afterwards). `labels` (latentae.data.labels: "folders",
    "cls" or a labels file) gives every batch a "class" list; `per_class` N then reads only the first N images of
    each class (the loader's `class_counts` says how many of each)."""
    check_rank(rank, world_size, batch_size)
    spec = source or cfg.val
    if not spec:
        raise LatentaeError("no evaluation data: set data.val or pass a source")
    if per_class is not None and labels is None:
        raise LatentaeError("--per-class needs the images' classes: --labels folders (class folders), --labels cls "
                            "(shards with a cls member) or --labels FILE (`filename label` lines)")
    resolution = None if native_multiple else cfg.resolution
    decoder = crop_decoder(resolution=resolution, multiple=native_multiple or 1, max_pixels=cfg.max_pixels,
                           small_images=cfg.small_images)
    sources = expand_sources(spec)
    found, keep = (catalog(sources, labels), None) if labels is not None else (None, None)
    if per_class is not None:
        found, keep = class_subset(found, per_class)
    loader = EvalLoader(sources, decoder=decoder, batch_size=batch_size, rank=rank, world_size=world_size,
                        resolution=resolution, multiple=native_multiple or 1, num_workers=cfg.num_workers,
                        keep=keep, classes=found.classes if found is not None else None)
    loader.class_counts = dict(sorted(found.counts().items())) if found is not None else None
    return loader
