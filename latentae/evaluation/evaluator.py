"""`evaluate(model, batches)`: reconstruction metrics of a model over an image set, single- or multi-process.

The same function serves `latentae eval` and the trainer's periodic validation. Every rank reconstructs its own
slice of the data (what `latentae.data.eval_loader(..., rank=, world_size=)` gives it) and keeps per-image values
and summable statistics; one gather at the end makes every rank hold the result for the whole set, per-image
values in the global order of the data (batches' `position`), whatever the number of processes. `max_images`
takes the first N images of that order (`EvalLoader.first`). KL models reconstruct from the posterior mean
(deterministic); tokenizers through their quantizer. Batches may hold images of any size, one size per batch.

    from latentae.evaluation import evaluate
    result = evaluate(model, eval_loader(cfg, batch_size=16, rank=r, world_size=w, source="val/"),
                      accelerator=accelerator, metrics=("psnr", "ssim", "lpips", "rfid"))
    result.metrics["psnr"], result.unavailable, result.n_images, result.skipped
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

from latentae.data.skips import REASONS
from latentae.distributed import all_reduce_sum, world_size
from latentae.errors import LatentaeError, MissingWeightsError, ModelFormatError
from latentae.evaluation import bottleneck as bottleneck_mod
from latentae.evaluation.cmmd import CMMDMetric
from latentae.evaluation.fd_dinov2 import DINOv2Features
from latentae.evaluation.gather import any_rank, gather_cat, gather_objects
from latentae.evaluation.metrics import (IMAGE_METRICS, PSNR_DESCRIPTION, SSIM_DESCRIPTION, FIDMetric, LPIPSMetric,
                                         psnr_per_image, ssim_per_image, to_uint8)
from latentae.evaluation.progress import Progress
from latentae.evaluation.reference import (FIDReference, RealFeatures, check_fingerprint, extractor_identity,
                                           keys_fingerprint)
from latentae.evaluation.resume import Checkpoint, module_sha256, restore, snapshot
from latentae.models.bottleneck import Bottleneck
from latentae.models.tiling import (TILE_ABOVE_PIXELS, describe_tiling, evaluation_forward, tiled_forward,
                                    use_tiling)
from latentae.options import DEFAULT_METRICS, DEFAULT_TILING
from latentae.runtime import AUTOCAST_DTYPES, autocast



@dataclass
class EvalResult:
    """What `evaluate` returns; identical on every rank except `examples` (the main process's first images)."""

    n_images: int  # images evaluated, over all ranks
    skipped: dict[str, int]  # samples the data readers dropped, by reason (latentae.data.REASONS), over all ranks
    metrics: dict[str, Any]  # psnr, ssim, lpips, rfid (those requested and available); bottleneck statistics
    unavailable: dict[str, str] = field(default_factory=dict)  # requested metric -> why it was not computed
    image_keys: list[str] = field(default_factory=list)  # sample keys, in the order of the per-image values
    image_classes: list[str] = field(default_factory=list)  # their classes, when the data has labels (else empty)
    per_image: dict[str, list[float]] = field(default_factory=dict)  # psnr / ssim / lpips per image
    protocol: dict[str, Any] = field(default_factory=dict)  # how each metric was computed, weight files used
    examples: dict[str, Tensor] = field(default_factory=dict)  # "input" / "reconstruction": uint8 [N, 3, H, W]
    # (the main process's first evaluated images of the first one's size)
    fid_reference: FIDReference | None = None  # the real images' FID statistics (latentae.evaluation.reference)

    @property
    def per_image_psnr(self) -> list[float]:
        return self.per_image.get("psnr", [])

    def __getitem__(self, key: str):
        return getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: everything but the per-image values and the example images."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("image_keys", "image_classes", "per_image", "examples", "fid_reference")}


def check_metrics(metrics: Sequence[str]) -> list[str]:
    """The requested metric names without repeats; unknown names raise LatentaeError."""
    unknown = [m for m in metrics if m not in IMAGE_METRICS]
    if unknown:
        raise LatentaeError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(IMAGE_METRICS)}")
    return list(dict.fromkeys(metrics))


COMPACT_EVERY = 256  # per-image values are joined into one tensor every this many batches
CHUNK_IMAGES = 1000  # image files per resumable chunk: a minute or more of work even for the tiny models on a GPU

# Distances between two sets of a frozen network's features, both sides measured per model (no cached reference):
# metric -> its name in messages. Their meters take update(real, fake), then a collective compute().
BOTH_SIDES = {"fd_dinov2": "FD-DINOv2", "cmmd": "CMMD"}


def _build_meters(metrics: Sequence[str], *, lpips_net: str, lpips_trunk, fid_feature, fid_weights, cmmd_model,
                  device: torch.device) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """LPIPS / FID / BOTH_SIDES modules for the requested metrics; those whose weights are missing (on any rank)
    go to `unavailable` with the reason."""
    meters, unavailable = {}, {}
    builders = {"lpips": lambda: LPIPSMetric(lpips_net, lpips_trunk),
                "rfid": lambda: FIDMetric(fid_feature, fid_weights), "fd_dinov2": lambda: FIDMetric(DINOv2Features()),
                "cmmd": lambda: CMMDMetric(cmmd_model)}
    for name in (m for m in metrics if m in builders):
        try:
            meters[name] = builders[name]().to(device).eval()
        except (MissingWeightsError, ModelFormatError) as e:
            unavailable[name] = str(e)
        except ImportError as e:  # torch-fidelity / pytorch-fid / clean-fid / transformers: the features' library
            unavailable[name] = f"{type(e).__name__}: {e}"
    names = [m for m in metrics if m in builders]
    missing_somewhere = any_rank([n in unavailable for n in names], device)
    for name, missing in zip(names, missing_somewhere):
        if missing and name not in unavailable:
            unavailable[name] = "its weight files are missing on another process (see that process's report)"
            meters.pop(name, None)
    return meters, unavailable


def _local_cap(max_images: int | None, rank: int, ranks: int) -> int | None:
    """How many of the first `max_images` images rank `rank` evaluates (image j goes to rank j % ranks)."""
    if max_images is None:
        return None
    return max_images // ranks + (1 if rank < max_images % ranks else 0)


def _capped(batches: Iterable[dict], max_images: int | None, ranks: int) -> tuple[Iterable[dict], int | None]:
    """(batches, cap): an eval loader's first `max_images` images of the global order (split over ranks by the
    loader itself, cap None), or a plain iterable with the number of images to take from it."""
    if max_images is None or hasattr(batches, "first"):
        return (batches if max_images is None else batches.first(max_images)), None
    if ranks > 1:
        raise LatentaeError("max_images under several processes needs batches from latentae.data.eval_loader: "
                            "it defines one order of the images for all processes")
    return batches, max_images


def _global_order(positions: list) -> list[int]:
    """Indices that sort the gathered images by their position in the data (sources, then stored order)."""
    return sorted(range(len(positions)), key=lambda i: positions[i])


def _skip_counts(batches) -> dict[str, int]:
    """The data reader's skip counts so far (EvalLoader.skipped; nothing for a plain iterable)."""
    counter = getattr(batches, "skipped", None)
    return counter.as_dict() if counter is not None else {}


def _total_skips(before: dict[str, int], after: dict[str, int], device: torch.device) -> dict[str, int]:
    """Samples skipped during this evaluation (a reused loader keeps counting), summed over ranks."""
    local = [after.get(r, 0) - before.get(r, 0) for r in REASONS]
    total = all_reduce_sum(torch.tensor(local, dtype=torch.long, device=device))
    return {r: int(n) for r, n in zip(REASONS, total.tolist()) if n}


def _rank() -> int:
    return torch.distributed.get_rank() if world_size() > 1 else 0


def _reconstruct(model: nn.Module, x: Tensor, precision: str, tiled: bool):
    """The model's AutoencoderOutput for fp32 images `x`; KL models decode the posterior mean."""
    with autocast(x.device.type, precision):
        x = x.to(model.dtype)
        if tiled:
            return tiled_forward(model, x)
        return evaluation_forward(model, x)


class _ModelRun:
    """One model's meters, bottleneck statistics, per-image values and examples during an evaluation."""

    def __init__(self, model, *, metrics, lpips_net, lpips_trunk, fid_feature, fid_weights, cmmd_model,
                 active_threshold, device, tiling):
        self.model = model
        self.tiling, self.tiled = tiling, 0  # --tiling; images reconstructed in tiles
        self.meters, self.unavailable = _build_meters(metrics, lpips_net=lpips_net, lpips_trunk=lpips_trunk,
                                                      fid_feature=fid_feature, fid_weights=fid_weights,
                                                      cmmd_model=cmmd_model, device=device)
        self.stats = bottleneck_mod.bottleneck_stats(model, device, active_threshold=active_threshold)
        per_image_fns = {"psnr": psnr_per_image, "ssim": ssim_per_image, "lpips": self.meters.get("lpips")}
        self.per_image_fns = {k: fn for k, fn in per_image_fns.items() if k in metrics and fn is not None}
        self.values: dict[str, list[Tensor]] = {k: [] for k in self.per_image_fns}
        self.kept: dict[str, list[Tensor]] = {"input": [], "reconstruction": []}

    def snapshot(self) -> dict:
        """What it has accumulated (latentae.evaluation.resume)."""
        return {"values": self.values, "kept": self.kept, "tiled": self.tiled, "stats": snapshot(self.stats),
                "meters": {name: snapshot(meter) for name, meter in self.meters.items()}}

    def restore(self, state: dict) -> None:
        self.values, self.kept, self.tiled = state["values"], state["kept"], state["tiled"]
        restore(self.stats, state["stats"])
        for name, meter in self.meters.items():
            restore(meter, state["meters"][name])

    def identity(self) -> str:
        """The model's class, weights and settings, for a resume file's fingerprint."""
        return f"{type(self.model).__name__} sha256 {module_sha256(self.model)}, tiling {self.tiling}"

    def add(self, x: Tensor, real: Tensor, precision: str, examples: int) -> None:
        tiled = use_tiling(self.model, x, self.tiling)
        self.tiled += len(x) if tiled else 0
        out = _reconstruct(self.model, x, precision, tiled)
        fake = to_uint8(out.reconstruction)
        for name, fn in self.per_image_fns.items():
            values = self.values[name]
            values.append(fn(real, fake).double())
            if len(values) >= COMPACT_EVERY:  # one tensor, not one per batch: ~1 kB less per image at 50k images
                self.values[name] = [torch.cat(values)]
        if "rfid" in self.meters:  # the real side once for all models (evaluate_many)
            self.meters["rfid"].update_fake(fake)
        for name in BOTH_SIDES:
            if name in self.meters:
                self.meters[name].update(real, fake)
        self.stats.update(out, x)
        taken = sum(len(t) for t in self.kept["input"])
        if taken < examples and (not taken or real.shape[1:] == self.kept["input"][0].shape[1:]):
            self.kept["input"].append(real[: examples - taken].cpu())
            self.kept["reconstruction"].append(fake[: examples - taken].cpu())


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[dict], **options) -> EvalResult:
    """Reconstruct every image of `batches` and measure it; see `evaluate_many` for the options and the module
    docstring for the protocol. Every rank must call this (collectives run at the end)."""
    return evaluate_many({"model": model}, batches, **options)["model"]


@torch.no_grad()
def evaluate_many(
    models: dict[str, nn.Module],  # name -> latentae model (any family; an accelerate-prepared one is unwrapped)
    batches: Iterable[dict],  # this rank's {"image": float [B, 3, H, W] in [-1, 1], "key": [...]} batches
    # (an eval_loader's also carry "position": the order of the per-image values)
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,  # any of IMAGE_METRICS; bottleneck stats always run
    accelerator=None,  # accelerate.Accelerator that prepared the models (to unwrap them); collectives need no more
    lpips_net: str = "alex",  # LPIPS trunk: alex (the usual metric) or vgg
    lpips_trunk: str | Path | None = None,  # explicit trunk weight file (default: latentae.weights lookup)
    fid_feature: int | str | nn.Module = 2048,  # a FID protocol (latentae.evaluation.fid_protocols), the default
    # protocol's Inception pool size, or a module uint8 [B, 3, H, W] -> [B, d]
    fid_weights: str | Path | None = None,  # explicit Inception weight file (default: latentae.weights lookup)
    cmmd_model: str | None = None,  # CMMD's CLIP: a local directory or hub id (default: HUB_MODELS["clip"])
    precision: str = "fp32",  # a resolved precision (latentae.runtime): bf16 / fp16 run the models under autocast
    # (metrics stay fp32 / fp64)
    max_images: int | None = None,  # the first N images of the data's order (any process count); None: all
    examples: int = 0,  # keep this many of the main process's first inputs / reconstructions (for grids)
    active_threshold: float = bottleneck_mod.ACTIVE_THRESHOLD,  # KL models: nats/element of an active channel
    progress: bool = False,  # a line with images/s and ETA every progress.EVERY_S seconds, on every process
    data_name: str = "the evaluation data",  # how error messages name the data
    data_protocol: str = "",  # how the images were resized / cropped: part of the FID reference's fingerprint
    fid_reference: FIDReference | None = None,  # the real side of rFID from an earlier run (refused when its
    # fingerprint differs); None: computed here, once for all models (each result's fid_reference)
    tiling: str = DEFAULT_TILING,  # tiled encode / decode (latentae.models.tiling): auto (above TILE_ABOVE_PIXELS,
    # the models whose tiles match their untiled result), on, off
    resume: str | Path | None = None,  # folder of resume files (latentae.evaluation.resume): after each chunk of
    # the data (an eval_loader's `chunks`) the state so far is saved there, and a rerun continues after the last
    # finished chunk with the same result; None: not resumable
    chunk_images: int | None = None,  # image files per chunk when resumable (each tar is one chunk); CHUNK_IMAGES
) -> dict[str, EvalResult]:
    """Every model of `models` on the same images, read and decoded once: each batch goes through every model
    before the next is read, and the real images' FID features are computed once. One EvalResult per model, each
    equal to that model's own `evaluate`. The models are left as they were (eval mode inside, train mode
    restored)."""
    metrics = check_metrics(metrics)
    if accelerator is not None:
        models = {name: accelerator.unwrap_model(m) for name, m in models.items()}
    for m in models.values():
        if not isinstance(getattr(m, "bottleneck", None), Bottleneck):
            raise ModelFormatError(f"evaluate() takes a latentae model (latentae.load opens the diffusers ones), "
                                   f"got {type(m).__name__}")
    device = next(next(iter(models.values())).parameters()).device  # under accelerate: the accelerator's device
    rank, ranks = _rank(), world_size()
    main = rank == 0
    runs = {name: _ModelRun(m, metrics=metrics, lpips_net=lpips_net, lpips_trunk=lpips_trunk, fid_feature=fid_feature,
                            fid_weights=fid_weights, cmmd_model=cmmd_model, active_threshold=active_threshold,
                            device=device, tiling=tiling)
            for name, m in models.items()}
    fid_meter = next((run.meters["rfid"] for run in runs.values() if "rfid" in run.meters), None)
    fingerprint = {"extractor": extractor_identity(fid_meter), "protocol": data_protocol} if fid_meter else {}
    if fid_meter is not None and fid_reference is not None:
        check_fingerprint(fid_reference, fingerprint, fid_reference.source)  # the images are checked at the end
    real_features = RealFeatures() if fid_meter is not None and fid_reference is None else None
    keys: list[str] = []
    positions: list[tuple] = []  # in the data's order; (rank, index) for batches without one: rank order
    classes: list[str] = []
    skips_before = _skip_counts(batches)
    if resume is not None and (max_images is not None or not hasattr(batches, "chunks")):
        raise LatentaeError("a resumable evaluation reads all of an eval_loader's images in chunks: not with "
                            "max_images, nor from a plain iterable of batches")
    batches, cap = _capped(batches, max_images, ranks)

    def consume(batch: dict) -> int:
        images = batch["image"] if cap is None else batch["image"][: cap - len(keys)]
        if not len(images):
            return 0
        x = images.to(device, non_blocking=True)
        real = to_uint8(x)
        if real_features is not None:
            real_features.update(fid_meter.features(real))
        for run in runs.values():
            run.add(x, real, precision, examples)
        placed = batch.get("position") or [(rank, len(keys) + i) for i in range(len(images))]
        positions.extend(tuple(p) for p in placed[: len(images)])
        keys.extend(batch["key"][: len(images)])
        classes.extend(batch.get("class", ())[: len(images)])
        return len(images)

    was_training = {name: m.training for name, m in models.items()}
    for m in models.values():
        m.eval()
    try:
        if resume is None:
            count = batches.count() if progress and max_images is None and hasattr(batches, "count") else None
            bar = Progress(_local_cap(max_images, rank, ranks) or count, rank=rank, ranks=ranks, enabled=progress)
            for batch in batches if cap != 0 else ():
                bar.update(consume(batch))
                if cap is not None and len(keys) >= cap:
                    break
        else:
            chunk_images = chunk_images or CHUNK_IMAGES
            chunks = batches.chunks(chunk_images)
            identity = {"models": "; ".join(f"{name}: {run.identity()}" for name, run in runs.items()),
                        "metrics": ",".join(metrics), "precision": precision, "data": batches.fingerprint(),
                        "crop": data_protocol, "chunk_images": str(chunk_images), "examples": str(examples),
                        # which images share a batch (worker w batches its own slice): kernels round per batch
                        "batching": f"{batches.batch_size} per batch, {batches.num_workers} decoding workers",
                        "meters": "; ".join(f"{name}/{m}: {run.meters[m].describe()}" for name, run in runs.items()
                                            for m in run.meters),
                        "fid_extractor": fingerprint.get("extractor", ""), "active_threshold": repr(active_threshold),
                        "fid_reference": "given" if fid_reference is not None else "computed"}
            checkpoint = Checkpoint(resume, rank, ranks, identity)
            saved = checkpoint.load(device)
            done: list[int] = []
            if saved is not None:
                done, keys[:], positions[:], classes[:] = (saved["done"], saved["keys"], saved["positions"],
                                                           saved["classes"])
                batches.skipped.update(saved["skipped"])
                if real_features is not None:
                    restore(real_features, saved["real"])
                for name, run in runs.items():
                    run.restore(saved["runs"][name])
            counts = [part.count() for _, part in chunks] if progress else [None]
            bar = Progress(None if None in counts else sum(counts), rank=rank, ranks=ranks, done=len(keys),
                           enabled=progress)
            if done:
                bar.note(f"resuming after {len(done)} of {len(chunks)} chunks ({len(keys)} images) evaluated by an "
                         f"earlier run ({checkpoint.path})")
            for j, part in chunks:
                if j in done:
                    continue
                for batch in part:
                    bar.update(consume(batch))
                done.append(j)
                if not keys:  # nothing evaluated yet: no file (a run that finds no images leaves no folder behind)
                    continue
                after = _skip_counts(batches)
                checkpoint.save({"done": done, "keys": keys, "positions": positions, "classes": classes,
                                 "skipped": {r: after.get(r, 0) - skips_before.get(r, 0) for r in after},
                                 "real": snapshot(real_features) if real_features is not None else {},
                                 "runs": {name: run.snapshot() for name, run in runs.items()}})
        bar.close()
    finally:
        for name, m in models.items():
            m.train(was_training[name])

    # One gather: every rank holds the whole set's values from here on.
    skipped = _total_skips(skips_before, _skip_counts(batches), device)
    order = _global_order(gather_objects(positions))
    gathered_keys = gather_objects(keys)
    image_keys = [gathered_keys[i] for i in order]
    gathered_classes = gather_objects(classes)
    image_classes = [gathered_classes[i] for i in order] if len(gathered_classes) == len(order) else []
    n_images = len(image_keys)
    if n_images == 0:
        if skipped:
            detail = ", ".join(f"{r}={n}" for r, n in skipped.items())
            raise LatentaeError(f"every sample in {data_name} was skipped ({detail}): nothing to evaluate")
        raise LatentaeError(f"no images found in {data_name}")
    index = torch.tensor(order, dtype=torch.long, device=device)
    reference = None
    if fid_meter is not None and n_images >= 2:
        fingerprint.update(keys_fingerprint(image_keys))
        if fid_reference is not None:
            check_fingerprint(fid_reference, fingerprint, fid_reference.source)
            reference = fid_reference
        else:
            dim = int(fid_meter.fid.real_features_sum.shape[0])
            reference = real_features.reference(dim, device, fingerprint, f"computed from {data_name}")
    return {name: _result(run, index, n_images, image_keys, image_classes, skipped, metrics, precision, ranks, main,
                          reference)
            for name, run in runs.items()}


def _result(run: _ModelRun, index: Tensor, n_images: int, image_keys: list[str], image_classes: list[str],
            skipped: dict, metrics,
            precision: str, ranks: int, main: bool, reference: FIDReference | None) -> EvalResult:
    """One model's EvalResult from its gathered values (collectives: every rank calls it, models in one order)."""
    device = index.device
    per_image = {k: gather_cat(torch.cat(v) if v else torch.zeros(0, dtype=torch.float64, device=device))
                 for k, v in run.values.items()}
    per_image = {k: v[index.to(v.device)] for k, v in per_image.items()}
    results: dict[str, Any] = {k: float(v.mean()) for k, v in per_image.items()}
    unavailable = dict(run.unavailable)
    protocol: dict[str, Any] = {"metrics": {}, "weight_files": {}, "notes": []}
    descriptions = {"psnr": PSNR_DESCRIPTION, "ssim": SSIM_DESCRIPTION}
    for name in metrics:
        if name in descriptions:
            protocol["metrics"][name] = descriptions[name]
        elif name in run.meters:
            protocol["metrics"][name] = run.meters[name].describe()
            protocol["weight_files"][name] = run.meters[name].weight_files
    if "rfid" in run.meters:
        if n_images < 2:  # the same branch on every rank: n_images is global
            unavailable["rfid"] = f"FID needs at least 2 images, got {n_images}"
        else:
            results["rfid"] = run.meters["rfid"].compute_against(reference)
            protocol["fid_reference"] = f"real images' features: {reference.source} ({reference.count} images)"
            note = run.meters["rfid"].sample_note(n_images)
            if note:
                protocol["notes"].append(note)
    for name, label in BOTH_SIDES.items():  # the same branches on every rank: n_images is global
        if name not in run.meters:
            continue
        if n_images < run.meters[name].min_images:
            unavailable[name] = f"{label} needs at least {run.meters[name].min_images} images, got {n_images}"
        else:
            results[name] = run.meters[name].compute()
    tiled = int(all_reduce_sum(torch.tensor(run.tiled, device=device)))
    if tiled:
        protocol["tiling"] = (f"{tiled} of {n_images} images reconstructed in tiles (--tiling {run.tiling}; auto: "
                              f"above {TILE_ABOVE_PIXELS} pixels): {describe_tiling(run.model)}")
    results.update(run.stats.compute())
    protocol["bottleneck"] = inspect.cleandoc(type(run.stats).__doc__)
    protocol["model_precision"] = (f"{precision} autocast" if precision in AUTOCAST_DTYPES
                                   else str(run.model.dtype).removeprefix("torch."))
    protocol["processes"] = ranks
    return EvalResult(
        n_images=n_images, skipped=skipped, metrics=results, unavailable=unavailable, image_keys=image_keys,
        image_classes=image_classes,
        per_image={k: v.cpu().tolist() for k, v in per_image.items()}, protocol=protocol,
        examples={k: torch.cat(v) for k, v in run.kept.items() if v} if main else {}, fid_reference=reference,
    )
