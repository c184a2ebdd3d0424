"""The published claims judged against the study's final evaluations, by the criteria study.yaml fixes: each
claim's `measure` names a function here that turns the final evaluations of its configurations into a text and
conditions; the verdict follows from how many conditions hold."""
from __future__ import annotations

from .study import CLAIMS, DIFFUSABILITY, Claim


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


def codebook_dim(r: dict, claim: Claim) -> tuple[str, list]:
    """Plain wide codes (first) against narrow l2-normalized ones (second)."""
    a, b = (final(r, n) for n in claim.configurations)
    text = (f"usage {a['codebook_usage']:.1%} (256-d) vs {b['codebook_usage']:.1%} (8-d l2); PSNR {a['psnr']:.2f} "
            f"vs {b['psnr']:.2f} dB")
    return text, [("8-d l2 uses more codes", b["codebook_usage"] > a["codebook_usage"]),
                  ("8-d l2 reconstructs better", b["psnr"] > a["psnr"])]


def fsq(r: dict, claim: Claim) -> tuple[str, list]:
    """FSQ (first) against plain VQ (second); the l2-normalized VQ (third) quoted."""
    f, v, l2 = (final(r, n) for n in claim.configurations)
    usage = claim.thresholds["usage"]
    text = (f"FSQ usage {f['codebook_usage']:.1%} of {f['codebook_size']} (PSNR {f['psnr']:.2f} dB) vs VQ 256-d "
            f"{v['codebook_usage']:.1%} of {v['codebook_size']} ({v['psnr']:.2f} dB), VQ 8-d l2 "
            f"{l2['codebook_usage']:.1%} ({l2['psnr']:.2f} dB)")
    return text, [(f"FSQ usage >= {usage:.0%}", f["codebook_usage"] >= usage),
                  ("FSQ uses more codes than plain VQ", f["codebook_usage"] > v["codebook_usage"])]


def kl_weight(r: dict, claim: Claim) -> tuple[str, list]:
    """Three KL weights, rising."""
    names = claim.configurations
    points = [final(r, n) for n in names]
    text = "; ".join(f"{n}: PSNR {p['psnr']:.2f} dB, KL {p['kl']:.3g} nats/element, "
                     f"{p['active_channels']}/{p['latent_channels']} active" for n, p in zip(names, points))
    kls, psnrs = [p["kl"] for p in points], [p["psnr"] for p in points]
    return text, [("KL falls as the weight rises", kls[0] > kls[1] > kls[2]),
                  ("PSNR falls as the weight rises", psnrs[0] >= psnrs[1] >= psnrs[2])]


def collapse(r: dict, claim: Claim) -> tuple[str, list]:
    """Per weight (kl-W, kl-W-free-bits, kl-W-cyclical): active channels; the claim is judged at the weights where
    the constant schedule collapsed a channel (elsewhere there is nothing to keep active)."""
    texts, conditions = [], []
    names = claim.configurations
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


def gan(r: dict, claim: Claim) -> tuple[str, list]:
    """The adversarial term off (first) and on (second) at equal steps."""
    off, on = (final(r, n) for n in claim.configurations)
    text = (f"HF ratio {off['hf_ratio']:.3f} (off) vs {on['hf_ratio']:.3f} (on); PSNR {off['psnr']:.2f} vs "
            f"{on['psnr']:.2f} dB; SSIM {off['ssim']:.4f} vs {on['ssim']:.4f}; grid: grid_gan.png")
    return text, [("sharper with the GAN (higher HF ratio)", on["hf_ratio"] > off["hf_ratio"])]


def against_vq(r: dict, claim: Claim) -> tuple[str, list]:
    """A quantizer (first) against plain 256-d VQ of the same code count (second): more codes used, PSNR not
    lower."""
    name = claim.configurations[0]
    q, v = (final(r, n) for n in claim.configurations)
    text = (f"{name}: usage {q['codebook_usage']:.1%}, PSNR {q['psnr']:.2f} dB; VQ 256-d: usage "
            f"{v['codebook_usage']:.1%}, PSNR {v['psnr']:.2f} dB")
    return text, [(f"{name} uses more codes than VQ 256-d", q["codebook_usage"] > v["codebook_usage"]),
                  (f"{name} reconstructs at least as well (PSNR)", q["psnr"] >= v["psnr"])]


def two_level(r: dict, claim: Claim) -> tuple[str, list]:
    """The paper's two claims: both codebooks well used, and better reconstruction than one level (here: plain
    256-d VQ of the same code count); the claim's `quoted` ablation is reported when present."""
    name = claim.configurations[0]
    q, v = (final(r, n) for n in claim.configurations)
    usage = claim.thresholds["usage"]
    text = (f"{name}: usage {q['codebook_usage']:.1%}, PSNR {q['psnr']:.2f} dB; VQ 256-d: usage "
            f"{v['codebook_usage']:.1%}, PSNR {v['psnr']:.2f} dB")
    if claim.quoted in r:
        b = final(r, claim.quoted)
        text += f"; with dead-code restart (not in the paper): usage {b['codebook_usage']:.1%}, PSNR {b['psnr']:.2f} dB"
    return text, [(f"{name} uses at least {'half' if usage == 0.5 else f'{usage:.0%}'} of its codes",
                   q["codebook_usage"] >= usage),
                  (f"{name} reconstructs better than VQ 256-d (PSNR)", q["psnr"] > v["psnr"])]


MEASURES = {f.__name__: f for f in (codebook_dim, fsq, kl_weight, collapse, gan, against_vq, two_level)}


def findings_section(results: dict) -> list[str]:
    lines = ["| finding | published claim | measured here | verdict |", "|---|---|---|---|"]
    for claim in CLAIMS:
        names = claim.configurations
        missing = [n for n in names if n not in results]
        if missing:
            measured, result = f"not run ({', '.join(missing)} missing)", "not run"
        else:
            measured, conditions = MEASURES[claim.measure](results, claim)
            result = verdict(conditions)
        lines.append(f"| {claim.title} ({', '.join(names)}) | {claim.claim} | {measured} | {result} |")
    return lines


def diffusability_section(results: dict, probe: dict | None) -> list[str]:
    """The latent regularizers beside the baseline: held-out PSNR / SSIM, the probe's sample metric (what it ranks
    by), its warnings and its flow loss at t = 0.5 (reported, not judged on), the paper's claim and a verdict (a
    lower sample metric than the baseline's, no probe warning, and PSNR within psnr_kept dB of the baseline)."""
    if probe is None:
        return ["(the diffusability probe has not run on these results: see the study's output)"]
    kept = DIFFUSABILITY.thresholds["psnr_kept"]
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
             f"{kept} dB below).", "",
             f"| configuration | what | held-out PSNR (dB) | SSIM | KL (nats/element) | {metric} | vs {base}: PSNR, "
             f"{metric} | probe loss t=0.5 | probe warnings | paper's claim | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    b, b_fd = results[base]["final"], models[base]["sample_metric"][metric]
    for name, e in models.items():
        p, fd = results[name]["final"], e["sample_metric"][metric]
        delta = "-" if name == base else f"{p['psnr'] - b['psnr']:+.2f} dB, {(fd - b_fd) / b_fd:+.1%}"
        if name == base:
            claim, result = "baseline: no regularizer", "-"
        elif name in DIFFUSABILITY.controls:
            claim, result = "control: a lower rate without a regularizer", "not judged"
        else:
            claim = DIFFUSABILITY.claims.get(name, "-")
            result = verdict([(f"lower {metric}", fd < b_fd), ("no probe warning", not e["warnings"]),
                              (f"PSNR within {kept} dB", p["psnr"] >= b["psnr"] - kept)])
        rate = f"{p['kl']:.3g}" if "kl" in p else "-"
        lines.append(f"| {name} | {results[name]['what']} | {p['psnr']:.2f} | {p['ssim']:.4f} | {rate} | {fd:.4g} | {delta} | "
                     f"{e['val_loss']['0.5']:.4f} | {'; '.join(e['warnings']) or '-'} | {claim} | {result} |")
    lines += ["", "Probe details (sample metrics, reconstruction PSNR and rate on its images, loss at every level, "
              "curves): `probe/report.md`; samples decoded by each model: `probe/samples.png`."]
    return lines
