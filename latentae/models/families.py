"""The model families: the one list of them. Each names its model class, its config class (the `model:` section
whose `family:` picks it) and what it is; the model build, the config's `family:` check, `config_of` and help
texts read it."""
from __future__ import annotations

from dataclasses import dataclass

from latentae.models.config import ModelConfig
from latentae.models.dc import DCAutoencoder
from latentae.models.dc_config import DCConfig
from latentae.models.image_vaes import HunyuanImageAutoencoder, QwenImageAutoencoder, WanAutoencoder
from latentae.models.kl import KLAutoencoder
from latentae.models.kl_config import KLConfig
from latentae.models.rae import RAEAutoencoder
from latentae.models.rae_config import RAEConfig
from latentae.models.taesd import TAESDAutoencoder
from latentae.models.vq import VQTokenizer
from latentae.models.vq_config import VQConfig
from latentae.models.wrapped import TinyAutoencoder, WrappedAutoencoder
from latentae.models.wrapped_config import WrappedConfig


@dataclass(frozen=True)
class Family:
    name: str  # the config's model.family
    model: type
    config: type[ModelConfig]
    description: str


FAMILIES = {f.name: f for f in (
    Family("kl", KLAutoencoder, KLConfig, "Gaussian posterior (SD VAE, SD3, FLUX.1, FLUX.2)"),
    Family("vq", VQTokenizer, VQConfig, "quantized tokenizer (model.quantizer: VQ, SimVQ, IBQ, BSQ, FSQ, LFQ, Gumbel, "
                                        "residual, VQ-VAE-2)"),
    Family("dc", DCAutoencoder, DCConfig, "DC-AE (diffusers AutoencoderDC), deterministic; DC-AE 1.5's structured "
                                       "latent with model.structured_channels"),
    Family("tiny", TinyAutoencoder, WrappedConfig, "TAESD-style diffusers AutoencoderTiny, deterministic"),
    Family("taesd", TAESDAutoencoder, WrappedConfig, "the TAESD family in its authors' layout (TAEF2's pool branch, "
                                                     "TAESANA's f32), deterministic"),
    Family("rae", RAEAutoencoder, RAEConfig, "AutoencoderRAE: frozen representation encoder and trained ViT decoder, "
                                              "deterministic"),
    Family("qwenimage", QwenImageAutoencoder, WrappedConfig, "AutoencoderKLQwenImage, Gaussian posterior"),
    Family("wan", WanAutoencoder, WrappedConfig, "AutoencoderKLWan, Gaussian posterior"),
    Family("hunyuanimage", HunyuanImageAutoencoder, WrappedConfig, "AutoencoderKLHunyuanImage, Gaussian posterior"),
)}

# diffusers class name -> the latentae model holding it untouched (latentae.loading's adapters)
WRAPPED_CLASSES = {f.model.diffusers_class.__name__: f.model for f in FAMILIES.values()
                   if issubclass(f.model, WrappedAutoencoder)}

def families_text() -> str:
    """The families and what each is, for messages and help texts."""
    return "; ".join(f"{f.name}: {f.description}" for f in FAMILIES.values())


def family_of(model) -> Family:
    """The family whose class built `model`."""
    for family in FAMILIES.values():
        if type(model) is family.model:
            return family
    raise TypeError(f"{type(model).__name__} is no latentae model family's class")


def build_model(cfg: ModelConfig):
    """A freshly initialized model for the `model:` config section."""
    return FAMILIES[cfg.family].model(**cfg.model_kwargs())
