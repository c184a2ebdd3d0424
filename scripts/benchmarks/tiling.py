"""High-resolution evaluation in bounded memory: one 2048 x 2048 image (a Kodak photo upscaled) through `evaluate`
with --tiling on and off, each in its own process, with that process's peak RSS (resource.getrusage: torch's
allocations are not seen by tracemalloc); then the seam error, tiled against untiled reconstruction.

    python scripts/benchmark.py tiling [--image ../shared/data/kodak/kodim23.png] [--size 2048] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from .paths import DATA_ROOT, ENTRY

MODEL = dict(block_out_channels=(32, 64, 128, 128), layers_per_block=1, latent_channels=4, norm_num_groups=32)


def child(image: str, size: int, tiling: str, threads: int, out: str) -> None:
    import numpy as np
    import torch

    from latentae.data import load_image
    from latentae.evaluation import evaluate
    from latentae.models import KLAutoencoder

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = KLAutoencoder(**MODEL).eval()
    x = load_image(image, size)[None]  # shorter side resized to `size`, center square
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    result = evaluate(model, [{"image": x, "key": [Path(image).stem]}], metrics=("psnr", "ssim"), tiling=tiling,
                      examples=1)
    seconds = time.perf_counter() - t
    np.save(out, result.examples["reconstruction"][0].numpy())
    print(json.dumps({"tiling": tiling, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rss_before_eval_mib": before, "seconds": seconds, "psnr": result.metrics["psnr"],
                      "ssim": result.metrics["ssim"], "protocol": result.protocol.get("tiling", "untiled")}))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", default=str(DATA_ROOT / "kodak" / "kodim23.png"))
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)


def run(args) -> None:
    if args.child:
        return child(args.image, args.size, args.child, args.threads, args.out)
    import numpy as np

    from machine import load_average

    runs, recon = {}, {}
    for tiling in ("on", "off"):
        out = f"/tmp/bench_tiling_{tiling}.npy"
        line = subprocess.run([sys.executable, str(ENTRY), "tiling",
                               "--child", tiling, "--out", out, "--image", args.image,
                               "--size", str(args.size), "--threads", str(args.threads)],
                              check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        runs[tiling] = json.loads(line)
        recon[tiling] = np.load(out).astype(np.float64)
        print(line, flush=True)
    diff = np.abs(recon["on"] - recon["off"])
    mse = (diff ** 2).mean()
    print(json.dumps({"size": args.size, "model": MODEL, "threads": args.threads, "load": load_average(),
                      "psnr_difference_db": runs["on"]["psnr"] - runs["off"]["psnr"],
                      "psnr_tiled_vs_untiled_db": 10 * np.log10(255**2 / mse) if mse else float("inf"),
                      "max_abs_pixel_difference": float(diff.max()), "mean_abs_pixel_difference": float(diff.mean()),
                      "pixels_differing_over_8_levels": float((diff > 8).mean())}))

