"""The infinite, resumable training stream.

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

import math
import random
from itertools import accumulate, islice
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from latentae.data.config import DataConfig
from latentae.data.reading import SampleDecoder, check_rank, worker_slot
from latentae.data.skips import SkipCounter, SkipSample
from latentae.data.sources import Source, expand_source_groups, iter_samples
from latentae.data.transforms import prepare_array
from latentae.errors import LatentaeError

# A training stream that drops this many samples (or opens this many empty sources) in a row is
# misconfigured (wrong path, every image below the crop size, ...): fail instead of spinning forever.
MAX_CONSECUTIVE_MISSES = 10_000


def _decoder(cfg: DataConfig, *, train: bool) -> SampleDecoder:
    return SampleDecoder(resolution=cfg.resolution, max_pixels=cfg.max_pixels, small_images=cfg.small_images,
                         fast_jpeg=train and cfg.fast_jpeg)


def _batch(images: list[np.ndarray], keys: list[str], skipped: dict[str, int], resolution: int) -> dict:
    # np.stack, not torch.stack: see transforms.to_array
    image = np.stack(images) if images else np.empty((0, 3, resolution, resolution), np.float32)
    return {"image": torch.from_numpy(image), "key": keys, "skipped": skipped}


class _RedirectableSkips:
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

    def _raw(self, rng: random.Random, skipped: _RedirectableSkips) -> Iterator[dict]:
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

    def _samples(self, rng: random.Random, skipped: _RedirectableSkips) -> Iterator[tuple[str, Image.Image, int]]:
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
        switch = _RedirectableSkips(skipped)
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
        return self.batches(*worker_slot())


class BatchLoader:
    """Iterates a stream through a torch DataLoader (`num_workers` decoding processes, batches in order)
    and adds each batch's skip counts to `self.skipped`. Empty batches (skip counts only) are not yielded.
    Not for accelerate's `prepare`: move batches to the device yourself."""

    def __init__(self, dataset: TrainStream, num_workers: int):
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


def train_loader(cfg: DataConfig, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start_step: int = 0) -> BatchLoader:
    """Infinite training batches of `cfg.train` for this rank, beginning at `start_step` (the batch for
    step s is the same whether the run started at 0 or resumed at s, given the same seed, world size,
    batch size and num_workers). Works for shards, folders and mixtures."""
    check_rank(rank, world_size, batch_size)
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
