"""`latentae stats`: latent mean and standard deviation (global and per channel) of a KL autoencoder, the
normalization constants they recommend, and writing those into an exported `config.json`.

Which latents: by default those the model's pipeline normalizes (`pipeline_latents`): posterior *samples*
z ~ q(z|x) for SD-style KL models (LDM computed SD's 0.18215 from samples; diffusers' training scripts encode
samples), posterior *means* for FLUX.2 (Flux2Pipeline and BFL's code encode the mean). Sample moments are exact from
the stored mean m and logvar: E[z] = E[m], E[z^2] = E[m^2] + E[exp(logvar)], so no noise is drawn.

Conventions (how diffusers pipelines undo the normalization, see `write_normalization`):
  sd    scaling_factor = 1 / std                         z_model = z * scaling_factor (SD 1/2, DiT, ...)
  sd3   scaling_factor = 1 / std, shift_factor = mean    z_model = (z - shift) * scaling_factor (SD3, FLUX)
  sdxl  latents_mean / latents_std per channel, scaling_factor 1
                                                         z_model = (z - mean_c) / std_c (SDXL-family pipelines)
  wan   latents_mean / latents_std per channel, any number of channels, no scaling_factor where the class has none
                                                         z_model = (z - mean_c) / std_c (Wan, Qwen-Image pipelines)
  flux2 per-channel mean / variance of the 2x2-patchified latents, into AutoencoderKLFlux2's bn running statistics
                                                         z_model = (patchify(z) - mean_c) / sqrt(var_c + eps)
std is the centered standard deviation over all latent values (all channels and positions).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from latentae.data.config import DEFAULT_MAX_PIXELS
from latentae.data.sources import expand_sources
from latentae.errors import LatentaeError
from latentae.latents.format import iter_encoded
from latentae.latents.jobs import job_loader, plan_jobs
from latentae.options import CONVENTIONS
from latentae.runtime import Runtime

NORMALIZATION_KEYS = ("scaling_factor", "shift_factor", "latents_mean", "latents_std")


@dataclass
class LatentStats:
    of: str  # "sample" (posterior samples) or "mean" (posterior means)
    images: int
    positions: int  # latent positions per channel over all images (images * h * w)
    mean: list[float]  # per channel
    std: list[float]
    global_mean: float
    global_std: float
    channels: int | None = None  # a structured latent's first n channels (encode --channels n); None: the whole

    def recommended(self) -> dict:
        return {"scaling_factor": 1.0 / self.global_std, "shift_factor": self.global_mean,
                "latents_mean": list(self.mean), "latents_std": list(self.std)}

    def normalization(self, convention: str) -> dict:
        """The four config.json normalization keys for `convention`; those it does not use are None, so a
        pipeline of another family does not pick up stale values."""
        rec = self.recommended()
        if convention == "sd":
            return {"scaling_factor": rec["scaling_factor"], "shift_factor": None, "latents_mean": None,
                    "latents_std": None}
        if convention == "sd3":
            return {**rec, "latents_mean": None, "latents_std": None}
        if convention == "sdxl":
            return {**rec, "scaling_factor": 1.0, "shift_factor": None}
        if convention == "wan":  # a class without scaling_factor drops it; one with it gets 1 (see _unused)
            return {**rec, "scaling_factor": None, "shift_factor": None}
        raise LatentaeError(f"convention must be one of {CONVENTIONS}, got {convention!r}")

    def table(self, why: str = "", normalized_by: str | None = None) -> str:
        """`why`: why these latents (samples or means), said on a line of its own. `normalized_by`: why the latents
        need no constants (they are already a diffusion model's), said instead of recommending some."""
        what = "posterior samples" if self.of == "sample" else "posterior means"
        first = f" (a structured latent's first {self.channels}: --channels {self.channels})" if self.channels else ""
        rows = [f"latent statistics of {what}: {self.images} images, {len(self.mean)} channels{first}, "
                f"{self.positions // max(self.images, 1)} positions per image",
                *([f"{what}: {why}"] if why else []),
                f"{'channel':>8} {'mean':>10} {'std':>10}"]
        rows += [f"{c:>8} {m:>10.4f} {s:>10.4f}" for c, (m, s) in enumerate(zip(self.mean, self.std))]
        rows.append(f"{'all':>8} {self.global_mean:>10.4f} {self.global_std:>10.4f}")
        if normalized_by:
            return "\n".join([*rows, f"no normalization constants to recommend: {normalized_by}"])
        rec = self.recommended()
        rows.append(f"recommended: scaling_factor {rec['scaling_factor']:.5g} (1/std), shift_factor "
                    f"{rec['shift_factor']:.5g} (mean), latents_mean [{', '.join(f'{v:.4g}' for v in self.mean)}], "
                    f"latents_std [{', '.join(f'{v:.4g}' for v in self.std)}]")
        return "\n".join(rows)


class _Moments:
    """Per-channel sums of z and z^2 in float64 (a sample's second moment may include the posterior variance)."""

    def __init__(self):
        self.n = 0
        self.images = 0
        self.s1 = self.s2 = None

    def add(self, mean: np.ndarray, second: np.ndarray) -> None:
        """mean, second: [B, C, h, w] values of E[z] and E[z^2] per position."""
        self.add_images(*_image_sums(mean, second))

    def add_images(self, s1: np.ndarray, s2: np.ndarray, positions: int) -> None:
        """Per-image channel sums [B, C] of E[z] and E[z^2] over `positions` latent positions each."""
        self.s1 = s1.sum(0) if self.s1 is None else self.s1 + s1.sum(0)
        self.s2 = s2.sum(0) if self.s2 is None else self.s2 + s2.sum(0)
        self.n += len(s1) * positions
        self.images += len(s1)

    def add_latents(self, array: np.ndarray, store: str, of: str, patch: tuple[int, int] | None = None) -> None:
        """A batch of stored latents [B, C or 2C, h, w] (see format.py) for statistics `of` sample / mean, of the
        patchified latents with `patch`."""
        self.add(*_patchified(*_mean_second(array, store, of), patch))

    def result(self, of: str) -> LatentStats:
        if not self.n:
            raise LatentaeError("no latents to measure")
        mean = self.s1 / self.n
        var = np.maximum(self.s2 / self.n - mean**2, 0.0)
        g_mean = self.s1.sum() / (self.n * len(mean))
        g_var = max(self.s2.sum() / (self.n * len(mean)) - g_mean**2, 0.0)
        if g_var == 0.0:
            raise LatentaeError("the latents are constant (std 0): no scaling factor exists")
        return LatentStats(of=of, images=self.images, positions=self.n, mean=mean.tolist(),
                           std=np.sqrt(var).tolist(), global_mean=float(g_mean), global_std=math.sqrt(g_var))


def _mean_second(array: np.ndarray, store: str, of: str) -> tuple[np.ndarray, np.ndarray]:
    """E[z] and E[z^2] per position [B, C, h, w] (float64) of stored latents (store: see format.py) for
    statistics of posterior samples or means (`of`)."""
    if store == "both":
        mean, logvar = np.split(array.astype(np.float64), 2, axis=1)
        return mean, mean**2 + (np.exp(logvar) if of == "sample" else 0.0)
    if store == of:
        mean = array.astype(np.float64)
        return mean, mean**2
    raise LatentaeError(f"the latents were stored as {store}s only: statistics of posterior {of}s need "
                        f"mean and logvar (encode with --store both), or use --of {store}")


def pipeline_latents(model) -> tuple[str, str]:
    """Which latents the model's pipeline normalizes, "sample" or "mean" (`of`'s default), and why."""
    if not model.bottleneck.samples:
        return "mean", "a deterministic latent is its own sample"
    if hasattr(model, "pipeline_latents"):  # a wrapped pipeline VAE says which its pipelines encode
        return model.pipeline_latents
    if stats_patch(model):
        return "mean", "Flux2Pipeline and FLUX.2's own code normalize posterior means"
    return "sample", "LDM and diffusers' SD-family training scripts encode posterior samples"


def refuse_normalized_latents(cls, where) -> None:
    """Latents that already are a diffusion model's (a tiny autoencoder's: its teacher's normalized latents; RAE's:
    normalized by its own buffers) get no constants; the model class's `bottleneck.normalized_by` says why (`cls`
    None: a class latentae does not wrap, nothing to refuse)."""
    why = cls.bottleneck.normalized_by if cls is not None else None
    if why:
        name = getattr(cls, "diffusers_class", cls).__name__
        raise LatentaeError(f"{where}: an {name}'s latents are already normalized: {why}; nothing "
                            "written (measure without --write)")


def default_convention(model) -> str:
    """The normalization the model's pipeline applies: `stats --write`'s default --convention."""
    return "flux2" if stats_patch(model) else getattr(model, "convention", "sd")


def stats_patch(model) -> tuple[int, int] | None:
    """The patch the model's pipeline normalizes latents in (FLUX.2: statistics per patchified channel)."""
    return tuple(model.config["patch_size"]) if model.config.get("latent_norm") == "flux2" else None


def _patchified(mean: np.ndarray, second: np.ndarray, patch: tuple[int, int] | None):
    """E[z] and E[z^2] per position of the patchified latents (both are per-element, so they patchify alike)."""
    if patch is None:
        return mean, second
    from latentae.models.latent_norm import patchify

    return tuple(patchify(torch.from_numpy(a), patch).numpy() for a in (mean, second))


def _image_sums(mean: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-image channel sums [B, C] of E[z] and E[z^2] [B, C, h, w], and the positions per image (h * w)."""
    return (mean.sum(axis=(2, 3), dtype=np.float64), second.sum(axis=(2, 3), dtype=np.float64),
            mean.shape[2] * mean.shape[3])


class _FirstImages:
    """The first `n` images of a job order (jobs in order, each in stored order) from batches that arrive in any
    order (workers, size buckets): per-image sums wait until the jobs before the cut are complete."""

    def __init__(self, n: int):
        self.n = n
        self.sums: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, int]] = {}  # (job, index) -> sums
        self.per_job: dict[int, int] = {}  # job -> images so far
        self.complete_jobs: set[int] = set()

    def add(self, job: int, indices: list[int], s1: np.ndarray, s2: np.ndarray, positions: int) -> None:
        for row, index in enumerate(indices):
            self.sums[(job, index)] = (s1[row], s2[row], positions)
        self.per_job[job] = self.per_job.get(job, 0) + len(indices)

    def job_done(self, job: int) -> bool:
        """Mark `job` complete; whether the first n images are now known (jobs 0..j complete, n images)."""
        self.complete_jobs.add(job)
        total, j = 0, 0
        while j in self.complete_jobs and total < self.n:
            total, j = total + self.per_job.get(j, 0), j + 1
        return total >= self.n

    def into(self, moments: _Moments) -> None:
        for key in sorted(self.sums)[: self.n]:
            s1, s2, positions = self.sums[key]
            moments.add_images(s1[None], s2[None], positions)


def latent_stats(spec: str, *, of: Literal["sample", "mean"] = "sample", batch_size: int = 64,
                 patch: tuple[int, int] | None = None) -> LatentStats:
    """Statistics of `latentae encode` output `spec` (continuous latents), of the latents patchified with `patch`
    (FLUX.2's 2x2: see stats_patch)."""
    moments = _Moments()
    pending: list[np.ndarray] = []
    store = None
    channels = None  # the recorded count of a structured latent's leading channels
    for i, sample in enumerate(iter_encoded(spec)):
        if "latents" not in sample:
            raise LatentaeError(f"{spec} holds token ids: latent statistics apply to continuous latents")
        n = sample["meta"].get("channels")
        if i and n != channels:  # per-channel sums over different channels measure nothing
            raise LatentaeError(f"{spec} mixes latents of {channels or 'all'} and {n or 'all'} leading channels "
                                "(encode --channels): measure each encode output on its own")
        channels = n
        sample_store = sample["meta"].get("store", "both")
        if pending and (sample_store != store or sample["latents"].shape != pending[0].shape):
            moments.add_latents(np.stack(pending), store, of, patch)
            pending = []
        store = sample_store
        pending.append(sample["latents"])
        if len(pending) == batch_size:
            moments.add_latents(np.stack(pending), store, of, patch)
            pending = []
    if pending:
        moments.add_latents(np.stack(pending), store, of, patch)
    stats = moments.result(of)
    stats.channels = channels
    return stats


def latent_stats_of_images(model, data: str, *, of: Literal["sample", "mean"] | None = None, batch_size: int = 16,
                           resolution: int | None = None, precision: str = "fp32", channels_last: bool = False,
                           device: str | torch.device | None = None, workers: int = 2,
                           max_images: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> LatentStats:
    """Statistics of `model`'s latents of the images in `data` (encoded on the fly, nothing written), at their
    native size (default: center-cropped to a multiple of the model's downsampling factor, as `latentae encode`
    does) or center-cropped to `resolution`; the first `max_images` (files in order, each in stored order)
    only if set. `of`: posterior samples or means, by default those the model's pipeline normalizes."""
    if model.bottleneck.tokenizes:
        raise LatentaeError(f"latent statistics apply to continuous latents, not to {type(model).__name__}'s "
                            "token ids")
    of = of or pipeline_latents(model)[0]
    patch = stats_patch(model)
    jobs = plan_jobs(expand_sources(data), images_per_shard=1000)  # bad data fails before the model is set up
    runtime = Runtime(model, device=device, precision=precision, channels_last=channels_last)
    moments = _Moments()
    first = _FirstImages(max_images) if max_images is not None else None
    loader = job_loader(jobs, batch_size=batch_size, resolution=resolution, multiple=model.crop_multiple,
                        max_pixels=max_pixels, max_images=max_images, workers=workers)
    for batch in loader:
        if batch["items"]:
            with torch.inference_mode(), runtime.context():
                x = runtime.inputs(batch["image"])
                if model.bottleneck.samples:
                    posterior = model.posterior(x)
                    stored, store = torch.cat([posterior.mean, posterior.logvar], 1).float().cpu().numpy(), "both"
                else:  # deterministic (DC-AE, tiny): the latent is its own sample
                    stored, store = model.encode(x).float().cpu().numpy(), of
            mean, second = _patchified(*_mean_second(stored, store, of), patch)
            if first is None:
                moments.add(mean, second)
            else:
                first.add(batch["job"], [item["index"] for item in batch["items"]], *_image_sums(mean, second))
        if first is not None and batch["last"] and first.job_done(batch["job"]):
            break
    if first is not None:
        first.into(moments)
    if not moments.images:
        raise LatentaeError(f"no images could be read from {data}")
    return moments.result(of)


def write_normalization(model_dir: str | Path, stats: LatentStats, convention: str = "sd") -> dict:
    """Store the normalization of `convention` in a diffusers directory (an export or a pipeline's vae/): the
    config.json keys of sd / sd3 / sdxl (AutoencoderKL, and the keys AutoencoderDC / AutoencoderTiny take),
    leaving every other key as it is; or, for flux2, the running statistics of AutoencoderKLFlux2's `bn` in its
    weights file. Returns the values written."""
    import diffusers

    from latentae.loading import DIFFUSERS_ADAPTERS
    from latentae.loading import model_dir as resolve_model_dir
    from latentae.models import WRAPPED_CLASSES
    from latentae.models.config import init_keys  # a pipeline directory -> its vae/

    path = resolve_model_dir(Path(model_dir)) / "config.json"
    config = json.loads(path.read_text())
    name = config.get("_class_name")
    refuse_normalized_latents(WRAPPED_CLASSES.get(name), path.parent)
    expected = ("AutoencoderKLFlux2",) if convention == "flux2" else \
        tuple(n for n in DIFFUSERS_ADAPTERS if n not in ("AutoencoderKLFlux2", "VQModel"))  # keys checked below
    if name not in expected:
        other = " (its pipeline normalizes with the bn statistics: use --convention flux2)" \
            if name == "AutoencoderKLFlux2" else ""
        raise LatentaeError(f"{path} describes a {name}: --write with the {convention} convention needs a diffusers "
                            f"{' / '.join(expected)} directory{other} (export the model with `latentae export` "
                            "first)")
    channels = int(config.get("latent_channels", len(stats.mean)))
    if convention == "flux2":
        channels *= math.prod(config.get("patch_size", (2, 2)))
    if channels != len(stats.mean):
        raise LatentaeError(f"{path}: the model has {channels} (normalized) latent channels, the statistics "
                            f"{len(stats.mean)}")
    if convention == "flux2":
        return _write_bn_statistics(path.parent, stats)
    values = stats.normalization(convention)
    if convention == "sdxl" and channels != 4:
        raise LatentaeError(f"the sdxl convention needs 4 latent channels (diffusers' SDXL pipelines reshape "
                            f"latents_mean/std to 4), this model has {channels}: use sd or sd3")
    takes = init_keys(getattr(diffusers, name))
    missing = [k for k, v in values.items() if k not in takes and v is not None]
    if missing:
        raise LatentaeError(f"{name} has no {', '.join(missing)}: the {convention} convention does not apply to it "
                            f"(without --convention, stats writes its pipeline's)")
    values = {k: _unused(k, config.get(k)) if v is None else v for k, v in values.items() if k in takes}
    config.update(values)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return values


def _unused(key: str, current):
    """A key the convention does not use: null (diffusers' "absent"), but never over numbers (pipelines that add
    shift_factor fail on null): there the value that changes nothing, shift / mean 0, std / scale 1."""
    fill = 1.0 if key in ("latents_std", "scaling_factor") else 0.0
    if isinstance(current, (int, float)):
        return fill
    return [fill] * len(current) if isinstance(current, list) else None


def _write_bn_statistics(directory: Path, stats: LatentStats) -> dict:
    """bn.running_mean / running_var of an AutoencoderKLFlux2 weights file := the measured per-channel mean and
    variance of the patchified latents (what its pipeline normalizes with), written atomically."""
    from safetensors.torch import load_file, save_file

    weights = directory / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        raise LatentaeError(f"{directory}: --write needs the safetensors weights {weights.name}")
    state = load_file(weights)
    mean = torch.tensor(stats.mean, dtype=state["bn.running_mean"].dtype)
    var = torch.tensor(stats.std, dtype=torch.float64).square().to(state["bn.running_var"].dtype)
    state["bn.running_mean"], state["bn.running_var"] = mean, var
    tmp = weights.with_name(weights.name + ".tmp")
    save_file(state, tmp, metadata={"format": "pt"})
    os.replace(tmp, weights)
    return {"bn.running_mean": mean.tolist(), "bn.running_var": var.tolist()}
