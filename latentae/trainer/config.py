"""The `train:` section and the whole run's config (model + loss + data + train + eval), how it is read, and the
checks that need more than one section or the built model."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from latentae.config import ConfigError, apply_overrides, from_dict, read_yaml
from latentae.data.config import DataConfig
from latentae.losses.config import LossConfig
from latentae.models.config import ModelConfig


# train.export_metric choices -> which way is better
EXPORT_METRICS = {"psnr": "higher", "ssim": "higher", "lpips": "lower", "rfid": "lower"}


@dataclass
class TrainConfig:
    batch_size: int = 8  # per process and micro-batch; global batch = batch_size x processes x grad_accum
    grad_accum: int = 1  # micro-batches per optimizer step (both optimizers)
    max_steps: int = 1000  # optimizer steps
    lr: float = 4.5e-6  # generator AdamW learning rate, used as given (never scaled by batch or GPU count)
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0
    disc_lr: float | None = None  # discriminator learning rate (None: same as lr)
    disc_betas: tuple[float, float] | None = None  # (None: same as betas)
    warmup_steps: int = 0  # linear warm-up from 0, then the schedule below
    lr_schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.0  # cosine: final lr = lr x min_lr_ratio
    # max global grad norm of the generator / discriminator (> 0; None: no clipping). The default recipe (LDM's
    # SD KL-f8, see losses/config.py) does not clip: under reduction 'sum' norms are far above 1 every step.
    grad_clip: float | None = None
    disc_grad_clip: float | None = None
    mixed_precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # autocast; weights stay fp32 (fp16 adds loss
    # scaling); auto: bf16 where it is faster on this machine / GPU, else fp32 (latentae.precision)
    compile: bool = False  # torch.compile the model
    channels_last: bool = False
    gradient_checkpointing: bool = False
    ema_decay: float | None = None  # weight EMA of the generator, exported instead of the raw weights. A cap:
    # diffusers' EMAModel uses min(ema_decay, (1+t)/(10+t)) at update t, so 0.9999 is reached after ~90k steps
    checkpoint_every: int = 500
    keep_checkpoints: int = 2  # newest checkpoints kept
    resume: str | None = None  # "auto": newest checkpoint in output_dir if any; or a checkpoint path
    log_every: int = 10
    image_every: int = 200  # input / reconstruction / difference grids to TensorBoard (0: never)
    max_consecutive_nan: int = 5  # non-finite losses in a row that stop the run (each one is skipped)
    init_from: str | None = None  # fine-tune: any model latentae.load opens (diffusers dir, export, LDM file)
    trainable: list[str] = field(default_factory=lambda: ["all"])  # parameter-name prefixes, e.g. [decoder]
    teacher: str | None = None  # dc / tiny: distill from this model (anything latentae.load opens): the encoder
    # learns its normalized latents, the decoder to decode them (TAESD's recipe); see latentae/trainer/teacher.py
    # OUTPUT_DIR/export holds: "last", the weights at max_steps; or "best", those of the validation with the best
    # export_metric, written when it improves (needs data.val; no validation yet: the last weights). "last" by
    # default: at scale the GAN phase lowers PSNR / SSIM while it sharpens, so "best by PSNR" would discard it
    export: Literal["last", "best"] = "last"
    export_metric: str = "psnr"  # export=best: one of EXPORT_METRICS, measured on data.val (in eval.metrics)
    # a structured latent (model.structured_channels, DC-AE 1.5): the channel counts each step draws from,
    # uniformly, as a function of (seed, step); null: every count of the model's
    sample_channels: list[int] | None = None

    def __post_init__(self):
        if self.trainable != ["all"] and not self.init_from:
            raise ConfigError("config key 'train.trainable' selects what to fine-tune: set train.init_from to the "
                              "pretrained model (a diffusers directory, a latentae export or an LDM checkpoint)")
        for name in ("grad_clip", "disc_grad_clip"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"config key 'train.{name}' must be > 0 or null (no clipping), "
                                  f"got {getattr(self, name)}: 0 would zero every gradient")
        if self.export_metric not in EXPORT_METRICS:
            raise ConfigError(f"config key 'train.export_metric' must be one of {', '.join(EXPORT_METRICS)}, "
                              f"got {self.export_metric!r}")
        for name in ("batch_size", "grad_accum", "max_steps", "checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key 'train.{name}' must be >= 1, got {getattr(self, name)}")


@dataclass
class EvalConfig:
    every: int = 500  # steps between evaluations on data.val (0: only at the end)
    max_images: int = 64  # fixed validation subset (the first N images, center-cropped)
    metrics: list[str] = field(default_factory=lambda: ["psnr", "ssim", "lpips", "rfid"])  # unavailable ones
    # (missing weights) are reported as such and skipped
    # a structured latent (model.structured_channels, DC-AE 1.5): the channel counts validated, each a pass over the
    # images logged as val/<metric>@<n>, train.export=best ranking by their mean val/<metric>@mean; null: every count
    channels: list[int] | None = None


@dataclass
class RunConfig:
    output_dir: str = "runs/latentae"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        if self.train.teacher and self.loss.vf.weight > 0:  # the decoded latent is the teacher's: nothing to align
            raise ConfigError("config keys 'train.teacher' and 'loss.vf.weight' > 0 do not combine: distillation "
                              "decodes the teacher's latents, so the alignment would not reach the student's encoder")
        if self.train.export == "best" and not self.data.val:
            raise ConfigError("config key 'train.export=best' picks the export by validation: set data.val "
                              "(held-out images), or train.export=last")
        if self.eval.channels is not None and not self.data.val:
            raise ConfigError("config key 'eval.channels' picks the channel counts validated on data.val: set "
                              "data.val (held-out images), or leave eval.channels out")
        if self.train.export == "best" and self.train.export_metric not in self.eval.metrics:
            raise ConfigError(f"config key 'train.export_metric={self.train.export_metric}' is not measured: add it "
                              f"to eval.metrics (now {self.eval.metrics})")


def load_run_config(path: str, overrides: list[str]) -> RunConfig:
    """A YAML preset with dot-list overrides (`train.max_steps=1000`), checked."""
    raw = apply_overrides(read_yaml(path), overrides)
    check_finetune_config(raw)
    return from_dict(RunConfig, raw)


def check_finetune_config(raw: dict) -> None:
    """With train.init_from the architecture comes from that model: a model: section may only hold the training-time
    keys of a family's FINETUNE_KEYS (RAE's noise_tau); `family:` is filled in from them when left out."""
    model = raw.get("model")
    if not (raw.get("train") or {}).get("init_from") or not model:
        return
    from latentae.models.families import FAMILIES

    owners = {f.name for f in FAMILIES.values() for key in model if key in f.config.FINETUNE_KEYS}
    fixed = [k for k in model if k != "family" and not any(k in f.config.FINETUNE_KEYS for f in FAMILIES.values())]
    if fixed or not owners or len(owners) > 1:
        raise ConfigError("config keys 'model.*' cannot be combined with 'train.init_from': the architecture is "
                          f"the pretrained model's (remove {', '.join('model.' + k for k in fixed or model)})")
    model.setdefault("family", owners.pop())


def check_adaptive_weight(model, cfg: RunConfig) -> None:
    """The adaptive GAN weight differentiates at the decoder's last layer, loss.vf's at the encoder's: it must be
    trainable."""
    d, vf = cfg.loss.disc, cfg.loss.vf
    checks = [  # (section, on, where its gradients are compared, the other ways out)
        ("disc", d.weight > 0 and d.adaptive, model.last_layer,
         f"loss.disc.adaptive=false (a fixed adversarial weight loss.disc.weight={d.weight}), or loss.disc.weight=0 "
         "(no GAN)"),
        ("vf", vf.weight > 0 and vf.adaptive, model.encoder_last_layer,
         "loss.vf.adaptive=false, or loss.vf.weight=0 (the alignment trains the encoder)")]
    for section, on, layer, ways_out in checks:
        if on and not layer().requires_grad:
            name = next(n for n, p in model.named_parameters() if p is layer())
            raise ConfigError(f"config key 'train.trainable' freezes {name}, where loss.{section}.adaptive takes the "
                              f"gradients it balances: add it to train.trainable, or set {ways_out}")
