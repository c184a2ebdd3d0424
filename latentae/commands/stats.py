"""Latent statistics of a continuous-latent autoencoder (KL, FLUX.2, DC-AE, tiny) and the normalization constants
diffusion pipelines need.

Measures the global and per-channel mean and standard deviation of the latents, either of images (--data,
encoded on the fly at their native size like `latentae encode`, or at --resolution) or of `latentae encode`
output (--latents), and prints the recommended scaling_factor
(1 / std, the Stable Diffusion convention), shift_factor (the mean, SD3 / FLUX) and per-channel latents_mean /
latents_std (SDXL-family pipelines). By default the statistics are of the latents the model's pipeline
normalizes, and the output says which: posterior samples for SD-style KL models (what LDM and diffusers' training
scripts encode; exact moments from mean and logvar, no noise drawn), posterior means for FLUX.2 (Flux2Pipeline
encodes the mean); --of picks either.

--write stores the constants of one --convention in the model directory's config.json, so that
`AutoencoderKL.from_pretrained` and the pipelines built on it normalize latents accordingly; the keys the
convention does not use are set to null (where they hold numbers: to the value that changes nothing, shift and
mean 0, std 1) and every other key is left as it is:
  sd    scaling_factor                  (StableDiffusionPipeline, DiTPipeline, ...: z * scaling_factor)
  sd3   scaling_factor + shift_factor   (SD3 / FLUX pipelines: (z - shift_factor) * scaling_factor)
  sdxl  latents_mean + latents_std, scaling_factor 1   (SDXL-family pipelines; 4 latent channels only)
  wan   latents_mean + latents_std, any channels   (Wan / Qwen-Image pipelines; those models' default)
  flux2 bn running mean / var of the 2x2-patchified latents, in the weights (Flux2Pipeline; FLUX.2 models' default)

A tiny autoencoder's latents already are its teacher's normalized ones, and an RAE normalizes its own with buffers
in its weights: --write refuses both. A structured latent's (DC-AE 1.5) first N channels (--channels N, or latents
of encode --channels N) are measured and printed, and --write refuses them: config.json holds the whole latent's.

  latentae stats --model out/export --data kodak/ --write
"""

HELP = "latent mean/std and the scaling/shift factors for diffusers (--write: into config.json)"


def add_arguments(p):
    from latentae.commands.encode import add_common_arguments
    from latentae.options import CONVENTIONS, positive_int

    add_common_arguments(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="images to encode: shards, tar, image folder or files (comma list)")
    source.add_argument("--latents", help="latentae encode output (folder, shard pattern or tar)")
    p.add_argument("--of", choices=("sample", "mean"), help="statistics of posterior samples or means (default: "
                   "those the model's pipeline normalizes: means for FLUX.2, samples for other KL models)")
    p.add_argument("--max-images", type=positive_int, help="--data: use the first N images only (files in order, "
                   "each in stored order)")
    p.add_argument("--write", action="store_true", help="write the constants into the model's config.json (flux2: "
                   "into the bn running statistics in its weights file)")
    p.add_argument("--convention", choices=CONVENTIONS, default=None, help="which constants --write stores "
                   "(default: the model's pipeline's: flux2 for FLUX.2, wan for Wan / Qwen-Image, else sd)")


def run(args):
    import math

    from latentae.errors import LatentaeError
    from latentae.latents.stats import (default_convention, latent_stats, latent_stats_of_images, pipeline_latents,
                                        refuse_normalized_latents, stats_patch, write_normalization)
    from latentae.loading import load
    from latentae.models.bottleneck import at_channels
    from latentae.options import DEFAULT_PRECISION
    from latentae.runtime import default_device

    if args.latents and (args.max_images or args.resolution or args.precision != DEFAULT_PRECISION
                         or args.channels_last or args.channels):
        raise LatentaeError("--max-images, --resolution, --precision, --channels-last and --channels apply to --data "
                            "(images to encode), not to --latents (their channels are recorded with them)")
    model = load(args.model)
    full = model.config["latent_channels"]
    encoder = model if args.channels is None else at_channels(model, args.channels, args.model)
    if model.bottleneck.tokenizes:
        raise LatentaeError(f"latent statistics apply to continuous latents; {args.model} is a "
                            f"{type(model).__name__} (token ids need no normalization)")
    patch = stats_patch(model)
    convention = args.convention or default_convention(model)
    if (convention == "flux2") != bool(patch):
        raise LatentaeError(f"--convention {convention} does not fit {args.model}: flux2 is the convention of "
                            "FLUX.2 models (latent_norm: flux2), and theirs only")
    if args.write:  # before measuring: nothing to write for it
        refuse_normalized_latents(type(model), args.model)
        if args.channels not in (None, full):
            raise LatentaeError(_PART_OF_THE_LATENT.format(n=args.channels, full=full))
    of, why = pipeline_latents(model)
    why = f"this model's default ({why})"
    if args.of and model.bottleneck.samples:  # a deterministic latent is its own sample: means whatever --of
        of, why = args.of, "as --of asks"
    if args.latents:
        stats = latent_stats(args.latents, of=of, patch=patch)
    else:
        stats = latent_stats_of_images(encoder, args.data, of=of, batch_size=args.batch_size,
                                       resolution=args.resolution, precision=args.precision,
                                       channels_last=args.channels_last, device=default_device(),
                                       workers=max(0, args.workers), max_images=args.max_images,
                                       max_pixels=args.max_pixels)
        stats.channels = args.channels
    if args.latents and stats.channels is not None:  # recorded by encode --channels: a count the model must serve
        at_channels(model, stats.channels, args.model, what=f"{args.latents} holds the first {stats.channels} latent "
                    f"channels (encode --channels {stats.channels})")
        if args.write and stats.channels != full:
            raise LatentaeError(_PART_OF_THE_LATENT.format(n=stats.channels, full=full))
    channels = stats.channels or full * (math.prod(patch) if patch else 1)
    if len(stats.mean) != channels:
        raise LatentaeError(f"{args.latents} holds {len(stats.mean)}-channel latents; {args.model} has "
                            f"{channels} (normalized) latent channels")
    print(stats.table(why, model.bottleneck.normalized_by))
    if args.write:
        values = write_normalization(args.model, stats, convention)
        if convention == "flux2":
            print(f"wrote the bn running mean and variance of {len(stats.mean)} patchified channels (flux2 "
                  f"convention) to the weights of {args.model}")
        else:
            shown = ", ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
            print(f"wrote {shown} ({convention} convention) to the config.json of {args.model}")
    return 0


# The export is the whole latent's function: config.json's constants are that latent's.
_PART_OF_THE_LATENT = ("--write stores the normalization of the whole latent ({full} channels) in config.json, and "
                       "these are statistics of its first {n} channels (printed, not written): measure the whole "
                       "latent to write them")
