"""Pack images into webdataset shards for training, evaluation and encoding.

SRC can be image folders (searched recursively), single image files and existing tar files (their image
members are re-packed). Each sample becomes `<key>.<ext>` (original bytes, or re-encoded when --max-side
shrinks it) and `<key>.json` with the source path, width and height. Keys come from relative paths
(`<folder name>/<sub/dir>/<file stem>`), so they are stable across runs. Every image is decoded once here:
files a reader would skip are listed at the end with the reason. Shards are written under a .tmp name and
renamed when complete.

  latentae shards photos/ more/extra.jpg old.tar --output shards/ --shuffle --seed 0 --max-side 1024
"""
import os
import re

from latentae.options import positive_int

HELP = "pack image folders, images and tars into webdataset shards"


def _size(text: str) -> int:
    """'500M', '2G', '1e9', '65536' -> bytes."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kKmMgGtT]?)[bB]?\s*", text)
    if not m:
        raise ValueError(text)
    return int(float(m.group(1)) * 1000 ** " kmgt".index(m.group(2).lower() or " "))


def add_arguments(p):
    from latentae.data.config import DEFAULT_MAX_PIXELS

    p.add_argument("sources", nargs="+", metavar="SRC", help="image folder, image file or tar file")
    p.add_argument("--output", "-o", required=True, help="folder to write the shards to")
    p.add_argument("--prefix", default="data", help="shard file names: PREFIX-00000.tar, ... (default: data)")
    p.add_argument("--samples-per-shard", type=positive_int, default=1000, help="at most this many samples "
                   "per shard (default: 1000)")
    p.add_argument("--bytes-per-shard", type=_size, default="1G", help="start a new shard before one would "
                   "exceed this size, e.g. 500M, 2G (default: 1G)")
    p.add_argument("--shuffle", action="store_true", help="shuffle samples across shards (see --seed)")
    p.add_argument("--seed", type=int, help="shuffle seed (default: 0; needs --shuffle)")
    p.add_argument("--max-side", type=positive_int, help="re-encode images whose longer side exceeds N pixels "
                   "at N (JPEGs as JPEG quality 95, others as PNG)")
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, help="skip images with more "
                   f"pixels (decompression bombs; default: {DEFAULT_MAX_PIXELS})")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes that read and "
                   "verify images; the output does not depend on it (default: min(4, CPUs))")
    p.add_argument("--overwrite", action="store_true", help="replace PREFIX-*.tar shards already in --output")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def run(args):
    from latentae.data.shards import write_shards
    from latentae.errors import LatentaeError

    if args.seed is not None and not args.shuffle:
        raise LatentaeError("--seed only takes effect with --shuffle")
    report = write_shards(args.sources, args.output, samples_per_shard=args.samples_per_shard,
                          bytes_per_shard=args.bytes_per_shard,
                          shuffle_seed=(args.seed or 0) if args.shuffle else None, max_side=args.max_side,
                          max_pixels=args.max_pixels, prefix=args.prefix, workers=max(0, args.workers),
                          overwrite=args.overwrite, progress=not args.quiet)
    print("\n".join(report.lines()))
    return 0 if report.samples else 1
