"""What a training forward returns: the reconstruction and the bottleneck's own output."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from latentae.models.posterior import GaussianPosterior
from latentae.quantizers.base import QuantizerOutput


@dataclass
class AutoencoderOutput:
    reconstruction: Tensor  # [B, 3, H, W], same range as the input ([-1, 1])
    posterior: GaussianPosterior | None = None  # KL models
    quant: QuantizerOutput | None = None  # VQ models
    latent: Tensor | None = None  # what the decoder decoded (KL: the posterior sample; VQ: the quantized codes;
    # distillation: the teacher's latent)
    encoded: Tensor | None = None  # distillation only: the student encoder's latent, trained towards `latent`


def posterior_forward(model, images: Tensor, sample_posterior: bool = True, generator=None) -> AutoencoderOutput:
    """The training forward of a model with a Gaussian posterior: a sample (or the mode) of `model.posterior(images)`
    decoded, with the posterior for the KL term."""
    posterior = model.posterior(images)
    z = posterior.sample(generator) if sample_posterior else posterior.mode()
    return AutoencoderOutput(reconstruction=model.decode(z), posterior=posterior, latent=z)
