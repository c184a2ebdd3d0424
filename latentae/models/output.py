"""What a forward returns: the reconstruction and the bottleneck's own output, read the same way for every kind of
bottleneck (latentae/models/bottleneck.py)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from latentae.models.posterior import GaussianPosterior
from latentae.quantizers.base import QuantizerOutput


@dataclass
class AutoencoderOutput:
    reconstruction: Tensor  # [B, 3, H, W], same range as the input ([-1, 1])
    posterior: GaussianPosterior | None = None  # gaussian bottlenecks: the KL term's input
    quant: QuantizerOutput | None = None  # codebook bottlenecks
    latent: Tensor | None = None  # what the decoder decoded (KL: the posterior sample; VQ: the quantized codes;
    # distillation: the teacher's latent)
    encoded: Tensor | None = None  # distillation only: the student encoder's latent, trained towards `latent`

    @property
    def bottleneck_losses(self) -> dict[str, Tensor]:
        """The bottleneck's own loss terms, already weighted: the total adds them as they are (a quantizer's). A
        posterior's KL is not among them: its weight follows the loss's schedule (see `posterior`)."""
        return self.quant.losses if self.quant is not None else {}

    @property
    def bottleneck_stats(self) -> dict[str, Tensor | float]:
        """The bottleneck's diagnostics under their log names (a quantizer's `codebook/...`)."""
        return {f"codebook/{k}": v for k, v in self.quant.stats.items()} if self.quant is not None else {}

    @property
    def bottleneck_latent(self) -> Tensor:
        """The latent the bottleneck's statistics describe: a posterior's mean (not the sample drawn), a quantizer's
        codes, else what was decoded."""
        if self.posterior is not None:
            return self.posterior.mean
        if self.quant is not None:
            return self.quant.quantized
        if self.latent is None:
            raise ValueError("this AutoencoderOutput has no latent (the latent the decoder decoded)")
        return self.latent


def posterior_forward(model, images: Tensor, sample_posterior: bool = True, generator=None) -> AutoencoderOutput:
    """The training forward of a model with a Gaussian posterior: a sample (or the mode) of `model.posterior(images)`
    decoded, with the posterior for the KL term."""
    posterior = model.posterior(images)
    z = posterior.sample(generator) if sample_posterior else posterior.mode()
    return AutoencoderOutput(reconstruction=model.decode(z), posterior=posterior, latent=z)
