"""Look inside a model's latent space; every tool writes one PNG and prints where.

  interpolate A B     decodes along the straight (linear) and great-circle (spherical) paths between the
                      latents of images A and B
  arithmetic A B C    decode(z_A - z_B + z_C) beside the reconstructions of A, B and C
  prior               decodes of prior samples: z ~ N(0, I) (--normalized: N(0, I) in the space the config's
                      scaling constants define); random token ids for tokenizers
  kl DATA             bar chart of the mean KL per latent channel (channels near 0 are unused)
  codebook DATA       code usage histogram (codes sorted by frequency), usage and perplexity
  anomaly DATA        ranks images by negative ELBO (0.5 * squared error + KL, nats) or by reconstruction
                      MSE, highest first; prints the ranking and draws the top ones

interpolate, arithmetic and anomaly take --channels N: a structured latent's (DC-AE 1.5) first N channels.
DATA is an image folder, image files or shards. Images are resized and center-cropped to --resolution
(default: 256, as `latentae eval`; the model's sample_size is a tiling hint, not a data resolution).

  latentae inspect interpolate kodim01.png kodim23.png --model out/export --output interp.png
  latentae inspect anomaly photos/ --model out/export --score elbo --top 16
"""

DEFAULT_RESOLUTION = 256  # figures need one image size; the model's sample_size would be 32 for diffusers' default
HELP = "latent-space figures: interpolation, arithmetic, prior samples, KL, codebook usage, anomalies"


def add_arguments(p):
    from latentae.inspection import SCORES
    from latentae.options import positive_int

    tools = p.add_subparsers(dest="tool", metavar="TOOL", required=True)

    def tool(name, help_text, encodes=False):
        t = tools.add_parser(name, help=help_text, description=help_text)
        t.add_argument("--model", required=True, help="export / diffusers directory or LDM checkpoint")
        t.add_argument("--output", "-o", help=f"PNG to write (default: {name}.png)")
        t.add_argument("--resolution", type=positive_int, help="image side (default: 256)")
        if encodes:  # the tools that encode images can take a structured latent's count
            t.add_argument("--channels", type=positive_int, metavar="N", help="a model with a structured latent "
                           "(DC-AE 1.5): encode with its first N latent channels, one of the counts it serves "
                           "(default: the whole latent)")
        else:
            t.set_defaults(channels=None)
        return t

    t = tool("interpolate", "decodes between two images' latents, linear and spherical", encodes=True)
    t.add_argument("images", nargs=2, metavar="IMAGE")
    t.add_argument("--steps", type=positive_int, default=8, help="images per path, ends included (default: 8)")
    t = tool("arithmetic", "decode(z_A - z_B + z_C)", encodes=True)
    t.add_argument("images", nargs=3, metavar="IMAGE")
    t = tool("prior", "decodes of prior samples")
    t.add_argument("--num", type=positive_int, default=16, help="samples (default: 16)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--normalized", action="store_true", help="KL: sample N(0, I) in the normalized space of "
                   "the config's scaling_factor / shift_factor / latents_mean+std")
    for name, text in (("kl", "mean KL per latent channel over DATA"),
                       ("codebook", "code usage histogram over DATA")):
        t = tool(name, text)
        t.add_argument("data", metavar="DATA")
        t.add_argument("--batch-size", type=positive_int, default=8)
    t = tool("anomaly", "rank the images of DATA by how badly the model represents them", encodes=True)
    t.add_argument("data", metavar="DATA")
    t.add_argument("--score", choices=SCORES, help="elbo (KL models, their default) or recon (MSE; tokenizers' "
                   "default)")
    t.add_argument("--top", type=positive_int, default=16, help="images drawn in the figure (default: 16)")
    t.add_argument("--batch-size", type=positive_int, default=8)


def run(args):
    from latentae.errors import LatentaeError
    from latentae.loading import load
    from latentae.models.bottleneck import at_channels

    model = load(args.model)
    if args.channels is not None:
        model = at_channels(model, args.channels, args.model)
    if args.tool == "interpolate" and args.steps < 2:
        raise LatentaeError("--steps must be >= 2 (both ends are included)")
    resolution = args.resolution or DEFAULT_RESOLUTION
    figure, lines = TOOLS[args.tool](model, args, resolution)
    output = args.output or f"{args.tool}.png"
    figure.save(output)
    for line in lines:
        print(line)
    print(f"wrote {output} ({figure.width}x{figure.height})")
    return 0


def _images(paths, resolution):
    import torch

    from latentae.data import load_image

    return torch.stack([load_image(p, resolution) for p in paths])


def _interpolate(model, args, resolution):
    from latentae.inspection import image_grid, interpolate

    paths = interpolate(model, *_images(args.images, resolution), steps=args.steps)
    ts = [f"t={i / (args.steps - 1):.2f}" for i in range(args.steps)]
    return image_grid([paths["linear"], paths["spherical"]], row_labels=["linear", "spherical"], col_labels=ts,
                      title=f"{args.images[0]} -> {args.images[1]}"), []


def _arithmetic(model, args, resolution):
    from latentae.inspection import arithmetic, image_grid

    images = _images(args.images, resolution)
    out = arithmetic(model, *images)
    return image_grid([list(images), [out["a"], out["b"], out["c"], out["result"]]], row_labels=["input", "decoded"],
                      col_labels=["A", "B", "C", "A - B + C"], title=" ".join(args.images)), []


def _prior(model, args, resolution):
    import math

    from latentae.inspection import image_grid, prior_samples

    samples = prior_samples(model, args.num, resolution=resolution, seed=args.seed, normalized=args.normalized)
    cols = math.ceil(math.sqrt(args.num))
    what = ("random tokens" if model.bottleneck.tokenizes else "N(0, I) in normalized space" if args.normalized
            else "N(0, I)")
    return image_grid([samples[i:i + cols] for i in range(0, len(samples), cols)],
                      title=f"decoded prior samples: {what}, seed {args.seed}"), []


def _kl(model, args, resolution):
    from latentae.inspection import bar_chart, kl_per_channel

    kl, n = kl_per_channel(model, args.data, resolution=resolution, batch_size=args.batch_size)
    lines = [f"channel {c}: KL {v:.4g} nats" for c, v in enumerate(kl.tolist())]
    return bar_chart(kl.tolist(), labels=[str(c) for c in range(len(kl))], y_label="nats per image",
                     title=f"KL(q(z|x) || N(0,I)) per latent channel, mean over {n} images"), lines


def _codebook(model, args, resolution):
    import torch

    from latentae.inspection import bar_chart, code_counts, stack_vertically
    from latentae.quantizers.base import code_distribution_stats

    counts = code_counts(model, args.data, resolution=resolution, batch_size=args.batch_size)
    rows = counts if counts.ndim == 2 else counts[None]
    charts, lines = [], []
    for s, row in enumerate(rows):
        stats = code_distribution_stats(row)
        used = int((row > 0).sum())
        stage = f"stage {s}: " if len(rows) > 1 else ""
        lines.append(f"{stage}{used}/{row.numel()} codes used ({100 * used / row.numel():.1f}%), perplexity "
                     f"{float(stats['perplexity']):.1f}, {int(row.sum())} tokens")
        ordered = row.sort(descending=True).values.double()
        bins = min(len(ordered), 512)  # one bar per group of codes of similar rank: mean count in the group
        groups = torch.tensor_split(ordered, bins)
        charts.append(bar_chart([float(g.mean()) for g in groups], y_label="tokens per code",
                                title=f"{stage}code frequency, codes sorted by use ({lines[-1]})"))
    return stack_vertically(charts), lines


def _anomaly(model, args, resolution):
    from latentae.inspection import anomaly_scores, image_grid

    score = args.score or ("elbo" if model.bottleneck.samples else "recon")
    ranked = anomaly_scores(model, args.data, score=score, resolution=resolution, batch_size=args.batch_size,
                            keep_images=args.top)
    lines = [f"{i + 1:>5} {s.score:>12.6g}  {s.key}" for i, s in enumerate(ranked)]
    top = ranked[: args.top]
    cols = min(len(top), 8)
    rows = [top[i:i + cols] for i in range(0, len(top), cols)]
    captions = [[f"#{i * cols + j + 1} {s.score:.4g}" for j, s in enumerate(row)] for i, row in enumerate(rows)]
    figure = image_grid([[s.image for s in row] for row in rows], captions=captions,
                        title=f"highest {score} scores of {len(ranked)} images")
    return figure, [f"{'rank':>5} {score:>12}  key", *lines]


TOOLS = {"interpolate": _interpolate, "arithmetic": _arithmetic, "prior": _prior, "kl": _kl,
         "codebook": _codebook, "anomaly": _anomaly}
