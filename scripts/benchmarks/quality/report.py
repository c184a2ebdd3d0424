"""The report of `benchmark.py quality`: Markdown tables, the published claims beside the measured numbers with
the verdicts of claims.py, PSNR curves (matplotlib) and image grids, from the runs' result.json files."""
from __future__ import annotations

import datetime
import json
from pathlib import Path

from .claims import diffusability_section, findings_section
from .study import DIFFUSABILITY, FAMILIES, GROUPS


def bottleneck(point: dict) -> str:
    if "codebook_usage" in point:
        return f"usage {point['codebook_usage']:.1%} of {point['codebook_size']}"
    return f"KL {point['kl']:.3g}, {point['active_channels']}/{point['latent_channels']} active"


def interpolate_psnr(result: dict, step: int) -> float | None:
    """PSNR at `step` along the run's curve (linear between evaluations); None outside it."""
    curve = result["curve"]
    for a, b in zip(curve, curve[1:]):
        if a["step"] <= step <= b["step"]:
            return a["psnr"] + (b["psnr"] - a["psnr"]) * (step - a["step"]) / max(b["step"] - a["step"], 1)
    return curve[-1]["psnr"] if curve and curve[-1]["step"] == step else None


def results_table(results: dict) -> list[str]:
    lines = ["| configuration | group | what | trainer, precision | steps | train min | img/s | held-out PSNR (dB) | "
             "BSDS500 test | Kodak | SSIM | bottleneck | HF ratio | load avg (start, end) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results.values():
        p = r["final"]
        lines.append(f"| {r['name']} | {r['group']} | {r['what']} | {r['trainer']}, {r['precision']} | {r['steps']} | "
                     f"{r['train_seconds'] / 60:.2f} | {r['images_per_second']:.1f} | **{p['psnr']:.2f}** | "
                     f"{p['psnr/bsds500-test']:.2f} | {p['psnr/kodak']:.2f} | {p['ssim']:.4f} | {bottleneck(p)} | "
                     f"{p['hf_ratio']:.3f} | {r['load_average_start'][0]:.1f}, {r['load_average_end'][0]:.1f} |")
    return lines


def comparison_section(results: dict) -> list[str]:
    names = [n for n in ("plain", "latentae", "latentae-fp32", "latentae-example-adamw") if n in results]
    if "plain" not in names:
        return ["(the plain loop was not run)"]
    plain = results["plain"]
    common = min(results[n]["steps"] for n in names)  # the steps every run of the group reached
    lines = [f"Each run trained for {plain['train_seconds'] / 60:.1f} minutes (training only; the held-out "
             f"evaluations are not counted). CPU s: the process's CPU time while training (on a shared machine, "
             "how much of the CPU each run got). PSNR at equal steps: each curve interpolated linearly at "
             f"{common} steps, the fewest any of these runs made.", "",
             "| run | precision | steps | CPU s (steps / CPU s) | held-out PSNR (dB) | SSIM | PSNR - plain | SSIM - "
             f"plain | PSNR at {common} steps |", "|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        r, p = results[n], results[n]["final"]
        at = interpolate_psnr(r, common)
        lines.append(f"| {n} | {r['precision']} | {r['steps']} | {r['cpu_seconds']:.0f} "
                     f"({r['steps'] / r['cpu_seconds']:.2f}) | {p['psnr']:.2f} | {p['ssim']:.4f} | "
                     f"{p['psnr'] - plain['final']['psnr']:+.2f} | {p['ssim'] - plain['final']['ssim']:+.4f} | "
                     f"{'n/a' if at is None else f'{at:.2f}'} |")
    return lines


def protocol_section(results: dict, budget, heldout: list[tuple[str, int]]) -> list[str]:
    from latentae.evaluation.sharpness import DESCRIPTION

    sets = ", ".join(f"{label} ({n} images)" for label, n in heldout)
    lines = [f"- training data: `{budget.train}` under the data root, random {budget.resolution}-px crops (shorter "
             "side resized first) with flips, latentae's training loader for every run (same batches for every "
             "configuration of a family); sources are drawn by sample count",
             f"- held-out: {sets}: shorter side resized to {budget.resolution} px, center crop, never a training "
             "image; PSNR / SSIM per image on the 8-bit images (latentae's eval protocol), mean over images; "
             "'held-out PSNR' pools both sets",
             f"- budget `{budget.name}`: batch {budget.batch_size}, lr {budget.lr:g}, {budget.steps} steps (comparison "
             f"group: {budget.seconds:g} s of training), {budget.evals} evaluations per run, in fp32 whatever the "
             "training precision; evaluation time is not on the clock",
             "- LPIPS: not used (its trunk weights are not available offline; a random-trunk LPIPS is not LPIPS), "
             "so no perceptual metric is reported; rFID likewise",
             f"- sharpness: {DESCRIPTION}"]
    for family in FAMILIES:
        r = next((r for r in results.values() if r["family"] == family), None)  # every run of a family shares it
        if r:
            base = {k: json.dumps(v) for k, v in r["base"].items()}
            lines.append(f"- {family.upper()} base: model `{base['model']}`, loss `{base['loss']}`, train "
                         f"`{base['train']}`")
    lines.append("- per-configuration overrides: " + "; ".join(f"{r['name']}: `{' '.join(r['overrides']) or '-'}`"
                                                              for r in results.values()))
    return lines


def linestyle(group: str):
    """The group's line style in the PSNR plots (a dash pattern comes from YAML as lists; matplotlib wants
    tuples)."""
    style = GROUPS.get(group, {}).get("linestyle", "-")
    return style if isinstance(style, str) else (style[0], tuple(style[1]))


def plot_curves(results: dict, out: Path) -> list[Path]:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("the plots need matplotlib: pip install 'latentae[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    colors = plt.get_cmap("tab20").colors
    for x_key, x_label, name in (("step", "optimizer steps", "psnr_vs_steps.png"),
                                 ("train_seconds", "training time (minutes, evaluation excluded)", "psnr_vs_time.png")):
        fig, ax = plt.subplots(figsize=(8.5, 4.5), dpi=90)
        for i, r in enumerate(results.values()):
            xs = [p[x_key] / (60 if x_key == "train_seconds" else 1) for p in r["curve"]]
            ax.plot(xs, [p["psnr"] for p in r["curve"]], marker="o", markersize=3, color=colors[i % len(colors)],
                    linestyle=linestyle(r["group"]), label=f"{r['name']} ({r['group']})")
        ax.set_xlabel(x_label)
        ax.set_ylabel("held-out PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)
        paths.append(out / name)
    return paths


def write_grid(out: Path, name: str, rows: list[tuple[str, str]], title: str) -> Path | None:
    """rows: (label, run name) reconstructions under the inputs (taken from the first run)."""
    import numpy as np
    import torch

    from latentae.inspection.drawing import image_grid

    files = [out / "runs" / run / "examples.npz" for _, run in rows]
    if not all(f.is_file() for f in files):
        return None
    loaded = [np.load(f) for f in files]
    to_float = lambda a: torch.from_numpy(a).float() / 127.5 - 1  # noqa: E731  uint8 -> [-1, 1]
    images = [list(to_float(loaded[0]["input"]))] + [list(to_float(d["reconstruction"])) for d in loaded]
    image_grid(images, row_labels=["input"] + [label for label, _ in rows], title=title).save(out / name)
    return out / name


def write_report(results: dict, budget, out: Path, heldout: list[tuple[str, int]], *,
                 probe: dict | None = None) -> list[Path]:
    """report.md, results.json, the PSNR plots and the grids in `out`; `heldout`: (label, images) per set;
    `probe`: the diffusability probe's report on the diffusability rows (None: not run)."""
    from latentae.precision import machine_description

    paths = plot_curves(results, out)
    grids = [write_grid(out, "grid_gan.png", [("GAN off", "kl-1e-6"), ("GAN on", "kl-1e-6-gan")],
                        "held-out crops: adversarial term off vs on, equal steps"),
             write_grid(out, "grid_comparison.png", [("plain loop", "plain"), ("latentae", "latentae")],
                        "held-out crops: plain loop vs latentae defaults, equal training time")]
    command = f"python scripts/benchmark.py quality --budget {budget.name}" + (
        f" --scale {budget.scale:g}" if budget.scale != 1 else "")
    lines = [f"# Reconstruction quality: budget `{budget.name}`", "",
             f"{machine_description()}; report written {datetime.datetime.now():%Y-%m-%d %H:%M}. `{command}`. Load "
             "average (1 min) at each run's start and end is in the last column: on a shared machine the time-bound "
             "runs are noisy.", "",
             "## Protocol", "", *protocol_section(results, budget, heldout), "",
             "## All configurations (final evaluation)", "", *results_table(results), "",
             "## Latentae against the plain loop (equal training time)", "", *comparison_section(results), "",
             "## Known findings (verdicts from fixed criteria, not tuned)", "", *findings_section(results), "",
             *(["## Diffusability regularizers", "", *diffusability_section(results, probe), ""]
               if probe is not None or any(r["group"] == DIFFUSABILITY.group for r in results.values()) else []),
             "## Figures", "", "![held-out PSNR vs steps](psnr_vs_steps.png)", "",
             "![held-out PSNR vs training time](psnr_vs_time.png)", ""]
    lines += [f"![{g.stem}]({g.name})" for g in grids if g is not None]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"budget": budget.name, "results": results}, indent=1))
    return [out / "report.md", out / "results.json", *paths, *(g for g in grids if g is not None)]
