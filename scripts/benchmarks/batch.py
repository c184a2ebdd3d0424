"""Inference cost per image against batch size: the table the inference commands' default batch sizes and
channels_last default are set from.

An SD-size KL-f8 autoencoder (128,256,512,512, two layers per block, random init: the cost does not depend on
the weights) runs its encoder (--part encoder, what `encode` and `stats` run), its decoder (--part decoder,
`decode`) or both (--part autoencoder, `eval`) on random images of --resolution px, for every batch size x
precision (fp32, bf16 autocast) x memory format (NCHW, channels_last), under torch.inference_mode. Each
combination gets one untimed warm-up forward (oneDNN primitive creation), then --rounds timed rounds of at
least --images images; rounds of all combinations are interleaved, so a changing machine load hits them
alike, and the best round is reported (milliseconds per image, and relative to batch 4 fp32 NCHW, the plain
diffusers loop's setting). Two clocks: process CPU time per image (all threads; what the work costs, barely
affected by other processes holding the cores, so comparable across a shared machine's load) and wall time.
"""
from __future__ import annotations

import os
import time

PARTS = ("encoder", "decoder", "autoencoder")


def add_arguments(p):
    p.add_argument("--part", choices=PARTS, default="encoder", help="what runs (default: encoder)")
    p.add_argument("--resolution", type=int, default=256, help="image side in pixels (default: 256)")
    p.add_argument("--batch-sizes", default="1,2,4,8,16", help="comma-separated (default: 1,2,4,8,16)")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated subset of fp32,bf16")
    p.add_argument("--block-out-channels", default="128,256,512,512", help="widths (default: SD's)")
    p.add_argument("--images", type=int, default=8, help="images per timed round, at least one batch (default: 8)")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per combination, best kept (default: 2)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")


def forward_of(model, part: str):
    if part == "encoder":
        return lambda x: model.posterior(x).mean
    if part == "decoder":
        return model.decode
    return lambda x: model.decode(model.posterior(x).mean)


def run(args):
    import contextlib

    import torch

    from latentae.models import KLAutoencoder
    from latentae.precision import machine_description

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    channels = tuple(int(c) for c in args.block_out_channels.split(","))
    model = KLAutoencoder(block_out_channels=channels, layers_per_block=2).eval()
    factor = 2 ** (len(channels) - 1)
    latent_side = args.resolution // factor
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    precisions = args.precisions.split(",")
    print(machine_description())
    print(f"{args.part} of KL-f{factor} {channels} at {args.resolution} px, {torch.get_num_threads()} threads, "
          f"load average before {os.getloadavg()[0]:.2f}", flush=True)

    def inputs(batch: int, channels_last: bool):
        shape = (batch, 4, latent_side, latent_side) if args.part == "decoder" else \
            (batch, 3, args.resolution, args.resolution)
        x = torch.randn(shape)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    combos = [(p, cl, b) for p in precisions for cl in (False, True) for b in batch_sizes]
    best = {c: float("inf") for c in combos}  # CPU seconds per image
    best_wall = dict(best)
    models = {False: model, True: None}
    with torch.inference_mode():
        for rnd in range(args.rounds + 1):  # round 0 warms up every combination
            for precision, channels_last, batch in combos:
                if models[channels_last] is None:
                    import copy

                    models[channels_last] = copy.deepcopy(model).to(memory_format=torch.channels_last)
                forward = forward_of(models[channels_last], args.part)
                x = inputs(batch, channels_last)
                autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else \
                    contextlib.nullcontext()
                steps = 1 if rnd == 0 else max(1, -(-args.images // batch))
                t, c = time.perf_counter(), time.process_time()
                with autocast:
                    for _ in range(steps):
                        forward(x)
                key, n = (precision, channels_last, batch), steps * batch
                if rnd:
                    best[key] = min(best[key], (time.process_time() - c) / n)
                    best_wall[key] = min(best_wall[key], (time.perf_counter() - t) / n)
            print(f"  round {rnd}/{args.rounds} done, load average {os.getloadavg()[0]:.2f}", flush=True)
    print(f"\nbest of {args.rounds} rounds of >= {args.images} images; load average after "
          f"{os.getloadavg()[0]:.2f}")
    for clock, table in (("CPU", best), ("wall", best_wall)):
        ref = table.get(("fp32", False, 4))
        print(f"\n{clock} ms per image (relative to batch 4, fp32, NCHW)")
        print("| batch | " + " | ".join(f"{p} {'channels_last' if cl else 'NCHW'}" for p in precisions
                                      for cl in (False, True)) + " |")
        print("|---" * (1 + 2 * len(precisions)) + "|")
        for b in batch_sizes:
            cells = [f"{1000 * table[(p, cl, b)]:.0f}" + (f" ({table[(p, cl, b)] / ref:.2f})" if ref else "")
                     for p in precisions for cl in (False, True)]
            print(f"| {b} | " + " | ".join(cells) + " |")
    return 0
