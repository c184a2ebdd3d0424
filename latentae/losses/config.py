"""The `loss:` section of a config. Defaults are the SD KL-f8 recipe (LDM `LPIPSWithDiscriminator`):
L1 + LPIPS-VGG 1.0 summed over pixels, KL 1e-6 summed over latent elements, 3-layer PatchGAN with batch norm,
hinge loss, adaptive weight x 0.5 from step 50001.

Reduction ('reduction'), the one convention every term follows:
  sum  (LDM): pixel loss summed over C,H,W and averaged over the batch; LPIPS (one number per image) multiplied
        by the number of pixel elements C*H*W, as LDM adds it to every pixel before summing; KL summed over the
        latent's C,H,W and averaged over the batch.
  mean: every term is a per-element mean (pixel loss over B,C,H,W; LPIPS over B; KL over B,C,H,W of the latent).
Dividing the 'sum' objective by N_pix = 3*H*W gives the 'mean' one with an equivalent KL weight of
  kl.weight_mean = kl.weight_sum * N_lat / N_pix,  N_lat = C_lat*h*w
(1e-6 for KL-f8, 4 x 32 x 32 latents of 256 px images: 1e-6 * 4096 / 196608 = 2.1e-8). The adaptive weight
makes the adversarial term follow the reconstruction's scale, so it needs no conversion. Quantizer losses are
mean-reduced, so VQ training uses 'mean' (enforced).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from latentae.config import ConfigError
from latentae.models.posterior import ACTIVE_THRESHOLD


@dataclass
class KLConfig:
    weight: float = 1e-6  # beta: the KL weight (the schedule's maximum); SD KL-f8 1e-6 with reduction 'sum'
    schedule: Literal["constant", "linear", "cyclical"] = "constant"  # beta-VAE / linear / cyclical annealing
    anneal_start: int = 0  # linear, cyclical: step the annealing starts at (weight 0 before it)
    anneal_steps: int = 10000  # linear: steps to ramp 0 -> weight; cyclical: length of one cycle
    cycle_ratio: float = 0.5  # cyclical: fraction of each cycle spent ramping up (Fu et al. 2019's R)
    free_bits: float = 0.0  # per-channel KL floor in nats per latent element; below it no KL gradient; 0 = off
    active_threshold: float = ACTIVE_THRESHOLD  # a latent channel is "active" when its mean KL (nats/element)
    # exceeds this

    def __post_init__(self):
        if self.weight < 0:
            raise ConfigError(f"config key 'loss.kl.weight' must be >= 0, got {self.weight}")
        if self.anneal_start < 0:
            raise ConfigError(f"config key 'loss.kl.anneal_start' must be >= 0, got {self.anneal_start}")
        if self.anneal_steps < 1:
            raise ConfigError(f"config key 'loss.kl.anneal_steps' must be >= 1, got {self.anneal_steps}")
        if not 0 < self.cycle_ratio <= 1:
            raise ConfigError(f"config key 'loss.kl.cycle_ratio' must be in (0, 1], got {self.cycle_ratio}")
        if self.free_bits < 0:
            raise ConfigError(f"config key 'loss.kl.free_bits' must be >= 0, got {self.free_bits}")
        if self.active_threshold < 0:
            raise ConfigError(f"config key 'loss.kl.active_threshold' must be >= 0, got {self.active_threshold}")


@dataclass
class DiscConfig:
    # patchgan: LDM's PatchGAN on pixels (layers / channels / norm below), no weights needed; dino: the RAE authors'
    # frozen DINO ViT-S/8 with trained heads on its token maps, DiffAugment on its inputs (weights / head_kernel /
    # cutout below; latentae/losses/dino_discriminator.py)
    kind: Literal["patchgan", "dino"] = "patchgan"
    start: int = 50001  # step from which the adversarial term enters the generator loss (SD KL-f8: 50001)
    warmup_steps: int = 0  # the discriminator trains this many steps before `start`, so it is not untrained then
    loss: Literal["hinge", "non_saturating", "vanilla"] = "hinge"
    weight: float = 0.5  # adaptive: factor on the adaptive weight (LDM disc_weight); else the fixed weight; 0: no GAN
    adaptive: bool = True  # weight the adversarial term by |grad rec| / |grad adv| at the decoder's last layer
    adaptive_max: float = 1e4  # clamp of the adaptive weight (LDM's value), before `weight` multiplies it
    layers: int = 3  # PatchGAN stride-2 layers (3: 70x70 receptive field)
    channels: int = 64  # channels of the first layer (doubling per layer, at most 8x)
    norm: Literal["group", "batch", "none", "spectral"] = "batch"  # LDM: batch; run on cat([real, fake]) once
    weights: Optional[str] = None  # dino: the backbone, a hub id (from the HF cache) or a local transformers
    # directory; null: facebook/dino-vits8 (`latentae fetch-weights --only dino-vits8`)
    head_kernel: int = 9  # dino: kernel of each head's token convolution (the authors': 9)
    cutout: float = 0.0  # dino: DiffAugment's cutout side as a fraction of the image side (the authors': 0, off)
    lecam_weight: float = 0.0  # LeCAM regularization (Tseng et al. 2021); 0 = off
    lecam_decay: float = 0.99  # EMA decay per optimizer step of the mean real / fake logits LeCAM anchors to
    r1_weight: float = 0.0  # R1 gamma: adds gamma/2 * E|grad_x D(x)|^2 on real images; 0 = off

    def __post_init__(self):
        for name in ("start", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config key 'loss.disc.{name}' must be >= 0, got {getattr(self, name)}")
        for name in ("weight", "lecam_weight", "r1_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config key 'loss.disc.{name}' must be >= 0, got {getattr(self, name)}")
        if self.adaptive_max <= 0:
            raise ConfigError(f"config key 'loss.disc.adaptive_max' must be > 0, got {self.adaptive_max}")
        if self.layers < 1 or self.channels < 1:
            raise ConfigError(f"config keys 'loss.disc.layers' and 'loss.disc.channels' must be >= 1, "
                              f"got {self.layers} and {self.channels}")
        if not 0 <= self.lecam_decay < 1:
            raise ConfigError(f"config key 'loss.disc.lecam_decay' must be in [0, 1), got {self.lecam_decay}")
        if self.head_kernel < 1 or self.head_kernel % 2 == 0:  # an odd kernel keeps the token count
            raise ConfigError(f"config key 'loss.disc.head_kernel' must be an odd number >= 1, got {self.head_kernel}")
        if not 0 <= self.cutout < 1:
            raise ConfigError(f"config key 'loss.disc.cutout' must be in [0, 1), got {self.cutout}")
        if self.kind == "patchgan" and self.weights is not None:
            raise ConfigError("config key 'loss.disc.weights' names the backbone of loss.disc.kind=dino; the PatchGAN "
                              "has none: set loss.disc.kind=dino, or remove loss.disc.weights")


@dataclass
class EquivarianceConfig:
    """EQ-VAE (Kouzelis et al. 2025); see latentae/losses/equivariance.py. Defaults are the paper's code's."""
    weight: float = 0.0  # 0 = off; the term is added to the loss (EQ-VAE's balance at p=0.5: weight 2, see README)
    p: float = 0.5  # probability per batch that the term is computed (EQ-VAE's p_prior)
    scales: tuple[float, ...] = tuple(k / 32 for k in range(8, 32))  # downscale factor, one drawn per batch
    rotations: tuple[int, ...] = (1, 2, 3)  # quarter turns, one drawn per batch (0 = no rotation)

    def __post_init__(self):
        if self.weight < 0:
            raise ConfigError(f"config key 'loss.equivariance.weight' must be >= 0, got {self.weight}")
        if not 0 <= self.p <= 1:
            raise ConfigError(f"config key 'loss.equivariance.p' must be in [0, 1], got {self.p}")
        if not self.scales or not all(0 < s <= 1 for s in self.scales):
            raise ConfigError(f"config key 'loss.equivariance.scales' must be a non-empty list of factors in (0, 1], "
                              f"got {list(self.scales)}")
        if not self.rotations or not all(k in (0, 1, 2, 3) for k in self.rotations):
            raise ConfigError(f"config key 'loss.equivariance.rotations' must be a non-empty list of quarter turns "
                              f"from 0, 1, 2, 3, got {list(self.rotations)}")


@dataclass
class ScaleEquivarianceConfig:
    """Scale equivariance (Skorokhodov et al. 2025); see latentae/losses/equivariance.py."""
    weight: float = 0.0  # 0 = off
    factors: tuple[int, ...] = (2, 4)  # downsampling factors; the term is the mean over all of them

    def __post_init__(self):
        if self.weight < 0:
            raise ConfigError(f"config key 'loss.scale_equivariance.weight' must be >= 0, got {self.weight}")
        if not self.factors or not all(f >= 2 for f in self.factors):
            raise ConfigError(f"config key 'loss.scale_equivariance.factors' must be a non-empty list of integers "
                              f">= 2, got {list(self.factors)}")


@dataclass
class LatentNoiseConfig:
    """Noise-robust decoding (l-DeTok, Yang et al. 2025); see latentae/losses/latent_noise.py."""
    weight: float = 0.0  # 0 = off
    gamma: float = 3.0  # noise scale: z' = (1 - t) z + t * gamma * eps (l-DeTok's gamma)
    t_min: float = 0.0  # t is drawn per sample, uniform in [t_min, t_max] (l-DeTok: [0, 1])
    t_max: float = 1.0

    def __post_init__(self):
        if self.weight < 0:
            raise ConfigError(f"config key 'loss.latent_noise.weight' must be >= 0, got {self.weight}")
        if self.gamma <= 0:
            raise ConfigError(f"config key 'loss.latent_noise.gamma' must be > 0, got {self.gamma}")
        if not 0 <= self.t_min <= self.t_max <= 1:
            raise ConfigError(f"config keys 'loss.latent_noise.t_min' and 't_max' need 0 <= t_min <= t_max <= 1, "
                              f"got {self.t_min} and {self.t_max}")


@dataclass
class VFConfig:
    """VA-VAE's vision-foundation alignment (Yao et al. 2025); see latentae/losses/alignment.py. Defaults are the
    paper's code's (vavae/configs/f16d32_vfdinov2.yaml), except the weight: 0 = off (the paper: 0.1)."""
    weight: float = 0.0  # w_hyper; 0 = off (no DINOv2 loaded)
    model: str = "facebook/dinov2-large"  # Hugging Face hub id (from the HF cache) or a local directory
    margin_cos: float = 0.5  # m1: no cosine penalty where cos(projected latent, feature) >= 1 - m1
    margin_dms: float = 0.25  # m2: no penalty where the two cosine-similarity matrices differ by <= m2
    adaptive: bool = True  # weight x |grad rec| / |grad vf| at the encoder's last layer; false: fixed weight

    def __post_init__(self):
        if self.weight < 0:
            raise ConfigError(f"config key 'loss.vf.weight' must be >= 0, got {self.weight}")
        for name in ("margin_cos", "margin_dms"):  # both compare cosines, which differ by at most 2
            if not 0 <= getattr(self, name) <= 2:
                raise ConfigError(f"config key 'loss.vf.{name}' must be in [0, 2], got {getattr(self, name)}")
        if not self.model:
            raise ConfigError("config key 'loss.vf.model' must name a Hugging Face model id or a local directory")


@dataclass
class LossConfig:
    pixel_loss: Literal["l1", "l2"] = "l1"  # SD KL-f8: l1; LlamaGen VQ: l2
    pixel_weight: float = 1.0
    distill_weight: float = 1.0  # train.teacher runs: weight of the student encoder's L2 to the teacher's latent
    reduction: Literal["sum", "mean"] = "sum"  # see the module docstring; 'sum' is LDM's, VQ needs 'mean'
    perceptual_weight: float = 1.0  # LPIPS weight; 0 = no LPIPS (and no trunk weights needed)
    perceptual_net: Literal["vgg", "alex"] = "vgg"  # LPIPS trunk (LDM: vgg)
    perceptual_trunk_path: Optional[str] = None  # local copy of the trunk's torchvision weights file
    perceptual_random_init: bool = False  # random LPIPS trunk: tests and smoke runs without weight files
    kl: KLConfig = field(default_factory=KLConfig)  # KL family only
    disc: DiscConfig = field(default_factory=DiscConfig)
    # Latent-space regularizers for diffusability (off by default; latentae/losses/equivariance.py, latent_noise.py,
    # alignment.py)
    equivariance: EquivarianceConfig = field(default_factory=EquivarianceConfig)
    scale_equivariance: ScaleEquivarianceConfig = field(default_factory=ScaleEquivarianceConfig)
    latent_noise: LatentNoiseConfig = field(default_factory=LatentNoiseConfig)
    vf: VFConfig = field(default_factory=VFConfig)  # "vision foundation" alignment: VA-VAE's DINOv2 term (its
    # name in the paper and its configs; latentae/losses/alignment.py)

    def __post_init__(self):
        for name in ("pixel_weight", "perceptual_weight", "distill_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config key 'loss.{name}' must be >= 0, got {getattr(self, name)}")
        if self.perceptual_trunk_path is not None and self.perceptual_random_init:
            raise ConfigError("config keys 'loss.perceptual_trunk_path' and 'loss.perceptual_random_init' "
                              "contradict each other: set one")
