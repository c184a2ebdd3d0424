"""Decode latent or token shards written by `latentae encode` back to images: `<output>/<shard>/<key>.png`.

KL latents stored as mean + logvar decode their mean. Use the model that encoded them.

  latentae decode --model out/export --latents latents/ --output decoded/
"""

HELP = "decode latent / token shards back to PNG images"


def add_arguments(p):
    from latentae.options import DEFAULT_BATCH_SIZE, DEFAULT_PRECISION, PRECISIONS, positive_int

    p.add_argument("--model", required=True, help="the model that encoded the latents")
    p.add_argument("--latents", required=True, help="latentae encode output: folder, shard pattern or tar")
    p.add_argument("--output", "-o", required=True, help="folder for the PNG files")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, help="latents per forward "
                   f"(default: {DEFAULT_BATCH_SIZE})")
    p.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION, help="bf16: autocast; auto: "
                   f"bf16 where it is faster on this machine / GPU, else fp32 (default: {DEFAULT_PRECISION})")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format for the decoder")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def run(args):
    from latentae.latents.decode import save_decoded
    from latentae.loading import load
    from latentae.runtime import default_device

    model = load(args.model)
    written, skipped = save_decoded(model, args.latents, args.output, progress=not args.quiet,
                                    batch_size=args.batch_size, precision=args.precision,
                                    channels_last=args.channels_last, device=default_device())
    print(f"decoded {written} images to {args.output} (skipped: {skipped})")
    return 0
