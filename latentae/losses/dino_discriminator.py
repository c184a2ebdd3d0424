"""The RAE authors' discriminator (Zheng et al. 2025; github.com/bytetriper/RAE, src/disc/): a frozen DINO ViT-S/8
whose token maps at several depths each feed a small trained head, one logit per token per head.

    x  = DiffAugment(image)                     translation, colour, cutout; a fresh draw per image, every forward
    x' = normalize(resize(x, 224 x 224))        bilinear, ImageNet mean / std: DINO's input
    t_0, t_1..t_k = tokens after the last block, and after blocks 2, 5, 8, 11 (class token dropped; no final norm)
    logits = cat_i head_i(t_i)                  [B, (k + 1) * N]
    head   = SN-conv1x1 -> norm -> LReLU,  then (f(x) + x) / sqrt 2 with f = SN-conv(k=9, circular) -> norm -> LReLU,
             then SN-conv1x1 to one channel; norm: per image and channel over the tokens, affine (their BatchNormLocal
             with a virtual batch of one, which is an instance norm)

Facts from their code (src/disc/dinodisc.py, diffaug.py, __init__.py, src/train_stage1.py,
configs/stage1/training/DINOv2-B_decXL.yaml): recipe S_8, key depths (2, 5, 8, 11) of 12 blocks, the last block's
tokens once more in front, head kernel 9, spectral norm on every head conv, norm eps 1e-6, DiffAug prob 1.0 with
cutout 0.0 (translation by up to 1/8 of the side with zeros shifted in; brightness + U(-0.5, 0.5), saturation x
U(0, 2), contrast x U(0.5, 1.5), each per image); the generator's fakes are augmented in the generator pass too;
in the discriminator's step the fakes are clamped to [-1, 1] and rounded to 8 bits before the augmentation.
Real and fake batches are augmented by two calls, each image with its own draw: one call on cat([real, fake])
draws the same (per image, independent), which is what the loss does.

Choices here: the backbone is transformers' ViTModel with facebook/dino-vits8's weights (the same network as
their dino_vit_small_patch8_224.pth), its layer norms at DINO's eps 1e-6 (that checkpoint's config.json says
1e-12) and its exact GELU (theirs: the tanh approximation); the input is resized to the backbone's image_size (224
for dino-vits8). The backbone is frozen and always in eval mode; gradients flow through it to the image.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from latentae.errors import LatentaeError
from latentae.weights import load_hub_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # DINO's preprocessing
IMAGENET_STD = (0.229, 0.224, 0.225)
KEY_DEPTHS = (2, 5, 8, 11)  # blocks whose tokens get a head (those the backbone has), after the last block's
DINO_LAYER_NORM_EPS = 1e-6
NORM_EPS = 1e-6
TRANSLATION = 0.125  # largest shift, as a fraction of the side


def diff_augment(x: Tensor, cutout: float = 0.0) -> Tensor:
    """DiffAugment's translation, colour and (cutout > 0) cutout of [B, C, H, W] images in [-1, 1], differentiable,
    each image with its own draw from the global generator."""
    b, _, h, w = x.shape
    u = torch.rand(7, b, device=x.device, dtype=torch.float32)
    # translation: output(i, j) = input(i + dy, j + dx), zeros outside
    dy = (u[0] * (2 * round(h * TRANSLATION) + 1)).floor().long() - round(h * TRANSLATION)
    dx = (u[1] * (2 * round(w * TRANSLATION) + 1)).floor().long() - round(w * TRANSLATION)
    rows = (torch.arange(h, device=x.device)[None] + dy[:, None]).clamp(-1, h) + 1  # index into the 1-px zero pad
    cols = (torch.arange(w, device=x.device)[None] + dx[:, None]).clamp(-1, w) + 1
    padded = F.pad(x, (1, 1, 1, 1))
    x = padded[torch.arange(b, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    x = x.permute(0, 3, 1, 2)
    # colour: brightness, saturation, contrast

    def per_image(v: Tensor) -> Tensor:
        return v.to(x.dtype)[:, None, None, None]

    x = x + per_image(u[2] - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * per_image(2 * u[3]) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * per_image(u[4] + 0.5) + mean
    if cutout > 0:
        ch, cw = round(h * cutout), round(w * cutout)
        cy, cx = (u[5] * (h + 1 - ch % 2)).floor().long(), (u[6] * (w + 1 - cw % 2)).floor().long()
        ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        inside_y = (ys[None] >= cy[:, None] - ch // 2) & (ys[None] < cy[:, None] - ch // 2 + ch)
        inside_x = (xs[None] >= cx[:, None] - cw // 2) & (xs[None] < cx[:, None] - cw // 2 + cw)
        x = x * (~(inside_y[:, :, None] & inside_x[:, None, :]))[:, None].to(x.dtype)
    return x


def to_8bit_levels(images: Tensor) -> Tensor:
    """Images in [-1, 1] clamped and rounded to the 256 levels an 8-bit image holds (the authors' fakes in D's step)."""
    return torch.round((images.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1


def _conv(channels_in: int, channels_out: int, kernel_size: int) -> nn.Module:
    return spectral_norm(nn.Conv1d(channels_in, channels_out, kernel_size, padding=kernel_size // 2,
                                   padding_mode="circular"))


def _block(channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(_conv(channels, channels, kernel_size), nn.InstanceNorm1d(channels, eps=NORM_EPS, affine=True),
                         nn.LeakyReLU(0.2))


class _Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return (self.fn(x) + x) / math.sqrt(2)  # keeps the variance of two unit-variance terms


def head(channels: int, kernel_size: int) -> nn.Sequential:
    """[B, C, N] tokens -> [B, 1, N] logits."""
    return nn.Sequential(_block(channels, 1), _Residual(_block(channels, kernel_size)), _conv(channels, 1, 1))


class DINOBackbone(nn.Module):
    """Frozen ViT (DINO), always in eval mode: images in [-1, 1] -> token maps [B, C, N] of the tapped blocks."""

    def __init__(self, source: str | None):
        super().__init__()
        try:
            model, _ = load_hub_model("dino-vits8", source, "ViTModel", "vit", add_pooling_layer=False,
                                      layer_norm_eps=DINO_LAYER_NORM_EPS)
        except ImportError:
            raise LatentaeError("loss.disc.kind=dino needs the `transformers` package: pip install latentae[align] "
                                "(or set loss.disc.kind=patchgan)") from None
        self.model = model.eval().requires_grad_(False)
        depth = model.config.num_hidden_layers
        self.taps = (depth, *(d + 1 for d in KEY_DEPTHS if d < depth))  # hidden_states[i]: after block i - 1
        self.size = model.config.image_size
        self.dim = model.config.hidden_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> DINOBackbone:
        """Always eval: a parent's `.train()` must not switch dropout on."""
        return super().train(False)

    def forward(self, images: Tensor) -> list[Tensor]:
        x = F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = ((x + 1) / 2 - self.mean) / self.std
        hidden = self.model(pixel_values=x, output_hidden_states=True).hidden_states
        return [hidden[i][:, 1:].transpose(1, 2) for i in self.taps]  # drop the class token


class DINODiscriminator(nn.Module):
    """forward(images [B, 3, H, W] in [-1, 1]) -> logits [B, heads * tokens]; see the module docstring. Only `heads`
    train; `backbone` is frozen (its weights are in the state dict too, unchanged)."""

    mixes_batch = False  # per-image norms: a sample's logits do not depend on the rest of its batch
    rounds_fakes = True  # the D step sees its fakes at 8 bits, as the reals

    def __init__(self, source: str | None = None, *, kernel_size: int = 9, cutout: float = 0.0):
        super().__init__()
        self.backbone = DINOBackbone(source)
        self.heads = nn.ModuleList(head(self.backbone.dim, kernel_size) for _ in self.backbone.taps)
        self.cutout = cutout

    def forward(self, images: Tensor) -> Tensor:
        tokens = self.backbone(diff_augment(images.float(), self.cutout))
        return torch.cat([h(t).flatten(1) for h, t in zip(self.heads, tokens)], dim=1)
