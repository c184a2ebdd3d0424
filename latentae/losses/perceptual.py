"""LPIPS as a frozen, fp32 training loss (Zhang et al. 2018, the `lpips` package).

The trunk's ImageNet weights are resolved through latentae.weights (configured path, torch hub cache, one
download attempt, else one clear error) and loaded here, instead of letting torchvision download them inside
`lpips.LPIPS`; the linear heads come from the lpips package itself. The module stays in eval mode (lpips' heads
carry dropout) and frozen (lpips leaves its heads trainable), and runs in fp32 with autocast off, while
gradients still flow to its inputs: the generator learns from it.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import lpips
import torch
from torch import Tensor, nn

from latentae.errors import ModelFormatError
from latentae.weights import resolve

TRUNK_WEIGHTS = {"vgg": "vgg16", "alex": "alexnet"}  # LPIPS net -> latentae.weights registry name
# Smallest image side each trunk takes (measured: below it a pooling layer has no output). The latent
# regularizers decode downscaled images: latentae/losses/autoencoder_loss.py checks them against this.
MIN_SIZE = {"vgg": 16, "alex": 31}


def load_trunk(trunk: nn.Module, path: Path) -> None:
    """Copy torchvision `features.N.*` weights into lpips' sliced trunk (`sliceK.N.*` keeps torchvision's N)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    with torch.no_grad():
        for name, param in trunk.named_parameters():
            _, index, attr = name.split(".")
            key = f"features.{index}.{attr}"
            if key not in state or state[key].shape != param.shape:
                raise ModelFormatError(f"{path} is not the torchvision checkpoint LPIPS expects: "
                                       f"'{key}' missing or of the wrong shape")
            param.copy_(state[key])


class PerceptualLoss(nn.Module):
    """forward(x, y) -> LPIPS distance per image [B] (fp32), inputs in [-1, 1]."""

    def __init__(
        self,
        net: str = "vgg",  # 'vgg' (LDM's loss) or 'alex' (the usual LPIPS metric)
        *,
        trunk_path: str | Path | None = None,  # local torchvision weights file for the trunk
        random_init: bool = False,  # random trunk (tests, smoke runs): needs no weight file
    ):
        super().__init__()
        if net not in TRUNK_WEIGHTS:
            raise ValueError(f"LPIPS net must be one of {', '.join(TRUNK_WEIGHTS)}, got {net!r}")
        heads = resolve(f"lpips-{net}")
        trunk_file = None if random_init else resolve(TRUNK_WEIGHTS[net], trunk_path)  # fail before building
        with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=` argument
            warnings.simplefilter("ignore", UserWarning)
            # pnet_rand: torchvision must not download; the trunk is loaded below from the resolved file.
            self.lpips = lpips.LPIPS(net=net, pnet_rand=True, pretrained=True, model_path=str(heads), verbose=False)
        if trunk_file is not None:
            load_trunk(self.lpips.net, trunk_file)
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "PerceptualLoss":
        """Always eval: a parent's `.train()` must not switch on the heads' dropout."""
        return super().train(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.lpips(x.float(), y.float()).reshape(-1)
