"""Evaluation at 50k-image scale: peak memory against the image count, and images/s at 256 px.

memory: the tiny preset's model (configs/tiny-kl.yaml, random init) evaluated resumably (a resume file after every
shard) on N Tiny ImageNet images center-cropped to --resolution px (its 10 shards of 1000, repeated above 10k),
PSNR + SSIM + rFID with an Inception-sized stand-in (a fixed random projection of 8 x 8-pooled images to 2048
features: the covariance sums the real network would keep), report files and per-image CSV written; the process's
RSS now and at its peak after each shard, so one run gives the curve from 1k to N.
speed: images/s at 256 px on BSDS500 test photos for the tiny preset and an SD-size KL model (random init, latentae
eval's precision auto: bf16 here), PSNR + SSIM + stand-in rFID, 4 images per batch, decoding in the process: the
resumable path (a resume file after the chunk) against the same evaluation without one, interleaved in one process.

    python scripts/benchmark.py eval_scale memory [--count 20000] [--resolution 16] [--threads 1]
    python scripts/benchmark.py eval_scale speed [--images 24] [--sd-images 4] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from .paths import DATA_ROOT

TINY = {"block_out_channels": (32, 64, 64), "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 16,
        "mid_block_add_attention": False}  # configs/tiny-kl.yaml's model
SD = {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "latent_channels": 4}  # SD's VAE size
SHARDS = DATA_ROOT / "tiny-imagenet-64"


def stand_in():
    """An Inception-sized FID feature stand-in: uint8 [B, 3, H, W] -> 2048 features, a fixed random projection."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Features(nn.Module):
        num_features = 2048

        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(192, 2048)
            with torch.no_grad():
                self.proj.weight.copy_(torch.randn(2048, 192, generator=torch.Generator().manual_seed(0)))
                self.proj.bias.zero_()

        def forward(self, x):
            return self.proj(F.adaptive_avg_pool2d(x.float() / 255, 8).flatten(1))

    return Features()


def _evaluate(model, source: str, resolution: int, output: Path, resume: bool, threads: int):
    import torch

    from latentae.data import DataConfig, eval_loader
    from latentae.evaluation import evaluate_many, write_report
    from latentae.runtime import resolve

    torch.set_num_threads(threads)
    precision = resolve(device=torch.device("cpu"), precision="auto").precision  # latentae eval's default
    loader = eval_loader(DataConfig(resolution=resolution, num_workers=0), batch_size=4, source=source)
    t = time.perf_counter()
    result = evaluate_many({"model": model}, loader, metrics=("psnr", "ssim", "rfid"), fid_feature=stand_in(),
                           resume=output / "resume" if resume else None, progress=True, examples=8,
                           precision=precision)["model"]
    write_report(result, output, {"data": source})
    return result, time.perf_counter() - t, precision


def memory_child(count: int, resolution: int, threads: int) -> None:
    import torch

    from latentae.evaluation import resume
    from latentae.models import KLAutoencoder

    shards = [str(SHARDS / f"tiny-{i % 10:05d}.tar") for i in range(count // 1000)]
    torch.manual_seed(0)
    model = KLAutoencoder(**TINY).eval()
    curve = []  # (images evaluated, RSS MiB now, peak RSS MiB so far) after each chunk's resume file
    save = resume.Checkpoint.save

    def save_and_measure(self, state):
        save(self, state)
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        curve.append((len(state["keys"]), int(status["VmRSS"].split()[0]) // 1024,
                      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024))

    resume.Checkpoint.save = save_and_measure
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as out:
        result, seconds, precision = _evaluate(model, ",".join(shards), resolution, Path(out), True, threads)
        resume_mib = max((p.stat().st_size for p in (Path(out) / "resume").glob("*.pt")), default=0) / 2**20
    print(json.dumps({"images": result.n_images, "resolution": resolution, "precision": precision,
                      "rss_before_eval_mib": before,
                      "after_each_chunk_images_rss_peak_mib": curve,
                      "peak_rss_mib_with_report": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "seconds": seconds, "images_per_s": result.n_images / seconds, "resume_file_mib": resume_mib,
                      "psnr": result.metrics["psnr"], "rfid_stand_in": result.metrics["rfid"]}))


def speed(images: int, sd_images: int, threads: int) -> None:
    import torch

    from latentae.models import KLAutoencoder

    photos = sorted((DATA_ROOT / "bsds500" / "test").glob("*.jpg"))
    # the SD-size model once each way: a 256 px image takes it seconds, so the rate needs no repeat
    for name, config, n, rounds in (("tiny preset", TINY, images, (False, True, True, False)),
                                    ("SD-size KL", SD, sd_images, (False, True))):
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data"
            data.mkdir()
            for photo in photos[:n]:
                (data / photo.name).symlink_to(photo.resolve())
            torch.manual_seed(0)
            model = KLAutoencoder(**config).eval()
            times = {True: [], False: []}
            for resume in rounds:  # interleaved: load drifts on a shared machine
                out = Path(tmp) / f"out-{resume}-{len(times[resume])}"
                result, seconds, precision = _evaluate(model, str(data), 256, out, resume, threads)
                times[resume].append(seconds)
            best = {k: min(v) for k, v in times.items()}
            print(json.dumps({"model": name, "precision": precision, "images": result.n_images, "plain_s": times[False],
                              "resumable_s": times[True], "images_per_s": result.n_images / best[True],
                              "resumable_over_plain_time": best[True] / best[False]}), flush=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("mode", choices=("memory", "speed"))
    p.add_argument("--count", type=int, default=20000, help="images, a multiple of 1000")
    p.add_argument("--resolution", type=int, default=16)
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--sd-images", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)


def run(args) -> None:
    if args.mode == "memory":
        return memory_child(args.count, args.resolution, args.threads)
    return speed(args.images, args.sd_images, args.threads)
