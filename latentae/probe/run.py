"""`probe`: encode, normalize, train the same DiT on each model's latents, and write the report (report.json,
report.md, samples.png) that ranks the models by validation flow-matching loss (lower diffuses better)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from latentae.probe.latents import encode_images, normalization, split
from latentae.probe.model import VAL_LEVELS, Budget, make_dit, sample, train

GFID = "unavailable: the probe does not compute gFID yet (needs Inception weights and many samples)"


def probe_one(model, data: str, *, budget: Budget, seed: int, normalize: str, device) -> dict:
    """One model's entry of the report, plus its decoded samples under the key "_samples"."""
    latents = encode_images(model, data, resolution=budget.resolution, max_images=budget.max_images,
                            batch_size=budget.batch_size)
    train_raw, val_raw = split(latents, budget.val_images)
    norm = normalization(model, train_raw, normalize)
    train_z, val_z = norm(train_raw), norm(val_raw)
    channels, side = train_z.shape[1], train_z.shape[2]  # normalized: FLUX.2's are patchified
    torch.manual_seed(seed)  # the same initial DiT for every model of the same latent shape
    dit = make_dit(channels=channels, side=side, budget=budget).to(device)
    curve = train(dit, train_z, val_z, budget=budget, seed=seed)
    z = sample(dit, (budget.samples, channels, side, side), steps=budget.sample_steps, seed=seed)
    with torch.inference_mode():
        images = model.decode(norm.invert(z).to(device=device, dtype=model.dtype)).float().cpu()
    final = curve[-1]
    return {"family": model.family, "latent_shape": list(latents.shape[1:]),
            "probe_latent_shape": list(train_z.shape[1:]),
            "train_images": len(train_z), "val_images": len(val_z), "normalization": normalize,
            "normalized_train_std": train_z.std().item(), "val_loss": {str(k): v for k, v in final["loss"].items()},
            "val_loss_mean": final["mean"],
            "curve": [{"step": p["step"], "mean": p["mean"], "loss": {str(k): v for k, v in p["loss"].items()}}
                      for p in curve],
            "_samples": images.clamp(-1, 1)}


# The ranking reads the loss at mid noise, not the mean over levels: near t = 0 or 1 the target is almost -x0 or
# eps, which i.i.d. latents make easy, so the mean can put a pure-noise latent space above a real encoder's
# (measured at the smoke budget: mean 1.55 for noise vs 1.69 for a random-init KL encoder, while at t = 0.5 the
# encoder's loss is 0.79-0.88x the noise's over seeds 0-3; tests/test_probe.py).
RANK_LEVEL = 0.5


def probe(models: dict, data: str, *, budget: Budget, budget_name: str, seed: int = 0, normalize: str = "config",
          output: str | Path | None = None, device="cpu") -> dict:
    """Runs the probe on `models` ({name: KLAutoencoder | VQTokenizer}); returns the report and, with `output`,
    writes report.json, report.md and samples.png there."""
    entries = {name: probe_one(m, data, budget=budget, seed=seed, normalize=normalize, device=device)
               for name, m in models.items()}
    samples = {name: e.pop("_samples") for name, e in entries.items()}
    report = {"data": data, "budget": budget_name, "settings": budget.as_dict(), "seed": seed,
              "levels": list(VAL_LEVELS), "models": entries, "gfid": GFID,
              "rank_level": RANK_LEVEL, "ranking": sorted(entries, key=lambda n: entries[n]["val_loss"][str(RANK_LEVEL)])}
    if output is not None:
        write_report(report, samples, Path(output))
    return report


def write_report(report: dict, samples: dict, output: Path) -> None:
    from latentae.inspect.drawing import image_grid

    output.mkdir(parents=True, exist_ok=True)
    (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    names = list(samples)
    image_grid([list(samples[n]) for n in names], row_labels=names,
               title=f"probe samples ({report['budget']} budget, seed {report['seed']})").save(output / "samples.png")
    (output / "report.md").write_text(markdown(report))


def markdown(report: dict) -> str:
    levels = [str(t) for t in report["levels"]]
    s = report["settings"]
    lines = [
        "# Diffusability probe", "",
        f"Data: `{report['data']}`, {s['resolution']} px; budget `{report['budget']}` ({s['steps']} steps of "
        f"batch {s['batch_size']}, DiT {s['layers']} layers x {s['heads']} heads x {s['head_dim']}, patch "
        f"{s['patch_size']}), seed {report['seed']}.",
        "Validation flow-matching loss (v = eps - x0, MSE) on held-out latents at fixed noise levels t, fixed eps "
        "per level; lower means the latent space is easier to diffuse. Ranked by the loss at t = "
        f"{report['rank_level']} (at the extreme levels i.i.d. latents score low too). gFID: " + report["gfid"] + ".",
        "",
        "| rank | model | latent | normalization | train std | " + " | ".join(f"t={t}" for t in levels)
        + " | mean |",
        "|---" * (6 + len(levels)) + "|",
    ]
    for rank, name in enumerate(report["ranking"], 1):
        e = report["models"][name]
        lines.append(f"| {rank} | `{name}` | {'x'.join(map(str, e['latent_shape']))} ({e['family']}) | "
                     f"{e['normalization']} | {e['normalized_train_std']:.3g} | "
                     + " | ".join(f"{e['val_loss'][t]:.4f}" for t in levels) + f" | {e['val_loss_mean']:.4f} |")
    lines += ["", "## Validation loss over training (mean over levels)", "",
              "| step | " + " | ".join(f"`{n}`" for n in report["models"]) + " |",
              "|---" * (1 + len(report["models"])) + "|"]
    curves = [e["curve"] for e in report["models"].values()]
    for i, point in enumerate(curves[0]):
        lines.append(f"| {point['step']} | " + " | ".join(f"{c[i]['mean']:.4f}" for c in curves) + " |")
    lines += ["", "Samples (Euler, fixed seed), one row per model: `samples.png`.", ""]
    return "\n".join(lines)
