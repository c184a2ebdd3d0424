"""Readers: the infinite, resumable training stream; the exactly-once evaluation stream; one shard in order.

Batches are dicts: `{"image": float32 [B, 3, R, R] in [-1, 1], "key": list[str], "skipped": {reason: n}}`,
where `skipped` holds the samples dropped (by reason) since the producing worker's previous batch; the
`BatchLoader` sums them into `loader.skipped`. Decoding and transforms run in the DataLoader workers.
Evaluation batches (`EvalLoader`) also carry each image's `position` in the global order, and may hold
native-size images [B, 3, H, W] (one size per batch).

Training determinism. The batch at step s (the s-th batch drawn from this rank's loader, counting
micro-batches under gradient accumulation) is a pure function of (seed, rank, s), batch_size, world_size,
the data config and the data, so a run resumed at step k gets exactly the batches the uninterrupted run
got from step k. How: step s comes from "virtual worker" v = s % W (W = num_workers, or 1) as its
(s // W)-th batch; the DataLoader hands out batches round-robin, so a real worker started at step k serves
virtual worker (k + id) % W. Each virtual worker's stream is cut into chunks of ceil(chunk_size / B)
batches, and chunk j is generated from scratch by an RNG seeded with (seed, rank, W, v, j): shards drawn
with replacement, each begun at a random sample (local tars) and wrapping around, through a shuffle buffer
filled anew, with every crop / flip drawn from a per-sample seed. Resuming therefore decodes at most one
partial chunk per worker (< chunk_size samples, in parallel across workers) instead of k batches.
Per-step reseeding would need random access to every sample, which tars behind pipe: or http do not have;
reseeding per chunk keeps reads sequential and costs one shuffle-buffer fill per chunk.

Ranks and sample weights (`rank_sources`). One stream draws every sample at the same rate: sources are drawn
uniformly and each is read whole. Ranks yield equal numbers of samples per step, so splitting the sources
between ranks keeps those rates only if every rank's share holds the same number of samples (9 shards dealt
to 8 ranks would draw rank 0's two at half the rate of the others). Sources come in groups assumed to hold
equal sample counts (`expand_source_groups`: the shards of one brace pattern, glob or folder; image files).
Each group is dealt out in whole rounds of world_size, one source per rank, and its last len % world_size
sources are read by every rank at 1/world_size of the weight: every rank then holds the same weighted sample
count and every source the same total weight, so every sample keeps its rate. 8 shards on 8 ranks: one each;
9 shards: one each plus the ninth, shared; `A-{0..7}.tar,B-{0..1}.tar`: one A each, both B shared. Where the
assumption fails (a short last shard dealt to a rank), that rank's samples are drawn more often by the
shortfall relative to the rank's share: negligible with many shards per rank.
"""
from __future__ import annotations

import copy
import math
import random
from itertools import accumulate, islice
from typing import Iterator, Literal, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from latentae.data.batching import SizeBatcher
from latentae.data.config import DEFAULT_MAX_PIXELS, DataConfig
from latentae.data.decode import decode_image, pick_image
from latentae.data.skips import SkipCounter, SkipSample
from latentae.data.sources import Source, expand_source_groups, expand_sources, iter_samples, source_for
from latentae.data.transforms import prepare_array, prepare_image
from latentae.errors import LatentaeError

# A training stream that drops this many samples (or opens this many empty sources) in a row is
# misconfigured (wrong path, every image below the crop size, ...): fail instead of spinning forever.
MAX_CONSECUTIVE_MISSES = 10_000


class SampleDecoder:
    """Raw webdataset sample -> (image extension, 8-bit RGB image) under the data limits, or SkipSample.
    fast_jpeg: decode large JPEGs at a reduced DCT scale that keeps the shorter side >= resolution."""

    def __init__(self, *, resolution: int | None, max_pixels: int, small_images: Literal["upscale", "skip"],
                 fast_jpeg: bool = False):
        self.max_pixels = max_pixels
        self.min_side = resolution if small_images == "skip" else None
        self.draft_side = resolution if fast_jpeg else None

    def __call__(self, sample: dict) -> tuple[str, Image.Image]:
        ext, data = pick_image(sample)
        img = decode_image(data, max_pixels=self.max_pixels, min_side=self.min_side, draft_side=self.draft_side)
        return ext, img


def _decoder(cfg: DataConfig, *, train: bool) -> SampleDecoder:
    return SampleDecoder(resolution=cfg.resolution, max_pixels=cfg.max_pixels, small_images=cfg.small_images,
                         fast_jpeg=train and cfg.fast_jpeg)


def _batch(images: list[np.ndarray], keys: list[str], skipped: dict[str, int], resolution: int) -> dict:
    # np.stack, not torch.stack: see transforms.to_array
    image = np.stack(images) if images else np.empty((0, 3, resolution, resolution), np.float32)
    return {"image": torch.from_numpy(image), "key": keys, "skipped": skipped}


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class _Switch:
    """Forwards skip counts to `target`; replay points it at a scratch counter (those skips were already
    counted by the run that consumed the replayed batches)."""

    def __init__(self, target: SkipCounter):
        self.target = target

    def add(self, reason: str, where: str = "", detail: str = "") -> None:
        self.target.add(reason, where, detail)


def rank_sources(groups: Sequence[Sequence[Source]], *, rank: int, world_size: int) -> tuple[list[Source], list[int]]:
    """This rank's training sources and their (integer) draw weights, from groups of equal-size sources (see
    the module docstring): of each group, the first whole rounds of world_size sources are dealt out, source
    i to rank i % world_size at weight world_size, and the rest go to every rank at weight 1."""
    sources: list[Source] = []
    weights: list[int] = []
    for group in groups:
        dealt = len(group) - len(group) % world_size
        own, shared = list(group[rank:dealt:world_size]), list(group[dealt:])
        sources += own + shared
        weights += [world_size] * len(own) + [1] * len(shared)
    return sources, weights


class TrainStream(IterableDataset):
    """Infinite, resampled, resumable training batches (see the module docstring). Sources are drawn with
    replacement in proportion to `weights` (default: uniformly)."""

    def __init__(self, sources: Sequence[Source], *, decoder: SampleDecoder, batch_size: int, seed: int,
                 rank: int, start_step: int, resolution: int, random_crop: bool, hflip: bool,
                 shuffle_buffer: int, chunk_size: int, weights: Sequence[int] | None = None):
        if not sources:
            raise LatentaeError("training stream has no sources")
        if weights is not None and (len(weights) != len(sources) or min(weights) <= 0):
            raise ValueError(f"need one positive weight per source, got {len(weights)} for {len(sources)}")
        self.sources = list(sources)
        self.cum_weights = list(accumulate(weights or [1] * len(self.sources)))
        self.decoder = decoder
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.start_step = start_step
        self.resolution = resolution
        self.random_crop = random_crop
        self.hflip = hflip
        self.shuffle_buffer = shuffle_buffer
        self.chunk_batches = max(1, math.ceil(chunk_size / batch_size))

    def _raw(self, rng: random.Random, skipped: _Switch) -> Iterator[dict]:
        """Endless raw samples: sources drawn with replacement by weight, each begun at a random point."""
        empty = 0
        while True:
            (source,) = rng.choices(self.sources, cum_weights=self.cum_weights)
            start = rng.random()
            got = False
            for sample in iter_samples(source, skipped, start):
                got = True
                yield sample
            empty = 0 if got else empty + 1
            if empty >= MAX_CONSECUTIVE_MISSES:
                raise LatentaeError(f"{empty} training sources in a row gave no sample (last: {source.url}); "
                                    f"skipped so far: {skipped.target}")

    def _samples(self, rng: random.Random, skipped: _Switch) -> Iterator[tuple[str, Image.Image, int]]:
        """Decoded good samples of one chunk: (key, image, augmentation seed)."""
        raw = self._raw(rng, skipped)
        try:
            buffer = list(islice(raw, self.shuffle_buffer))
            misses = 0
            while True:
                i = rng.randrange(len(buffer))
                sample, buffer[i] = buffer[i], next(raw)
                aug_seed = rng.getrandbits(64)
                try:
                    _, img = self.decoder(sample)
                except SkipSample as e:
                    skipped.add(e.reason, f"{sample['__url__']}:{sample['__key__']}", e.detail)
                    misses += 1
                    if misses >= MAX_CONSECUTIVE_MISSES:
                        raise LatentaeError(f"{misses} training samples in a row were skipped (last: "
                                            f"{sample['__url__']}: {e}); skipped so far: {skipped.target}") from None
                    continue
                misses = 0
                yield sample["__key__"], img, aug_seed
        finally:
            raw.close()

    def batches(self, worker: int = 0, num_workers: int = 1) -> Iterator[dict]:
        """The batches DataLoader worker `worker` of `num_workers` yields: steps start_step + worker + n * W."""
        first = self.start_step + worker
        virtual, index = first % num_workers, first // num_workers
        skipped = SkipCounter()
        switch = _Switch(skipped)
        while True:
            chunk, offset = divmod(index, self.chunk_batches)
            rng = random.Random(f"latentae.train/{self.seed}/{self.rank}/{num_workers}/{virtual}/{chunk}")
            samples = self._samples(rng, switch)
            try:
                switch.target = SkipCounter()
                for _ in islice(samples, offset * self.batch_size):  # replay, decoded but not transformed
                    pass
                switch.target = skipped
                for _ in range(offset, self.chunk_batches):
                    items = [next(samples) for _ in range(self.batch_size)]
                    images = [prepare_array(img, self.resolution, random_crop=self.random_crop, hflip=self.hflip,
                                            rng=random.Random(aug_seed)) for _, img, aug_seed in items]
                    yield _batch(images, [key for key, _, _ in items], skipped.delta(), self.resolution)
            finally:
                samples.close()
            index = (chunk + 1) * self.chunk_batches

    def __iter__(self) -> Iterator[dict]:
        return self.batches(*_worker())


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
        return self.batches(*_worker())


class _Outcomes:
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

        reads = _Outcomes()
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
        return self.batches(*_worker())


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


class BatchLoader:
    """Iterates a stream through a torch DataLoader (`num_workers` decoding processes, batches in order)
    and adds each batch's skip counts to `self.skipped`. Empty batches (skip counts only) are not yielded.
    Not for accelerate's `prepare`: move batches to the device yourself."""

    def __init__(self, dataset: TrainStream | EvalStream, num_workers: int):
        self.dataset = dataset
        self.num_workers = num_workers
        self.skipped = SkipCounter()

    def __iter__(self) -> Iterator[dict]:
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers, in_order=True,
                            pin_memory=torch.cuda.is_available())
        for batch in loader:
            self.skipped.update(batch["skipped"])
            if batch["key"]:
                yield batch


def _check_rank(rank: int, world_size: int, batch_size: int) -> None:
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def train_loader(cfg: DataConfig, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start_step: int = 0) -> BatchLoader:
    """Infinite training batches of `cfg.train` for this rank, beginning at `start_step` (the batch for
    step s is the same whether the run started at 0 or resumed at s, given the same seed, world size,
    batch size and num_workers). Works for shards, folders and mixtures."""
    _check_rank(rank, world_size, batch_size)
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    if not cfg.train:
        raise LatentaeError("data.train is empty: set it to shards, a tar, a folder or a comma list of these")
    sources, weights = rank_sources(expand_source_groups(cfg.train), rank=rank, world_size=world_size)
    stream = TrainStream(sources, decoder=_decoder(cfg, train=True), batch_size=batch_size, seed=seed, rank=rank,
                         start_step=start_step, resolution=cfg.resolution, random_crop=cfg.random_crop,
                         hflip=cfg.hflip, shuffle_buffer=cfg.shuffle_buffer, chunk_size=cfg.chunk_size,
                         weights=weights)
    return BatchLoader(stream, cfg.num_workers)


def eval_loader(cfg: DataConfig, *, batch_size: int, rank: int = 0, world_size: int = 1,
                source: str | None = None, native_multiple: int | None = None) -> EvalLoader:
    """Every sample of `source` (default `cfg.val`) exactly once across all ranks and workers, center-cropped
    to cfg.resolution, or at native size when `native_multiple` is set (whole images center-cropped to a
    multiple of it: the model's downsampling factor), in batches of one image size. Each image carries its
    position in the global order (sources in order, each in stored order); `.first(n)` gives the first n
    images of that order whatever the number of ranks. Ranks with nothing to read yield nothing (they still
    must take part in any collective the caller runs afterwards)."""
    _check_rank(rank, world_size, batch_size)
    spec = source or cfg.val
    if not spec:
        raise LatentaeError("no evaluation data: set data.val or pass a source")
    resolution = None if native_multiple else cfg.resolution
    decoder = crop_decoder(resolution=resolution, multiple=native_multiple or 1, max_pixels=cfg.max_pixels,
                           small_images=cfg.small_images)
    return EvalLoader(expand_sources(spec), decoder=decoder, batch_size=batch_size, rank=rank, world_size=world_size,
                      resolution=resolution, multiple=native_multiple or 1, num_workers=cfg.num_workers)


def read_shard(url: str, *, resolution: int | None, max_pixels: int = DEFAULT_MAX_PIXELS,
               small_images: Literal["upscale", "skip"] = "upscale",
               skipped: SkipCounter | None = None) -> Iterator[dict]:
    """Decoded samples of one tar / URL / image file, in stored order, in this process:
    `{"key": str, "url": str, "image": float32 [3, R, R] in [-1, 1] (whole image when resolution is None),
    "extras": {ext: bytes} (the sample's other members: json, txt, ...)}`. Bad samples are skipped and
    counted in `skipped`."""
    skipped = skipped if skipped is not None else SkipCounter()
    decoder = SampleDecoder(resolution=resolution, max_pixels=max_pixels, small_images=small_images)
    for sample in iter_samples(source_for(url), skipped):
        try:
            ext, img = decoder(sample)
        except SkipSample as e:
            skipped.add(e.reason, f"{sample['__url__']}:{sample['__key__']}", e.detail)
            continue
        extras = {k: v for k, v in sample.items() if not k.startswith("__") and k != ext}
        yield {"key": sample["__key__"], "url": sample["__url__"], "image": prepare_image(img, resolution),
               "extras": extras}


def load_image(path: str, resolution: int | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """One image file -> float32 [3, R, R] in [-1, 1] by the evaluation protocol (center crop), or the whole
    image when resolution is None. A missing or undecodable file raises LatentaeError."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise LatentaeError(f"cannot read image {path}: {e}") from None
    try:
        img = decode_image(data, max_pixels=max_pixels)
    except SkipSample as e:
        raise LatentaeError(f"cannot use image {path}: {e}") from None
    return prepare_image(img, resolution)
