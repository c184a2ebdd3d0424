"""The training run: small factory calls, then one loop of generator + discriminator steps.

Correctness choices (each has a test):
- the model runs through the module accelerate wraps (DDP: gradients are all-reduced); the discriminator update
  runs through its own wrapper (see AutoencoderLoss), and so does loss.vf's projection, which the generator's
  optimizer trains (checkpointed as an accelerate model, never exported); LPIPS and DINOv2 are frozen and never
  prepared;
- both models sit in one `accelerator.accumulate` context per micro-batch, both optimizers step every iteration;
- learning rates are used as configured, never scaled by batch size or process count;
- mixed precision is autocast only: trainable weights stay fp32;
- randomness (posterior noise, Gumbel noise) is seeded from (seed, rank, step), and the data stream is a function
  of (seed, rank, worker, step), so a resumed run repeats exactly what the uninterrupted one would have done.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from latentae.config import to_dict
from latentae.data.train_stream import train_loader
from latentae.errors import LatentaeError
from latentae.losses import AutoencoderLoss
from latentae.models import build_model
from latentae.models.config import config_of
from latentae.quantizers.base import Quantizer
from latentae.runtime import Placement, resolve
from latentae.trainer import checkpoint
from latentae.trainer.channels import ChannelSchedule
from latentae.trainer.checkpoint import TrainState
from latentae.trainer.config import EXPORT_METRICS, RunConfig, check_adaptive_weight
from latentae.trainer.monitor import Monitor
from latentae.trainer.optim import build_optimizers, disc_lr, lr_factor, select_trainable, set_lr
from latentae.trainer.teacher import Teacher
from latentae.trainer.validation import Validation


def make_accelerator(cfg: RunConfig, precision: str):
    """The accelerator, autocasting to `precision` (resolved: fp32, bf16 or fp16)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    return Accelerator(
        mixed_precision={"fp32": "no"}.get(precision, precision),
        gradient_accumulation_steps=cfg.train.grad_accum,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=str(Path(cfg.output_dir) / "logs")),
        cpu=not torch.cuda.is_available(),
    )


def make_model(cfg: RunConfig):
    """A fresh model (tiled by diffusers in tiles of the training resolution), or `train.init_from` (any format
    latentae.load opens) for fine-tuning; then the trainable selection, and the speed options."""
    if cfg.train.init_from:
        from latentae.loading import load

        model = load(cfg.train.init_from)
        cfg.model.apply_to(model)  # the fine-tune keys the config sets (RAE's noise_tau)
    else:
        model = build_model(cfg.model.at_resolution(cfg.data.resolution))
    model.train()
    select_trainable(model, cfg.train.trainable)
    if cfg.train.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def make_ema(model, cfg: RunConfig):
    if cfg.train.ema_decay is None:
        return None
    from diffusers.training_utils import EMAModel

    return EMAModel(model.parameters(), decay=cfg.train.ema_decay)


def clip(params, max_norm: float | None) -> torch.Tensor:
    """Clip the (already unscaled, already all-reduced) gradients to `max_norm`; return their norm before."""
    params = [p for p in params if p.requires_grad and p.grad is not None]
    if not params:
        return torch.zeros(())
    return torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else float("inf")).detach()


def step_seed(seed: int, rank: int, step: int) -> int:
    return (seed * 1_000_003 + rank) * 1_000_033 + step


RESOLVED_FILE = "resolved.yaml"


def resolved_values(cfg: RunConfig, model, placement: Placement) -> dict:
    """What the config left open, as this run settled it, under the config's own keys: the precision `auto`
    became, the architecture (train.init_from's; else the tile size diffusers' tiling uses, the training
    resolution), and where the run trained."""
    if cfg.train.init_from:
        architecture = to_dict(config_of(model))
    else:
        architecture = {k: v for k, v in model.config.items() if k == "sample_size"}
    return {"train": {"mixed_precision": placement.precision}, "model": architecture,
            "runtime": {"device": str(placement.device), "threads": placement.threads}}


def save_config(cfg: RunConfig, accelerator, resolved: dict) -> None:
    """OUTPUT_DIR/config.yaml, the config as given (it reloads as the same run), and beside it RESOLVED_FILE."""
    if accelerator.is_main_process:
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        given = to_dict(cfg)
        if cfg.train.init_from:  # the architecture is the pretrained model's (see its export's config.json)
            settings = cfg.model.finetune_settings()
            if settings:
                given["model"] = {"family": cfg.model.family, **settings}
            else:
                del given["model"]
        (out / "config.yaml").write_text(yaml.safe_dump(given, sort_keys=False))
        (out / RESOLVED_FILE).write_text(yaml.safe_dump(resolved, sort_keys=False))


@dataclass
class StepReport:
    """What one optimizer step reports: its logs (losses, gradient norms, learning rates) and its timings."""
    logs: dict = field(default_factory=dict)
    data_wait_s: float = 0.0  # waiting for the batches


class Run:
    """Holds the prepared pieces; `fit()` trains to `train.max_steps` and exports."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.placement = resolve(precision=cfg.train.mixed_precision, channels_last=cfg.train.channels_last)
        self.accelerator = acc = make_accelerator(cfg, self.placement.precision)
        self.placement = dataclasses.replace(self.placement, device=acc.device)
        torch.manual_seed(cfg.seed)  # same initial weights on every rank and in every run of this config
        self.model = make_model(cfg)
        check_adaptive_weight(self.model, cfg)
        channels = decoded_channels(self.model) if cfg.loss.vf.weight > 0 else None  # loss.vf's projection input
        self.loss = AutoencoderLoss(cfg.loss, self.model.bottleneck, micro_batches=cfg.train.grad_accum,
                                    latent_channels=channels).to(acc.device)  # loss.vf loads DINOv2: fails here
        self.teacher = Teacher(cfg.train.teacher, self.model, acc.device) if cfg.train.teacher else None
        self.channels = ChannelSchedule(self.model, cfg.train.sample_channels, cfg.seed, teacher=bool(self.teacher),
                                        vf=self.loss.vf is not None)
        self.validation = Validation(self.model, cfg.eval.channels)
        self.ema = make_ema(self.model, cfg)
        self.quantizers = [m for m in self.model.modules() if isinstance(m, Quantizer)]
        self.state = TrainState()
        projection = [self.loss.vf.projection] if self.loss.vf is not None else []  # trained with the generator
        self.generator_params = [*self.model.parameters(), *(p for m in projection for p in m.parameters())]
        opt_g, opt_d = build_optimizers(self.generator_params, self.loss.discriminator, cfg.train)
        self.model_ddp, disc_ddp, self.opt_g, self.opt_d, *projection_ddp = acc.prepare(
            self.model, self.loss.discriminator, opt_g, opt_d, *projection)
        self.loss.set_prepared_discriminator(disc_ddp)
        if projection_ddp:
            self.loss.vf.set_prepared_projection(projection_ddp[0])
        self.disc_ddp = disc_ddp
        self.synchronized = [self.model_ddp, disc_ddp, *projection_ddp]  # accelerate.accumulate's no_sync set
        acc.register_for_checkpointing(self.state)
        if self.ema is not None:
            self.ema.to(acc.device)
            acc.register_for_checkpointing(self.ema)
        if self.loss.lecam is not None:
            acc.register_for_checkpointing(self.loss.lecam)
        if self.cfg.train.compile:
            self.model.compile()
        self.val_batches = None
        self.resumed_from = checkpoint.resolve_resume(cfg.train.resume, self.out / "checkpoints")
        if self.resumed_from is not None:
            acc.load_state(str(self.resumed_from))
            if self.ema is not None:
                self.ema.to(acc.device)  # accelerate loads custom states on the CPU
            shown = self.resumed_from.relative_to(self.out) if self.resumed_from.is_relative_to(self.out) \
                else self.resumed_from
            acc.print(f"resumed from {shown} at step {self.state.step} of {cfg.train.max_steps}")
        self.best = self._exported_best() if self.resumed_from is not None else None  # train.export=best
        save_config(cfg, acc, resolved_values(cfg, self.model, self.placement))
        acc.init_trackers("tensorboard")

    # ------------------------------------------------------------------ one optimizer step
    def train_step(self, batches, step: int) -> StepReport:
        acc, cfg = self.accelerator, self.cfg.train
        factor = lr_factor(step, cfg)
        set_lr(self.opt_g, cfg.lr * factor)
        set_lr(self.opt_d, disc_lr(cfg) * factor)
        d_active = self.loss.discriminator_active(step)
        finite_window = True
        report = StepReport()
        logs = report.logs
        for micro in range(cfg.grad_accum):
            t0 = time.perf_counter()
            batch = next(batches)
            report.data_wait_s += time.perf_counter() - t0
            # After the fetch: an in-process loader may draw from the global RNG differently after a resume.
            torch.manual_seed(step_seed(self.cfg.seed, acc.process_index, step * cfg.grad_accum + micro))
            for quantizer in self.quantizers:
                quantizer.set_step(step, last_micro_batch=micro == cfg.grad_accum - 1)  # EMAs: once per step
            for reason, n in batch["skipped"].items():
                self.state.samples_skipped[reason] = self.state.samples_skipped.get(reason, 0) + n
            images = batch["image"].to(acc.device, non_blocking=True)
            if self.cfg.train.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with acc.accumulate(*self.synchronized), self.channels.at(step) as channels:
                out = self.model_ddp(images, **({} if self.teacher is None else
                                                {"target": self.teacher.targets(images)}))
                g_total, g_logs = self.loss(images, out, step, mode="generator", last_layer=self.model.last_layer(),
                                            decode=self.decode, encoder_layer=self.encoder_layer())
                finite = self._all_finite(g_total)
                finite_window &= finite
                # Every rank runs backward even on a non-finite loss (DDP expects it); the update is skipped.
                acc.backward(g_total if finite else g_total * 0.0)
                logs.update(g_logs)
                if d_active and finite:
                    d_total, d_logs = self.loss(images, out, step, mode="discriminator")
                    d_finite = self._all_finite(d_total)  # a NaN step must not reach D's weights either
                    finite_window &= d_finite
                    acc.backward(d_total if d_finite else d_total * 0.0)
                    logs.update({k: v for k, v in d_logs.items() if k != "loss/total"})
                    logs["loss/disc_total"] = d_total.detach()
                if acc.sync_gradients:
                    if finite_window:
                        logs.update(self._update(d_active))
                    self.opt_g.zero_grad(set_to_none=True)
                    self.opt_d.zero_grad(set_to_none=True)
        self._count_nan(finite_window, step)
        logs["lr/generator"] = cfg.lr * factor
        logs["lr/discriminator"] = disc_lr(cfg) * factor
        logs["nan_skipped"] = self.state.nan_skipped
        if channels is not None:
            logs["latent_channels"] = channels
        self.last_images = (images, out.reconstruction)
        return report

    def encoder_layer(self) -> torch.Tensor | None:
        """Where loss.vf's adaptive weight compares gradients (None when the term is off)."""
        return self.model.encoder_last_layer() if self.loss.vf is not None else None

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The decoder, for the loss's latent regularizers: the plain module under the run's autocast (accelerate
        puts autocast on the prepared forward only). Under DDP this extra forward bypasses the wrapper and is still
        synchronized: it runs between the wrapped forward and the same backward, and DDP's reducer hooks sit on
        each parameter's gradient accumulator, which autograd runs once per backward with the gradients of every
        use summed (tests/test_train_distributed.py checks that the ranks stay identical with the terms on)."""
        with self.accelerator.autocast():
            return self.model.decode(latents)

    def _all_finite(self, loss: torch.Tensor) -> bool:
        flag = torch.isfinite(loss.detach()).float().reshape(1)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() == self.accelerator.num_processes)

    def _update(self, d_active: bool) -> dict:
        """Unscale (fp16) every gradient once, clip each model's own, step both optimizers, update the scaler
        once. (accelerate's clip_grad_norm_ unscales every optimizer and each AcceleratedOptimizer.step updates
        the scaler: with two optimizers that unscales D's gradients twice.)"""
        acc, cfg = self.accelerator, self.cfg.train
        acc.unscale_gradients()  # no-op without fp16's GradScaler
        logs = {"grad_norm/generator": clip(self.generator_params, cfg.grad_clip)}
        optimizers = [self.opt_g]
        if d_active:
            logs["grad_norm/discriminator"] = clip(self.loss.discriminator.parameters(), cfg.disc_grad_clip)
            optimizers.append(self.opt_d)
        if acc.scaler is not None:
            for opt in optimizers:
                acc.scaler.step(opt.optimizer)  # skipped by the scaler on inf/NaN gradients
            acc.scaler.update()
        else:
            for opt in optimizers:
                opt.step()
        if self.ema is not None:
            self.ema.step(self.model.parameters())
        return logs

    def _count_nan(self, finite: bool, step: int) -> None:
        if finite:
            self.state.consecutive_nan = 0
            return
        self.state.nan_skipped += 1
        self.state.consecutive_nan += 1
        if self.state.consecutive_nan >= self.cfg.train.max_consecutive_nan:
            self.state.step = step  # the weights are those before this step: resume redoes it
            saved = checkpoint.save(self.accelerator, self.out / "checkpoints", step, self.cfg.train.keep_checkpoints)
            raise LatentaeError(
                f"{self.state.consecutive_nan} non-finite losses in a row (step {step}, "
                f"{self.state.nan_skipped} skipped in total): stopping. The weights before them are saved in "
                f"{saved}; lower train.lr, enable train.grad_clip, or check the data")

    # ------------------------------------------------------------------ the run
    def fit(self) -> Path:
        acc, cfg = self.accelerator, self.cfg
        start = self.state.step
        if start >= cfg.train.max_steps:
            acc.print(f"already at step {start} >= train.max_steps={cfg.train.max_steps}: nothing to train")
        batches = iter(train_loader(cfg.data, batch_size=cfg.train.batch_size, seed=cfg.seed,
                                    rank=acc.process_index, world_size=acc.num_processes,
                                    start_step=start * cfg.train.grad_accum))
        monitor = Monitor(acc, start_step=start, max_steps=cfg.train.max_steps, log_every=cfg.train.log_every,
                          images_per_step=cfg.train.batch_size * acc.num_processes * cfg.train.grad_accum)
        for step in range(start, cfg.train.max_steps):
            report = self.train_step(batches, step)
            self.state.step = done = step + 1
            monitor.step_done(done, report, self.state.samples_skipped)
            if cfg.train.image_every and done % cfg.train.image_every == 0:
                monitor.images(done, *self.last_images)
            if done % cfg.train.checkpoint_every == 0 or done == cfg.train.max_steps:
                checkpoint.save(acc, self.out / "checkpoints", done, cfg.train.keep_checkpoints)
            if cfg.data.val and ((cfg.eval.every and done % cfg.eval.every == 0) or done == cfg.train.max_steps):
                self.keep_if_best(done, self.validate(done, monitor))
        monitor.close()
        export_dir = self.export()
        acc.end_training()
        return export_dir

    def validate(self, step: int, monitor: Monitor) -> dict:
        """Metrics on the fixed validation subset (the first eval.max_images images of data.val, center crops);
        the EMA weights when EMA is on, as exported; a structured latent at each count of `self.validation`, the
        images read once for all. Metrics without their weights are logged as unavailable."""
        from latentae.data.eval_stream import eval_loader
        from latentae.evaluation import evaluate_many

        acc, cfg = self.accelerator, self.cfg
        if self.val_batches is None:
            self.val_batches = eval_loader(cfg.data, batch_size=cfg.train.batch_size, rank=acc.process_index,
                                           world_size=acc.num_processes)
            cost = self.validation.describe()
            if cost and acc.is_main_process:
                monitor.bar.write(cost)
        results = evaluate_many(self.validation.models(self.export_model()), self.val_batches,
                                metrics=tuple(cfg.eval.metrics), precision=self.placement.precision,
                                max_images=cfg.eval.max_images, examples=4, data_name="data.val")
        values = self.validation.values(results)
        monitor.scalars(values, step)
        result = list(results.values())[-1]  # the grid: the largest count validated
        if result.examples:
            monitor.grid("val/input_reconstruction_difference", step, result.examples["input"],
                         result.examples["reconstruction"])
        if acc.is_main_process:
            missing = f" (unavailable: {', '.join(result.unavailable)})" if result.unavailable else ""
            monitor.bar.write(f"step {step}: val {self.validation.line(values)} on {result.n_images} images{missing}")
        return values

    def export_model(self):
        """The model to export: a copy with the EMA weights when EMA is on, else the trained model."""
        model = self.model
        if self.ema is not None:
            model = copy.deepcopy(model)
            self.ema.copy_to(model.parameters())
        return model

    def keep_if_best(self, step: int, values: dict) -> None:
        """train.export=best: export the model just validated when its train.export_metric (a structured latent:
        its mean over the validated counts) beats the best so far (an export per improvement, so a killed run keeps
        its best weights too). Same decision on every rank."""
        cfg = self.cfg.train
        if cfg.export != "best":
            return
        key = self.validation.key(cfg.export_metric)
        if key not in values:
            raise LatentaeError(f"train.export=best ranks validations by {key}, which could not be measured at step "
                                f"{step} (see the validation line above): pick another train.export_metric")
        value = values[key]
        higher = EXPORT_METRICS[cfg.export_metric] == "higher"
        if self.best is None or (value > self.best["value"] if higher else value < self.best["value"]):
            self.best = {"selected_by": key, **self.validation.selection(), "value": value, "step": step}
            self._write_export(self.best)

    def _exported_best(self) -> dict | None:
        """On resume with train.export=best: the best validation so far, as its export recorded it (when it was
        ranked the same way)."""
        from latentae.exporting import SIDE_FILE

        side = self.out / "export" / SIDE_FILE
        if self.cfg.train.export != "best" or not side.is_file():
            return None
        best = json.loads(side.read_text())["metadata"]
        ranking = {"selected_by": self.validation.key(self.cfg.train.export_metric), **self.validation.selection()}
        return best if all(best.get(k) == v for k, v in ranking.items()) else None

    def export(self) -> Path:
        """OUTPUT_DIR/export: the final weights, or with train.export=best those of the best validation (written
        by keep_if_best when it happened; the final weights when there was none)."""
        if self.best is None:
            self._write_export({"step": self.state.step})
        else:
            self.accelerator.print(f"export: the weights of step {self.best['step']}, the best "
                                   f"{self.best['selected_by']} ({self.best['value']:.4g}; train.export=best)")
        return self.out / "export"

    def _write_export(self, selection: dict) -> None:
        """Export the model (EMA weights when EMA is on) to OUTPUT_DIR/export, atomically (written aside, then
        renamed): a kill leaves the previous export whole. `selection` (which step, why) goes to its metadata."""
        from latentae.exporting import export

        target, tmp = self.out / "export", self.out / ".tmp-export"
        if self.accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            model = self.export_model()
            was_training = model.training
            export(model.eval(), tmp,
                   metadata={**selection, "ema": self.ema is not None, "run": str(self.out),
                             "samples_skipped": self.state.samples_skipped, "nan_skipped": self.state.nan_skipped})
            model.train(was_training)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        self.accelerator.wait_for_everyone()


def decoded_channels(model) -> int:
    """Channels of the latent the decoder takes (loss.vf's projection input)."""
    return model.config.get("vq_embed_dim") or model.config["latent_channels"]
