"""Encode a dataset into latent shards (KL, FLUX.2, DC-AE, tiny autoencoders) or token shards (VQ tokenizers).

One output shard per input shard, `<output>/<name>.tar`, each sample `<key>.latents.npy` (float32 by
default: posterior mean and logvar stacked as [2C, h, w]; `--store mean` or `--store sample` keep [C, h, w];
deterministic models (DC-AE, tiny) store their latent [C, h, w]; --channels N: a structured latent's first N
channels [N, h, w], recorded in each sample's .json and the manifest, which `decode` and `stats` read back)
or `<key>.tokens.npy` (int32 ids), `<key>.json` with the source key and url, and the source's captions and
other non-image members. Latents are unscaled: see `latentae stats` for the scaling factor. Loose image files
(a folder) are grouped into shards `images-00000.tar`, ... of --images-per-shard files in listing order.

Images are encoded at their own size by default, each center-cropped to a multiple of the model's
downsampling factor (8 for SD's VAE; no resize), in batches of one size, so latents differ in shape from
sample to sample and a shard holds its samples grouped by size; --resolution R resizes the shorter side to R
and center-crops R x R instead. manifest.json records which ("resolution", "crop"). The model's sample_size
(diffusers' tiling hint) is not a data resolution and plays no part.

Shards are written under a temporary name and renamed when complete: rerunning the same command after an
interruption encodes only the missing shards. Under `torchrun` or `accelerate launch` each rank encodes its
own slice of the input shards; rank 0 writes `<output>/manifest.json` (model, config, written and skipped
counts) at the end.

  latentae encode --model out/export --data 'shards/data-{00000..00099}.tar' --output latents/ \\
      --precision bf16 --channels-last --batch-size 32
"""
import os
import sys

from latentae.options import positive_int, resolution_or_native

HELP = "encode a dataset into latent / token shards (resumable, multi-rank)"


def add_common_arguments(p):
    """Options shared with `latentae stats` (which encodes on the fly)."""
    from latentae.data.config import DEFAULT_MAX_PIXELS
    from latentae.options import DEFAULT_BATCH_SIZE, DEFAULT_PRECISION, PRECISIONS

    p.add_argument("--model", required=True, help="export / diffusers directory or LDM checkpoint")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, help="images per forward "
                   f"(default: {DEFAULT_BATCH_SIZE})")
    p.add_argument("--resolution", type=resolution_or_native, help="resize the shorter side to R and center-crop "
                   "R x R (default: native: each image at its own size, center-cropped to a multiple of the model's "
                   "downsampling factor, in batches of one size)")
    p.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION, help="bf16: autocast, ~2x "
                   "faster on AMD Zen 4 and recent GPUs, far faster with AMX, slower on Intel CPUs without AMX; "
                   "latents then differ from fp32 by about 1-2%% relative. auto: bf16 where a quick measurement on "
                   "this machine (cached) or the GPU says it is faster, else fp32; the choice is printed "
                   f"(default: {DEFAULT_PRECISION})")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format (faster convolutions with "
                   "oneDNN / cuDNN, mostly together with bf16)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes decoding images "
                   "while the model encodes; 0 decodes in the main process (default: min(2, CPUs))")
    p.add_argument("--channels", type=positive_int, metavar="N", help="a model with a structured latent (DC-AE "
                   "1.5): its first N latent channels, N one of the counts it serves (its latentae.json's "
                   "structured_channels), as the model itself slices them (default: the whole latent)")
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, help="skip larger images "
                   f"(decompression bombs; default: {DEFAULT_MAX_PIXELS})")


def add_arguments(p):
    from latentae.options import STORAGE_DTYPES, STORE_CHOICES

    add_common_arguments(p)
    p.add_argument("--data", required=True, help="shard pattern (data-{00000..00099}.tar), tar, pipe: URL, image "
                   "folder or image file, or a comma-separated list of these")
    p.add_argument("--output", "-o", required=True, help="folder for the latent shards and manifest.json")
    p.add_argument("--store", choices=STORE_CHOICES, help="KL models: mean and logvar ([2C, h, w], default), "
                   "the posterior mean, or one posterior sample (seeded per sample key, see --seed); "
                   "deterministic models (DC-AE, tiny): mean only, their latent (the default)")
    p.add_argument("--seed", type=int, help="noise seed for --store sample (default: 0)")
    p.add_argument("--dtype", choices=STORAGE_DTYPES, default="float32", help="stored latent precision "
                   "(float16 halves the size; default: float32)")
    p.add_argument("--small-images", choices=("upscale", "skip"), default="upscale", help="with --resolution: "
                   "images whose shorter side is below it: upscale them or skip them (default: upscale; at native "
                   "size only images smaller than the downsampling factor are skipped)")
    p.add_argument("--images-per-shard", type=positive_int, default=1000, help="loose image files per output "
                   "shard (default: 1000)")
    p.add_argument("--overwrite", action="store_true", help="re-encode shards that are already in --output")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def run(args):
    from latentae.data.sources import expand_sources
    from latentae.distributed import launch, leave
    from latentae.errors import LatentaeError
    from latentae.latents.encode import encode_dataset, write_manifest
    from latentae.loading import load
    from latentae.models.bottleneck import at_channels
    from latentae.runtime import resolve

    expand_sources(args.data)  # a missing or empty dataset fails before the model loads
    model = load(args.model)
    if args.channels is not None:  # a count the model does not serve fails before the run is set up
        at_channels(model, args.channels, args.model)
    if model.bottleneck.tokenizes and (args.store or args.seed is not None or args.dtype != "float32"):
        raise LatentaeError("--store, --seed and --dtype apply to continuous latents; a tokenizer stores int32 token ids")
    if args.seed is not None and args.store != "sample":
        raise LatentaeError("--seed only takes effect with --store sample")
    where = launch()
    report = encode_dataset(
        model, args.data, args.output, batch_size=args.batch_size, resolution=args.resolution,
        store=args.store or ("both" if model.bottleneck.samples else "mean"), storage_dtype=args.dtype,
        precision=resolve(device=where.device, precision=args.precision, channels_last=args.channels_last).precision,
        channels_last=args.channels_last, device=where.device, workers=max(0, args.workers),
        images_per_shard=args.images_per_shard, seed=args.seed or 0, max_pixels=args.max_pixels,
        small_images=args.small_images, rank=where.rank, world_size=where.world_size, overwrite=args.overwrite,
        model_source=str(args.model), progress=not args.quiet, channels=args.channels)
    rate = report.written / report.seconds if report.seconds else 0.0
    prefix = f"rank {where.rank}: " if where.world_size > 1 else ""
    print(f"{prefix}encoded {report.written} images into {len(report.shards_written)} shards in "
          f"{report.seconds:.1f} s ({rate:.2f} img/s); {len(report.shards_done_before)} shards were already done; "
          f"skipped: {report.skipped}")
    for shard, errors in report.read_errors.items():
        print(f"latentae encode: warning: input of {shard} is damaged ({errors[0]}); the samples before the damage "
              "were encoded", file=sys.stderr, flush=True)
    leave()  # the manifest below needs every rank's shards; no collective follows
    if where.rank != 0:
        return 0
    manifest = write_manifest(args.output, report, args.data)
    if not manifest["written"]:
        raise LatentaeError(f"no images could be encoded from {args.data} (skipped: "
                            f"{', '.join(f'{k}={v}' for k, v in manifest['skipped'].items()) or 'none'})")
    print(f"{args.output}: {manifest['written']} samples in {len(manifest['shards'])} shards; "
          f"manifest {os.path.join(args.output, 'manifest.json')}")
    return 0
