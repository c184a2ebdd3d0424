"""Model families: KL autoencoder (also FLUX.2's), VQ tokenizer, DC-AE and tiny autoencoders in diffusers' layout, the
TAESD family in its authors' layout, and the image VAEs of current pipelines (Qwen-Image, Wan, HunyuanImage, RAE)."""
from latentae.models.bottleneck import Bottleneck
from latentae.models.config import ModelConfig
from latentae.models.image_vaes import (
    IMAGE_VAES,
    HunyuanImageAutoencoder,
    QwenImageAutoencoder,
    RAEAutoencoder,
    WanAutoencoder,
)
from latentae.models.kl import KLAutoencoder
from latentae.models.output import AutoencoderOutput
from latentae.models.posterior import GaussianPosterior
from latentae.models.taesd import TAESDAutoencoder
from latentae.models.vq import VQTokenizer
from latentae.models.wrapped import DCAutoencoder, TinyAutoencoder

MODEL_CLASSES = {"kl": KLAutoencoder, "vq": VQTokenizer, "dc": DCAutoencoder, "tiny": TinyAutoencoder,
                 "taesd": TAESDAutoencoder, "qwenimage": QwenImageAutoencoder, "wan": WanAutoencoder,
                 "hunyuanimage": HunyuanImageAutoencoder, "rae": RAEAutoencoder}
# diffusers class name -> the latentae model holding it untouched (latentae.loading's adapters)
WRAPPED_CLASSES = {cls.diffusers_class.__name__: cls for cls in (DCAutoencoder, TinyAutoencoder, *IMAGE_VAES)}


def build_model(cfg: ModelConfig):
    """A freshly initialized model for the `model:` config section."""
    return MODEL_CLASSES[cfg.family](**cfg.model_kwargs())


__all__ = ["AutoencoderOutput", "Bottleneck", "GaussianPosterior", "KLAutoencoder", "ModelConfig", "VQTokenizer",
           "build_model", "MODEL_CLASSES", "WRAPPED_CLASSES"]
