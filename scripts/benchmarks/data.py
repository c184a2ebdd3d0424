"""Data pipeline speed: decoded + augmented training images per second per worker.

Cases (real photos from ../shared/data): bsds500 train+test as an image folder at 256 px random crops, and
the Tiny ImageNet webdataset shards at 64 px. Each case runs the training loader in this process (one
worker's throughput, no IPC) and with --workers DataLoader processes (total / workers), and times the worst
resume: the first batch of a run started one batch before the end of a chunk (all but one batch replayed).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from .paths import DATA_ROOT as DEFAULT_ROOT

CASES = {  # name: (source relative to the data root, resolution)
    "bsds500": ("bsds500/train,bsds500/test", 256),
    "tiny-imagenet": ("tiny-imagenet-64/tiny-{00000..00009}.tar", 64),
}


def add_arguments(p):
    p.add_argument("--data-root", default=str(DEFAULT_ROOT), help="folder holding bsds500/ and "
                   "tiny-imagenet-64/ (default: ../shared/data beside the checkout)")
    p.add_argument("--cases", nargs="+", choices=sorted(CASES), default=sorted(CASES), help="which sources")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="DataLoader workers "
                   "for the multi-process run (default: min(2, CPUs))")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=40, help="timed batches per run, after one warm-up batch")
    p.add_argument("--chunk-size", type=int, default=4096, help="data.chunk_size (samples per worker chunk)")


def _rate(cfg, args) -> float:
    from latentae.data import train_loader

    it = iter(train_loader(cfg, batch_size=args.batch_size, seed=0))
    next(it)  # worker start-up and the first shuffle-buffer fill
    t = time.perf_counter()
    for _ in range(args.batches):
        next(it)
    return args.batches * args.batch_size / (time.perf_counter() - t)


def _first_batch_seconds(cfg, args, start_step: int) -> float:
    from latentae.data import train_loader

    t = time.perf_counter()
    next(iter(train_loader(cfg, batch_size=args.batch_size, seed=0, start_step=start_step)))
    return time.perf_counter() - t


def run(args):
    from latentae.data import DataConfig

    root = Path(args.data_root).resolve()
    if not root.is_dir():
        print(f"data root {root} not found (see shared/data/README.md)")
        return 1
    print(f"batch {args.batch_size}, chunk_size {args.chunk_size}, {os.cpu_count()} CPUs, images/s "
          "(decode + resize + crop + flip + collate)")
    for name in args.cases:
        spec, resolution = CASES[name]
        spec = ",".join(str(root / part) for part in spec.split(","))
        cfg = DataConfig(train=spec, resolution=resolution, num_workers=0, chunk_size=args.chunk_size)
        single = _rate(cfg, args)
        cfg.num_workers = args.workers
        multi = _rate(cfg, args) if args.workers > 0 else float("nan")
        cfg.num_workers = 0
        chunk_batches = -(-args.chunk_size // args.batch_size)
        fresh = _first_batch_seconds(cfg, args, start_step=0)
        resumed = _first_batch_seconds(cfg, args, start_step=chunk_batches - 1)
        print(f"{name:14s} {resolution:4d} px  in-process {single:7.0f}/s   {args.workers} workers "
              f"{multi:7.0f}/s total, {multi / max(args.workers, 1):6.0f}/s per worker   "
              f"first batch {fresh:5.2f} s, worst resume {resumed:5.2f} s")
    return 0
