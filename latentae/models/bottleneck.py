"""What a model's bottleneck is and what it can do: the one answer the commands, the loss and the evaluator read
(`model.bottleneck`, set by each model class), instead of asking for a family or probing for methods."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Kind = Literal["gaussian", "codebook", "deterministic"]


@dataclass(frozen=True)
class Bottleneck:
    """gaussian: a diagonal Gaussian posterior q(z|x) (`model.posterior(images)`, a KL term, samples or means);
    codebook: a quantizer (`model.tokenize` / `detokenize` / `quantize`: token ids, the quantizer's own losses);
    deterministic: the encoder's output is the latent (no posterior, no codebook)."""

    kind: Kind
    distills: bool = False  # forward(images, target=...) learns a teacher's latents (latentae/trainer/teacher.py)
    # why its latents already are a diffusion model's (normalized) ones and get no measured constants; None: they
    # are not
    normalized_by: str | None = None
    # a structured latent (DC-AE 1.5): the leading-channel counts it decodes, ascending, the last the full latent;
    # `model.at_channels(n)` is the model using only the first n; () for every other model
    channel_counts: tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind not in get_args(Kind):
            raise ValueError(f"bottleneck kind must be one of {get_args(Kind)}, got {self.kind!r}")
        if self.distills and self.kind != "deterministic":
            raise ValueError("distillation students are deterministic: the decoder decodes the teacher's latent")

    @property
    def samples(self) -> bool:
        """A posterior to sample from: forward(images, sample_posterior=...), `posterior(images)`, logvar, KL."""
        return self.kind == "gaussian"

    @property
    def tokenizes(self) -> bool:
        """Token ids instead of continuous latents: `tokenize`, `detokenize`, `quantize.codebook_size`."""
        return self.kind == "codebook"

    @property
    def deterministic(self) -> bool:
        """The latent is the encoder's output: its own sample, nothing to draw."""
        return self.kind == "deterministic"


GAUSSIAN = Bottleneck("gaussian")
CODEBOOK = Bottleneck("codebook")


def at_channels(model, n: int, name: str = "the model", what: str | None = None):
    """`model` encoding with the first `n` channels of its structured latent (its weights shared), or the one error
    saying what `name` serves instead; `what` starts the message (default: "--channels N")."""
    from latentae.errors import LatentaeError

    what = what or f"--channels {n}"
    counts = model.bottleneck.channel_counts
    if not counts:
        raise LatentaeError(f"{what}: {name} has no structured latent (DC-AE 1.5's model.structured_channels): it "
                            "encodes and decodes its whole latent")
    if n not in counts:
        raise LatentaeError(f"{what}: {name} serves {list(counts)} channels")
    return model.at_channels(n)
