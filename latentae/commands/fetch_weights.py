"""Download every pretrained weight file latentae may need into torch's hub cache.

Run it once on a machine with internet access (a login node) before training on compute nodes that have none:

  latentae fetch-weights                  # all files, into $TORCH_HOME/hub/checkpoints
  latentae fetch-weights --only vgg16     # one file
  latentae fetch-weights --dir /shared/w  # stage elsewhere; then copy into $TORCH_HOME/hub/checkpoints

Files: vgg16 and alexnet (torchvision ImageNet trunks of LPIPS), lpips-vgg and lpips-alex (LPIPS linear heads,
shipped inside the lpips package: only checked), inception (torch-fidelity's FID network). Already cached files
are not downloaded again. Exit status 1 when any file is missing at the end.
"""
from __future__ import annotations

import argparse

from latentae import weights

HELP = "download the pretrained weights (LPIPS trunks, Inception for FID) for offline use"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", metavar="NAME", action="append", choices=list(weights.REGISTRY),
                        help=f"fetch only this file (repeatable): {', '.join(weights.REGISTRY)}")
    parser.add_argument("--dir", metavar="DIR", default=None,
                        help="target directory (default: torch's hub cache, $TORCH_HOME/hub/checkpoints)")


def run(args: argparse.Namespace) -> int:
    failed = weights.fetch_all(args.only, directory=args.dir)
    return 1 if failed else 0
