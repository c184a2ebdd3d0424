"""The training forward of the deterministic families (DC-AE, the tiny autoencoders): no posterior, no codebook."""
from __future__ import annotations

from torch import Tensor

from latentae.models.output import AutoencoderOutput


def deterministic_forward(model, images: Tensor, target: Tensor | None = None) -> AutoencoderOutput:
    """Reconstruct `images` through `model.encode` / `model.decode`. With `target` (a teacher's latents of
    `images`: distillation, the TAESD recipe) the decoder decodes the target and the encoder's latent is returned
    as `encoded`, for the loss to pull it there."""
    if target is None:
        z = model.encode(images)
        return AutoencoderOutput(reconstruction=model.decode(z), latent=z)
    z = model.encode(images) if model.has_encoder else None
    return AutoencoderOutput(reconstruction=model.decode(target), latent=target, encoded=z)
