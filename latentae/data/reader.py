"""Readers: the infinite, resumable training stream; the exactly-once evaluation stream; one shard in order.

Batches are dicts: `{"image": float32 [B, 3, R, R] in [-1, 1], "key": list[str], "skipped": {reason: n}}`,
where `skipped` holds the samples dropped (by reason) since the producing worker's previous batch; the
`BatchLoader` sums them into `loader.skipped`. Decoding and transforms run in the DataLoader workers.

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

Ranks read disjoint slices of the sources when there are at least as many sources as ranks (each node then
needs only its share of the shards); otherwise every rank resamples all of them with its own seed.
"""
from __future__ import annotations

import math
import random
from itertools import islice
from typing import Iterator, Literal, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from latentae.data.config import DEFAULT_MAX_PIXELS, DataConfig
from latentae.data.decode import decode_image, pick_image
from latentae.data.skips import SkipCounter, SkipSample
from latentae.data.sources import Source, expand_sources, iter_samples, source_for
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


class TrainStream(IterableDataset):
    """Infinite, resampled, resumable training batches (see the module docstring)."""

    def __init__(self, sources: Sequence[Source], *, decoder: SampleDecoder, batch_size: int, seed: int,
                 rank: int, start_step: int, resolution: int, random_crop: bool, hflip: bool,
                 shuffle_buffer: int, chunk_size: int):
        if not sources:
            raise LatentaeError("training stream has no sources")
        self.sources = list(sources)
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
        """Endless raw samples: sources drawn with replacement, each begun at a random point."""
        empty = 0
        while True:
            source = self.sources[rng.randrange(len(self.sources))]
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


class EvalStream(IterableDataset):
    """Every sample exactly once across ranks and workers: rank r, worker w of W reads the static slice
    sources[r + world_size * w :: world_size * W] in order; the last batch may be partial. A worker whose
    slice is empty yields nothing; one that ends on skipped samples yields an empty batch carrying their
    counts (BatchLoader drops it after counting)."""

    def __init__(self, sources: Sequence[Source], *, decoder: SampleDecoder, batch_size: int, rank: int,
                 world_size: int, resolution: int):
        self.sources = list(sources)
        self.decoder = decoder
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.resolution = resolution

    def batches(self, worker: int = 0, num_workers: int = 1) -> Iterator[dict]:
        mine = self.sources[self.rank + self.world_size * worker:: self.world_size * num_workers]
        skipped = SkipCounter()
        images: list[np.ndarray] = []
        keys: list[str] = []
        for source in mine:
            for sample in iter_samples(source, skipped):
                try:
                    _, img = self.decoder(sample)
                except SkipSample as e:
                    skipped.add(e.reason, f"{sample['__url__']}:{sample['__key__']}", e.detail)
                    continue
                images.append(prepare_array(img, self.resolution))
                keys.append(sample["__key__"])
                if len(images) == self.batch_size:
                    yield _batch(images, keys, skipped.delta(), self.resolution)
                    images, keys = [], []
        rest = skipped.delta()
        if images or rest:
            yield _batch(images, keys, rest, self.resolution)

    def __iter__(self) -> Iterator[dict]:
        return self.batches(*_worker())


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
    sources = expand_sources(cfg.train)
    if len(sources) >= world_size:
        sources = sources[rank::world_size]
    stream = TrainStream(sources, decoder=_decoder(cfg, train=True), batch_size=batch_size, seed=seed, rank=rank,
                         start_step=start_step, resolution=cfg.resolution, random_crop=cfg.random_crop,
                         hflip=cfg.hflip, shuffle_buffer=cfg.shuffle_buffer, chunk_size=cfg.chunk_size)
    return BatchLoader(stream, cfg.num_workers)


def eval_loader(cfg: DataConfig, *, batch_size: int, rank: int = 0, world_size: int = 1,
                source: str | None = None) -> BatchLoader:
    """Every sample of `source` (default `cfg.val`) exactly once across all ranks and workers, center-cropped
    to cfg.resolution, in a deterministic order. Ranks with nothing to read yield nothing (they still must
    take part in any collective the caller runs afterwards)."""
    _check_rank(rank, world_size, batch_size)
    spec = source or cfg.val
    if not spec:
        raise LatentaeError("no evaluation data: set data.val or pass a source")
    sources = expand_sources(spec)
    # The same worker count on every rank (it depends only on global sizes), so the slices partition.
    workers = min(cfg.num_workers, math.ceil(len(sources) / world_size))
    stream = EvalStream(sources, decoder=_decoder(cfg, train=False), batch_size=batch_size, rank=rank,
                        world_size=world_size, resolution=cfg.resolution)
    return BatchLoader(stream, workers)


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
