"""The report of `benchmark.py quality`: Markdown tables, the published claims beside the measured numbers with
a verdict from fixed criteria, PSNR curves (matplotlib) and image grids, from the runs' result.json files."""
from __future__ import annotations

import datetime
import json
from pathlib import Path

CLAIMS = {  # finding -> (title, configurations, published claim)
    "codebook-dim": ("LlamaGen codebook", ("vq-256d", "vq-8d-l2"),
                     "Sun et al. 2024 (LlamaGen) Table 2: l2-normalized codes of dimension 8 instead of 256 raise "
                     "codebook usage (97% for 16384 codes on ImageNet 256) and improve reconstruction (rFID, PSNR)"),
    "fsq": ("FSQ usage", ("fsq", "vq-256d", "vq-8d-l2"),
            "Mentzer et al. 2023 (FSQ): near-full codebook usage with no auxiliary loss, where VQ under-uses its "
            "codebook as it grows; reconstruction comparable to VQ"),
    "kl-weight": ("KL weight trade-off", ("kl-1e-6", "kl-1e-2", "kl-1"),
                  "a larger KL weight buys a lower rate (KL) with reconstruction quality (beta-VAE, Higgins et al. "
                  "2017); LDM (Rombach et al. 2022) keeps it tiny (1e-6) for faithful reconstructions"),
    "collapse": ("posterior collapse", ("kl-1", "kl-1-free-bits", "kl-1-cyclical", "kl-10", "kl-10-free-bits",
                                        "kl-10-cyclical"),
                 "at a high KL weight, free bits (Kingma et al. 2016) and cyclical annealing (Fu et al. 2019) keep "
                 "more latent channels active than a constant weight"),
    "rotation": ("rotation trick", ("vq-256d-rotation", "vq-256d"),
                 "Fifty et al. 2024: the rotation trick instead of the straight-through copy raises codebook usage "
                 "and lowers reconstruction error of the same VQ"),
    "simvq": ("SimVQ", ("simvq", "vq-256d"),
              "Zhu et al. 2024 (SimVQ): a frozen random codebook times one learned linear map uses nearly every code "
              "where plain VQ collapses, and reconstructs better"),
    "ibq": ("IBQ", ("ibq", "vq-256d"),
            "Shi et al. 2024 (IBQ): index backpropagation gives every code gradient, so high-dimensional codebooks "
            "keep high usage (where VQ collapses) and reconstruct better"),
    "bsq": ("BSQ", ("bsq", "vq-256d"),
            "Zhao et al. 2024 (BSQ): binary codes on the sphere with a factorized entropy term use the implicit "
            "codebook fully and reconstruct at least as well as VQ of the same size"),
    "vqvae2": ("two-level VQ-VAE-2", ("vqvae2", "vq-256d"),
               "Razavi et al. 2019 (VQ-VAE-2): a top codebook at half resolution conditioning the bottom one captures "
               "global structure; the hierarchy reconstructs better than one level with well-used codebooks (here it "
               "also carries 1.25x the tokens)"),
    "gan": ("adversarial term", ("kl-1e-6", "kl-1e-6-gan"),
            "Esser et al. 2021 (VQGAN), Rombach et al. 2022: a patch-based adversarial loss gives sharper "
            "reconstructions than pixel losses alone, at a small PSNR cost"),
}
LINESTYLES = {"comparison": "-", "codebook": "--", "kl-weight": "-.", "collapse": ":", "gan": (0, (5, 1)),
              "diffusability": (0, (1, 1))}
DIFFUSABILITY_CLAIMS = {  # configuration -> its paper's claim (the papers measure gFID / FVD, which the probe is not)
    "kl-eq": "Kouzelis et al. 2025 (EQ-VAE): 5 epochs of SD-VAE fine-tuning make DiT-XL/2 reach its gFID x7 faster, "
             "without degrading reconstruction (rFID)",
    "kl-scale-eq": "Skorokhodov et al. 2025: up to 20K fine-tuning steps cut the FID of DiT on ImageNet 256 by 19% "
                   "(FVD by 44%+ on Kinetics-700), reconstruction kept",
    "kl-latent-noise": "Yang et al. 2025 (l-DeTok): a tokenizer trained to decode heavily noised latents improves "
                       "generation (gFID, ImageNet 256) of six generative models over standard tokenizers",
}
PSNR_KEPT = 0.25  # dB below the baseline still counted as 'reconstruction kept' (fixed before the runs, not tuned)


def final(results: dict, name: str) -> dict:
    return results[name]["final"]


def verdict(conditions: list[tuple[str, bool]]) -> str:
    """reproduced (every condition holds), partly (naming those that fail), not reproduced (none holds)."""
    failed = [text for text, ok in conditions if not ok]
    if not failed:
        return "**reproduced**"
    if len(failed) == len(conditions):
        return "**not reproduced** (fails: " + "; ".join(failed) + ")"
    return "**partly** (fails: " + "; ".join(failed) + ")"


def measure_codebook_dim(r: dict) -> tuple[str, list]:
    a, b = final(r, "vq-256d"), final(r, "vq-8d-l2")
    text = (f"usage {a['codebook_usage']:.1%} (256-d) vs {b['codebook_usage']:.1%} (8-d l2); PSNR {a['psnr']:.2f} "
            f"vs {b['psnr']:.2f} dB")
    return text, [("8-d l2 uses more codes", b["codebook_usage"] > a["codebook_usage"]),
                  ("8-d l2 reconstructs better", b["psnr"] > a["psnr"])]


def measure_fsq(r: dict) -> tuple[str, list]:
    f, v = final(r, "fsq"), final(r, "vq-256d")
    l2 = final(r, "vq-8d-l2")
    text = (f"FSQ usage {f['codebook_usage']:.1%} of {f['codebook_size']} (PSNR {f['psnr']:.2f} dB) vs VQ 256-d "
            f"{v['codebook_usage']:.1%} of {v['codebook_size']} ({v['psnr']:.2f} dB), VQ 8-d l2 "
            f"{l2['codebook_usage']:.1%} ({l2['psnr']:.2f} dB)")
    return text, [("FSQ usage >= 90%", f["codebook_usage"] >= 0.9),
                  ("FSQ uses more codes than plain VQ", f["codebook_usage"] > v["codebook_usage"])]


def measure_kl_weight(r: dict) -> tuple[str, list]:
    names = CLAIMS["kl-weight"][1]
    points = [final(r, n) for n in names]
    text = "; ".join(f"{n}: PSNR {p['psnr']:.2f} dB, KL {p['kl']:.3g} nats/element, "
                     f"{p['active_channels']}/{p['latent_channels']} active" for n, p in zip(names, points))
    kls, psnrs = [p["kl"] for p in points], [p["psnr"] for p in points]
    return text, [("KL falls as the weight rises", kls[0] > kls[1] > kls[2]),
                  ("PSNR falls as the weight rises", psnrs[0] >= psnrs[1] >= psnrs[2])]


def measure_collapse(r: dict) -> tuple[str, list]:
    """Per weight (kl-W, kl-W-free-bits, kl-W-cyclical): active channels; the claim is judged at the weights where
    the constant schedule collapsed a channel (elsewhere there is nothing to keep active)."""
    texts, conditions = [], []
    names = CLAIMS["collapse"][1]
    for constant, free_bits, cyclical in zip(names[::3], names[1::3], names[2::3]):
        c, fb, cy = final(r, constant), final(r, free_bits), final(r, cyclical)
        weight = constant.removeprefix("kl-")
        texts.append(f"weight {weight}: " + ", ".join(
            f"{label} {p['active_channels']}/{p['latent_channels']} active (KL {p['kl']:.3g}, {p['psnr']:.2f} dB)"
            for label, p in (("constant", c), ("free bits", fb), ("cyclical", cy))))
        if c["active_channels"] < c["latent_channels"]:
            conditions += [(f"free bits keep more channels active at weight {weight}",
                            fb["active_channels"] > c["active_channels"]),
                           (f"cyclical keeps more channels active at weight {weight}",
                            cy["active_channels"] > c["active_channels"])]
    if not conditions:
        conditions = [("a constant weight collapses a channel (else nothing to test)", False)]
    return "; ".join(texts), conditions


def measure_gan(r: dict) -> tuple[str, list]:
    off, on = final(r, "kl-1e-6"), final(r, "kl-1e-6-gan")
    text = (f"HF ratio {off['hf_ratio']:.3f} (off) vs {on['hf_ratio']:.3f} (on); PSNR {off['psnr']:.2f} vs "
            f"{on['psnr']:.2f} dB; SSIM {off['ssim']:.4f} vs {on['ssim']:.4f}; grid: grid_gan.png")
    return text, [("sharper with the GAN (higher HF ratio)", on["hf_ratio"] > off["hf_ratio"])]


def measure_against_vq(name: str):
    """A quantizer of issue 13 against plain 256-d VQ of the same code count: more codes used, PSNR not lower."""
    def measure(r: dict) -> tuple[str, list]:
        q, v = final(r, name), final(r, "vq-256d")
        text = (f"{name}: usage {q['codebook_usage']:.1%}, PSNR {q['psnr']:.2f} dB; VQ 256-d: usage "
                f"{v['codebook_usage']:.1%}, PSNR {v['psnr']:.2f} dB")
        return text, [(f"{name} uses more codes than VQ 256-d", q["codebook_usage"] > v["codebook_usage"]),
                      (f"{name} reconstructs at least as well (PSNR)", q["psnr"] >= v["psnr"])]
    return measure


def measure_vqvae2(r: dict) -> tuple[str, list]:
    """The paper's two claims: both codebooks well used (at least half of the codes), and better reconstruction
    than one level (here: plain 256-d VQ of the same code count); the restart ablation is quoted when present."""
    q, v = final(r, "vqvae2"), final(r, "vq-256d")
    text = (f"vqvae2: usage {q['codebook_usage']:.1%}, PSNR {q['psnr']:.2f} dB; VQ 256-d: usage "
            f"{v['codebook_usage']:.1%}, PSNR {v['psnr']:.2f} dB")
    if "vqvae2-restart" in r:
        b = final(r, "vqvae2-restart")
        text += f"; with dead-code restart (not in the paper): usage {b['codebook_usage']:.1%}, PSNR {b['psnr']:.2f} dB"
    return text, [("vqvae2 uses at least half of its codes", q["codebook_usage"] >= 0.5),
                  ("vqvae2 reconstructs better than VQ 256-d (PSNR)", q["psnr"] > v["psnr"])]


MEASURES = {"rotation": measure_against_vq("vq-256d-rotation"), "simvq": measure_against_vq("simvq"),
            "ibq": measure_against_vq("ibq"), "bsq": measure_against_vq("bsq"), "vqvae2": measure_vqvae2,
            "codebook-dim": measure_codebook_dim, "fsq": measure_fsq, "kl-weight": measure_kl_weight,
            "collapse": measure_collapse, "gan": measure_gan}


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


def findings_section(results: dict) -> list[str]:
    lines = ["| finding | published claim | measured here | verdict |", "|---|---|---|---|"]
    for key, (title, names, claim) in CLAIMS.items():
        missing = [n for n in names if n not in results]
        if missing:
            measured, result = f"not run ({', '.join(missing)} missing)", "not run"
        else:
            measured, conditions = MEASURES[key](results)
            result = verdict(conditions)
        lines.append(f"| {title} ({', '.join(names)}) | {claim} | {measured} | {result} |")
    return lines


def protocol_section(results: dict, budget, heldout: list[tuple[str, int]]) -> list[str]:
    from latentae.evaluation.sharpness import DESCRIPTION

    sets = ", ".join(f"{label} ({n} images)" for label, n in heldout)
    any_kl = next((r for r in results.values() if r["family"] == "kl"), None)
    any_vq = next((r for r in results.values() if r["family"] == "vq"), None)
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
    for family, r in (("KL", any_kl), ("VQ", any_vq)):
        if r:
            base = {k: json.dumps(v) for k, v in r["base"].items()}
            lines.append(f"- {family} base: model `{base['model']}`, loss `{base['loss']}`, train `{base['train']}`")
    lines.append("- per-configuration overrides: " + "; ".join(f"{r['name']}: `{' '.join(r['overrides']) or '-'}`"
                                                              for r in results.values()))
    return lines


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
                    linestyle=LINESTYLES.get(r["group"], "-"), label=f"{r['name']} ({r['group']})")
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

    from latentae.inspect.drawing import image_grid

    files = [out / "runs" / run / "examples.npz" for _, run in rows]
    if not all(f.is_file() for f in files):
        return None
    loaded = [np.load(f) for f in files]
    to_float = lambda a: torch.from_numpy(a).float() / 127.5 - 1  # noqa: E731  uint8 -> [-1, 1]
    images = [list(to_float(loaded[0]["input"]))] + [list(to_float(d["reconstruction"])) for d in loaded]
    image_grid(images, row_labels=["input"] + [label for label, _ in rows], title=title).save(out / name)
    return out / name


def diffusability_section(results: dict, probe: dict | None) -> list[str]:
    """Issue 12's regularizers beside kl-1e-6: held-out PSNR / SSIM, the probe's sample metric (what it ranks by),
    its warnings and its flow loss at t = 0.5 (reported, not judged on), the paper's claim and a verdict (a lower
    sample metric than the baseline's, no probe warning, and PSNR within PSNR_KEPT dB of the baseline)."""
    if probe is None:
        return ["(the diffusability probe has not run on these results: see the study's output)"]
    s, metric = probe["settings"], probe["rank_by"]
    models, run = probe["models"], probe.get("run", {})
    base = next(iter(models))  # the baseline is probed first
    lines = [f"Probe: `latentae.probe`, preset `{probe['budget']}` on `{probe['data']}`: {s['max_images']} images "
             f"at {s['resolution']} px ({s['val_images']} held out, the first ones), each final model's latents "
             f"(posterior means) standardized per channel ({probe['normalization']}), the same DiT "
             f"({s['layers']} layers x {s['heads']} heads x {s['head_dim']}, patch {s['patch_size']}) trained "
             f"{s['steps']} steps of batch {s['batch_size']} at lr {s['lr']:g} with flow matching, seed "
             f"{probe['seed']}, one probe call for all models"
             + (f" ({run['seconds'] / 60:.1f} min at {run['threads']} thread(s))" if run else "")
             + f". Sample metric: {metric} of {s['samples']} samples decoded by each model against the held-out "
             f"images ({probe['sample_metrics'][metric]}); lower is better. Loss: validation flow-matching loss at "
             f"t = 0.5, reported only (a latent that carries nothing can have the lowest). Verdict: diffuses better "
             f"({metric} below {base}'s, no probe warning) and reconstruction kept (held-out PSNR at most "
             f"{PSNR_KEPT} dB below).", "",
             f"| configuration | what | held-out PSNR (dB) | SSIM | {metric} | vs {base}: PSNR, {metric} | probe "
             "loss t=0.5 | probe warnings | paper's claim | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    b, b_fd = results[base]["final"], models[base]["sample_metric"][metric]
    for name, e in models.items():
        p, fd = results[name]["final"], e["sample_metric"][metric]
        if name == base:
            delta, claim, result = "-", "baseline: no regularizer", "-"
        else:
            delta = f"{p['psnr'] - b['psnr']:+.2f} dB, {(fd - b_fd) / b_fd:+.1%}"
            claim = DIFFUSABILITY_CLAIMS.get(name, "-")
            result = verdict([(f"lower {metric}", fd < b_fd), ("no probe warning", not e["warnings"]),
                              (f"PSNR within {PSNR_KEPT} dB", p["psnr"] >= b["psnr"] - PSNR_KEPT)])
        lines.append(f"| {name} | {results[name]['what']} | {p['psnr']:.2f} | {p['ssim']:.4f} | {fd:.4g} | {delta} | "
                     f"{e['val_loss']['0.5']:.4f} | {'; '.join(e['warnings']) or '-'} | {claim} | {result} |")
    lines += ["", "Probe details (sample metrics, reconstruction PSNR and rate on its images, loss at every level, "
              "curves): `probe/report.md`; samples decoded by each model: `probe/samples.png`."]
    return lines


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
             *(["## Diffusability (issue 12)", "", *diffusability_section(results, probe), ""]
               if probe is not None or any(r["group"] == "diffusability" for r in results.values()) else []),
             "## Figures", "", "![held-out PSNR vs steps](psnr_vs_steps.png)", "",
             "![held-out PSNR vs training time](psnr_vs_time.png)", ""]
    lines += [f"![{g.stem}]({g.name})" for g in grids if g is not None]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"budget": budget.name, "results": results}, indent=1))
    return [out / "report.md", out / "results.json", *paths, *(g for g in grids if g is not None)]
