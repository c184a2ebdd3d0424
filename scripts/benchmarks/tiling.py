"""High-resolution evaluation in bounded memory: images through `evaluate` with --tiling on and off, each mode in
its own process, with that process's peak RSS (resource.getrusage: torch's allocations are not seen by
tracemalloc); then the seam error, tiled against untiled reconstruction, and each against the input.

    python scripts/benchmark.py tiling [--model ../shared/models/taef2] [--size 2048] [--threads 1]
    python scripts/benchmark.py tiling --model ../shared/models/taef2 --size 0 --tile 256 --overlap 64 \\
        --image kodim01.png,kodim02.png      # native size, small tiles: several seams per photo
    python scripts/benchmark.py tiling --metrics-only --size 4096   # PSNR / SSIM alone on one pair
    python scripts/benchmark.py tiling --metrics-only --lpips      # LPIPS alone on one pair

--model: a trained model (latentae.load); without it a random-init KLAutoencoder (MODEL). --size: the shorter
side resized to this, center square (a Kodak photo upscaled); 0: native size. --metrics-only: no model, the
input against a blurred copy of itself through the per-image metrics, to see their own peak.
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
KODAK = DATA_ROOT / "kodak"


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _images(args) -> list[str]:
    return [str(p if Path(p).is_absolute() or Path(p).exists() else KODAK / p) for p in args.image.split(",")]


def child(args) -> None:
    import numpy as np
    import torch

    from latentae.data import load_image
    from latentae.evaluation import evaluate

    torch.set_num_threads(args.threads)
    if args.model:
        import latentae

        model = latentae.load(args.model).eval()
    else:
        from latentae.models import KLAutoencoder

        torch.manual_seed(0)
        model = KLAutoencoder(**MODEL).eval()
    if args.tile:
        from latentae.models import tiling

        tiling.TILE_PX, tiling.OVERLAP_PX = args.tile, args.overlap
    before, t, cpu, out = _peak_mib(), time.perf_counter(), time.process_time(), {}
    psnr = []
    for path in _images(args):
        x = load_image(path, args.size or None)[None]
        result = evaluate(model, [{"image": x, "key": [Path(path).stem]}], metrics=("psnr", "ssim"),
                          tiling=args.child, examples=1)
        out[Path(path).stem] = result.examples["reconstruction"][0].numpy()
        psnr.append((result.metrics["psnr"], result.metrics["ssim"]))
    seconds = time.perf_counter() - t
    np.savez(args.out, **out)
    print(json.dumps({"tiling": args.child, "peak_rss_mib": _peak_mib(), "rss_before_eval_mib": before,
                      "seconds": seconds, "cpu_seconds": time.process_time() - cpu, "psnr_ssim": psnr,
                      "protocol": result.protocol.get("tiling", "untiled")}))


def metrics_only(args) -> None:
    """The per-image metrics alone on one large pair: the input and a blurred copy (no model); PSNR and SSIM, or
    with --lpips LPIPS-alex (a random-init trunk: the real one's shapes, no weight file needed)."""
    import torch

    from latentae.data import load_image
    from latentae.evaluation.metrics import psnr_per_image, ssim_per_image, to_uint8, uint8_to_unit

    torch.set_num_threads(args.threads)
    x = load_image(_images(args)[0], args.size or None)[None]
    real = to_uint8(x)
    fake = to_uint8(torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
    del x
    if args.lpips:
        from latentae.losses import PerceptualLoss

        lpips = PerceptualLoss("alex", random_init=True)
        fns = {"lpips": lambda r, f: lpips(uint8_to_unit(f), uint8_to_unit(r))}
    else:
        fns = {"psnr": psnr_per_image, "ssim": ssim_per_image}
    before, t, cpu = _peak_mib(), time.perf_counter(), time.process_time()
    with torch.no_grad():
        values = {name: float(fn(real, fake)) for name, fn in fns.items()}
    print(json.dumps({"size": tuple(real.shape[-2:]), "rss_before_mib": before, "peak_rss_mib": _peak_mib(),
                      "seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - cpu, **values}))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", default="kodim23.png", help="comma-separated files (names resolve in Kodak)")
    p.add_argument("--size", type=int, default=2048, help="shorter side resized to this, center square; 0: native")
    p.add_argument("--model", help="a trained model's path (default: a random-init KLAutoencoder)")
    p.add_argument("--tile", type=int, default=0, help="tile size in pixels (default: latentae's, 512)")
    p.add_argument("--overlap", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--metrics-only", action="store_true")
    p.add_argument("--lpips", action="store_true", help="--metrics-only: LPIPS instead of PSNR / SSIM")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)


def _psnr(a, b) -> float:
    import numpy as np

    mse = ((a - b) ** 2).mean()
    return float(10 * np.log10(255**2 / mse)) if mse else float("inf")


def run(args) -> None:
    if args.metrics_only:
        return metrics_only(args)
    if args.child:
        return child(args)
    import numpy as np
    from machine import load_average

    from latentae.data import load_image
    from latentae.evaluation.metrics import to_uint8

    runs, recon = {}, {}
    for tiling in ("on", "off"):
        out = f"/tmp/bench_tiling_{tiling}.npz"
        cmd = [sys.executable, str(ENTRY), "tiling", "--child", tiling, "--out", out, "--image", args.image,
               "--size", str(args.size), "--threads", str(args.threads), "--tile", str(args.tile),
               "--overlap", str(args.overlap)] + (["--model", args.model] if args.model else [])
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        runs[tiling] = json.loads(line)
        recon[tiling] = {k: v.astype(np.float64) for k, v in np.load(out).items()}
        print(line, flush=True)
    per_image = {}
    for path in _images(args):
        key = Path(path).stem
        real = to_uint8(load_image(path, args.size or None)).numpy().astype(np.float64)
        on, off = recon["on"][key], recon["off"][key]
        diff = np.abs(on - off)
        per_image[key] = {"tiled_vs_untiled_db": _psnr(on, off), "tiled_vs_input_db": _psnr(on, real),
                          "untiled_vs_input_db": _psnr(off, real), "max_abs_difference": float(diff.max()),
                          "mean_abs_difference": float(diff.mean()),
                          "pixels_over_8_levels": float((diff > 8).mean())}
        print(json.dumps({key: per_image[key]}), flush=True)
    mean = {k: float(np.mean([v[k] for v in per_image.values()])) for k in next(iter(per_image.values()))}
    print(json.dumps({"size": args.size, "model": args.model or MODEL, "tile": args.tile or 512,
                      "overlap": args.overlap if args.tile else 128, "threads": args.threads,
                      "load": load_average(), "mean": mean,
                      "tiled_minus_untiled_vs_input_db": mean["tiled_vs_input_db"] - mean["untiled_vs_input_db"]}))
