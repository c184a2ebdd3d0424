"""The probe's adversarial table: a real encoder against latent spaces that carry nothing (a constant latent,
each image's mean colour, pure noise) and a copy of it with latents divided by 20, all through the same
`latentae.probe.probe` call `latentae probe` makes, at its defaults (budget cpu, `measured` normalization).
The degenerate models exist only in Python (latentae.probe.adversarial), so this script builds them around
--model instead of loading them from directories.

  python scripts/benchmarks/probe_adversarial.py --model runs/real/export \\
      --data '../shared/data/tiny-imagenet-64/tiny-{00000..00009}.tar' --resolution 32 \\
      --output scripts/results/probe-adversarial
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the real encoder (an export or diffusers directory)")
    p.add_argument("--data", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--budget", default="cpu")
    p.add_argument("--resolution", type=int, help="image side in px (default: the budget's)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared 2-core machine)")
    args = p.parse_args()

    import dataclasses

    import torch

    import latentae
    from latentae.precision import machine_description
    from latentae.probe import BUDGETS, probe
    from latentae.probe.adversarial import Degenerate

    torch.set_num_threads(args.threads)
    budget = BUDGETS[args.budget]
    if args.resolution:
        budget = dataclasses.replace(budget, resolution=args.resolution)
    real = latentae.load(args.model)
    models = {"real": real, **{kind: Degenerate(real, kind) for kind in Degenerate.KINDS}}
    report = probe(models, args.data, budget=budget, budget_name=args.budget, output=args.output)
    report.update(machine=machine_description(), threads=args.threads, model=args.model)
    (Path(args.output) / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['seconds'] / 60:.1f} min ({report['dit_flops'] / report['seconds'] / 1e9:.3g} DiT GFLOP/s); "
          f"ranking by {report['rank_by']}: {', '.join(report['ranking'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
