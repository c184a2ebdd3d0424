"""Encoding speed: `latentae encode` at its DEFAULT settings, end to end, against the plain loop a user would write.

One run, on this machine: (1) the machine (CPU model, its bf16 / AMX flags) and its bf16 and fp32 matmul rates
(best square GEMM); (2) the plain loop: diffusers `AutoencoderKL.from_pretrained`, fp32, webdataset +
torchvision transforms, batches of 4 (--plain-batch-size) under `torch.no_grad()`,
`vae.encode(x).latent_dist.mean` saved with np.save per image; (3) `latentae encode` (the CLI, in this process)
with no speed option: its default precision (auto), batch size, memory format and workers; only --resolution
(the same crop as the plain loop) and --store mean (the same content) are given (--ours adds options, to
compare others). Both start from the same exported weights (an SD-like KL-f8 autoencoder, random init, seed 0;
or --model, a pretrained one: a model no diffusers class holds, such as TAEF2, is called directly in the plain
loop, fp32) and read the same photos packed into shards (bsds500 from ../shared/data); both times include loading the
model. Reported: the throughput ratio (target >= 1.3x), the FLOP rate latentae achieves (encoder FLOPs counted
with torch.utils.flop_counter, 2 per multiply-add) against the measured matmul rate of the precision it ran in,
and, when that is bf16, the relative error of its latent means against fp32 ones of the same inputs.
"""
from __future__ import annotations

import shlex
import tempfile
import time
from pathlib import Path

from .paths import DATA_ROOT as DEFAULT_ROOT


def add_arguments(p):
    p.add_argument("--data-root", default=str(DEFAULT_ROOT), help="folder holding bsds500/ (default: "
                   "../shared/data beside the checkout)")
    p.add_argument("--images", type=int, default=16, help="photos encoded by both loops (default: 16)")
    p.add_argument("--per-shard", type=int, default=4, help="photos per input shard (default: 4)")
    p.add_argument("--resolution", type=int, default=256, help="center crop side (default: 256)")
    p.add_argument("--block-out-channels", default="128,256,512,512", help="encoder widths (default: SD's "
                   "128,256,512,512: 8x downsampling)")
    p.add_argument("--layers-per-block", type=int, default=2)
    p.add_argument("--plain-batch-size", type=int, default=4, help="the plain loop's batch (default: 4)")
    p.add_argument("--ours", default="", help="extra `latentae encode` options, one string (e.g. \"--precision "
                   "fp32 --batch-size 16\"); default: none, the defaults are what is measured")
    p.add_argument("--rounds", type=int, default=2, help="timed runs of each loop, in the order plain, latentae, "
                   "latentae, plain, ... (a drifting machine load hits both alike); the best of each is reported "
                   "(default: 2)")
    p.add_argument("--keep", help="write the model, shards and outputs here and keep them (default: a temp dir)")
    p.add_argument("--model", help="a pretrained model instead (any folder latentae.load opens, e.g. "
                   "../shared/models/taef2); --block-out-channels and --layers-per-block then do not apply")


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


def plain_vae(model_dir: Path):
    """diffusers' AutoencoderKL as a user loads it, fp32, on the device `latentae` commands use by default."""
    from diffusers import AutoencoderKL

    from latentae.runtime import default_device

    return AutoencoderKL.from_pretrained(model_dir).eval().to(default_device())


def plain_batches(shards: str, resolution: int | None, batch_size: int, multiple: int = 8):
    """(keys, images [B, 3, H, W] in [-1, 1]) as diffusers' example loop reads them: webdataset, torchvision
    transforms, shorter side resized to `resolution` and center-cropped; None: the whole image center-cropped
    to a multiple of `multiple`. Images of one size are batched together (each size its own bucket)."""
    import torch
    import webdataset as wds
    from torchvision import transforms

    to_unit = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])
    resize = transforms.Compose([transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BICUBIC),
                                 transforms.CenterCrop(resolution)]) if resolution else None

    def crop(img):
        w, h = img.size
        return resize(img) if resize else transforms.functional.center_crop(img, [h - h % multiple, w - w % multiple])

    def batch(items):
        return [k for k, _ in items], torch.stack([x for _, x in items])

    buckets: dict[tuple, list] = {}
    for key, img in wds.WebDataset(shards, shardshuffle=False).decode("pil").to_tuple("__key__", "jpg;png"):
        x = to_unit(crop(img.convert("RGB")))
        bucket = buckets.setdefault(tuple(x.shape), [])
        bucket.append((key, x))
        if len(bucket) == batch_size:
            yield batch(bucket)
            bucket.clear()
    yield from (batch(bucket) for bucket in buckets.values() if bucket)


def plain_encoder(model_dir: Path):
    """images -> latent means as a user computes them, fp32: diffusers' AutoencoderKL; a model no diffusers class
    holds (TAEF2 in its authors' layout, no config.json) is called as its authors' module is, the same network
    through latentae.load standing in for their code."""
    if (Path(model_dir) / "config.json").is_file():
        vae = plain_vae(model_dir)
        return lambda images: vae.encode(images.to(vae.device)).latent_dist.mean
    from latentae.runtime import default_device
    from latentae.loading import load

    model = load(model_dir).eval().to(default_device())
    return lambda images: model.encode(images.to(model.device))


def plain_loop(model_dir: Path, shards: str, out: Path, resolution: int, batch_size: int) -> int:
    """What a user writes without latentae: diffusers' example loop, batched."""
    import numpy as np
    import torch

    encode = plain_encoder(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for keys, images in plain_batches(shards, resolution, batch_size):
        with torch.no_grad():
            means = encode(images).cpu()
        for key, mean in zip(keys, means):
            np.save(out / f"{key}.npy", mean.numpy())
        n += len(keys)
    return n


def run(args):
    import json

    import numpy as np
    import torch

    from latentae.cli import main as latentae
    from latentae.exporting import export
    from latentae.latents import iter_encoded
    from latentae.models import KLAutoencoder
    from machine import describe, load_average

    root = Path(args.data_root).resolve()
    photos = sorted((root / "bsds500" / "train").glob("*.jpg"))[: args.images]
    if len(photos) < args.images:
        print(f"need {args.images} photos in {root / 'bsds500' / 'train'} (see shared/data/README.md)")
        return 1
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-encode-"))
    if args.model:
        from latentae.loading import load

        model_dir, model = Path(args.model).resolve(), load(args.model).eval()
        what = f"{args.model} ({model.family})"
    else:
        channels = tuple(int(c) for c in args.block_out_channels.split(","))
        torch.manual_seed(0)
        model = KLAutoencoder(block_out_channels=channels, layers_per_block=args.layers_per_block,
                              sample_size=args.resolution)
        model_dir = export(model, work / "model")
        what = f"encoder {channels} x{args.layers_per_block}"
    shards = pack_shards(photos, work / "shards", args.per_shard)
    flops = encoder_flops(model, args.resolution)
    del model
    rates = describe()
    print(f"{what} at {args.resolution} px: {flops / 1e9:.1f} GFLOP per image; "
          f"{args.images} bsds500 photos in shards of {args.per_shard}", flush=True)

    ours_argv = ["encode", "--model", str(model_dir), "--data", shards, "--output", str(work / "latents"),
                 "--resolution", str(args.resolution), "--store", "mean", "-q", "--overwrite",
                 *shlex.split(args.ours)]
    print(f"ours: latentae {' '.join(ours_argv[:1] + ours_argv[7:])} (model, data, output elided)")
    seconds: dict[str, list[float]] = {"plain": [], "latentae": []}
    pair = ("plain", "latentae")
    order = [name for r in range(args.rounds) for name in (pair if r % 2 == 0 else pair[::-1])]
    for i, name in enumerate(order):
        t = time.perf_counter()
        if name == "plain":
            n_plain = plain_loop(model_dir, shards, work / f"plain-{i}", args.resolution, args.plain_batch_size)
        else:
            assert latentae(ours_argv) == 0
        seconds[name].append(time.perf_counter() - t)
        print(f"  {name}: {seconds[name][-1]:.1f} s, load average {load_average()}", flush=True)
    ours = {s["key"]: s["latents"] for s in iter_encoded(str(work / "latents"))}
    assert len(ours) == n_plain == args.images
    manifest = json.loads((work / "latents" / "manifest.json").read_text())
    precision = manifest["precision"]  # what auto (or --ours) resolved to
    plain_s, ours_s = min(seconds["plain"]), min(seconds["latentae"])
    rate = len(ours) * flops / ours_s
    plain = "the model called directly" if args.model else "diffusers"
    print(f"plain loop ({plain}, fp32, batch {args.plain_batch_size}): {n_plain} images in {plain_s:.1f} s = "
          f"{n_plain / plain_s:.3f} img/s, {n_plain * flops / plain_s / 1e9:.0f} GFLOP/s")
    print(f"latentae encode (defaults{' + ' + args.ours if args.ours else ''}: ran in {precision}): {len(ours)} "
          f"images in {ours_s:.1f} s = {len(ours) / ours_s:.3f} img/s, {rate / 1e9:.0f} GFLOP/s")

    speedup = (len(ours) / ours_s) / (n_plain / plain_s)
    print(f"\nbest of {args.rounds} rounds (wall clock, model loading included), load average now {load_average()}")
    print(f"speed-up of the defaults over the plain loop: {speedup:.2f}x (target >= 1.3x: "
          f"{'MET' if speedup >= 1.3 else 'NOT MET'})")
    if not torch.cuda.is_available():  # (the matmul rates are the CPU's)
        print(f"achieved {rate / 1e9:.0f} GFLOP/s end to end = {100 * rate / rates[precision]:.0f}% of the "
              f"{precision} matmul rate {rates[precision] / 1e9:.0f} GFLOP/s")
    if precision != "fp32":
        first = shards.replace(f"{{00000..{(args.images - 1) // args.per_shard:05d}}}", "00000")
        assert latentae(["encode", "--model", str(model_dir), "--data", first, "--output", str(work / "fp32"),
                         "--resolution", str(args.resolution), "--precision", "fp32", "--store", "mean",
                         "--workers", "0", "-q", "--overwrite"]) == 0
        ref = {s["key"]: s["latents"] for s in iter_encoded(str(work / "fp32"))}
        a = np.stack([ours[k] for k in ref]).astype(np.float64)
        b = np.stack(list(ref.values())).astype(np.float64)
        err = np.linalg.norm(a - b) / np.linalg.norm(b)
        per_image = max(np.linalg.norm(x - y) / np.linalg.norm(y) for x, y in zip(a, b))
        print(f"{precision} vs fp32 latent means, {len(ref)} images: relative error {100 * err:.2f}% overall, "
              f"{100 * per_image:.2f}% worst image")
    if not args.keep:
        import shutil

        shutil.rmtree(work)
    return 0
