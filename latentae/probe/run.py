"""`probe`: encode, normalize, train the same DiT on each model's latents, decode its samples with each model,
and write the report (report.json, report.md, samples.png). Models are ranked by a sample metric (the Fréchet
distance of their decoded samples to the held-out images, latentae.probe.samples), after the checks of
latentae.probe.checks: a model below a floor is warned about and ranks after every model above it. The
flow-matching loss per t, the reconstruction PSNR and the rate are reported beside it, not ranked on: a latent
that carries nothing can have the lowest loss."""
from __future__ import annotations

import json
import math
import time
from functools import partial
from pathlib import Path

import torch

from latentae.evaluation.metrics import to_uint8
from latentae.probe import checks
from latentae.probe.latents import encode_images, normalization, split
from latentae.probe.model import (THROUGHPUT, VAL_LEVELS, Budget, forward_flops, make_dit, run_flops, sample,
                                  train)
from latentae.probe.samples import DESCRIPTIONS, SampleJudge

GRID_SAMPLES = 8  # samples per model in samples.png


def prepare(model, data: str, *, budget: Budget, normalize: str) -> dict:
    """Encoded, split and normalized latents of one model, and the validation images."""
    latents, val_images = encode_images(model, data, resolution=budget.resolution, max_images=budget.max_images,
                                        batch_size=budget.batch_size, keep=budget.val_images)
    train_raw, val_raw = split(latents, budget.val_images)
    norm = normalization(model, train_raw, normalize)
    return {"latent_shape": list(latents.shape[1:]), "norm": norm, "train": norm(train_raw), "val": norm(val_raw),
            "val_images": val_images}


def dit_flops(prepared: dict, budget: Budget) -> float:
    """The DiT FLOPs of the whole run (every model's training, validation and sampling)."""
    total = 0.0
    with torch.random.fork_rng():  # building DiTs here must not move the seeded ones
        for p in prepared.values():
            c, side = p["train"].shape[1], p["train"].shape[2]
            total += run_flops(budget, forward_flops(make_dit(channels=c, side=side, budget=budget), c, side))
    return total


def probe_one(model, p: dict, judge: SampleJudge, real, *, budget: Budget, seed: int, device) -> dict:
    """One model's entry of the report, plus its first decoded samples under the key "_samples"."""
    train_z, val_z, norm = p["train"], p["val"], p["norm"]
    channels, side = train_z.shape[1], train_z.shape[2]  # normalized: FLUX.2's are patchified
    torch.manual_seed(seed)  # the same initial DiT for every model of the same latent shape
    dit = make_dit(channels=channels, side=side, budget=budget).to(device)
    curve = train(dit, train_z, val_z, budget=budget, seed=seed)
    z = sample(dit, (budget.samples, channels, side, side), steps=budget.sample_steps, seed=seed,
               batch_size=budget.batch_size)
    with torch.inference_mode():
        images = torch.cat([model.decode(norm.invert(b).to(device=device, dtype=model.dtype)).float().cpu()
                            for b in z.split(budget.batch_size)]).clamp(-1, 1)
    distances = judge.measure(real, to_uint8(images))
    variation = checks.variation(train_z)
    recon = checks.reconstruction(model, p["val_images"], batch_size=budget.batch_size)
    flat = checks.flat_colour_psnr(p["val_images"])
    final = curve[-1]
    return {"family": model.family, "latent_shape": p["latent_shape"], "probe_latent_shape": list(train_z.shape[1:]),
            "train_images": len(train_z), "val_images": len(val_z), "normalization": norm.kind,
            "normalized_train_std": train_z.std().item(), "sample_metric": distances, **recon,
            "flat_colour_psnr": flat, "variation": variation,
            "warnings": checks.warnings(variation, recon["psnr"], flat),
            "val_loss": {str(k): v for k, v in final["loss"].items()}, "val_loss_mean": final["mean"],
            "curve": [{"step": c["step"], "mean": c["mean"], "loss": {str(k): v for k, v in c["loss"].items()}}
                      for c in curve],
            "_samples": images[:GRID_SAMPLES]}


def probe(models: dict, data: str, *, budget: Budget, budget_name: str, seed: int = 0, normalize: str = "measured",
          output: str | Path | None = None, device="cpu", log=partial(print, flush=True)) -> dict:
    """Runs the probe on `models` ({name: latentae model}); returns the report and, with `output`, writes
    report.json, report.md and samples.png there. `log` gets the expected duration before the DiTs train."""
    prepared = {name: prepare(m, data, budget=budget, normalize=normalize) for name, m in models.items()}
    flops = dit_flops(prepared, budget)
    kind = torch.device(device).type
    seconds = flops / THROUGHPUT[kind] if THROUGHPUT.get(kind) else None
    log(f"probe: {len(models)} model(s), {budget.steps} DiT steps and {budget.samples} samples each, "
        f"{flops / 1e12:.2f} TFLOP; expected "
        + (f"~{math.ceil(seconds / 60)} min on {kind} ({THROUGHPUT[kind] / 1e9:.3g} GFLOP/s, "
           f"{'measured' if kind == 'cpu' else 'assumed'}: latentae/probe/model.py)"
           if seconds is not None else f"duration unknown (no throughput known for {kind})"))
    judge = SampleJudge(device)
    real = to_uint8(next(iter(prepared.values()))["val_images"])  # the same images for every model
    started = time.perf_counter()
    entries = {name: probe_one(m, prepared[name], judge, real, budget=budget, seed=seed, device=device)
               for name, m in models.items()}
    samples = {name: e.pop("_samples") for name, e in entries.items()}
    rank_by = judge.rank_by
    report = {"data": data, "budget": budget_name, "settings": budget.as_dict(), "seed": seed,
              "normalization": normalize, "levels": list(VAL_LEVELS), "models": entries,
              "sample_metrics": {n: DESCRIPTIONS[n] for n in judge.metrics}, "unavailable": judge.unavailable,
              "rank_by": rank_by,
              "floors": {"variation": checks.VARIATION_FLOOR, "psnr_margin_db": checks.PSNR_MARGIN_DB},
              "ranking": sorted(entries, key=lambda n: (bool(entries[n]["warnings"]),
                                                        entries[n]["sample_metric"][rank_by])),
              "dit_flops": flops, "seconds": time.perf_counter() - started, "expected_seconds": seconds}
    if output is not None:
        write_report(report, samples, Path(output))
    return report


def write_report(report: dict, samples: dict, output: Path) -> None:
    from latentae.inspection.drawing import image_grid

    output.mkdir(parents=True, exist_ok=True)
    (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    names = list(samples)
    image_grid([list(samples[n]) for n in names], row_labels=names,
               title=f"probe samples ({report['budget']} budget, seed {report['seed']})").save(output / "samples.png")
    (output / "report.md").write_text(markdown(report))


def _rate(e: dict) -> str:
    return "n/a" if e["rate"] is None else f"{e['rate']:.3g} {e['rate_unit']}"


def markdown(report: dict) -> str:
    levels = [str(t) for t in report["levels"]]
    s, rank_by = report["settings"], report["rank_by"]
    metrics = list(report["sample_metrics"])
    lines = [
        "# Diffusability probe", "",
        f"Data: `{report['data']}`, {s['resolution']} px; budget `{report['budget']}` ({s['steps']} steps of "
        f"batch {s['batch_size']}, DiT {s['layers']} layers x {s['heads']} heads x {s['head_dim']}, patch "
        f"{s['patch_size']}), seed {report['seed']}; latent normalization `{report['normalization']}`.",
        f"Ranked by **{rank_by}** of {s['samples']} samples ({s['sample_steps']} Euler steps) decoded by each model "
        f"against the {s['val_images']} held-out images (lower is better); models with a warning rank after "
        "every model without one. Loss: validation flow-matching loss (v = eps - x0, MSE) at t, not ranked on. "
        f"PSNR: reconstruction of the held-out images; rate: KL (nats/element) or bits/pixel.",
        "",
        "| rank | model | " + " | ".join(f"{m}{' (ranked)' if m == rank_by else ''}" for m in metrics)
        + " | PSNR (dB) | rate | loss t=0.5 | loss mean | between-image share | warnings |",
        "|---" * (9 + len(metrics)) + "|",
    ]
    for rank, name in enumerate(report["ranking"], 1):
        e = report["models"][name]
        lines.append(f"| {rank} | `{name}` | " + " | ".join(f"{e['sample_metric'][m]:.4g}" for m in metrics)
                     + f" | {e['psnr']:.2f} | {_rate(e)} | {e['val_loss']['0.5']:.4f} | {e['val_loss_mean']:.4f} | "
                     f"{e['variation']['between_share']:.3f} | {'; '.join(e['warnings']) or '-'} |")
    lines += ["", "Sample metrics: " + "; ".join(f"{m}: {d}" for m, d in report["sample_metrics"].items()) + "."]
    lines += [f"Unavailable: {m}: {why}" for m, why in report["unavailable"].items()]
    f = report["floors"]
    flat = next(iter(report["models"].values()))["flat_colour_psnr"]  # the same images for every model
    lines += [f"Floors (latentae/probe/checks.py): the smaller of the between-image and within-image shares of the "
              f"latents' variance >= {f['variation']}; reconstruction PSNR >= each image's flat mean colour "
              f"+ {f['psnr_margin_db']:g} dB (here {flat:.2f} dB).",
              "", "## Validation loss per t and latents", "",
              "| model | latent | normalization | train std | " + " | ".join(f"t={t}" for t in levels) + " |",
              "|---" * (4 + len(levels)) + "|"]
    for name, e in report["models"].items():
        lines.append(f"| `{name}` | {'x'.join(map(str, e['latent_shape']))} ({e['family']}) | {e['normalization']} | "
                     f"{e['normalized_train_std']:.3g} | "
                     + " | ".join(f"{e['val_loss'][t]:.4f}" for t in levels) + " |")
    lines += ["", "## Validation loss over training (mean over levels)", "",
              "| step | " + " | ".join(f"`{n}`" for n in report["models"]) + " |",
              "|---" * (1 + len(report["models"])) + "|"]
    curves = [e["curve"] for e in report["models"].values()]
    for i, point in enumerate(curves[0]):
        lines.append(f"| {point['step']} | " + " | ".join(f"{c[i]['mean']:.4f}" for c in curves) + " |")
    lines += ["", f"Samples (Euler, fixed seed), the first {GRID_SAMPLES} per model, one row each: `samples.png`.", ""]
    return "\n".join(lines)
