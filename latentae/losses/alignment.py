"""Vision-foundation alignment (VA-VAE's "VF loss"): the latent, projected to the feature size of a frozen DINOv2,
should look like DINOv2's patch features of the same image.

    z' = W z                                   (1x1 conv, no bias: latent channels -> feature channels)
    f  = DINOv2(image) patch tokens, one per latent position
    L_mcos = mean_{b,i} ReLU(1 - m1 - cos(z'_i, f_i))
    L_mdms = mean_{b,i,j} ReLU(|cos(z'_i, z'_j) - cos(f_i, f_j)| - m2)
    vf     = L_mcos + L_mdms
    total += w * vf,  w = w_hyper * clamp(|grad_W_enc L_rec| / (|grad_W_enc vf| + 1e-4), 0, 1e8)   (adaptive)
                      w = w_hyper                                                               (not adaptive)

Source: Yao, Yang & Wang 2025, "Reconstruction vs. Generation: Taming Optimization Dilemma in Latent Diffusion
Models" (arXiv:2501.01423), facts taken from the authors' code, github.com/hustvl/LightningDiT, directory vavae/:
- ldm/modules/losses/contperceptual.py (LPIPSWithDiscriminator.forward, calculate_adaptive_weight_vf): both
  margin terms as above, each summed with weight 1 (distmat_weight = cos_weight = 1.0); the cosine-similarity
  matrices are per image over the h*w positions, from channel-normalized vectors; every mean is over all
  elements. The adaptive weight is |grad nll| / (|grad vf| + 1e-4), clamped to [0, 1e8], detached, times
  vf_weight, with both gradients taken at the encoder's last layer (`encoder.conv_out.weight`, before
  quant_conv); nll is the reconstruction loss (L1 + LPIPS; its logvar is not in the optimizer, so it stays 0)
  without the KL and GAN terms. A fixed weight vf_weight when adaptive_vf is false.
- configs/f16d32_vfdinov2.yaml: vf_weight (w_hyper) 0.1, adaptive_vf true, cos_margin (m1) 0.5,
  distmat_margin (m2) 0.25, reverse_proj true; f16d32_vfdinov2_long.yaml: a 3-stage schedule (weight 0.5 and
  margins 0 for 100 epochs, then weight 0.1, then margins 0.5 / 0.25), which a run reproduces by resuming with
  new loss.vf values.
- ldm/models/autoencoder.py (AutoencoderKL): the aligned latent is z, the posterior *sample* in training; with
  reverse_proj it goes through `Conv2d(embed_dim, 1024, kernel_size=1, bias=False)` (without reverse_proj the
  features would be projected down to the latent instead); the projection trains with the autoencoder's
  optimizer and is not part of the released tokenizer.
- ldm/models/foundation_models.py: DINOv2 ViT-L/14 (timm `vit_large_patch14_dinov2.lvd142m`, the weights of
  Hugging Face's `facebook/dinov2-large`), frozen, under no_grad; the image is resized bilinearly
  (align_corners False) to 224 x 224 and the patch tokens (after the final norm, without the class token) form a
  16 x 16 grid, the latent grid of an f16 tokenizer at 256 px.

Choices here (deviations on purpose):
- The image is resized to (latent h x patch size, latent w x patch size), so DINOv2's token grid is the latent
  grid at any resolution and downsampling factor; for f16 at 256 px that is the authors' 224 x 224.
- The image is normalized with ImageNet's mean and std, the preprocessing DINOv2 was trained with (its Hugging
  Face image processor's); the authors' code feeds the [-1, 1] image unnormalized.
- DINOv2 runs through `transformers` (Dinov2Model, `last_hidden_state[:, 1:]`: the same final-normed patch
  tokens), from a local directory or the Hugging Face cache (latentae.weights.resolve_hub_model).
- VQ tokenizers (not in the paper) align the quantized latent the decoder decodes (gradients reach the encoder
  through the quantizer's straight-through path); KL models the posterior sample, as the paper.
- Under no_grad (no gradients to compare) the adaptive weight is 0, as for the GAN term.
The DINOv2 features and the loss are fp32 with autocast off; the projection too, also when accelerate has wrapped
its forward in autocast (it trains with the generator's optimizer and is prepared by accelerate: DDP-synchronized
and checkpointed, never exported).
"""
from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentae.errors import LatentaeError, ModelFormatError
from latentae.losses.adaptive import adaptive_weight
from latentae.losses.config import VFConfig
from latentae.weights import resolve_hub_model

ADAPTIVE_MAX = 1e8  # VA-VAE's clamp of the adaptive weight
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # DINOv2's preprocessing
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_dinov2(source: str) -> nn.Module:
    """transformers' Dinov2Model from `source` (a local directory or a hub id in the Hugging Face cache)."""
    try:
        from transformers import Dinov2Model
    except ImportError:
        raise LatentaeError("loss.vf.weight > 0 needs the `transformers` package (DINOv2): "
                            "pip install latentae[align]") from None
    directory = resolve_hub_model("dinov2", source)
    model_type = json.loads((directory / "config.json").read_text()).get("model_type")
    if model_type != "dinov2":
        raise ModelFormatError(f"config key 'loss.vf.model': {directory} holds a '{model_type}' model, not DINOv2 "
                               f"(model_type 'dinov2', e.g. facebook/dinov2-large)")
    return Dinov2Model.from_pretrained(str(directory), local_files_only=True)


class DINOv2Features(nn.Module):
    """Frozen DINOv2, always in eval mode: images in [-1, 1] -> patch features [B, C, h, w] on a given grid."""

    def __init__(self, source: str):
        super().__init__()
        self.model = load_dinov2(source).eval().requires_grad_(False)
        self.patch_size = self.model.config.patch_size
        self.dim = self.model.config.hidden_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "DINOv2Features":
        """Always eval: a parent's `.train()` must not switch on dropout / drop-path."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor, grid: tuple[int, int]) -> Tensor:
        h, w = grid
        with torch.autocast(device_type=images.device.type, enabled=False):
            x = F.interpolate(images.float(), size=(h * self.patch_size, w * self.patch_size), mode="bilinear",
                              align_corners=False)
            x = ((x + 1) / 2 - self.mean) / self.std
            tokens = self.model(pixel_values=x).last_hidden_state[:, 1:]  # drop the class token
        return tokens.transpose(1, 2).reshape(images.shape[0], self.dim, h, w).float()


class Projection(nn.Conv2d):
    """1x1 conv from the latent to the feature channels, no bias (VA-VAE's reverse_proj). fp32 with autocast off
    even when accelerate has wrapped this forward in the run's autocast."""

    def __init__(self, latent_channels: int, feature_dim: int):
        super().__init__(latent_channels, feature_dim, kernel_size=1, bias=False)

    def forward(self, latent: Tensor) -> Tensor:
        with torch.autocast(device_type=latent.device.type, enabled=False):
            return super().forward(latent.float())


def vf_terms(projected: Tensor, features: Tensor, *, margin_cos: float, margin_dms: float) -> tuple[Tensor, Tensor]:
    """(L_mcos, L_mdms) of projected latents and features, both [B, C, h, w], in fp32."""
    z = F.normalize(projected.float().flatten(2), dim=1)  # [B, C, N]: unit vectors per position
    f = F.normalize(features.float().flatten(2), dim=1)
    cos = F.relu(1 - margin_cos - (z * f).sum(dim=1)).mean()
    distance = (z.transpose(1, 2) @ z - f.transpose(1, 2) @ f).abs()  # [B, N, N]
    return cos, F.relu(distance - margin_dms).mean()


class Alignment(nn.Module):
    """The VF term: owns the frozen DINOv2 (`features`) and the trainable `projection`. Train the projection with
    the generator's optimizer; under DDP prepare it and hand the wrapper back with `set_prepared_projection`."""

    def __init__(self, cfg: VFConfig, latent_channels: int):
        super().__init__()
        self.cfg = cfg
        self.features = DINOv2Features(cfg.model)
        self.projection = Projection(latent_channels, self.features.dim)
        self.__dict__["_prepared_projection"] = None  # not a submodule: state-dict keys stay the plain conv's

    def set_prepared_projection(self, wrapped: nn.Module) -> None:
        """Use `wrapped` (e.g. `accelerator.prepare(alignment.projection)`) in the forward (DDP gradient sync)."""
        self.__dict__["_prepared_projection"] = wrapped

    def forward(self, latent: Tensor, images: Tensor, reconstruction: Tensor, encoder_layer: Tensor | None,
                logs: dict) -> Tensor:
        """weight x vf; logs `loss/vf` (unweighted), `vf/cos`, `vf/distmat` and `vf/weight` (the weight applied)."""
        cfg = self.cfg
        projection = self._prepared_projection if self._prepared_projection is not None else self.projection
        projected = projection(latent)
        features = self.features(images, tuple(latent.shape[-2:]))
        cos, distmat = vf_terms(projected, features, margin_cos=cfg.margin_cos, margin_dms=cfg.margin_dms)
        term = cos + distmat
        if not cfg.adaptive:
            weight = term.new_tensor(cfg.weight)
        elif not torch.is_grad_enabled():  # evaluation under no_grad: no gradients to compare
            weight = term.new_zeros(())
        elif encoder_layer is None:
            raise ValueError("loss.vf.adaptive needs encoder_layer= (model.encoder_last_layer())")
        else:
            weight = cfg.weight * adaptive_weight(reconstruction, term, encoder_layer, max_weight=ADAPTIVE_MAX)
        logs["loss/vf"] = term.detach()
        logs["vf/cos"] = cos.detach()
        logs["vf/distmat"] = distmat.detach()
        logs["vf/weight"] = weight
        return weight * term
