"""Model families: KL autoencoder (also FLUX.2's), VQ tokenizer, DC-AE and tiny autoencoders in diffusers' layout, and
the TAESD family in its authors' layout."""
from latentae.models.config import ModelConfig
from latentae.models.kl import KLAutoencoder
from latentae.models.output import AutoencoderOutput
from latentae.models.posterior import GaussianPosterior
from latentae.models.taesd import TAESDAutoencoder
from latentae.models.vq import VQTokenizer
from latentae.models.wrapped import DCAutoencoder, TinyAutoencoder

MODEL_CLASSES = {"kl": KLAutoencoder, "vq": VQTokenizer, "dc": DCAutoencoder, "tiny": TinyAutoencoder,
                 "taesd": TAESDAutoencoder}


def build_model(cfg: ModelConfig):
    """A freshly initialized model for the `model:` config section."""
    return MODEL_CLASSES[cfg.family](**cfg.model_kwargs())


__all__ = ["AutoencoderOutput", "GaussianPosterior", "KLAutoencoder", "ModelConfig", "VQTokenizer", "build_model",
           "MODEL_CLASSES"]
