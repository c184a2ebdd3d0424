"""SimVQ: a frozen random codebook behind one learnable linear layer.

Zhu et al. 2024, "Addressing Representation Collapse in Vector Quantized Models with One Linear Layer"
(arXiv 2411.02038); the authors' code: github.com/youngsheen/SimVQ, taming/modules/vqvae/quantize.py (SimVQ).

The codes are W(C) = C W^T + b: C [codebook_size, codebook_dim] is drawn once from N(0, 1/codebook_dim) and frozen
(`embedding`, a parameter with requires_grad off), W is an nn.Linear(codebook_dim, codebook_dim) with bias and
PyTorch's default initialization (`embedding_proj`), both as in the authors' code. Plain VQ moves only the codes
an encoder output picked, so the others fall behind and die; here the codebook term's gradient reaches W, which
moves every code at once (the paper's remedy for representation collapse).

Everything else is VectorQuantizer's: nearest code in L2 (cdist argmin on the fp32 rows), the VQ-VAE loss
beta * mse(z, sg(q)) + mse(q, sg(z)) as the authors' configs use it (`legacy: false`; reported as "commitment",
weighted by beta, and "codebook", unweighted), a straight-through gradient as in the authors' code or the
rotation trick (`grad_estimator`), usage and perplexity from the counts of every rank, optional project_in/out.
VectorQuantizer's EMA, dead-code restart and k-means init are not offered: they overwrite codes, which here are a
function of W; nor is l2_normalize (not in the authors' method).

Export: at inference W(C) is an ordinary codebook under the same lookup rule as diffusers' VQModel, so `export`
writes a VQModel whose embedding is W(C) (identical tokens); `latentae.load` re-imports it as a plain `vq`
tokenizer with that codebook (C and W are not needed to tokenize or decode). indices_to_codes looks indices up
in W(C) (the authors' get_codebook_entry reads C itself, which is not what their forward quantizes to).
"""
from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from latentae.quantizers.base import project
from latentae.quantizers.vector import VectorQuantizer


class SimVQ(VectorQuantizer):
    """forward(z [B, dim, H, W]) -> QuantizerOutput with indices [B, H, W], losses commitment and codebook."""

    def __init__(
        self,
        dim: int,  # channels of the input z [B, dim, H, W]
        *,
        codebook_size: int = 1024,  # number of codes
        codebook_dim: int | None = None,  # code width (None: dim); otherwise Linear project_in/out around lookup
        beta: float = 0.25,  # weight of the commitment term (the authors' 0.25)
        usage_window: int = 100,  # usage stats span this many training forwards
        grad_estimator: Literal["ste", "rotation"] = "ste",  # encoder gradient: straight-through or rotation trick
    ):
        super().__init__(dim, codebook_size=codebook_size, codebook_dim=codebook_dim, beta=beta,
                         usage_window=usage_window, grad_estimator=grad_estimator)
        nn.init.normal_(self.embedding.weight, mean=0.0, std=self.codebook_dim**-0.5)
        self.embedding.weight.requires_grad_(False)  # C: frozen, so AdamW and DDP skip it
        self.embedding_proj = nn.Linear(self.codebook_dim, self.codebook_dim)  # W

    def code_weights(self) -> Tensor:
        """W(C) [codebook_size, codebook_dim], fp32, with a gradient to W (a model cast to half precision
        computes it in its own precision, as its projections)."""
        return project(self.embedding_proj, self.embedding.weight.float())
