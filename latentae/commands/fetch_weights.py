"""Download every pretrained weight file latentae may need into torch's hub cache.

Run it once on a machine with internet access (a login node) before training on compute nodes that have none:

  latentae fetch-weights                  # all files, into $TORCH_HOME/hub/checkpoints
  latentae fetch-weights --only vgg16     # one file
  latentae fetch-weights --dir /shared/w  # stage elsewhere; then copy into $TORCH_HOME/hub/checkpoints

Files: vgg16 and alexnet (torchvision ImageNet trunks of LPIPS), lpips-vgg and lpips-alex (LPIPS linear heads,
shipped inside the lpips package: only checked), inception (torch-fidelity's FID network), pt-inception and
clean-inception (the Inception files of `latentae eval --fid-protocol pytorch-fid / clean-fid`). Already cached files
are not downloaded again. Exit status 1 when any file is missing at the end.

Only when named, into the Hugging Face cache (`$HF_HOME/hub`), or with --dir to DIR/<model>: dinov2
(facebook/dinov2-large, 1.2 GB: the VF alignment loss's feature model and FD-DINOv2; a directory to set as
loss.vf.model) and clip (openai/clip-vit-large-patch14-336, 1.7 GB: CMMD; a directory for `latentae eval
--cmmd-model`):

  latentae fetch-weights --only dinov2
  latentae fetch-weights --only clip

Also only when named: rae-dinov2, rae-siglip2, rae-mae (the authors' RAE encoders, facebook/dinov2-with-registers-base,
google/siglip2-base-patch16-256, facebook/vit-mae-base), needed to train a fresh model.family rae, and dino-vits8
(facebook/dino-vits8, 87 MB: the frozen backbone of loss.disc.kind=dino, the RAE authors' discriminator).
"""
from __future__ import annotations

import argparse

from latentae import weights

HELP = "download the pretrained weights (LPIPS trunks, Inception for FID; DINOv2, CLIP on request) for offline use"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    hub = ", ".join(weights.HUB_MODELS)
    parser.add_argument("--only", metavar="NAME", action="append", choices=[*weights.REGISTRY, *weights.HUB_MODELS],
                        help=f"fetch only this file (repeatable): {', '.join(weights.REGISTRY)}, and {hub} (only "
                             f"fetched when named)")
    parser.add_argument("--dir", metavar="DIR", default=None,
                        help=f"target directory (default: torch's hub cache, $TORCH_HOME/hub/checkpoints; {hub}: the "
                             f"Hugging Face cache, or with --dir a subdirectory DIR/<model>)")


def run(args: argparse.Namespace) -> int:
    failed = weights.fetch_all(args.only, directory=args.dir)
    return 1 if failed else 0
