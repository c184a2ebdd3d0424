"""The two training loops the benchmarks compare, each driven one optimizer step at a time with `step(index)`:
latentae's trainer (`LatentaeLoop`) and the plain diffusers loop a user of the diffusers example would write
(`PlainLoop`). Both build the same architecture with the same initial weights from one RunConfig and take their
batches from `batches(cfg)` (an iterator in the trainer's batch format; latentae's training loader by default), so
they see the same images. `batches` is called once the model is built: a loader's start draws from the global
random generator, which the initial weights must not see."""
from __future__ import annotations

import itertools


def primed_batches(cfg):
    """latentae's training batches for `cfg` with the first one already fetched: the loader's worker start-up and
    first shuffle-buffer fill stay off the training clock (the same for every trainer)."""
    from latentae.data import train_loader

    batches = iter(train_loader(cfg.data, batch_size=cfg.train.batch_size, seed=cfg.seed))
    return itertools.chain([next(batches)], batches)


class LatentaeLoop:
    """latentae's trainer, one `Run.train_step` per optimizer step (what `Run.fit` runs, without its checkpoints,
    validation and export)."""

    def __init__(self, cfg, batches=primed_batches):
        from latentae.trainer.loop import Run

        self.run = Run(cfg)
        self.batches = batches(cfg)
        self.precision = self.run.placement.precision  # what train.mixed_precision (auto) resolved to

    def step(self, step: int) -> dict:
        """One optimizer step; its logged values."""
        return self.run.train_step(self.batches, step).logs

    def model(self):
        return self.run.export_model()

    def state(self) -> tuple[list, list]:
        """(modules, optimizers) holding the training state: the model, the loss (LPIPS, discriminator)."""
        run = self.run
        return [run.model, run.loss], [getattr(o, "optimizer", o) for o in (run.opt_g, run.opt_d)]


# what the plain loop implements: the LDM / diffusers recipe; other loss options would make it another algorithm
_PLAIN_UNSUPPORTED = {
    "model.family": lambda cfg: cfg.model.family != "kl",
    "loss.kl.schedule": lambda cfg: cfg.loss.kl.schedule != "constant",
    "loss.kl.free_bits": lambda cfg: cfg.loss.kl.free_bits != 0,
    "loss.perceptual_net": lambda cfg: cfg.loss.perceptual_weight > 0 and cfg.loss.perceptual_net != "vgg",
    "loss.disc.kind": lambda cfg: cfg.loss.disc.weight > 0 and cfg.loss.disc.kind != "patchgan",
    "loss.disc.loss": lambda cfg: cfg.loss.disc.weight > 0 and cfg.loss.disc.loss != "hinge",
    "loss.disc.adaptive": lambda cfg: cfg.loss.disc.weight > 0 and not cfg.loss.disc.adaptive,
    "loss.disc.lecam_weight": lambda cfg: cfg.loss.disc.lecam_weight > 0,
    "loss.disc.r1_weight": lambda cfg: cfg.loss.disc.r1_weight > 0,
    "train.ema_decay": lambda cfg: cfg.train.ema_decay is not None,
    "train.init_from": lambda cfg: bool(cfg.train.init_from),
}


class PlainLoop:
    """The fp32 loop of diffusers' examples/research_projects/autoencoderkl/train_autoencoderkl.py, read from the
    same RunConfig as latentae's trainer: diffusers `AutoencoderKL` (latentae's model of the config converted with
    kl_to_diffusers: same architecture and initial weights), pixel loss (L1 or L2) + LPIPS-VGG when its weight is
    > 0 (each image's LPIPS added to each of its pixel terms) + KL x loss.kl.weight, reduced as loss.reduction
    ('sum': summed per image, averaged over the batch); from loss.disc.start the hinge PatchGAN term x its adaptive
    weight (the discriminator trains from loss.disc.start - loss.disc.warmup_steps); AdamW with train.betas /
    weight_decay (eps 1e-8), grad-norm clips, constant learning rate, no autocast, no EMA. The discriminator and
    LPIPS exist only when their weights are > 0 (building them draws random numbers the sampling would see)."""

    precision = "fp32"

    def __init__(self, cfg, batches=primed_batches):
        import lpips
        import torch

        from latentae.exporting import kl_to_diffusers
        from latentae.losses import NLayerDiscriminator
        from latentae.models import build_model

        bad = [key for key, differs in _PLAIN_UNSUPPORTED.items() if differs(cfg)]
        if bad:
            raise SystemExit(f"the plain AutoencoderKL loop implements the LDM recipe only; the config sets "
                             f"{', '.join(bad)} differently")
        loss, t = cfg.loss, cfg.train
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where Run(cfg) trains
        torch.manual_seed(cfg.seed)  # the initial weights Run(cfg) builds
        self.vae = kl_to_diffusers(build_model(cfg.model)).to(self.device).train()
        self.lpips = (lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False).to(self.device).eval()
                      .requires_grad_(False) if loss.perceptual_weight > 0 else None)  # random trunk: timing only
        self.opt_g = torch.optim.AdamW(self.vae.parameters(), lr=t.lr, betas=tuple(t.betas),
                                       weight_decay=t.weight_decay, eps=1e-8)
        self.disc = self.opt_d = None
        if loss.disc.weight > 0:
            d = loss.disc
            self.disc = NLayerDiscriminator(3, channels=d.channels, layers=d.layers, norm=d.norm)
            self.disc = self.disc.to(self.device).train()
            self.opt_d = torch.optim.AdamW(self.disc.parameters(), lr=t.disc_lr or t.lr,
                                           betas=tuple(t.disc_betas or t.betas), weight_decay=t.weight_decay)
        self.cfg, self.batches = cfg, batches(cfg)

    def _reduce(self, per_element):
        if self.cfg.loss.reduction == "sum":  # LDM: sum over C, H, W, mean over the batch
            return per_element.sum() / per_element.shape[0]
        return per_element.mean()

    def step(self, step: int) -> dict:
        """One optimizer step; the generator's (and discriminator's) loss."""
        import torch
        import torch.nn.functional as F

        loss, t = self.cfg.loss, self.cfg.train
        images = next(self.batches)["image"].to(self.device)
        posterior = self.vae.encode(images).latent_dist
        rec = self.vae.decode(posterior.sample()).sample
        diff = rec - images
        per_element = loss.pixel_weight * (diff.abs() if loss.pixel_loss == "l1" else diff.square())
        if self.lpips is not None:  # LDM: each image's LPIPS ([B, 1, 1, 1]) added to each of its pixel terms
            per_element = per_element + loss.perceptual_weight * self.lpips(rec, images)
        nll = self._reduce(per_element)
        kl = posterior.kl().sum() / images.shape[0]
        if loss.reduction == "mean":
            kl = kl / posterior.mean[0].numel()
        total = nll + loss.kl.weight * kl
        if self.disc is not None and step >= loss.disc.start:
            total = total + loss.disc.weight * self._adversarial(nll, rec)
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        logs = {"loss": total}
        if self.disc is not None and step >= loss.disc.start - loss.disc.warmup_steps:
            self.disc.requires_grad_(True)
            logits_real, logits_fake = self.disc(torch.cat([images, rec.detach()])).split(images.shape[0])
            logs["disc_loss"] = 0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean())
            self.opt_d.zero_grad(set_to_none=True)
            logs["disc_loss"].backward()
            if t.disc_grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.disc.parameters(), t.disc_grad_clip)
            self.opt_d.step()
        if t.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.vae.parameters(), t.grad_clip)
        self.opt_g.step()
        if not all(torch.isfinite(v) for v in logs.values()):
            raise RuntimeError("plain loop: non-finite loss")
        return logs

    def _adversarial(self, nll, rec):
        """The generator's hinge term times its adaptive weight |grad nll| / |grad adv| at the decoder's last
        layer (clamped), as LDM weighs it."""
        import torch

        self.disc.requires_grad_(False)  # the generator's adversarial term must not fill D's .grad
        g_adv = -self.disc(rec).mean()
        last = self.vae.decoder.conv_out.weight
        (nll_grad,) = torch.autograd.grad(nll, last, retain_graph=True)
        (adv_grad,) = torch.autograd.grad(g_adv, last, retain_graph=True)
        return (nll_grad.norm() / (adv_grad.norm() + 1e-4)).clamp(0, self.cfg.loss.disc.adaptive_max).detach() * g_adv

    def model(self):
        from latentae.exporting import kl_from_diffusers

        return kl_from_diffusers(self.vae)  # shares the weights: evaluate() needs latentae's model interface

    def state(self) -> tuple[list, list]:
        """(modules, optimizers) holding the training state."""
        modules = [self.vae] + [m for m in (self.disc, self.lpips) if m is not None]
        return modules, [o for o in (self.opt_g, self.opt_d) if o is not None]


class PlainRAELoop:
    """The fp32 loop of diffusers' examples/research_projects/autoencoder_rae/train_autoencoder_rae.py, read from
    the same RunConfig as latentae's trainer: the `AutoencoderRAE` latentae builds for model.family rae (same
    architecture, initial weights and noise_tau, as the script's --noise_tau), its training-mode forward on [0, 1]
    pixels (the noise-augmented latents decoded), L1 to the input, no LPIPS, no GAN, no EMA; AdamW over the
    parameters that require grad (the encoder frozen) with the script's defaults (lr 1e-4, betas (0.9, 0.999),
    weight decay 1e-2, eps 1e-8), grad-norm clip 1.0, diffusers' `constant_with_warmup` schedule (one of its
    --lr_scheduler choices: a wall-clock budget has no step count for its cosine) over train.warmup_steps."""

    precision = "fp32"
    LR, BETAS, WEIGHT_DECAY, EPS, MAX_GRAD_NORM = 1e-4, (0.9, 0.999), 1e-2, 1e-8, 1.0

    def __init__(self, cfg, batches=primed_batches):
        import torch
        from diffusers.optimization import get_scheduler

        from latentae.models import build_model

        if cfg.model.family != "rae" or cfg.train.init_from:
            raise SystemExit("the plain AutoencoderRAE loop trains a fresh model.family rae")
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(cfg.seed)  # the initial weights Run(cfg) builds
        self.vae = build_model(cfg.model.at_resolution(cfg.data.resolution)).vae.to(self.device)
        self.vae.encoder.requires_grad_(False)
        self.vae.decoder.requires_grad_(True)
        self.vae.train()
        self.opt = torch.optim.AdamW([p for p in self.vae.parameters() if p.requires_grad], lr=self.LR,
                                     betas=self.BETAS, weight_decay=self.WEIGHT_DECAY, eps=self.EPS)
        self.schedule = get_scheduler("constant_with_warmup", optimizer=self.opt,
                                      num_warmup_steps=cfg.train.warmup_steps)
        self.batches = batches(cfg)

    def step(self, step: int) -> dict:
        import torch
        import torch.nn.functional as F

        pixel_values = (next(self.batches)["image"].to(self.device) + 1) / 2
        loss = F.l1_loss(self.vae(pixel_values).sample.float(), pixel_values.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.vae.parameters(), self.MAX_GRAD_NORM)
        self.opt.step()
        self.schedule.step()
        self.opt.zero_grad()
        return {"loss": loss.detach()}

    def model(self):
        from latentae.models.rae import RAEAutoencoder

        return RAEAutoencoder(vae=self.vae)  # shares the weights: latentae's interface for the measurements
