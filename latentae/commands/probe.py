"""Diffusability probe: how well a small diffusion transformer learns each model's latent space.

Encodes the images of --data at one resolution (KL: posterior means; VQ: quantized codes), normalizes them
(--normalize config: the model's scaling_factor/shift_factor or latents_mean/latents_std, as diffusers pipelines
do; measured: each model's own per-channel mean/std on the training split), holds out the first images for
validation, and trains the same DiT (diffusers' DiTTransformer2DModel, flow matching) on each model's latents
with the same seed, optimizer and budget. Writes to --output: report.json and report.md (validation
flow-matching loss at t = 0.1 ... 0.9 and its curve over training; models ranked by the loss at t = 0.5, lower is better) and
samples.png (Euler samples decoded by each model). gFID is not computed.

Budgets: smoke (seconds, for tests), cpu (64 px; its run time is not measured yet), gpu (256 px, larger DiT).

  latentae probe --model out-a/export --model out-b/export --data kodak/ --output probe-out --budget cpu
"""

HELP = "diffusability probe: train the same small DiT on each model's latents and compare validation losses"


def add_arguments(p):
    from latentae.cli import non_negative_int, positive_int
    from latentae.probe.latents import NORMALIZATIONS
    from latentae.probe.model import BUDGETS

    p.add_argument("--model", action="append", required=True, help="export / diffusers directory or LDM "
                   "checkpoint; repeat to compare models")
    p.add_argument("--data", required=True, help="images: shards, tar, image folder or files (comma list)")
    p.add_argument("--output", required=True, help="folder for report.json, report.md and samples.png")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="cpu", help="training budget preset (default: cpu)")
    p.add_argument("--resolution", type=positive_int, help="image side in px (default: the budget's)")
    p.add_argument("--normalize", choices=NORMALIZATIONS, default="config", help="latent normalization "
                   "(default: config)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the DiT, its batches and samples")


def run(args):
    import dataclasses

    from latentae.latents.runtime import default_device
    from latentae.loading import load
    from latentae.probe import BUDGETS, probe

    budget = BUDGETS[args.budget]
    if args.resolution:
        budget = dataclasses.replace(budget, resolution=args.resolution)
    device = default_device()
    models = {path: load(path, device=device) for path in dict.fromkeys(args.model)}  # all load before training
    report = probe(models, args.data, budget=budget, budget_name=args.budget, seed=args.seed,
                   normalize=args.normalize, output=args.output, device=device)
    for rank, name in enumerate(report["ranking"], 1):
        e = report["models"][name]
        print(f"{rank}. {name}: validation flow-matching loss {e['val_loss'][str(report['rank_level'])]:.4f} at "
              f"t = {report['rank_level']} (mean over levels {e['val_loss_mean']:.4f})")
    print(f"wrote report.md, report.json and samples.png to {args.output}")
    return 0
