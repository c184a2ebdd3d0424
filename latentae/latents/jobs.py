"""Units of work for encoding: input shards (and chunks of loose image files), and reading their images.

Each tar / URL is one job named after its file (`data-00012.tar` -> `data-00012`). Loose image files (a
folder, single images) are grouped in listing order into chunks of `images_per_shard` named
`images-00000`, `images-00001`, ...: the same resume logic then applies to folders. Chunk boundaries
depend on the folder's sorted listing, so adding files to a folder between runs shifts them (start a new
--output, or --overwrite, after changing a folder).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from latentae.data.batching import SizeBatcher
from latentae.data.config import DEFAULT_MAX_PIXELS
from latentae.data.decode import IMAGE_EXTS
from latentae.data.eval_stream import crop_decoder, plan_chunks
from latentae.data.skips import SkipCounter, SkipSample
from latentae.data.sources import Source, iter_samples
from latentae.data.transforms import prepare_array
from latentae.errors import LatentaeError
from latentae.latents.format import MANIFEST, META, SOURCE_META, shard_name


@dataclass(frozen=True)
class Job:
    name: str  # output shard is <name>.tar
    sources: tuple[Source, ...]


def plan_jobs(sources: Sequence[Source], *, images_per_shard: int) -> list[Job]:
    """Sources in order -> jobs; two inputs that would write the same output name raise LatentaeError."""
    jobs: list[Job] = []
    runs = 0  # runs of image files so far
    for chunk in plan_chunks(sources, images_per_shard):
        first = sources[chunk[0]]
        if first.is_image:
            name, runs = f"images-{runs:05d}", runs + 1
        else:
            name = shard_name(first.url)
        jobs.append(Job(name, tuple(sources[i] for i in chunk)))
    seen: dict[str, Job] = {}
    for job in jobs:
        if job.name + ".json" == MANIFEST:
            raise LatentaeError(f"input {job.sources[0].url}: its shard record would overwrite {MANIFEST}; "
                                "rename the file")
        if job.name in seen:
            raise LatentaeError(f"inputs {seen[job.name].sources[0].url} and {job.sources[0].url} would both be "
                                f"written to {job.name}.tar: rename one, or encode them into separate --output "
                                "folders")
        seen[job.name] = job
    return jobs


class ShardSkips(SkipCounter):
    """A SkipCounter that also keeps the messages of read errors (a damaged shard gets reported by name)."""

    def __init__(self):
        super().__init__()
        self.read_errors: list[str] = []

    def add(self, reason: str, where: str = "", detail: str = "") -> None:
        super().add(reason, where, detail)
        if reason == "read_error":
            self.read_errors.append(f"{where}: {detail}" if detail else where)


def _extras(sample: dict, image_ext: str) -> dict[str, bytes]:
    """Members carried over to the output sample: captions, labels, metadata; never other images."""
    out = {}
    for ext, data in sample.items():
        if ext.startswith("__") or ext == image_ext or ext.split(".")[-1] in IMAGE_EXTS:
            continue
        out[SOURCE_META if ext == META else ext] = data
    return out


def read_job(job: Job, *, resolution: int | None, multiple: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS,
             small_images: Literal["upscale", "skip"] = "upscale", max_images: int | None = None,
             skipped: SkipCounter) -> Iterator[dict]:
    """Decoded samples of a job in stored order (the first `max_images` good ones if set), center-cropped to
    `resolution` (the evaluation protocol), or at native size cropped to a multiple of `multiple` when
    resolution is None (images smaller than that are skipped as too_small): `{"key", "url", "index": the
    sample's place among the job's good samples, "image": float32 numpy [3, H, W] in [-1, 1], "extras": {ext:
    bytes}}`. Bad samples are counted in `skipped`. numpy, not torch: this runs in DataLoader workers (see
    data/transforms.py)."""
    decoder = crop_decoder(resolution=resolution, multiple=multiple, max_pixels=max_pixels, small_images=small_images)
    index = 0
    for source in job.sources:
        for sample in iter_samples(source, skipped):
            try:
                ext, img = decoder(sample)
            except SkipSample as e:
                skipped.add(e.reason, f"{sample['__url__']}:{sample['__key__']}", e.detail)
                continue
            yield {"key": sample["__key__"], "url": sample["__url__"], "index": index,
                   "image": prepare_array(img, resolution, multiple=multiple), "extras": _extras(sample, ext)}
            index += 1
            if index == max_images:
                return


class JobStream(IterableDataset):
    """Worker w of W reads jobs[w::W] in order; every job ends with a batch marked `last` that carries its
    skip counts (it may hold no images), so the main process knows when a shard is complete. A batch holds
    images of one size (see data/batching.py): at native size a job's images come out grouped by size, in
    stored order within a size."""

    def __init__(self, jobs: Sequence[Job], *, batch_size: int, resolution: int | None, multiple: int,
                 max_pixels: int, small_images: str, max_images: int | None):
        self.jobs = list(jobs)
        self.batch_size = batch_size
        self.read = dict(resolution=resolution, multiple=multiple, max_pixels=max_pixels, small_images=small_images,
                         max_images=max_images)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for index in range(worker, len(self.jobs), workers):
            skipped = ShardSkips()
            batcher: SizeBatcher[dict] = SizeBatcher(self.batch_size)
            for item in read_job(self.jobs[index], skipped=skipped, **self.read):
                for items in batcher.add(item, item["image"].shape):
                    yield self._batch(index, items)
            rest = batcher.flush()
            for items in rest[:-1]:
                yield self._batch(index, items)
            yield self._batch(index, rest[-1] if rest else [], skipped)

    def _batch(self, index: int, items: list[dict], skipped: ShardSkips | None = None) -> dict:
        return {"job": index, "image": _stack([i.pop("image") for i in items]), "items": items,
                "last": skipped is not None, "skipped": skipped.as_dict() if skipped else {},
                "read_errors": skipped.read_errors if skipped else []}


def job_loader(jobs: Sequence[Job], *, batch_size: int, resolution: int | None, multiple: int = 1,
               max_pixels: int = DEFAULT_MAX_PIXELS, small_images: str = "upscale", max_images: int | None = None,
               workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """Batches of `jobs` (see JobStream and read_job), decoded in `workers` processes (0: in this one), in
    order."""
    stream = JobStream(jobs, batch_size=batch_size, resolution=resolution, multiple=multiple, max_pixels=max_pixels,
                       small_images=small_images, max_images=max_images)
    return DataLoader(stream, batch_size=None, num_workers=max(0, min(workers, len(stream.jobs))), in_order=True,
                      pin_memory=pin_memory)


def _stack(images: list[np.ndarray]) -> np.ndarray:
    return np.stack(images) if images else np.empty((0, 3, 0, 0), np.float32)
