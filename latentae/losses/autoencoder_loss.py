"""The autoencoder's training objective: generator loss and discriminator loss, plus per-step diagnostics.

Generator (mode="generator"):
  total = pixel_weight * rec + perceptual_weight * lpips          (the "reconstruction" part)
        + kl.weight(step) * kl            (a Gaussian posterior)  |  + sum(output.bottleneck_losses)  (a quantizer's,
                                                                                                 already weighted)
        + adaptive_weight * g_adv         (from disc.start on)
        + sum(weight * term) of the latent regularizers that are on (equivariance, scale_equivariance,
          latent_noise: latentae/losses/equivariance.py, latent_noise.py), each the same pixel + perceptual
          reconstruction loss of a transformed / noised latent decoded again
        + vf_weight * vf                  (loss.vf: VA-VAE's DINOv2 alignment of the latent, see
                                           latentae/losses/alignment.py; vf_weight, adaptive at the encoder's last
                                           layer, is logged as `vf/weight`)
  with adaptive_weight = disc.weight * clamp(|grad rec| / |grad g_adv|, 0, disc.adaptive_max) at the decoder's
  last layer when disc.adaptive, else disc.weight.
Discriminator (mode="discriminator"), from disc.start - disc.warmup_steps on:
  total = d_loss(real, fake) + lecam_weight * lecam + r1_weight * r1

Everything is computed in fp32 with autocast off (the model may run under bf16 autocast). Logged loss terms
are the terms before their weight, in the configured reduction; the weights are logged beside them
(`kl/weight`, `adaptive_weight`: the weight actually applied to `loss/g_adv`, also when it is fixed), so
`loss/total` is their weighted sum. Keys carry no `train/` prefix. A regularizer logs `loss/<name>` on the steps
it is computed (EQ-VAE's only with probability p); `loss/vf` is a mean over positions whatever the reduction.

Distributed use: keep this module (and its LPIPS) out of `accelerator.prepare`; prepare only
`loss.discriminator` and hand the wrapper back with `set_prepared_discriminator`, so the discriminator update
goes through DDP (otherwise each rank's D would train on its own gradients). The generator pass calls the
plain module with D frozen: D gets no gradient there, so there is nothing to synchronize. Likewise prepare the
VF term's projection (`loss.vf.projection`, trained by the generator's optimizer) and hand it back with
`loss.vf.set_prepared_projection`; DINOv2 is frozen and never prepared.

The generator is judged by the discriminator the D step trains: a batch-norm D (which normalizes over the
batch) sees `cat([images, rec])` in the generator pass too, exactly as in its own step, and the fake half's
logits are used; without that, batch norm re-normalizes the fakes with their own statistics and the generator
gets almost no adversarial signal. D's buffers (batch-norm running statistics, spectral-norm vectors) are left
as they were by the generator pass, so only D's own step advances them. The generator pass logs its logits as
`disc/g_logits_fake` (`disc/logits_fake` is the D step's).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from torch import Tensor, nn

from latentae.config import ConfigError
from latentae.losses.adaptive import adaptive_weight
from latentae.losses.alignment import Alignment
from latentae.losses.config import LossConfig
from latentae.losses.discriminator import build_discriminator
from latentae.losses.dino_discriminator import to_8bit_levels
from latentae.losses.equivariance import (equivariance_loss, scale_equivariance_loss, strongest_downscaling,
                                          transformed_sizes)
from latentae.losses.gan import LeCAMAnchors, discriminator_loss, generator_loss, lecam_penalty, r1_penalty
from latentae.losses.kl import kl_term, kl_weight
from latentae.losses.latent_noise import latent_noise_loss
from latentae.losses.perceptual import MIN_SIZE, PerceptualLoss
from latentae.losses.pixel import pixel_loss, reduce_elements
from latentae.models.bottleneck import Bottleneck
from latentae.models.output import AutoencoderOutput
from latentae.models.posterior import GaussianPosterior, active_channels

IMAGE_CHANNELS = 3  # LPIPS and the discriminator take RGB
# LossConfig section (also the log key loss/<name>) -> term(reconstruction, decode, latent, images, cfg)
REGULARIZERS = {"equivariance": equivariance_loss, "scale_equivariance": scale_equivariance_loss,
                "latent_noise": latent_noise_loss}


@contextmanager
def frozen(module: nn.Module):
    """Parameters of `module` do not require grad inside the block (their previous flags come back after)."""
    params = list(module.parameters())
    flags = [p.requires_grad for p in params]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def without_buffer_updates(module: nn.Module, x: Tensor) -> Tensor:
    """module(x) on copies of its buffers: running statistics and spectral-norm vectors stay as they were.
    (Restoring them in place instead would break the backward, which saved the versions the forward saw.)"""
    buffers = {name: b.clone() for name, b in module.named_buffers()}
    return torch.func.functional_call(module, buffers, (x,))


class AutoencoderLoss(nn.Module):
    """loss(images, output, step, *, mode, last_layer=None, decode=None, encoder_layer=None) -> (total, logs), with
    `output` the model's AutoencoderOutput (the discriminator reads its reconstruction only). `decode` is needed
    when a latent regularizer is on, `encoder_layer` when loss.vf is (`latent_channels` at construction too).

    Owns `discriminator` (train it with its own optimizer), `perceptual` (frozen LPIPS; None when
    perceptual_weight is 0) and `vf` (the VF alignment: frozen DINOv2 and a projection trained with the generator;
    None when loss.vf.weight is 0). `lecam` holds LeCAM's logit EMAs (None when LeCAM is off); checkpoint it with the
    discriminator.
    """

    def __init__(self, cfg: LossConfig, bottleneck: Bottleneck | None = None,  # the model's (None: not checked)
                 micro_batches: int = 1,  # micro-batches per step
                 latent_channels: int | None = None):  # channels of the decoded latent (loss.vf's projection)
        super().__init__()
        if bottleneck is not None and bottleneck.tokenizes and cfg.reduction == "sum":
            raise ConfigError("config key 'loss.reduction': 'sum' would scale the reconstruction by C*H*W "
                              "against the quantizer's mean-reduced losses; VQ training needs 'mean'")
        self.cfg = cfg
        self.perceptual = (PerceptualLoss(cfg.perceptual_net, trunk_path=cfg.perceptual_trunk_path,
                                          random_init=cfg.perceptual_random_init)
                           if cfg.perceptual_weight > 0 else None)
        d = cfg.disc
        self.discriminator = build_discriminator(d, IMAGE_CHANNELS)  # dino: loads its backbone, fails early
        self.lecam = LeCAMAnchors(d.lecam_decay, micro_batches) if d.lecam_weight > 0 else None
        if cfg.vf.weight > 0 and latent_channels is None:
            raise ValueError("loss.vf needs latent_channels= (the channels of the latent the decoder takes)")
        self.vf = Alignment(cfg.vf, latent_channels) if cfg.vf.weight > 0 else None  # loads DINOv2: fails early
        self.__dict__["_prepared_discriminator"] = None  # not a submodule: state-dict keys stay the plain D's

    def set_prepared_discriminator(self, wrapped: nn.Module) -> None:
        """Use `wrapped` (e.g. `accelerator.prepare(loss.discriminator)`) for the discriminator update."""
        self.__dict__["_prepared_discriminator"] = wrapped

    def generator_adversarial_active(self, step: int) -> bool:
        """The adversarial term is in the generator loss (disc.weight 0 turns the GAN off entirely)."""
        return self.cfg.disc.weight > 0 and step >= self.cfg.disc.start

    def discriminator_active(self, step: int) -> bool:
        """The discriminator trains at this step: warmup_steps before the generator sees it, then always."""
        return self.cfg.disc.weight > 0 and step >= self.cfg.disc.start - self.cfg.disc.warmup_steps

    def forward(
        self,
        images: Tensor,  # [B, 3, H, W] in [-1, 1]
        output: AutoencoderOutput,  # the model's; its reconstruction is detached here in discriminator mode
        step: int,  # global optimizer step (schedules, disc start)
        *,
        mode: str = "generator",  # generator | discriminator
        last_layer: Tensor | None = None,  # decoder's last weight, for the adaptive weight
        decode: Callable[[Tensor], Tensor] | None = None,  # latent regularizers: the decoder (latent -> image), run
        # again on output.latent
        encoder_layer: Tensor | None = None,  # loss.vf.adaptive: model.encoder_last_layer()
    ) -> tuple[Tensor, dict[str, Tensor | float]]:
        with torch.autocast(device_type=images.device.type, enabled=False):
            if mode == "generator":
                return self._generator(images.float(), output, step, last_layer, decode, encoder_layer)
            if mode == "discriminator":
                return self._discriminator(images.detach().float(), output.reconstruction.detach().float(), step)
        raise ValueError(f"mode must be 'generator' or 'discriminator', got {mode!r}")

    # generator ---------------------------------------------------------------------------------------------

    def _generator(self, images, output: AutoencoderOutput, step, last_layer, decode, encoder_layer):
        cfg = self.cfg
        logs: dict[str, Tensor | float] = {}
        rec, latent = output.reconstruction.float(), output.latent
        reconstruction = self._reconstruction(images, rec, logs)
        total = reconstruction + self._bottleneck(step, output, logs)
        if output.encoded is not None:  # TAESD-style distillation: the encoder learns the teacher's latent
            distill = pixel_loss(latent.detach().float(), output.encoded.float(), kind="l2", reduction=cfg.reduction)
            logs["loss/distill"] = distill.detach()
            total = total + cfg.distill_weight * distill
        regularizers = self._regularizers(images, latent, decode, logs)
        if regularizers is not None:
            total = total + regularizers
        if self.vf is not None:
            if latent is None:
                raise ValueError("loss.vf needs the output's latent (the decoded latent)")
            total = total + self.vf(latent, images, reconstruction, encoder_layer, logs)

        if self.generator_adversarial_active(step):
            with frozen(self.discriminator):  # D's .grad stays empty; gradients still reach `rec`
                logits_fake = self._logits_as_in_disc_step(images, rec)
            g_adv = generator_loss(cfg.disc.loss, logits_fake)
            weight = self._adversarial_weight(reconstruction, g_adv, last_layer)
            total = total + weight * g_adv
            logs["loss/g_adv"] = g_adv.detach()
            logs["adaptive_weight"] = weight
            logs["disc/g_logits_fake"] = logits_fake.detach().mean()
        logs["loss/total"] = total.detach()
        return total, logs

    def _reconstruction(self, images: Tensor, rec: Tensor, logs: dict | None = None) -> Tensor:
        """pixel_weight * pixel loss + perceptual_weight * LPIPS: the main reconstruction's loss and the one every
        latent regularizer applies to its own decoded images. Logs its terms into `logs` when given."""
        cfg = self.cfg
        rec_loss = pixel_loss(images, rec, kind=cfg.pixel_loss, reduction=cfg.reduction)
        if logs is not None:
            logs["loss/rec"] = rec_loss.detach()
        reconstruction = cfg.pixel_weight * rec_loss
        if self.perceptual is not None:
            per_image = self.perceptual(images, rec)
            # As if each image's LPIPS were added to every pixel element (LDM), then reduced like the pixel loss.
            perceptual = reduce_elements(per_image[:, None, None, None].expand_as(images), cfg.reduction)
            if logs is not None:
                logs["loss/perceptual"] = perceptual.detach()
            reconstruction = reconstruction + cfg.perceptual_weight * perceptual
        return reconstruction

    def _regularizers(self, images, latent, decode, logs) -> Tensor | None:
        """The weighted sum of the latent regularizers that are on (None when all are off: no extra work, no
        random draws); each logs its unweighted term as `loss/<name>` when computed."""
        active = [(name, getattr(self.cfg, name)) for name in REGULARIZERS if getattr(self.cfg, name).weight > 0]
        if not active:
            return None
        if latent is None or decode is None:
            raise ValueError(f"loss.{active[0][0]} needs the output's latent (the decoded latent) and decode= (the "
                             "decoder)")
        self._check_perceptual_size(latent, images)
        total = None
        for name, cfg in active:
            term = REGULARIZERS[name](self._reconstruction, decode, latent, images, cfg)
            if term is None:  # not drawn for this batch
                continue
            logs[f"loss/{name}"] = term.detach()
            total = cfg.weight * term if total is None else total + cfg.weight * term
        return total

    def _check_perceptual_size(self, latent: Tensor, images: Tensor) -> None:
        """The most downscaled images the equivariance terms can produce must still fit LPIPS' trunk (checked
        every step, so the first step fails, not the one that happens to draw the smallest scale)."""
        if self.perceptual is None:
            return
        net = self.cfg.perceptual_net
        for key, scale in strongest_downscaling(self.cfg):
            _, size = transformed_sizes(tuple(latent.shape[-2:]), tuple(images.shape[-2:]), scale)
            if min(size) < MIN_SIZE[net]:
                raise ConfigError(f"config key '{key}': downscaling by {scale:g} turns {images.shape[-2]}x"
                                  f"{images.shape[-1]} images into {size[0]}x{size[1]}, smaller than LPIPS-{net} "
                                  f"takes ({MIN_SIZE[net]} px): use a milder scale, larger images, or "
                                  f"loss.perceptual_weight=0")

    def _logits_as_in_disc_step(self, images: Tensor, rec: Tensor) -> Tensor:
        """D's logits for `rec`, from the batch composition of D's own step when D normalizes over the batch."""
        if not self.discriminator.mixes_batch:  # per-sample D: the fakes alone give the same logits, at half cost
            return without_buffer_updates(self.discriminator, rec).float()
        logits = without_buffer_updates(self.discriminator, torch.cat([images.detach(), rec])).float()
        return logits[images.shape[0]:]

    def _bottleneck(self, step, output: AutoencoderOutput, logs) -> Tensor:
        """The bottleneck's loss with its diagnostics, the same for every kind: a posterior's KL term (weighted by
        the schedule here), plus the bottleneck's own weighted losses (a quantizer's), plus nothing; the statistics
        of its latent are logged in every case."""
        latent = output.bottleneck_latent
        if output.posterior is not None:
            bottleneck = self._kl(step, output.posterior, logs)
        else:
            bottleneck = latent.new_zeros((), dtype=torch.float32)
        for name, value in output.bottleneck_losses.items():
            logs[f"loss/{name}"] = value.detach().float()
            bottleneck = bottleneck + value.float()
        for name, value in output.bottleneck_stats.items():
            logs[name] = value.detach().float() if torch.is_tensor(value) else value
        latent = latent.detach().float()
        logs["latent/mean"] = latent.mean()
        logs["latent/std"] = latent.std()
        return bottleneck

    def _kl(self, step, posterior: GaussianPosterior, logs) -> Tensor:
        """kl.weight(step) x the KL term, logging the term, its weight and the per-channel KL."""
        per_channel = posterior.kl_per_element()
        weight = kl_weight(self.cfg.kl, step)
        term = kl_term(per_channel, spatial_size=posterior.mean.shape[-2] * posterior.mean.shape[-1],
                       free_bits=self.cfg.kl.free_bits, reduction=self.cfg.reduction)
        logs["loss/kl"] = term.detach()
        logs["kl/weight"] = weight
        for c, value in enumerate(per_channel.detach()):
            logs[f"kl/channel_{c:02d}"] = value
        logs["latent/active_channels"] = active_channels(per_channel.detach(), self.cfg.kl.active_threshold)
        return weight * term

    def _adversarial_weight(self, reconstruction: Tensor, g_adv: Tensor, last_layer: Tensor | None) -> Tensor:
        d = self.cfg.disc
        if not d.adaptive:
            return g_adv.new_tensor(d.weight)
        if not torch.is_grad_enabled():  # evaluation under no_grad: no gradients to compare (LDM uses 0 too)
            return g_adv.new_zeros(())
        if last_layer is None:
            raise ValueError("loss.disc.adaptive needs last_layer= (model.last_layer()) once the GAN is active")
        return d.weight * adaptive_weight(reconstruction, g_adv, last_layer, max_weight=d.adaptive_max)

    # discriminator -----------------------------------------------------------------------------------------

    def _discriminator(self, real, fake, step):
        d = self.cfg.disc
        if not self.discriminator_active(step):
            raise RuntimeError(f"discriminator update at step {step}, before it trains (from step "
                               f"{d.start - d.warmup_steps}; gate it with loss.discriminator_active(step))")
        r1 = d.r1_weight > 0 and torch.is_grad_enabled()
        if r1:
            real.requires_grad_(True)  # a detached copy: R1 differentiates w.r.t. the real images
        disc = self._prepared_discriminator if self._prepared_discriminator is not None else self.discriminator
        if self.discriminator.rounds_fakes:
            fake = to_8bit_levels(fake)
        # One forward over real and fake together (batch norm under NCCL; one spectral-norm power step).
        logits_real, logits_fake = disc(torch.cat([real, fake])).float().split([real.shape[0], fake.shape[0]])
        total = discriminator_loss(d.loss, logits_real, logits_fake)
        logs: dict[str, Tensor | float] = {
            "loss/disc": total.detach(),
            "disc/logits_real": logits_real.detach().mean(),
            "disc/logits_fake": logits_fake.detach().mean(),
        }
        if self.lecam is not None:
            self.lecam.update(logits_real, logits_fake)
            lecam = lecam_penalty(logits_real, logits_fake, self.lecam.ema_real, self.lecam.ema_fake)
            logs["loss/lecam"] = lecam.detach()
            total = total + d.lecam_weight * lecam
        if r1:
            penalty = r1_penalty(logits_real, real)
            logs["loss/r1"] = penalty.detach()
            total = total + d.r1_weight * penalty
        logs["loss/total"] = total.detach()
        return total, logs
