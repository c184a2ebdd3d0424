"""Representation autoencoder (Zheng et al. 2025, "Diffusion Transformers with Representation Autoencoders"):
diffusers' AutoencoderRAE held untouched as `vae`, a frozen pretrained representation encoder (DINOv2 with
registers, SigLIP2 or MAE: its patch tokens are the latent) and a ViT decoder, the only part that trains.

Training, as the authors' code (github.com/bytetriper/RAE, src/stage1/rae.py, src/train_stage1.py):
- the encoder is frozen and in eval mode, run without gradients; only the decoder is in the optimizer;
- the decoder learns from noise-augmented latents: per sample sigma ~ U(0, noise_tau), z + sigma * N(0, I), on the
  encoder's raw tokens before any latent normalization, in training mode only (noise_tau 0.8 in their training
  config, 0 at inference). AutoencoderRAE's own training-mode encode draws exactly this (its `_noising`), from the
  global generator, which the trainer seeds per (seed, rank, step): the noise is a function of the run's seed;
- a fresh model's encoder weights come from transformers (`model.encoder_weights`, a hub id in the Hugging Face
  cache or a local directory), with the final layer norm's affine dropped, as the authors' encoders do.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from diffusers import AutoencoderRAE
from torch import Tensor, nn

from latentae.errors import LatentaeError, ModelFormatError
from latentae.models.bottleneck import Bottleneck
from latentae.models.output import AutoencoderOutput
from latentae.models.wrapped import WrappedAutoencoder

RANDOM_ENCODER = "random"  # model.encoder_weights: a random-init encoder (tests, smoke runs: its latents mean nothing)


@dataclass(frozen=True)
class EncoderSource:
    """How a transformers checkpoint of one encoder_type becomes AutoencoderRAE's `encoder` state dict."""
    hub_name: str  # latentae.weights.HUB_MODELS key (its default hub id, the authors')
    model_types: tuple[str, ...]  # the config.json model_type it must have
    loader: str  # transformers class whose from_pretrained reads it
    submodule: str | None  # attribute of the loaded model that is the encoder (SiglipModel.vision_model, ...)
    prefix: str  # prefix of the encoder's keys inside AutoencoderRAE.encoder
    final_norm: str  # the final layer norm whose affine RAE drops (an identity norm)


ENCODER_SOURCES = {
    "dinov2": EncoderSource("rae-dinov2", ("dinov2_with_registers",), "Dinov2WithRegistersModel", None, "",
                            "layernorm."),
    "siglip2": EncoderSource("rae-siglip2", ("siglip",), "SiglipModel", "vision_model", "vision_model.",
                             "vision_model.post_layernorm."),
    "mae": EncoderSource("rae-mae", ("vit_mae",), "ViTMAEForPreTraining", "vit", "", "layernorm."),
}


def load_encoder_weights(vae: AutoencoderRAE, source: str | None) -> None:
    """Copy pretrained transformers weights into `vae.encoder` (`source`: a hub id or directory; None: the
    authors' weights for its encoder_type). One clear error when they are missing or do not fit."""
    import transformers

    from latentae.weights import resolve_hub_model

    kind = vae.config["encoder_type"]
    spec = ENCODER_SOURCES[kind]
    directory = resolve_hub_model(spec.hub_name, source)
    config = json.loads((directory / "config.json").read_text())
    model_type = config.get("model_type")
    config = config.get("vision_config", config)  # SigLIP's sizes are its vision tower's
    if model_type not in spec.model_types:
        raise ModelFormatError(f"config key 'model.encoder_weights': {directory} holds a '{model_type}' model, not "
                               f"the {kind} encoder model.diffusers.encoder_type names ({spec.model_types[0]})")
    want = {"encoder_hidden_size": ("hidden_size", vae.config["encoder_hidden_size"]),
            "encoder_num_hidden_layers": ("num_hidden_layers", vae.config["encoder_num_hidden_layers"]),
            "encoder_patch_size": ("patch_size", vae.config["encoder_patch_size"])}
    wrong = [f"model.diffusers.{key}={value} ({directory.name} has {name} {config.get(name)})"
             for key, (name, value) in want.items() if config.get(name) != value]
    if wrong:
        raise ModelFormatError(f"config key 'model.encoder_weights': {directory} does not fit the encoder the config "
                               f"builds: set {', '.join(wrong)}")
    check_input_normalization(vae, directory)
    pretrained = getattr(transformers, spec.loader).from_pretrained(str(directory), local_files_only=True)
    if spec.submodule:
        pretrained = getattr(pretrained, spec.submodule)
    state = {spec.prefix + k: v for k, v in pretrained.state_dict().items()
             if not (spec.prefix + k).startswith(spec.final_norm)}
    vae.encoder.load_state_dict(state, strict=True)


def check_input_normalization(vae: AutoencoderRAE, directory) -> None:
    """The encoder sees images normalized as it was trained (the authors read its image processor's mean / std:
    ImageNet's for DINOv2 and MAE, 0.5 for SigLIP2); checked where the directory has a preprocessor_config.json."""
    processor = directory / "preprocessor_config.json"
    if not processor.is_file():
        return
    spec = json.loads(processor.read_text())
    want = {"encoder_norm_mean": spec.get("image_mean"), "encoder_norm_std": spec.get("image_std")}
    have = {"encoder_norm_mean": vae.encoder_mean.flatten().tolist(),
            "encoder_norm_std": vae.encoder_std.flatten().tolist()}
    wrong = [f"model.diffusers.{k}={want[k]}" for k in want
             if want[k] is not None and not torch.allclose(torch.tensor(want[k]), torch.tensor(have[k]))]
    if wrong:
        raise ModelFormatError(f"config key 'model.encoder_weights': {directory.name}'s image processor normalizes "
                               f"its inputs otherwise than the config: set {' '.join(wrong)}")


class RAEAutoencoder(WrappedAutoencoder):
    """AutoencoderRAE behind latentae's interface. Works in [0, 1] pixels inside (ImageNet mean / std on the way
    in); decodes image_size px whatever the input size, so images must be that size."""

    family = "rae"
    diffusers_class = AutoencoderRAE
    channels_key = "encoder_hidden_size"
    # its encode applies latents_mean / latents_std / scaling_factor itself (buffers in its weights, which override
    # config.json): the latents already are the diffusion model's, and a config write would change nothing; its
    # encoder is a frozen representation model, so it learns no teacher's latents either
    normalizes_in_encode = True  # latent_norm: its pipeline-side normalization is the identity
    bottleneck = Bottleneck("deterministic", normalized_by=(
        "its encode applies the latents_mean / latents_std buffers in its weights, which override config.json"))

    def __init__(self, vae: AutoencoderRAE | None = None, encoder_weights: str | None = None, **config):
        super().__init__(vae, **config)
        if vae is None and encoder_weights != RANDOM_ENCODER:
            load_encoder_weights(self.vae, encoder_weights)
        self.vae.encoder.requires_grad_(False).eval()  # frozen whatever train.trainable selects

    def train(self, mode: bool = True) -> RAEAutoencoder:
        """The encoder stays in eval mode (the authors': no dropout / drop-path in it while the decoder trains);
        the vae's own training flag switches its latent noise on."""
        super().train(mode)
        self.vae.encoder.eval()
        return self

    @property
    def noise_tau(self) -> float:
        """The largest per-sample noise std of the training latents (AutoencoderRAE's own config key)."""
        return self.vae.noise_tau

    @noise_tau.setter
    def noise_tau(self, value: float) -> None:
        """Also in the vae's config, so the export's config.json says what the training used."""
        self.vae.noise_tau = float(value)
        self.vae.register_to_config(noise_tau=float(value))

    @property
    def downsample_factor(self) -> int:  # decoder patch: image_size / token grid side
        return self.config["patch_size"]

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Images in [-1, 1] -> latents; in training mode with noise (see the module docstring). Never a gradient:
        the encoder is frozen."""
        size = self.vae.decoder_image_size
        if images.shape[-2:] != (size, size):
            raise LatentaeError(f"AutoencoderRAE reconstructs {size}x{size} px images only (its decoder's "
                                f"image_size), got {images.shape[-2]}x{images.shape[-1]}: evaluate at --resolution "
                                f"{size} (train at data.resolution={size})")
        with torch.no_grad():
            return self.vae.encode((images + 1) / 2, generator=generator).latent

    def decode(self, latents: Tensor) -> Tensor:
        return self.vae.decode(latents).sample * 2 - 1

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> AutoencoderOutput:
        z = self.encode(images, generator)
        return AutoencoderOutput(reconstruction=self.decode(z), latent=z)

    def last_layer(self) -> nn.Parameter:
        return self.vae.decoder.decoder_pred.weight

    def encoder_last_layer(self) -> nn.Parameter:
        from latentae.config import ConfigError

        raise ConfigError("config key 'loss.vf.weight': the alignment trains the encoder, and an RAE's is a frozen "
                          "representation model already: set loss.vf.weight=0")
