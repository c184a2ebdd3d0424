"""Reconstruction metrics of an autoencoder on an image set, with the protocol written next to the numbers.

MODEL is anything `latentae.load` opens: a latentae export, a diffusers AutoencoderKL / AutoencoderKLFlux2 /
AutoencoderDC / AutoencoderTiny / VQModel directory (or a pipeline directory with vae/), an LDM .ckpt/.safetensors
file. So SD's VAE, FLUX.2's, DC-AE, TAESD and your own can be measured on the same images, the same way.

Several --model: side by side. The images are read and decoded once and go through every model; each model gets
its full report in OUTPUT/NAME, and OUTPUT gets compare.md / compare.json (a row per model: PSNR, SSIM, LPIPS,
rFID, FD-DINOv2 and CMMD when asked for, latent shape, compression ratio = pixels x 3 / latent elements, encode and
decode ms per image) and grid.png (inputs, then each model's reconstructions). With --resolution native the crop
is a multiple of every model's downsampling factor. A model with a structured latent (DC-AE 1.5,
model.structured_channels) counts as one model per channel count it serves ("NAME c16", ...; --channels picks
some), so its counts share one table.

Protocol: each image's shorter side is resized to --resolution (bicubic, antialiased when shrinking; smaller
images are upscaled) and the center square is cropped; with --resolution native the whole image is used, center-
cropped (not padded: padding would add pixels the metrics then score) to a multiple of the model's downsampling
factor (Kodak's 768 x 512 stays whole for f = 8), in batches of one size. The reconstruction is compared with
that same crop. Both are rounded to 8 bits before any metric. PSNR: mean of per-image values. SSIM: data range
1 on [0, 1], gaussian 11x11, sigma 1.5. LPIPS: AlexNet (--lpips-net vgg for VGG). rFID: torchmetrics FID between
the crops and their reconstructions (each resized to 299 x 299 by the metric, whatever its shape). On request:
fd_dinov2 (NVlabs edm2's FD-DINOv2) and cmmd (google-research's CMMD: CLIP ViT-L/14@336px). --max-images N
takes the first N images of the data's order (files in order, each in stored order) whatever the number of
processes. Tokenizers add codebook usage, perplexity, entropy and bits per pixel; KL models the KL per latent
channel and the number of active channels. Metrics whose weight files are missing are reported as
unavailable, with the reason; the others still run (`latentae fetch-weights` gets the files).

Large sets (ImageNet-val's 50k images): --labels reads each image's class (class folders, the shards' cls member or a
`filename label` file) into per_image.csv, and --per-class N takes a class-balanced subset. Each process writes
what it has evaluated to OUTPUT/resume after every chunk (a tar, or 1000 image files), so rerunning a killed command
continues where it stopped and reports what an uninterrupted run would (not with --max-images); every process
prints images/s and its ETA every 30 s. Memory stays flat: FID statistics are running sums.

Writes report.json, report.md, per_image.csv, grid.png (input / reconstruction / difference) and psnr_hist.png
into --output, and prints the Markdown table. Runs on every process under torchrun / accelerate launch:

  latentae eval --model runs/f8/export --data ../shared/data/kodak --resolution native --output eval/f8-kodak
  latentae eval --model sd-vae --model flux2-vae --model taesd --data ../shared/data/kodak --output eval/compare
  torchrun --nproc_per_node 8 eval/evaluate.py --model stabilityai-sd-vae --data val-{0000..0049}.tar
"""
import math
import shutil
from pathlib import Path

from latentae.options import (DEFAULT_FID_PROTOCOL, DEFAULT_METRICS, DEFAULT_TILING, FID_PROTOCOLS, IMAGE_METRICS,
                              NATIVE, TILE_ABOVE_PIXELS, TILING, non_negative_int, positive_int, positive_ints,
                              resolution_or_native)

HELP = "reconstruction metrics (PSNR, SSIM, LPIPS, rFID, codebook / KL statistics) of a model on images"

COMPARED = "the reconstruction is compared with that same crop, both rounded to 8 bits"
RESUME = "resume"  # OUTPUT/resume: what each process has evaluated so far (latentae/evaluation/resume.py)


def add_arguments(p):
    from latentae.options import DEFAULT_BATCH_SIZE, DEFAULT_PRECISION, PRECISIONS

    p.add_argument("--model", required=True, action="append", help="model directory or LDM checkpoint file; "
                   "repeat it to compare models side by side on the same images (one table, one grid)")
    p.add_argument("--data", required=True, help="image folder, image file, tar / shard pattern "
                   "(data-{0000..0009}.tar), glob, or a comma-separated list of these")
    p.add_argument("--resolution", type=resolution_or_native, default=256, help="center-crop side in pixels, a "
                   "multiple of the model's crop multiple (its downsampling factor; 2x that for FLUX.2 and VQ-VAE-2), "
                   "or native: whole images, center-cropped to such a multiple (default: 256)")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, help="images per batch and "
                   f"process (default: {DEFAULT_BATCH_SIZE})")
    p.add_argument("--max-images", type=positive_int, help="evaluate only the first N images of the data's order, "
                   "whatever the number of processes (default: all; such a run is not resumable)")
    p.add_argument("--labels", metavar="folders|cls|FILE", help="the images' classes, kept per image in "
                   "per_image.csv: folders (class folders, val/n01440764/*.JPEG), cls (the shards' cls member) or a "
                   "file of `filename label` lines (ImageNet's val.txt form; matched by file name without extension)")
    p.add_argument("--per-class", type=positive_int, metavar="N", help="only the first N images of each class in the "
                   "data's order (folders sorted, shards in stored order; needs --labels; a class with fewer is an "
                   "error)")
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                   help=f"comma-separated subset of {','.join(IMAGE_METRICS)} (default: {','.join(DEFAULT_METRICS)}; "
                        "fd_dinov2 and cmmd run a ViT-L on every image, real and reconstructed: ask for them)")
    p.add_argument("--fid-protocol", choices=FID_PROTOCOLS, default=DEFAULT_FID_PROTOCOL, help="whose rFID: "
                   "torchmetrics (its default resize), torch-fidelity (RAE, 1d-tokenizer), pytorch-fid (LightningDiT, "
                   "FlowMo) or clean-fid, each equal to that library's FID with the same weight file; ADM's "
                   f"TensorFlow evaluator is not offered (latentae/evaluation/fid_protocols.py) (default: "
                   f"{DEFAULT_FID_PROTOCOL})")
    p.add_argument("--cmmd-model", metavar="DIR", help="CMMD's CLIP: a directory with config.json and "
                   "pytorch_model.bin or a Hugging Face id (default: openai/clip-vit-large-patch14-336 from the "
                   "Hugging Face cache; `latentae fetch-weights --only clip`)")
    p.add_argument("--lpips-net", choices=("alex", "vgg"), default="alex", help="LPIPS trunk (default: alex)")
    p.add_argument("--output", help="folder for the report files (default: eval-<model name>, or eval-compare for "
                   "several models)")
    p.add_argument("--grids", type=non_negative_int, default=8, help="images in grid.png (0: no grid; default: 8)")
    p.add_argument("--num-workers", type=non_negative_int, default=4,
                   help="image decoding processes per process (default: 4)")
    p.add_argument("--reference-stats", metavar="PATH", help="npz of the real images' rFID features (mean, "
                   "covariance, count, fingerprint of the extractor, crop and image keys): read when it exists (refused "
                   "if computed from other images or features), else written there (default: written to "
                   "OUTPUT/fid-reference.npz, never read)")
    p.add_argument("--tiling", choices=TILING, default=DEFAULT_TILING, help="encode / decode in overlapping tiles, "
                   f"blended linearly, to bound the model's memory: auto tiles images above {TILE_ABOVE_PIXELS // 2**20} "
                   f"Mpx ({TILE_ABOVE_PIXELS} pixels, e.g. 2048 x 2048; Kodak's 768 x 512 stays whole) of the models "
                   "whose tiles were measured to leave the numbers as they are (the TAESD family); on tiles any model "
                   "that can be (KL / VQ / diffusers' classes: their seams move the numbers, see BENCHMARKS.md); off "
                   f"(default: {DEFAULT_TILING})")
    p.add_argument("--channels", type=positive_ints, metavar="N,N,...", help="a model with a structured latent "
                   "(DC-AE 1.5) at these leading-channel counts, each one row of one table (default: every count it "
                   "was trained for, from its latentae.json)")
    p.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION, help="the model's precision "
                   "(metrics stay fp32): bf16 autocast, fp32, or auto: bf16 where it is faster on this machine / "
                   f"GPU, else fp32 (default: {DEFAULT_PRECISION})")


def _names(paths: list[str]) -> list[str]:
    """Short unique names for the models: the folder or file name, its parent's too when two share it."""
    names = [Path(p).resolve().name for p in paths]
    if len(set(names)) < len(names):
        names = [f"{Path(p).resolve().parent.name}/{Path(p).resolve().name}" for p in paths]
    return [n if names.count(n) == 1 else f"{i}:{n}" for i, n in enumerate(names)]


def _check_resolution(resolution: int, factors: dict[str, int], factor: int) -> None:
    """Another side would come back from the decoder another size than the crop it is compared with."""
    from latentae.errors import LatentaeError

    if resolution % factor:
        below = resolution // factor * factor
        nearest = " or ".join(str(v) for v in (below, below + factor) if v)
        whose = f"the model's multiple ({next(iter(factors))})" if len(factors) == 1 else \
            "the least common multiple of the models' (" + ", ".join(f"{n}: {f}" for n, f in factors.items()) + ")"
        raise LatentaeError(f"--resolution {resolution} is not a multiple of {factor}, {whose}: image sides must "
                            f"be one to come back from the decoder at their size; nearest valid: {nearest}")


def _at_channel_counts(models: dict, paths: list[str], channels: list[int] | None) -> tuple[dict, list[str]]:
    """Each model with a structured latent as one entry per channel count ("NAME c16", ...: `channels`, or all the
    counts it serves), the others as they are; and the path of each entry."""
    from latentae.errors import LatentaeError
    from latentae.models.bottleneck import at_channels

    if channels is not None and not any(m.bottleneck.channel_counts for m in models.values()):
        raise LatentaeError("--channels: no model here has a structured latent (DC-AE 1.5's structured_channels)")
    entries, entry_paths = {}, []
    for (name, model), path in zip(models.items(), paths):
        counts = model.bottleneck.channel_counts
        if not counts:
            entries[name] = model
            entry_paths.append(path)
            continue
        for n in channels or counts:
            entries[f"{name} c{n}"] = at_channels(model, n, name)
            entry_paths.append(path)
    return entries, entry_paths


def run(args):
    import torch
    from accelerate import Accelerator

    from latentae.data import DataConfig, eval_loader
    from latentae.data.transforms import crop_description
    from latentae.distributed import leave
    from latentae.evaluation import evaluate_many, markdown, write_report
    from latentae.evaluation.evaluator import check_metrics
    from latentae.evaluation.reference import load_reference, save_reference
    from latentae.loading import load
    from latentae.runtime import resolve

    metrics = check_metrics([m.strip() for m in args.metrics.split(",") if m.strip()])
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    paths = args.model
    models, paths = _at_channel_counts({name: load(path, device=accelerator.device)
                                        for name, path in zip(_names(paths), paths)}, paths, args.channels)
    native = args.resolution is None
    factors = {name: m.crop_multiple for name, m in models.items()}
    factor = math.lcm(*factors.values())  # native crops every model can take: the same images for all
    if not native:
        _check_resolution(args.resolution, factors, factor)
    cfg = DataConfig(num_workers=args.num_workers, **({} if native else {"resolution": args.resolution}))

    def loader(rank=accelerator.process_index, world_size=accelerator.num_processes):
        return eval_loader(cfg, batch_size=args.batch_size, rank=rank, world_size=world_size, source=args.data,
                           native_multiple=factor if native else None, labels=args.labels, per_class=args.per_class)

    precision = resolve(device=accelerator.device, precision=args.precision).precision
    crop = crop_description(args.resolution, factor)
    stats = Path(args.reference_stats) if args.reference_stats else None
    reference = load_reference(stats) if stats is not None and stats.exists() else None
    one = len(args.model) == 1
    output = Path(args.output or (f"eval-{Path(paths[0]).resolve().name}" if one else "eval-compare"))
    batches = loader()
    if batches.class_counts is not None and accelerator.is_main_process:
        counts = batches.class_counts
        subset = f" (--per-class {args.per_class}: the first of each class in the data's order)" if args.per_class \
            else f", {min(counts.values())} to {max(counts.values())} per class"
        print(f"labels {args.labels}: {len(counts)} classes, {sum(counts.values())} images{subset}", flush=True)
    resume = output / RESUME if args.max_images is None else None
    results = evaluate_many(models, batches, metrics=metrics, lpips_net=args.lpips_net, precision=precision,
                            max_images=args.max_images, examples=args.grids, progress=True, data_name=args.data,
                            data_protocol=crop, fid_reference=reference, tiling=args.tiling,
                            fid_feature=args.fid_protocol, cmmd_model=args.cmmd_model, resume=resume)
    if accelerator.is_main_process:
        base = {"data": str(args.data), "resolution": NATIVE if native else args.resolution,
                "crop": f"{crop}; {COMPARED}", "max_images": args.max_images, "labels": args.labels,
                "per_class": args.per_class}
        if "lpips" in metrics:
            base["lpips_net"] = args.lpips_net
        written = []
        for (name, result), path in zip(results.items(), paths):
            setup = {"model": str(path), "model_class": type(models[name]).__name__, **base}
            folder = output if len(paths) == 1 else output / name.replace("/", "_").replace(":", "_").replace(" ", "_")
            written += write_report(result, folder, setup).values()
            if len(paths) == 1:
                print(markdown(result, setup))
        if len(paths) > 1:
            written += _compare(models, results, loader, precision, output, base, paths)
        computed = next(iter(results.values())).fid_reference
        if computed is not None and reference is None:  # the same for every model: the real side ran once
            written.append(save_reference(computed, stats or output / "fid-reference.npz"))
        print(f"wrote {', '.join(str(p) for p in written)}")
        if resume is not None:  # the reports are written: nothing left to resume
            shutil.rmtree(resume, ignore_errors=True)
    leave()
    return 0


def _compare(models, results, loader, precision, output, setup, paths):
    """The side-by-side table and grid; timings on the first batch (main process, every model alike)."""
    from latentae.evaluation.compare import comparison_markdown, comparison_rows, speed_and_shape, write_comparison

    device = next(next(iter(models.values())).parameters()).device
    first = next(iter(loader(rank=0, world_size=1)))["image"].to(device)
    speeds = {name: {"family": m.family, **speed_and_shape(m, first, precision=precision)}
              for name, m in models.items()}
    setup = {"models": ", ".join(f"{n} = {p}" for n, p in zip(models, paths)), **setup}
    written = write_comparison(results, speeds, output, setup)
    print(comparison_markdown(comparison_rows(results, speeds), setup))
    return list(written.values())
