"""`model:` of the rae family: AutoencoderRAE's own keys under `diffusers:` (as every wrapped family), and the two
things its constructor does not say: where the frozen encoder's weights come from, and the training noise."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from latentae.config import ConfigError
from latentae.models.wrapped_config import WrappedConfig

AUTHORS_NOISE_TAU = 0.8  # bytetriper/RAE configs/stage1/training/DINOv2-B_decXL.yaml


@dataclass
class RAEConfig(WrappedConfig):
    family: str = "rae"
    # the frozen encoder's pretrained weights: a Hugging Face hub id (from the cache) or a local directory of the
    # transformers model; null: the authors' for model.diffusers.encoder_type (facebook/dinov2-with-registers-base,
    # google/siglip2-base-patch16-256, facebook/vit-mae-base); "random": a random-init encoder (smoke runs only)
    encoder_weights: str | None = None
    # per-sample latent noise std ~ U(0, noise_tau) while training (0: none); exported as AutoencoderRAE's
    # noise_tau, which its encode applies in training mode only. null: the authors' 0.8 for a fresh model, the
    # pretrained folder's config.json value for a fine-tune (train.init_from), which a number overrides
    noise_tau: Optional[float] = None
    FINETUNE_KEYS: ClassVar[tuple[str, ...]] = ("noise_tau",)

    def __post_init__(self):
        super().__post_init__()
        if "noise_tau" in self.diffusers:
            raise ConfigError("config key 'model.diffusers.noise_tau': set model.noise_tau instead (the training "
                              f"latent noise; default the authors' {AUTHORS_NOISE_TAU})")
        if self.noise_tau is not None and self.noise_tau < 0:
            raise ConfigError(f"config key 'model.noise_tau' must be >= 0, got {self.noise_tau}")

    def at_resolution(self, resolution: int) -> RAEConfig:
        """Unchanged: the decoder reconstructs one size, patch_size x the encoder's token grid side, which must be
        the training resolution."""
        import inspect

        from diffusers import AutoencoderRAE

        keys = {**{k: p.default for k, p in inspect.signature(AutoencoderRAE.__init__).parameters.items()},
                **self.diffusers}
        size = keys["patch_size"] * (keys["encoder_input_size"] // keys["encoder_patch_size"])
        if size != resolution:
            raise ConfigError(f"config key 'data.resolution' is {resolution}, but this RAE reconstructs {size} px "
                              f"images (model.diffusers.patch_size {keys['patch_size']} x a "
                              f"{keys['encoder_input_size'] // keys['encoder_patch_size']}-token side): set "
                              f"data.resolution={size}, or the model keys")
        return self

    def model_kwargs(self) -> dict:
        noise_tau = AUTHORS_NOISE_TAU if self.noise_tau is None else self.noise_tau
        return {**self.diffusers, "noise_tau": noise_tau, "encoder_weights": self.encoder_weights}

    @classmethod
    def describing(cls, model, family: str) -> RAEConfig:
        from latentae.models.config import init_keys
        from latentae.models.wrapped_config import built_class

        keys = {k: v for k, v in model.config.items() if k in init_keys(built_class(family))}
        # its encoder's weights are in the model itself (null would mean the authors' on a rebuild)
        return cls(family=family, noise_tau=keys.pop("noise_tau"), diffusers=keys)
