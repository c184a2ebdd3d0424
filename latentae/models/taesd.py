"""The TAESD family as its authors ship it (madebyollin/taesd): `<name>_encoder` / `<name>_decoder` weight files
holding plain `nn.Sequential` state dicts (`0.weight`, `11.pool.1.weight`, ...).

Variants (read off the weights' shapes by `latentae.loading`, never off file names):
  taesd   TAESD / TAESDXL / TAESD3 / TAEF1: f8, 64-wide blocks, 4 or 16 latent channels (AutoencoderTiny holds it)
  flux_2  TAEF2: as taesd with 32 latent channels, plus a GroupNorm `pool` branch in the three blocks at the latent
          resolution (`x = x + pool(x)` before the block); no diffusers class holds it
  f32     TAESANA (DC-AE f32c32's latents): 32x down / up with wider decoder blocks; no diffusers class holds it
The networks take and give images in [0, 1]; this model's interface is [-1, 1] like every other family. Either
half may be absent (a preview decoder ships alone): asking for it then says which file is missing.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

from latentae.errors import ModelFormatError
from latentae.models.bottleneck import Bottleneck
from latentae.models.deterministic import deterministic_forward

VARIANTS = ("taesd", "flux_2", "f32")


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class _Clamp(nn.Module):
    """Soft clamp of the decoder's input latents to (-3, 3)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    """Residual block: conv-ReLU-conv-ReLU-conv plus a (1x1 when widths differ) skip, ReLU after the sum; with
    `pool`, a per-sample GroupNorm branch added to the input first (TAEF2's global statistics)."""

    def __init__(self, n_in: int, n_out: int, pool: bool = False):
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(), _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()
        self.pool = None
        if pool:
            wide = 4 * n_in
            self.pool = nn.Sequential(nn.Conv2d(n_in, wide, 1, bias=False), nn.GroupNorm(4, wide), nn.ReLU(),
                                      nn.Conv2d(wide, n_in, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def _blocks(n: int, width: int, pool: bool = False) -> list[nn.Module]:
    return [_Block(width, width, pool) for _ in range(n)]


def _down(width: int) -> nn.Module:
    return _conv(width, width, stride=2, bias=False)


def _up(n_in: int, n_out: int) -> list[nn.Module]:
    return [nn.Upsample(scale_factor=2), _conv(n_in, n_out, bias=False)]


def build_encoder(latent_channels: int, variant: str) -> nn.Sequential:
    if variant == "f32":
        stem = [_conv(3, 32, stride=2), nn.ReLU(), _conv(32, 64, stride=2), nn.ReLU(), *_blocks(1, 64)]
        levels = [_down(64), *_blocks(3, 64), _down(64), *_blocks(3, 64), _down(64), *_blocks(3, 64)]
    else:
        pool = variant == "flux_2"
        stem = [_conv(3, 64), *_blocks(1, 64)]
        levels = [_down(64), *_blocks(3, 64), _down(64), *_blocks(3, 64), _down(64), *_blocks(3, 64, pool)]
    return nn.Sequential(*stem, *levels, _conv(64, latent_channels))


def build_decoder(latent_channels: int, variant: str) -> nn.Sequential:
    if variant == "f32":
        widths = [256, 128, 64, 64, 64]
        layers: list[nn.Module] = [_Clamp(), _conv(latent_channels, 256), nn.ReLU()]
        for width, after in zip(widths, widths[1:] + [64]):
            layers += [*_blocks(3, width), *_up(width, after)]
    else:
        pool = variant == "flux_2"
        layers = [_Clamp(), _conv(latent_channels, 64), nn.ReLU(), *_blocks(3, 64, pool), *_up(64, 64),
                  *_blocks(3, 64), *_up(64, 64), *_blocks(3, 64), *_up(64, 64)]
    return nn.Sequential(*layers, *_blocks(1, 64), _conv(64, 3))


class TAESDAutoencoder(ModelMixin, ConfigMixin):
    """A TAESD-family autoencoder: deterministic latents in its teacher's diffusion latent space (scale 1)."""

    family = "taesd"
    # already its teacher's diffusion latents: `stats --write` must not rescale them
    bottleneck = Bottleneck("deterministic", distills=True,
                            normalized_by="they are its teacher's: measured constants would normalize them twice")

    @register_to_config
    def __init__(self, latent_channels: int = 4, variant: str = "taesd", with_encoder: bool = True,
                 with_decoder: bool = True, scaling_factor: float = 1.0, shift_factor: float = 0.0):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if not (with_encoder or with_decoder):
            raise ValueError("a TAESD model needs an encoder, a decoder or both")
        self.encoder = build_encoder(latent_channels, variant) if with_encoder else None
        self.decoder = build_decoder(latent_channels, variant) if with_decoder else None

    @property
    def has_encoder(self) -> bool:
        return self.encoder is not None

    @property
    def downsample_factor(self) -> int:
        return 32 if self.config["variant"] == "f32" else 8

    @property
    def crop_multiple(self) -> int:
        return self.downsample_factor

    @property
    def tiny_obstacle(self) -> str | None:
        """Why diffusers' AutoencoderTiny cannot compute the same function (None: it can, and export writes it)."""
        variant = self.config["variant"]
        if variant != "taesd":
            return f"variant {variant}: {'the pool branch' if variant == 'flux_2' else '32x down / up'}"
        if self.encoder is None or self.decoder is None:
            return "one half only"
        return None

    def _half(self, name: str) -> nn.Sequential:
        half = getattr(self, name)
        if half is None:
            raise ModelFormatError(f"this TAESD model has no {name}: put its <name>_{name}.safetensors (or .pth) "
                                   "beside the other file")
        return half

    def encode(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] -> latents (already in the teacher's normalized space: scaling_factor 1)."""
        return self._half("encoder")(images.add(1).div(2))

    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> images in [-1, 1] (not clamped, as the authors' decoder)."""
        return self._half("decoder")(latents).mul(2).sub(1)

    def forward(self, images: Tensor, target: Tensor | None = None):
        return deterministic_forward(self, images, target)

    def latent_resolution_stages(self) -> tuple[tuple[Callable, Callable], tuple[Callable, Callable]]:
        """Each half cut where it reaches the latent resolution: ((encode_above, encode_at), (decode_at,
        decode_above)), encode = encode_at(encode_above(images)) and decode = decode_above(decode_at(latents)).
        Tiled evaluation (latentae.models.tiling) tiles only the layers above: those at the latent resolution see
        the whole latent, as untiled, so TAEF2's GroupNorm branch there normalizes over the whole image (per tile,
        each tile's colours shift); their activations are 1 / f^2 of the pixels'."""
        encoder, decoder = self._half("encoder"), self._half("decoder")
        down = max(i for i, m in enumerate(encoder) if isinstance(m, nn.Conv2d) and m.stride != (1, 1)) + 1
        up = next(i for i, m in enumerate(decoder) if isinstance(m, nn.Upsample))
        return ((lambda images: encoder[:down](images.add(1).div(2)), encoder[down:]),
                (decoder[:up], lambda features: decoder[up:](features).mul(2).sub(1)))

    def enable_gradient_checkpointing(self) -> None:
        from latentae.config import ConfigError

        raise ConfigError("config key 'train.gradient_checkpointing': the TAESD family does not support gradient "
                          "checkpointing (its activations are small: lower data.batch_size instead)")

    def last_layer(self) -> nn.Parameter:
        """The decoder's output weight (the adaptive GAN weight compares gradient norms here)."""
        return self._half("decoder")[-1].weight

    def encoder_last_layer(self) -> nn.Parameter:
        return self._half("encoder")[-1].weight

    # ------------------------------------------------------------ the authors' files and AutoencoderTiny
    def load_halves(self, encoder: dict | None, decoder: dict | None) -> None:
        """Load the authors' state dicts (any float dtype) into the halves present; a mismatch names the file."""
        for name, state in (("encoder", encoder), ("decoder", decoder)):
            if state is not None:
                missing, unexpected = self._half(name).load_state_dict(state, strict=False)
                if missing or unexpected:
                    raise ModelFormatError(f"TAESD {name} weights do not fit the {self.config['variant']} variant "
                                           f"(missing {missing[:4]}, unexpected {unexpected[:4]})")

    def to_tiny(self):
        """diffusers' AutoencoderTiny with these weights (taesd variant with both halves only)."""
        from diffusers import AutoencoderTiny

        if self.tiny_obstacle:
            raise ModelFormatError(f"this TAESD model has no AutoencoderTiny equivalent ({self.tiny_obstacle})")
        vae = AutoencoderTiny(latent_channels=self.config["latent_channels"])
        state = {f"encoder.layers.{k}": v for k, v in self.encoder.state_dict().items()}
        for k, v in self.decoder.state_dict().items():  # diffusers applies the clamp in forward: indices shift by 1
            index, rest = k.split(".", 1)
            state[f"decoder.layers.{int(index) - 1}.{rest}"] = v
        vae.load_state_dict(state, strict=True)
        return vae.to(self.dtype)
