"""Evaluation speed: `latentae eval` at its DEFAULT settings against the plain loop computing the same metrics.

One run, on this machine, for each of --resolutions (256 px center crops and native size by default) on the same
photos (the first --images Kodak photos from ../shared/data, packed into shards): (1) the machine and its GEMM
rates; (2) the plain loop: the encode benchmark's (diffusers `AutoencoderKL.from_pretrained`, fp32, webdataset +
torchvision transforms, batches of 4 of one image size) reconstructing from the posterior mean, with torchmetrics'
PSNR and SSIM in float32 per image and a per-image CSV written; (3) `latentae eval` (the CLI, in this process)
with no option but --model, --data, --resolution and --output: its default precision (auto), metrics (PSNR,
SSIM, LPIPS and rFID when their weights are present), batch, workers, grid, report files (--ours adds options).
Both start from the same exported weights (a KL-f8 autoencoder, random init, seed 0, --block-out-channels) and
include loading the model. Each side's time is split into stages: load, read/decode, model, metrics, bottleneck
statistics (latentae only), writing, other (latentae: accelerator and precision set-up, printing). latentae's
stages come from timing its functions in place (`Stages`); read/decode is what is left of its evaluation loop
(waiting for the data workers, keeping grid images). Reported per resolution: the stage table, the throughput
ratio (target >= 1.0x) and the share of latentae's time spent on metrics (target < 10%).
"""
from __future__ import annotations

import contextlib
import io
import json
import shlex
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from .encode import DEFAULT_ROOT, pack_shards, plain_batches, plain_vae

STAGES = ("load", "read/decode", "model", "metrics", "statistics", "writing", "other")


def add_arguments(p):
    p.add_argument("--data-root", default=str(DEFAULT_ROOT), help="folder holding kodak/ (default: ../shared/data "
                   "beside the checkout)")
    p.add_argument("--images", type=int, default=20, help="Kodak photos (768 x 512) evaluated by both loops "
                   "(default: 20)")
    p.add_argument("--resolutions", default="256,native", help="comma-separated crops, each measured in turn: a side "
                   "in pixels or native (default: 256,native)")
    p.add_argument("--block-out-channels", default="32,64,128,128", help="model widths (default: 32,64,128,128, a "
                   "small f8 model; SD's is 128,256,512,512)")
    p.add_argument("--layers-per-block", type=int, default=2)
    p.add_argument("--plain-batch-size", type=int, default=4, help="the plain loop's batch (default: 4)")
    p.add_argument("--ours", default="", help="extra `latentae eval` options, one string (e.g. \"--metrics psnr\"); "
                   "default: none, the defaults are what is measured")
    p.add_argument("--rounds", type=int, default=2, help="timed runs of each loop per resolution, in the order plain, "
                   "latentae, latentae, plain, ...; the fastest of each is reported (default: 2)")
    p.add_argument("--keep", help="write the model, shards and outputs here and keep them (default: a temp dir)")


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Stages:
    """Seconds per stage, summed over the calls of the functions `timed` wraps (the device synchronized
    around each, so GPU work lands in its own stage)."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def stage(self, name: str):
        synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize()
            self.seconds[name] += time.perf_counter() - start

    def timed(self, fn, name: str):
        def wrapper(*args, **kwargs):
            with self.stage(name):
                return fn(*args, **kwargs)
        return wrapper


@contextlib.contextmanager
def instrumented(stages: Stages):
    """latentae's evaluation path with its functions timed into `stages` (evaluate_many's own time goes to
    "evaluate"; read/decode is computed from it), restored on exit."""
    import latentae.evaluation as evaluation
    import latentae.loading as loading
    from latentae.evaluation import bottleneck, compare, evaluator

    def timed_stats(*args, **kwargs):
        stats = original_stats(*args, **kwargs)
        stats.update = stages.timed(stats.update, "statistics")
        return stats

    def timed_meters(*args, **kwargs):  # LPIPS / rFID, when their weights are present
        meters, unavailable = original_meters(*args, **kwargs)
        for meter in meters.values():
            meter.forward = stages.timed(meter.forward, "metrics")
            if hasattr(meter, "update"):
                meter.update = stages.timed(meter.update, "metrics")
        return meters, unavailable

    original_stats, original_meters = bottleneck.bottleneck_stats, evaluator._build_meters
    patches = [(loading, "load", stages.timed(loading.load, "load")),
               (evaluation, "evaluate_many", stages.timed(evaluation.evaluate_many, "evaluate")),
               (evaluator, "_reconstruct", stages.timed(evaluator._reconstruct, "model")),
               *((evaluator, name, stages.timed(getattr(evaluator, name), "metrics"))
                 for name in ("to_uint8", "psnr_per_image", "ssim_per_image")),
               (bottleneck, "bottleneck_stats", timed_stats), (evaluator, "_build_meters", timed_meters),
               (evaluation, "write_report", stages.timed(evaluation.write_report, "writing")),
               (compare, "write_comparison", stages.timed(compare.write_comparison, "writing"))]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, replacement in patches:
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def run_latentae(argv: list[str]) -> dict[str, float]:
    """`latentae eval ARGV` in this process, its printout swallowed; seconds per stage."""
    from latentae.cli import main as latentae

    stages = Stages()
    start = time.perf_counter()
    with instrumented(stages), contextlib.redirect_stdout(io.StringIO()):
        assert latentae(argv) == 0
    s = stages.seconds
    s["total"] = time.perf_counter() - start
    s["read/decode"] = s.pop("evaluate") - s["model"] - s["metrics"] - s["statistics"]
    s["other"] = s["total"] - sum(s[k] for k in STAGES if k != "other")
    return dict(s)


def run_plain(model_dir: Path, shards: str, resolution: int | None, batch_size: int, out: Path
              ) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """The plain loop: seconds per stage, and {key: (PSNR, SSIM)}."""
    import torch
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    stages = Stages()
    start = time.perf_counter()
    with stages.stage("load"):
        vae = plain_vae(model_dir)
    values: dict[str, tuple[float, float]] = {}
    batches = iter(plain_batches(shards, resolution, batch_size))
    while True:
        with stages.stage("read/decode"):
            batch = next(batches, None)
        if batch is None:
            break
        keys, x = batch
        with stages.stage("model"), torch.no_grad():
            x = x.to(vae.device)
            reconstruction = vae.decode(vae.encode(x).latent_dist.mean).sample
        with stages.stage("metrics"):
            real, fake = (x + 1) / 2, ((reconstruction + 1) / 2).clamp(0, 1)
            psnr = peak_signal_noise_ratio(fake, real, data_range=1.0, reduction="none", dim=(1, 2, 3))
            ssim = structural_similarity_index_measure(fake, real, data_range=1.0, reduction="none")
            values.update(zip(keys, zip(psnr.tolist(), ssim.tolist())))
    with stages.stage("writing"):
        out.mkdir(parents=True, exist_ok=True)
        lines = ["key,psnr,ssim", *(f"{k},{p:.6f},{s:.6f}" for k, (p, s) in values.items())]
        (out / "per_image.csv").write_text("\n".join(lines) + "\n")
    s = stages.seconds
    s["total"] = time.perf_counter() - start
    s["other"] = s["total"] - sum(s[k] for k in STAGES if k != "other")
    return dict(s), values


def stage_table(plain: dict[str, float], ours: dict[str, float], n: int) -> str:
    lines = ["| stage | plain loop s | latentae eval s |", "|---|---|---|"]
    for k in (*STAGES, "total"):
        cell = (lambda s: "-" if k not in s else f"{s[k]:.2f}")
        lines.append(f"| {k} | {cell(plain)} | {cell(ours)} |")
    lines.append(f"| images/s | {n / plain['total']:.3f} | {n / ours['total']:.3f} |")
    return "\n".join(lines)


def run(args):
    import torch

    from latentae.exporting import export
    from latentae.models import KLAutoencoder
    from machine import describe, load_average

    root = Path(args.data_root).resolve()
    photos = sorted((root / "kodak").glob("*.png"))[: args.images]
    if len(photos) < args.images:
        print(f"need {args.images} photos in {root / 'kodak'} (see shared/data/README.md)")
        return 1
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-eval-"))
    channels = tuple(int(c) for c in args.block_out_channels.split(","))
    torch.manual_seed(0)
    model_dir = export(KLAutoencoder(block_out_channels=channels, layers_per_block=args.layers_per_block),
                       work / "model")
    shards = pack_shards(photos, work / "shards", 4)
    describe()
    print(f"KL-f{2 ** (len(channels) - 1)} model {channels} x{args.layers_per_block}, random init; {args.images} "
          f"Kodak photos in shards of 4", flush=True)
    for resolution in args.resolutions.split(","):
        pixels = None if resolution == "native" else int(resolution)
        ours_argv = ["eval", "--model", str(model_dir), "--data", shards, "--resolution", resolution,
                     "--output", str(work / f"ours-{resolution}"), *shlex.split(args.ours)]
        print(f"\n### {resolution}: latentae {' '.join(ours_argv[:1] + ours_argv[5:7] + ours_argv[9:])} (model, data, "
              "output elided)", flush=True)
        runs: dict[str, list[dict]] = {"plain": [], "latentae": []}
        pair = ("plain", "latentae")
        for r in range(args.rounds):
            for name in pair if r % 2 == 0 else pair[::-1]:
                if name == "plain":
                    seconds, plain_values = run_plain(model_dir, shards, pixels, args.plain_batch_size,
                                                      work / f"plain-{resolution}")
                else:
                    seconds = run_latentae(ours_argv)
                runs[name].append(seconds)
                print(f"  {name}: {seconds['total']:.1f} s, load average {load_average()}", flush=True)
        plain, ours = (min(runs[k], key=lambda s: s["total"]) for k in pair)
        report = json.loads((work / f"ours-{resolution}" / "report.json").read_text())
        n = report["n_images"]
        assert n == len(plain_values) == args.images, (n, len(plain_values))
        speedup = plain["total"] / ours["total"]
        share = ours["metrics"] / ours["total"]
        plain_psnr, plain_ssim = (sum(v[i] for v in plain_values.values()) / n for i in (0, 1))
        print(f"\nfastest of {args.rounds} rounds, model loading included; load average now {load_average()}")
        print(stage_table(plain, ours, n))
        print(f"latentae: model in {report['protocol']['model_precision']}, metrics "
              f"{', '.join(k for k in ('psnr', 'ssim', 'lpips', 'rfid') if k in report['metrics'])} "
              f"(unavailable: {', '.join(report['unavailable']) or 'none'}); PSNR {report['metrics']['psnr']:.3f} dB, "
              f"SSIM {report['metrics'].get('ssim', float('nan')):.4f}; plain loop (fp32, float images): PSNR "
              f"{plain_psnr:.3f} dB, SSIM {plain_ssim:.4f}")
        print(f"speed-up of the defaults over the plain loop: {speedup:.2f}x (target >= 1.0x: "
              f"{'MET' if speedup >= 1.0 else 'NOT MET'}); metrics {100 * share:.1f}% of latentae's time "
              f"(target < 10%: {'MET' if share < 0.1 else 'NOT MET'})")
    if not args.keep:
        import shutil

        shutil.rmtree(work)
    return 0
