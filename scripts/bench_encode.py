"""Encoding speed: `latentae encode` end to end against the plain loop a user would write.

One run, on this machine: (1) the bf16 and fp32 matmul rates (best square GEMM); (2) the plain loop:
diffusers `AutoencoderKL.from_pretrained`, fp32, webdataset + torchvision transforms, batch 1 under
`torch.no_grad()`, `vae.encode(x).latent_dist.mean` saved with np.save per image; (3) `latentae encode`
(the CLI, in this process) with bf16 autocast, channels-last and batching, shards in, latent shards out.
Both start from the same exported weights (an SD-like KL-f8 autoencoder, random init, seed 0) and read the
same photos packed into shards (bsds500 from ../shared/data); both times include loading the model.
Reported: the throughput ratio, the FLOP rate latentae achieves (encoder FLOPs counted with
torch.utils.flop_counter, 2 per multiply-add) against the measured bf16 matmul rate, and the relative error
of the bf16 latent means against fp32 ones of the same inputs (`latentae encode --precision fp32` on the first
shard).
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

DEFAULT_ROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def add_arguments(p):
    p.add_argument("--data-root", default=str(DEFAULT_ROOT), help="folder holding bsds500/ (default: "
                   "../shared/data beside the checkout)")
    p.add_argument("--images", type=int, default=16, help="photos encoded by both loops (default: 16)")
    p.add_argument("--per-shard", type=int, default=4, help="photos per input shard (default: 4)")
    p.add_argument("--resolution", type=int, default=256, help="center crop side (default: 256)")
    p.add_argument("--block-out-channels", default="128,256,512,512", help="encoder widths (default: SD's "
                   "128,256,512,512: 8x downsampling)")
    p.add_argument("--layers-per-block", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4, help="latentae encode --batch-size (default: 4)")
    p.add_argument("--workers", type=int, default=1, help="latentae encode --workers (default: 1)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="latentae encode --precision")
    p.add_argument("--no-channels-last", action="store_true", help="latentae encode without --channels-last")
    p.add_argument("--rounds", type=int, default=2, help="timed runs of each loop, in the order plain, latentae, "
                   "latentae, plain, ... (a drifting machine load hits both alike); the best of each is reported "
                   "(default: 2)")
    p.add_argument("--keep", help="write the model, shards and outputs here and keep them (default: a temp dir)")


def matmul_rate(dtype, sizes=(1024, 2048, 4096), repeats=3) -> float:
    """Best FLOP/s of square matmuls of `dtype` over a few sizes (2 n^3 per product)."""
    import torch

    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        a @ b  # warm-up: kernel selection, page faults
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def encoder_flops(vae, resolution: int) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        vae.encode(torch.zeros(1, 3, resolution, resolution))
    return counter.get_total_flops()


def pack_shards(photos: list[Path], folder: Path, per_shard: int) -> str:
    from webdataset import TarWriter

    folder.mkdir(parents=True, exist_ok=True)
    n = (len(photos) + per_shard - 1) // per_shard
    for i in range(n):
        with TarWriter(str(folder / f"photos-{i:05d}.tar"), encoder=False) as w:
            for p in photos[i * per_shard:(i + 1) * per_shard]:
                w.write({"__key__": p.stem, p.suffix[1:].lower(): p.read_bytes()})
    return str(folder / f"photos-{{00000..{n - 1:05d}}}.tar")


def plain_loop(model_dir: Path, shards: str, out: Path, resolution: int) -> int:
    """What a user writes without latentae."""
    import numpy as np
    import torch
    import webdataset as wds
    from diffusers import AutoencoderKL
    from torchvision import transforms

    vae = AutoencoderKL.from_pretrained(model_dir).eval()
    tf = transforms.Compose([transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BICUBIC),
                             transforms.CenterCrop(resolution), transforms.ToTensor(),
                             transforms.Normalize([0.5], [0.5])])
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for key, img in wds.WebDataset(shards, shardshuffle=False).decode("pil").to_tuple("__key__", "jpg"):
        with torch.no_grad():
            mean = vae.encode(tf(img.convert("RGB"))[None]).latent_dist.mean
        np.save(out / f"{key}.npy", mean[0].numpy())
        n += 1
    return n


def run(args):
    import numpy as np
    import torch

    from latentae.cli import main as latentae
    from latentae.exporting import export
    from latentae.latents import iter_encoded
    from latentae.models import KLAutoencoder

    root = Path(args.data_root).resolve()
    photos = sorted((root / "bsds500" / "train").glob("*.jpg"))[: args.images]
    if len(photos) < args.images:
        print(f"need {args.images} photos in {root / 'bsds500' / 'train'} (see shared/data/README.md)")
        return 1
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-encode-"))
    channels = tuple(int(c) for c in args.block_out_channels.split(","))
    torch.manual_seed(0)
    model = KLAutoencoder(block_out_channels=channels, layers_per_block=args.layers_per_block,
                          sample_size=args.resolution)
    model_dir = export(model, work / "model")
    shards = pack_shards(photos, work / "shards", args.per_shard)
    flops = encoder_flops(model, args.resolution)
    del model
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f}; encoder {channels} x{args.layers_per_block} at {args.resolution} px: "
          f"{flops / 1e9:.1f} GFLOP per image")

    bf16_peak = matmul_rate(torch.bfloat16)
    print(f"matmul: bf16 {bf16_peak / 1e9:.0f} GFLOP/s, fp32 {matmul_rate(torch.float32) / 1e9:.0f} GFLOP/s")

    ours_argv = ["encode", "--model", str(model_dir), "--data", shards, "--output", str(work / "latents"),
                 "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--precision",
                 args.precision, "--store", "mean", "-q", "--overwrite"]
    ours_argv += [] if args.no_channels_last else ["--channels-last"]
    seconds: dict[str, list[float]] = {"plain": [], "latentae": []}
    pair = ("plain", "latentae")
    order = [name for r in range(args.rounds) for name in (pair if r % 2 == 0 else pair[::-1])]
    for i, name in enumerate(order):
        t = time.perf_counter()
        if name == "plain":
            n_plain = plain_loop(model_dir, shards, work / f"plain-{i}", args.resolution)
        else:
            assert latentae(ours_argv) == 0
        seconds[name].append(time.perf_counter() - t)
        print(f"  {name}: {seconds[name][-1]:.1f} s")
    ours = {s["key"]: s["latents"] for s in iter_encoded(str(work / "latents"))}
    assert len(ours) == n_plain == args.images
    plain_s, ours_s = min(seconds["plain"]), min(seconds["latentae"])
    bf16_peak = max(bf16_peak, matmul_rate(torch.bfloat16))  # best of before and after
    rate = len(ours) * flops / ours_s
    print(f"plain loop (diffusers, fp32, batch 1): {n_plain} images in {plain_s:.1f} s = {n_plain / plain_s:.3f} "
          f"img/s, {n_plain * flops / plain_s / 1e9:.0f} GFLOP/s")
    print(f"latentae encode ({args.precision}, batch {args.batch_size}, "
          f"{'NCHW' if args.no_channels_last else 'channels-last'}, {args.workers} workers): {len(ours)} images in "
          f"{ours_s:.1f} s = {len(ours) / ours_s:.3f} img/s, {rate / 1e9:.0f} GFLOP/s")

    first = shards.replace(f"{{00000..{(args.images - 1) // args.per_shard:05d}}}", "00000")
    assert latentae(["encode", "--model", str(model_dir), "--data", first, "--output", str(work / "fp32"),
                     "--store", "mean", "--workers", "0", "-q", "--overwrite"]) == 0
    ref = {s["key"]: s["latents"] for s in iter_encoded(str(work / "fp32"))}
    a = np.stack([ours[k] for k in ref]).astype(np.float64)
    b = np.stack(list(ref.values())).astype(np.float64)
    err = np.linalg.norm(a - b) / np.linalg.norm(b)
    per_image = max(np.linalg.norm(x - y) / np.linalg.norm(y) for x, y in zip(a, b))

    print(f"\nbest of {args.rounds} rounds (wall clock, model loading included), load average now "
          f"{os.getloadavg()[0]:.1f}")
    print(f"speed-up over the plain loop: {(len(ours) / ours_s) / (n_plain / plain_s):.2f}x (target >= 5x)")
    print(f"achieved {rate / 1e9:.0f} GFLOP/s end to end = {100 * rate / bf16_peak:.0f}% of the bf16 matmul rate "
          f"{bf16_peak / 1e9:.0f} GFLOP/s (target >= 60%)")
    print(f"{args.precision} vs fp32 latent means, {len(ref)} images: relative error {100 * err:.2f}% overall, "
          f"{100 * per_image:.2f}% worst image (target <= 1%)")
    if not args.keep:
        import shutil

        shutil.rmtree(work)
    return 0
