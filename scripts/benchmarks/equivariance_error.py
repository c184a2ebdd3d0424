"""Equivariance error of autoencoders on held-out images: the PSNR of decode(T(encode(x))) against T(x), with T
EQ-VAE's transform (downscale the latent by s, the image to the decoder's factor times that; then k quarter
turns; `latentae.losses.equivariance.transform`, the code the training term runs). This is what the EQ-VAE term
trains; the plain reconstruction (s = 1, k = 0) is `latentae eval`'s job. Images are center crops by the evaluation
protocol (`latentae.data.reading.load_image`), PSNR on 8-bit images as the evaluator computes it, fp32.

  python scripts/benchmarks/equivariance_error.py --model ../shared/models/taef2 --model runs/eq/export \\
      --data ../shared/data/kodak --resolution 256 --output eq-error.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

# (name, scale, quarter turns): rotation alone, downscaling alone, both
TRANSFORMS = (("rot90", 1.0, 1), ("scale 0.5", 0.5, 0), ("scale 0.5 + rot90", 0.5, 1))


def equivariance_psnr(model, images, *, scale: float, quarter_turns: int):
    """Per-image PSNR (dB) of the decoded transformed latent against the transformed image."""
    import torch

    from latentae.evaluation.metrics import psnr_per_image, to_uint8
    from latentae.losses.equivariance import transform

    with torch.no_grad():
        latent, target = transform(model.encode(images), images, scale=scale, quarter_turns=quarter_turns)
        return psnr_per_image(to_uint8(target), to_uint8(model.decode(latent)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="anything latentae.load opens; repeat")
    p.add_argument("--data", required=True, help="a folder of images")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--output", required=True, help="JSON file: mean PSNR per model and transform")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared 2-core machine)")
    args = p.parse_args()

    import torch

    import latentae
    from latentae.data.folder import is_image_file
    from latentae.data.reading import load_image
    from latentae.precision import machine_description

    torch.set_num_threads(args.threads)
    files = sorted(str(f) for f in Path(args.data).iterdir() if is_image_file(str(f)))
    images = torch.stack([load_image(f, args.resolution) for f in files])
    results = {}
    for path in args.model:
        model = latentae.load(path).eval()
        results[path] = {name: float(torch.cat([equivariance_psnr(model, images[i:i + 4], scale=s, quarter_turns=k)
                                                for i in range(0, len(images), 4)]).mean())
                         for name, s, k in TRANSFORMS}
        print(path, ", ".join(f"{name}: {v:.2f} dB" for name, v in results[path].items()), flush=True)
    Path(args.output).write_text(json.dumps({"data": args.data, "images": len(files), "resolution": args.resolution,
                                             "machine": machine_description(), "psnr_db": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
