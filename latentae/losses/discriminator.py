"""PatchGAN discriminator (pix2pix's NLayerDiscriminator, as used by taming / LDM): one logit per patch; and
`build_discriminator`, the one place loss.disc.kind picks the discriminator."""
from __future__ import annotations

import math

from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from latentae.losses.dino_discriminator import DINODiscriminator


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    return nn.Identity()  # 'none', and 'spectral' (which normalizes the weights instead)


class NLayerDiscriminator(nn.Module):
    """forward(images [B, C, H, W]) -> logits [B, 1, h, w].

    `layers` stride-2 4x4 convs (channels doubling, capped at 8x), one stride-1 conv, then a 1-channel conv.
    With batch norm, real and fake must go through one forward on `cat([real, fake])` (the loss does): separate
    forwards before one backward break under NCCL, and each would be normalized with its own statistics.
    """

    def __init__(
        self,
        in_channels: int = 3,
        *,
        channels: int = 64,  # first layer's width
        layers: int = 3,  # stride-2 layers; 3 gives LDM's 70x70 patches
        norm: str = "batch",  # batch | group | none | spectral
    ):
        super().__init__()
        if norm not in ("batch", "group", "none", "spectral"):
            raise ValueError(f"discriminator norm must be batch, group, none or spectral, got {norm!r}")
        widths = [channels * min(2**i, 8) for i in range(layers + 1)]
        has_norm = norm in ("batch", "group")
        convs = [nn.Conv2d(in_channels, widths[0], 4, stride=2, padding=1)]
        for i in range(1, layers + 1):
            stride = 2 if i < layers else 1
            convs.append(nn.Conv2d(widths[i - 1], widths[i], 4, stride=stride, padding=1, bias=not has_norm))
        convs.append(nn.Conv2d(widths[-1], 1, 4, stride=1, padding=1))
        self._init(convs)
        if norm == "spectral":
            convs = [spectral_norm(c) for c in convs]
        blocks: list[nn.Module] = [convs[0], nn.LeakyReLU(0.2)]
        for conv, width in zip(convs[1:-1], widths[1:]):
            blocks += [conv, _norm(norm, width), nn.LeakyReLU(0.2)]
        blocks.append(convs[-1])
        self.main = nn.Sequential(*blocks)
        self.mixes_batch = norm == "batch"  # a sample's logits depend on the rest of its batch (train mode)
        self.rounds_fakes = False  # its D step sees the fakes as decoded (LDM)

    @staticmethod
    def _init(convs: list[nn.Conv2d]) -> None:
        # pix2pix / LDM init: N(0, 0.02) conv weights, zero biases (norm layers keep their identity init).
        for conv in convs:
            nn.init.normal_(conv.weight, 0.0, 0.02)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def forward(self, images: Tensor) -> Tensor:
        return self.main(images)


def build_discriminator(cfg, in_channels: int = 3) -> nn.Module:
    """The discriminator loss.disc (a DiscConfig) describes; both have `mixes_batch` and `rounds_fakes`."""
    if cfg.kind == "dino":
        return DINODiscriminator(cfg.weights, kernel_size=cfg.head_kernel, cutout=cfg.cutout)
    return NLayerDiscriminator(in_channels, channels=cfg.channels, layers=cfg.layers, norm=cfg.norm)
