"""`latentae encode`: a dataset -> latent (or token) shards, exactly once, resumable, split across ranks.

Every rank takes the static slice jobs[rank::world_size] (see jobs.py for what a job is) and reads each
job's samples in order in DataLoader workers (decode + crop there, encoding in the main process). By default
each image is encoded at its own size, center-cropped to a multiple of the model's downsampling factor, in
batches of one size (a shard then holds its samples grouped by size); `resolution` resizes and center-crops
every image to R x R instead. The model's `sample_size` (a tiling hint) plays no part.
A job's samples are written to `<output>/<name>.tar.tmp`, which is renamed to `<name>.tar` once complete,
after its record `<name>.json` (written / skipped counts and the settings) is in place; a rerun skips jobs
whose tar and record exist, so killing a run loses at most the shards in progress. When every rank is
done, rank 0 writes `manifest.json` from the records (so counts include shards of earlier, resumed runs).
See format.py for the sample layout.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from latentae.data.config import DEFAULT_MAX_PIXELS
from latentae.data.skips import SkipCounter
from latentae.data.sources import expand_sources, tar_index
from latentae.data.transforms import crop_description
from latentae.errors import LatentaeError
from latentae.latents.format import FORMAT, LATENTS, MANIFEST, META, TOKENS, npy_bytes, write_json
from latentae.latents.jobs import Job, job_loader, plan_jobs
from latentae.models.bottleneck import at_channels
from latentae.options import NATIVE, STORAGE_DTYPES, STORE_CHOICES
from latentae.runtime import Runtime



def _key_seed(seed: int, key: str) -> int:
    """Per-sample noise seed: a sample's stored draw does not depend on batching, workers or ranks."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{key}".encode()).digest()[:8], "little") & (2**63 - 1)


class LatentEncoder:
    """Image batches -> one array per sample, as stored: KL latents (see `store`) or VQ token ids."""

    def __init__(self, runtime: Runtime, *, store: Literal["both", "mean", "sample"] = "both", seed: int = 0,
                 storage_dtype: str = "float32", channels: int | None = None):
        if store not in STORE_CHOICES:
            raise LatentaeError(f"store must be one of {STORE_CHOICES}, got {store!r}")
        if storage_dtype not in STORAGE_DTYPES:
            raise LatentaeError(f"storage dtype must be one of {STORAGE_DTYPES}, got {storage_dtype!r}")
        self.runtime = runtime
        self.tokens = runtime.model.bottleneck.tokenizes
        if runtime.model.bottleneck.deterministic and store != "mean":
            raise LatentaeError(f"a {type(runtime.model).__name__} is deterministic (no posterior): it stores its "
                                "latents (store 'mean'), not posterior samples or logvar")
        self.member = TOKENS if self.tokens else LATENTS
        self.store = store
        self.seed = seed
        self.dtype = np.int32 if self.tokens else np.dtype(storage_dtype)
        self.channels = channels  # the leading channels of a structured latent the model encodes with (recorded)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray | torch.Tensor, keys: Sequence[str]) -> list[np.ndarray]:
        x = self.runtime.inputs(images)
        with self.runtime.context():
            if self.tokens:
                out = self.runtime.model.tokenize(x).cpu()
            elif self.store == "mean":  # also what a deterministic model has
                mean = self.runtime.model.encode(x).float().cpu()
            else:
                posterior = self.runtime.model.posterior(x)
                mean, logvar = posterior.mean.float().cpu(), posterior.logvar.float().cpu()
        if not self.tokens:
            if self.store == "both":
                out = torch.cat([mean, logvar], dim=1)
            elif self.store == "mean":
                out = mean
            else:
                eps = torch.stack([torch.randn(mean.shape[1:], generator=torch.Generator().manual_seed(
                    _key_seed(self.seed, k))) for k in keys])
                out = mean + torch.exp(0.5 * logvar) * eps
        return list(out.numpy().astype(self.dtype, copy=False))


@dataclass
class EncodeReport:
    jobs: list[Job]  # every job of the dataset (all ranks), in order
    settings: dict  # what decides the content (see `settings`); recorded with every shard
    written: int = 0  # samples encoded by this call
    skipped: SkipCounter = field(default_factory=SkipCounter)  # samples this call dropped, by reason
    shards_written: list[str] = field(default_factory=list)
    shards_done_before: list[str] = field(default_factory=list)  # finished by an earlier run: left as they are
    read_errors: dict[str, list[str]] = field(default_factory=dict)  # damaged input shards: messages
    seconds: float = 0.0


def weights_fingerprint(model) -> str:
    """sha256 (16 hex digits) of the parameters that produce latents: the encoder side, not the decoder."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if not name.removeprefix("vae.").startswith(("decoder.", "post_quant_conv.")):  # vae.: wrapped families
            h.update(f"{name}{list(p.shape)}".encode())
            h.update(p.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy())  # raw bytes, any layout
    return h.hexdigest()[:16]


def settings(model, *, model_source: str, store: str, storage_dtype: str, precision: str, resolution: int | None,
             max_pixels: int, small_images: str, seed: int, channels: int | None = None) -> dict:
    """What decides a shard's content (a rerun with different settings must not mix its shards in), plus
    where the model came from (`model`, informative only: the weights fingerprint identifies it).
    `resolution` None: native size (recorded as "native", with the crop in words)."""
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    tokens = model.bottleneck.tokenizes
    return {"model": model_source, "model_class": type(model).__name__, "weights": weights_fingerprint(model),
            "config": config, "content": TOKENS if tokens else f"{LATENTS}:{store}",
            "dtype": "int32" if tokens else storage_dtype, "precision": precision,
            "resolution": NATIVE if resolution is None else resolution,
            "crop": crop_description(resolution, model.crop_multiple), "max_pixels": max_pixels,
            "small_images": small_images,
            **({"seed": seed} if store == "sample" and not tokens else {}),
            **({"channels": channels} if channels is not None else {})}


def _normalized(obj):
    return json.loads(json.dumps(obj, default=str))  # tuples vs lists: compare what was written


# Config keys that do not change latents: the normalization constants `latentae stats --write` sets later,
# decode-side precision, and sample_size (diffusers' tiling hint; the data resolution is `resolution`).
_NOT_CONTENT = ("scaling_factor", "shift_factor", "latents_mean", "latents_std", "force_upcast", "sample_size")


def _comparable(settings: dict) -> dict:
    """Settings minus what does not decide content: the model's path (the weights fingerprint identifies it)
    and the config keys in _NOT_CONTENT."""
    config = {k: v for k, v in (settings.get("config") or {}).items() if k not in _NOT_CONTENT}
    return {**{k: v for k, v in settings.items() if k != "model"}, "config": config}


def _finished(output: Path, job: Job, expected: dict) -> bool:
    """Whether an earlier run completed `job` with the same settings (`expected`, normalized)."""
    record_path, tar = output / f"{job.name}.json", output / f"{job.name}.tar"
    if not (tar.is_file() and record_path.is_file()):
        return False
    old = _comparable(json.loads(record_path.read_text()).get("settings") or {})
    new = _comparable(expected)
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        raise LatentaeError(f"{tar} was written with different settings ({', '.join(diff)}); use a new --output "
                            "folder, or --overwrite to re-encode everything")
    return True


def encode_dataset(model, data: str | Sequence[str], output: str | Path, *, batch_size: int = 16,
                   resolution: int | None = None, store: Literal["both", "mean", "sample"] = "both",
                   storage_dtype: str = "float32", precision: str = "fp32", channels_last: bool = False,
                   device: str | torch.device | None = None, workers: int = 2, images_per_shard: int = 1000,
                   seed: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS,
                   small_images: Literal["upscale", "skip"] = "upscale", rank: int = 0, world_size: int = 1,
                   overwrite: bool = False, model_source: str = "", progress: bool = False,
                   channels: int | None = None) -> EncodeReport:
    """Encode this rank's share of `data` into `output` (see the module docstring): at native size (resolution
    None, the default), or resized (shorter side) and center-cropped to `resolution`; with the first `channels`
    latent channels of a structured latent (None: the whole latent). Call `write_manifest` on rank 0 once every
    rank has returned."""
    if channels is not None:
        model = at_channels(model, channels, model_source or type(model).__name__)
    start = time.perf_counter()
    if batch_size < 1 or images_per_shard < 1:
        raise LatentaeError("batch_size and images_per_shard must be >= 1")
    jobs = plan_jobs(expand_sources(data), images_per_shard=images_per_shard)
    output = Path(output)
    for job in jobs:  # encoding a folder of shards into itself would replace them
        if any(os.path.abspath(s.url) == os.path.abspath(output / f"{job.name}.tar") for s in job.sources):
            raise LatentaeError(f"--output {output} would overwrite the input {job.sources[0].url}: "
                                "write the latents to another folder")
    output.mkdir(parents=True, exist_ok=True)
    expected = _normalized(settings(model, model_source=model_source, store=store, storage_dtype=storage_dtype,
                                    precision=precision, resolution=resolution, max_pixels=max_pixels,
                                    small_images=small_images, seed=seed, channels=channels))
    encoder = LatentEncoder(Runtime(model, device=device, precision=precision, channels_last=channels_last),
                            store=store, seed=seed, storage_dtype=storage_dtype, channels=channels)
    report = EncodeReport(jobs=jobs, settings=expected)
    mine = jobs[rank::world_size]
    todo = [job for job in mine if overwrite or not _finished(output, job, expected)]
    report.shards_done_before = [job.name for job in mine if job not in todo]
    if todo:
        _encode_jobs(encoder, todo, output, report, batch_size=batch_size, resolution=resolution,
                     max_pixels=max_pixels, small_images=small_images, workers=workers,
                     progress=progress and rank == 0)
    report.seconds = time.perf_counter() - start
    return report


def _encode_jobs(encoder: LatentEncoder, jobs: list[Job], output: Path, report: EncodeReport,
                 *, batch_size: int, resolution: int | None, max_pixels: int, small_images: str, workers: int,
                 progress: bool) -> None:
    from tqdm import tqdm

    loader = job_loader(jobs, batch_size=batch_size, resolution=resolution,
                        multiple=encoder.runtime.model.crop_multiple, max_pixels=max_pixels,
                        small_images=small_images, workers=workers, pin_memory=encoder.runtime.device.type == "cuda")
    open_shards: dict[int, _OpenShard] = {}  # job index -> shard being written
    bar = tqdm(total=_count_samples(jobs) if progress else None, unit="img", disable=not progress,
               dynamic_ncols=True, smoothing=0.1)
    try:
        for batch in loader:
            job = jobs[batch["job"]]
            if batch["job"] not in open_shards:
                open_shards[batch["job"]] = _OpenShard(output, job)
            shard = open_shards[batch["job"]]
            if batch["items"]:
                arrays = encoder(batch["image"], [i["key"] for i in batch["items"]])
                for item, array in zip(batch["items"], arrays):
                    shard.write(_sample(item, array, encoder, job.name))
                bar.update(len(arrays))
            if batch["last"]:
                open_shards.pop(batch["job"]).finish(batch, report)
                bar.set_postfix(shards=len(report.shards_written), refresh=False)
    finally:
        bar.close()
        for shard in open_shards.values():  # interrupted: drop partial shards
            shard.abandon()


def _count_samples(jobs: list[Job]) -> int | None:
    """Samples to read (before skips), when every source is a local file; None for streamed sources."""
    total = 0
    for source in (s for job in jobs for s in job.sources):
        if source.is_image:
            total += 1
        elif source.url.lower().endswith(".tar") and os.path.isfile(source.url):
            total += len(tar_index(source.url)[0])  # a header scan: no member data is read
        else:
            return None
    return total


class _OpenShard:
    """`<name>.tar.tmp` being written; `finish` writes the record and renames it to `<name>.tar`."""

    def __init__(self, output: Path, job: Job):
        from webdataset import TarWriter

        self.output, self.job = output, job
        self.tmp = output / f"{job.name}.tar.tmp"  # a leftover from a killed run is simply overwritten
        self.file = open(self.tmp, "wb")
        self.writer = TarWriter(self.file, encoder=False)
        self.count = 0

    def write(self, sample: dict) -> None:
        self.writer.write(sample)
        self.count += 1

    def finish(self, batch: dict, report: EncodeReport) -> None:
        self.writer.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        write_json(self.output / f"{self.job.name}.json", {
            "shard": self.job.name, "sources": [s.url for s in self.job.sources], "written": self.count,
            "skipped": batch["skipped"], "read_errors": batch["read_errors"], "settings": report.settings})
        os.replace(self.tmp, self.output / f"{self.job.name}.tar")  # the tar appears last: it marks completion
        report.written += self.count
        report.skipped.update(batch["skipped"])
        report.shards_written.append(self.job.name)
        if batch["read_errors"]:
            report.read_errors[self.job.name] = batch["read_errors"]

    def abandon(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def _sample(item: dict, array: np.ndarray, encoder: LatentEncoder, shard: str) -> dict:
    meta = {"key": item["key"], "url": item["url"], "shard": shard}
    if not encoder.tokens:
        meta["store"] = encoder.store  # decode / stats read mean + logvar, means or samples accordingly
        if encoder.channels is not None:
            meta["channels"] = encoder.channels  # ... and know which leading channels of a structured latent
    return {"__key__": item["key"], encoder.member: npy_bytes(array), META: json.dumps(meta).encode(),
            **item["extras"]}


def write_manifest(output: str | Path, report: EncodeReport, data: str | Sequence[str]) -> dict:
    """Gather every shard record into `output/manifest.json` (rank 0, once all ranks have returned): totals
    of written samples and skips by reason, per-shard counts, the model's config and the settings."""
    output = Path(output)
    shards, missing = {}, []
    skipped = SkipCounter()
    for job in report.jobs:
        path = output / f"{job.name}.json"
        if not (path.is_file() and (output / f"{job.name}.tar").is_file()):
            missing.append(job.name)
            continue
        record = json.loads(path.read_text())
        skipped.update(record["skipped"])
        shards[job.name] = {k: record[k] for k in ("written", "skipped", "read_errors", "sources")}
    if missing:
        raise LatentaeError(f"{len(missing)} shard(s) not finished ({', '.join(missing[:5])}"
                            f"{', ...' if len(missing) > 5 else ''}): did another rank fail? Rerun to complete them")
    manifest = {"format": FORMAT, "data": data if isinstance(data, str) else list(data), **report.settings,
                "written": sum(s["written"] for s in shards.values()), "skipped": skipped.as_dict(),
                "shards": shards}
    write_json(output / MANIFEST, manifest)
    return manifest
