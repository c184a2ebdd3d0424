"""Vector quantization (VQ-VAE / VQGAN / LlamaGen): nearest-code lookup with a straight-through gradient.

Losses follow the VQ-VAE paper: `beta` weighs the commitment term that pulls the encoder towards its code, and
the codebook term is unweighted. (taming / LDM / diffusers' default "legacy" loss puts beta on the codebook term
instead.) The codebook is `embedding` (an `nn.Embedding`, the name diffusers' VQModel uses), so weights map 1:1.

Distributed training: everything that synchronizes (EMA statistics, dead-code restart, k-means init) runs only
in training mode and issues the same collectives on every rank whatever the data: counts are all-reduced at
every codebook update, and whatever depends on them (how many codes to restart) is then identical on all ranks;
random choices are made on rank 0 and broadcast.

Gradient estimator (`grad_estimator`): "ste" copies the gradient of the code to the encoder output unchanged
(straight-through); "rotation" is the rotation trick of Fifty et al. 2024 ("Restructuring Vector Quantization
with the Rotation Trick", arXiv 2410.06424; github.com/cfifty/rotation_trick): the gradient passes through the
rotation + rescaling that maps the encoder output onto its code, held constant (see `rotation_trick`).

Gradient accumulation: the codebook is updated once per optimizer step (the EMA decay and the dead-code usage
are per optimizer step), from the counts and sums of all its micro-batches, so the micro-batches act as one
batch of their union and use one codebook, as without accumulation. The trainer marks each step's last
micro-batch with `set_step(step, last_micro_batch=...)`; without it every training forward is a step.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from latentae.config import ConfigError
from latentae.distributed import all_reduce_sum, broadcast_from_rank0, is_distributed
from latentae.quantizers.base import (
    Quantizer,
    QuantizerOutput,
    UsageTracker,
    check_input,
    flatten_channels_last,
    full_precision,
    project,
    straight_through,
    unflatten_channels_last,
)
from latentae.quantizers.kmeans import kmeans

LAPLACE_EPS = 1e-5  # additive smoothing of EMA cluster sizes: a code nobody picks is never divided by zero


def rotation_trick(code: Tensor, x: Tensor) -> Tensor:
    """`code` [N, D] in the forward pass (exactly); backward: the gradient g of the code reaches `x` [N, D] as
    (lambda R)^T g, where R is the rotation taking x's direction to code's and lambda = |code| / |x|, both held
    constant (Fifty et al. 2024; their code's `get_very_efficient_rotation`):

        x^ = x / |x|,  q^ = code / |code|,  r = (x^ + q^) / |x^ + q^|,  R = I - 2 r r^T + 2 q^ x^^T,

    so lambda R x = code. R is orthogonal: the gradient keeps the angle it makes with the code relative to x,
    and its norm scales by lambda. Written as straight_through(code, lambda R x) so the forward value is the code
    bit for bit (indices_to_codes relies on it) rather than lambda R x with its rounding. A row x = 0 has no
    direction: it keeps the identity gradient.
    """
    with torch.no_grad():
        x_norm, code_norm = x.norm(dim=1, keepdim=True), code.norm(dim=1, keepdim=True)
        x_hat, q_hat = F.normalize(x, dim=1), F.normalize(code, dim=1)
        r = F.normalize(x_hat + q_hat, dim=1)  # x^ = -q^ gives r = 0 and R = I - 2 q^ q^^T, still R x^ = q^
        scale = code_norm / x_norm.clamp_min(1e-12)  # clamped as F.normalize does: finite for the masked rows
    rotated = scale * (x - 2 * r * (r * x).sum(1, keepdim=True) + 2 * q_hat * (x_hat * x).sum(1, keepdim=True))
    return straight_through(code, torch.where(x_norm > 0, rotated, x))


GRAD_ESTIMATORS = {"ste": straight_through, "rotation": rotation_trick}  # (code, x) -> code, gradient to x


def mean_squared_error(a: Tensor, b: Tensor) -> Tensor:
    """F.mse_loss, but 0 rather than NaN over no rows (a rank may have none)."""
    return F.mse_loss(a, b, reduction="sum") / max(a.numel(), 1)


def finite_rows(x: Tensor) -> Tensor:
    return x[torch.isfinite(x).all(dim=1)]


def _is_rank0() -> bool:
    return not is_distributed() or dist.get_rank() == 0


class VectorQuantizer(Quantizer):
    """Nearest-neighbour quantizer: forward(z [B, dim, H, W]) -> QuantizerOutput with indices [B, H, W]."""

    def __init__(
        self,
        dim: int,  # channels of the input z [B, dim, H, W]
        *,
        codebook_size: int = 1024,  # number of codes
        codebook_dim: int | None = None,  # code width (None: dim); otherwise Linear project_in/out around lookup
        beta: float = 0.25,  # weight of the commitment term (pulls the encoder output towards its code)
        l2_normalize: bool = False,  # unit-norm inputs and codes, i.e. cosine-similarity lookup (LlamaGen)
        ema_decay: float | None = None,  # None: codebook learned by gradient; a float: EMA updates, no gradient
        dead_code_threshold: float = 0.0,  # restart codes whose decayed usage (per update) falls below; 0: off
        kmeans_init: bool = False,  # initialize the codebook by k-means on the first training batch
        kmeans_iters: int = 10,  # Lloyd iterations of that k-means
        usage_window: int = 100,  # usage stats span this many training forwards, dead-code usage as many updates
        grad_estimator: Literal["ste", "rotation"] = "ste",  # encoder gradient: straight-through or rotation trick
    ):
        super().__init__()
        codebook_dim = dim if codebook_dim is None else codebook_dim
        for name, value in (("dim", dim), ("codebook_size", codebook_size), ("codebook_dim", codebook_dim),
                            ("usage_window", usage_window)):
            if value < 1:
                raise ConfigError(f"quantizer option '{name}' must be a positive integer, got {value}")
        if beta < 0:
            raise ConfigError(f"quantizer option 'beta' must be >= 0, got {beta}")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ConfigError(f"quantizer option 'ema_decay' must be in (0, 1) or null, got {ema_decay}")
        if dead_code_threshold < 0:
            raise ConfigError(f"quantizer option 'dead_code_threshold' must be >= 0, got {dead_code_threshold}")
        if kmeans_iters < 0:
            raise ConfigError(f"quantizer option 'kmeans_iters' must be >= 0, got {kmeans_iters}")
        if grad_estimator not in GRAD_ESTIMATORS:
            raise ConfigError(f"quantizer option 'grad_estimator' must be one of {', '.join(GRAD_ESTIMATORS)}, "
                              f"got {grad_estimator!r}")

        self.dim = dim
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.beta = beta
        self.l2_normalize = l2_normalize
        self.ema_decay = ema_decay
        self.dead_code_threshold = dead_code_threshold
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
        self.grad_estimator = grad_estimator
        self.usage_decay = 1.0 - 1.0 / usage_window  # decayed usage counts average over ~usage_window forwards

        # Plain Linear with bias: export folds them into VQModel's quant_conv / post_quant_conv.
        self.project_in = nn.Linear(dim, codebook_dim) if codebook_dim != dim else None
        self.project_out = nn.Linear(codebook_dim, dim) if codebook_dim != dim else None
        self.embedding = nn.Embedding(codebook_size, codebook_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        self.tracker = UsageTracker(codebook_size, usage_window)

        if ema_decay is not None:
            self.embedding.weight.requires_grad_(False)
            # Every code starts with a pseudo-count of one assignment at its current value, so the first EMA
            # updates do not blow up codes nobody has picked yet (sum / tiny count).
            self.register_buffer("ema_cluster_size", torch.ones(codebook_size))
            self.register_buffer("ema_embed_sum", self.embedding.weight.detach().clone())
        if dead_code_threshold > 0:
            # Starting at the threshold: codes the first batch leaves unused are restarted right away.
            self.register_buffer("usage_count", torch.full((codebook_size,), float(dead_code_threshold)))
        if kmeans_init:
            self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        # [codebook_size, 1 (+ codebook_dim)] counts (and sums) gathered from the micro-batches of an optimizer
        # step before its last; empty between steps, where checkpoints are taken, so it is not saved.
        self._pending: Tensor | None = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A codebook loaded without its training state (an exported model being fine-tuned) is already
        # initialized: k-means must not overwrite it, and EMA statistics restart from it, not from random codes.
        weight = state_dict.get(prefix + "embedding.weight")
        if weight is not None:
            if self.kmeans_init:
                state_dict.setdefault(prefix + "initialized", torch.ones((), dtype=torch.bool))
            if self.ema_decay is not None and prefix + "ema_embed_sum" not in state_dict:
                state_dict[prefix + "ema_cluster_size"] = torch.ones(self.codebook_size)
                state_dict[prefix + "ema_embed_sum"] = weight.float()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- codebook access --------------------------------------------------------------------------------------

    def code_weights(self) -> Tensor:
        """The codes [codebook_size, codebook_dim] before l2_normalize, fp32, with a gradient to their parameters
        when they are learned. Subclasses that compute their codes (SimVQ) override it."""
        return self.embedding.weight.float()

    def _normalized(self, codes: Tensor) -> Tensor:
        return F.normalize(codes, dim=-1) if self.l2_normalize else codes

    def codebook(self) -> Tensor:
        """The codebook [codebook_size, codebook_dim] as used for lookup (unit-norm rows with l2_normalize),
        detached, fp32. This is what an exported VQModel's `quantize.embedding.weight` must hold."""
        with torch.no_grad():
            return self._normalized(self.code_weights())

    def lookup(self, indices: Tensor) -> Tensor:
        """Codes [*, codebook_dim] (fp32) for `indices` [*], with a gradient to the codebook when it is learned."""
        # normalized after the gather: the graph keeps the gathered rows, not the weight that a dead-code restart
        # later in the same forward overwrites in place
        return self._normalized(F.embedding(indices, self.code_weights()))

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """indices [B, H, W] -> codes [B, dim, H, W] after project_out; equal to forward's quantized value."""
        if indices.ndim != 3:
            raise ValueError(f"indices_to_codes expects indices of shape [B, H, W], got {tuple(indices.shape)}")
        b, h, w = indices.shape
        with full_precision(indices):
            codes = project(self.project_out, self.lookup(indices.reshape(-1)))
        return unflatten_channels_last(codes, (b, -1, h, w)).to(self.embedding.weight.dtype)

    # -- the quantization step, shared with ResidualVQ ----------------------------------------------------------

    def quantize_flat(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Quantize fp32 rows `x` [N, codebook_dim] (already projected).

        Returns (xc, code, indices, losses): xc is x as compared with the codes (unit-norm with l2_normalize),
        code [N, codebook_dim] the selected codes, indices [N] int64, losses the weighted VQ terms.
        """
        xc = F.normalize(x, dim=1) if self.l2_normalize else x
        if self.kmeans_init and self.training and self.codebook_updates and not bool(self.initialized):
            self._kmeans_init(finite_rows(xc.detach()))
        weights = self.code_weights()  # computed once per forward (SimVQ's is a matrix product)
        with torch.no_grad():
            # cdist on x itself, as diffusers' VQModel computes it on its quant_conv output, so exported models
            # pick the same tokens. With unit-norm codes the Euclidean argmin equals the cosine argmax of xc.
            indices = torch.cdist(x.detach(), self._normalized(weights.detach())).argmin(dim=1)
        code = self._normalized(F.embedding(indices, weights))  # as lookup(indices), from the same weights
        losses = {"commitment": self.beta * mean_squared_error(xc, code.detach())}
        if self.ema_decay is None:
            losses["codebook"] = mean_squared_error(code, xc.detach())
        return xc, code, indices, losses

    @torch.no_grad()
    def update_codebook(self, x: Tensor, indices: Tensor) -> None:
        """Training-time maintenance from this forward's rows `x` [N, codebook_dim] (as compared with codes) and
        their `indices` [N]: EMA update, decayed usage counts, dead-code restart, from the counts (and sums) of
        every micro-batch of the optimizer step, on its last (restarts draw from the last one's rows). There,
        one all-reduce on every rank, then a broadcast only when (all-reduced, hence rank-independent) usage says
        codes are dead; before it, nothing is synchronized."""
        if (self.ema_decay is None and self.dead_code_threshold == 0) or not self.codebook_updates:
            return
        finite = torch.isfinite(x).all(dim=1)  # a non-finite row (fp16 overflow) must not poison the codebook
        x, indices = x[finite], indices[finite]
        stats = torch.bincount(indices, minlength=self.codebook_size).float().unsqueeze(1)
        if self.ema_decay is not None:
            sums = torch.zeros(self.codebook_size, x.shape[1], device=x.device).index_add_(0, indices, x)
            stats = torch.cat([stats, sums], dim=1)
        if self._pending is not None:
            stats = self._pending + stats
        if not self.last_micro_batch:
            self._pending = stats
            return
        self._pending = None
        stats = all_reduce_sum(stats)
        if self.ema_decay is not None:
            self._ema_update(stats[:, 0], stats[:, 1:])
        if self.dead_code_threshold > 0:
            self._restart_dead_codes(x, stats[:, 0])

    def _ema_update(self, counts: Tensor, sums: Tensor) -> None:
        d = self.ema_decay
        self.ema_cluster_size.mul_(d).add_(counts, alpha=1 - d)
        self.ema_embed_sum.mul_(d).add_(sums, alpha=1 - d)
        total = self.ema_cluster_size.sum()
        smoothed = (self.ema_cluster_size + LAPLACE_EPS) / (total + self.codebook_size * LAPLACE_EPS) * total
        self.embedding.weight.copy_(self.ema_embed_sum / smoothed.unsqueeze(1))

    def _restart_dead_codes(self, x: Tensor, counts: Tensor) -> None:
        self.usage_count.mul_(self.usage_decay).add_(counts, alpha=1 - self.usage_decay)
        dead = self.usage_count < self.dead_code_threshold
        n_dead = int(dead.sum())  # the same on every rank: derived from all-reduced counts
        if n_dead == 0:
            return
        n = x.shape[0]
        if n == 0:  # no usable row on this rank: offer the current codes (only rank 0's offer is used)
            offer = self.codebook()[dead]
        elif n_dead <= n:
            offer = x[torch.randperm(n, device=x.device)[:n_dead]]
        else:  # more dead codes than rows in this batch: some restart to the same row
            offer = x[torch.randint(n, (n_dead,), device=x.device)]
        fresh = broadcast_from_rank0(offer.float())  # rank 0's rows, so every rank restarts to the same codes
        self._set_codes(dead, fresh)
        self.usage_count[dead] = self.dead_code_threshold  # a restarted code must be picked soon or move again

    def _kmeans_init(self, x: Tensor) -> None:
        if _is_rank0():
            centroids = kmeans(x, self.codebook_size, iters=self.kmeans_iters, spherical=self.l2_normalize)
        else:
            centroids = x.new_empty(self.codebook_size, self.codebook_dim, dtype=torch.float32)
        centroids = broadcast_from_rank0(centroids)
        self._set_codes(torch.ones(self.codebook_size, dtype=torch.bool, device=x.device), centroids)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _set_codes(self, mask: Tensor, codes: Tensor) -> None:
        """Overwrite the codes selected by `mask` (EMA statistics restart from one pseudo-assignment)."""
        self.embedding.weight[mask] = codes.to(self.embedding.weight.dtype)
        if self.ema_decay is not None:
            self.ema_cluster_size[mask] = 1.0
            self.ema_embed_sum[mask] = codes

    # -- forward ----------------------------------------------------------------------------------------------

    def forward(self, z: Tensor) -> QuantizerOutput:
        check_input(z, self.dim)
        b, _, h, w = z.shape
        with full_precision(z):
            x = project(self.project_in, flatten_channels_last(z.float()))
            xc, code, indices, losses = self.quantize_flat(x)
            if self.training:
                self.update_codebook(xc.detach(), indices)
            stats = self.tracker.update(indices)
            # The forward value is exactly the code; the gradient reaches xc by the chosen estimator.
            quantized = project(self.project_out, GRAD_ESTIMATORS[self.grad_estimator](code, xc))
        quantized = unflatten_channels_last(quantized, z.shape).to(z.dtype)
        return QuantizerOutput(quantized, indices.view(b, h, w), losses, stats)
