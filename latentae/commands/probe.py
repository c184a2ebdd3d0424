"""Diffusability probe: how well a small diffusion transformer learns each model's latent space, judged by
what its samples decode to.

Encodes the images of --data at one resolution (KL: posterior means; VQ: quantized codes), normalizes them
(--normalize measured, the default: each model's own per-channel mean/std on the training split, in its
pipeline's layout; config: the model's scaling_factor/shift_factor, latents_mean/latents_std or FLUX.2 bn
statistics, refused where they do not standardize the latents, i.e. were never measured for this model), holds
out the first images for validation, and trains the same DiT (diffusers' DiTTransformer2DModel, flow matching)
on each model's latents with the same seed, optimizer and budget. Each model decodes the DiT's samples, and the
models are ranked by the Fréchet distance of those images to the held-out images: FID (Inception weights) when
present, else FD-DINOv2 (edm2's protocol) when present, else FD-pixel, a weight-free offline fallback. Models
whose latents barely vary between or within images, or whose reconstructions are not 2 dB better than each image's
flat mean colour, are warned about and rank after the others. Writes to --output: report.json and report.md
(sample metrics, reconstruction PSNR, rate, validation flow-matching loss at t = 0.1 ... 0.9 and its curve) and
samples.png. The expected duration is printed before the DiTs train.

Budgets: smoke (seconds, for tests), cpu (64 px, 1500 steps, 256 samples), gpu (256 px, 12-layer DiT).

  latentae probe --model out-a/export --model out-b/export --data kodak/ --output probe-out --budget cpu
"""

HELP = ("diffusability probe: train the same small DiT on each model's latents and rank the models by their "
        "decoded samples")


def add_arguments(p):
    from latentae.options import PROBE_BUDGETS, PROBE_NORMALIZATIONS, non_negative_int, positive_int

    p.add_argument("--model", action="append", required=True, help="export / diffusers directory or LDM "
                   "checkpoint; repeat to compare models")
    p.add_argument("--data", required=True, help="images: shards, tar, image folder or files (comma list)")
    p.add_argument("--output", required=True, help="folder for report.json, report.md and samples.png")
    p.add_argument("--budget", choices=PROBE_BUDGETS, default="cpu", help="training budget preset (default: cpu)")
    p.add_argument("--resolution", type=positive_int, help="image side in px (default: the budget's)")
    p.add_argument("--normalize", choices=PROBE_NORMALIZATIONS, default=PROBE_NORMALIZATIONS[0],
                   help=f"latent normalization (default: {PROBE_NORMALIZATIONS[0]})")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the DiT, its batches and samples")


def run(args):
    import dataclasses

    from latentae.loading import load
    from latentae.probe import BUDGETS, probe
    from latentae.runtime import default_device

    budget = BUDGETS[args.budget]
    if args.resolution:
        budget = dataclasses.replace(budget, resolution=args.resolution)
    device = default_device()
    models = {path: load(path, device=device) for path in dict.fromkeys(args.model)}  # all load before training
    report = probe(models, args.data, budget=budget, budget_name=args.budget, seed=args.seed,
                   normalize=args.normalize, output=args.output, device=device)
    metric = report["rank_by"]
    for rank, name in enumerate(report["ranking"], 1):
        e = report["models"][name]
        rate = "n/a" if e["rate"] is None else f"{e['rate']:.3g} {e['rate_unit']}"
        print(f"{rank}. {name}: {metric} {e['sample_metric'][metric]:.4g}; PSNR {e['psnr']:.2f} dB; rate {rate}; "
              f"flow loss {e['val_loss']['0.5']:.4f} at t = 0.5"
              + "".join(f"\n   WARNING: {w}" for w in e["warnings"]))
    print(f"{report['normalization']} normalization; wrote report.md, report.json and samples.png to {args.output}")
    return 0
