"""Model families: KL autoencoder (also FLUX.2's), VQ tokenizer, DC-AE and tiny autoencoders in diffusers' layout, the
TAESD family in its authors' layout, and the image VAEs of current pipelines (Qwen-Image, Wan, HunyuanImage, RAE);
latentae/models/families.py lists them."""
from latentae.models.bottleneck import Bottleneck
from latentae.models.config import ModelConfig, config_of
from latentae.models.families import FAMILIES, WRAPPED_CLASSES, build_model
from latentae.models.kl import KLAutoencoder
from latentae.models.kl_config import KLConfig
from latentae.models.output import AutoencoderOutput
from latentae.models.posterior import GaussianPosterior
from latentae.models.vq import VQTokenizer
from latentae.models.vq_config import VQConfig
from latentae.models.wrapped_config import WrappedConfig

__all__ = ["AutoencoderOutput", "Bottleneck", "FAMILIES", "GaussianPosterior", "KLAutoencoder", "KLConfig",
           "ModelConfig", "VQConfig", "VQTokenizer", "WRAPPED_CLASSES", "WrappedConfig", "build_model", "config_of"]
