"""Reconstruction quality on real photos: reference configurations trained for a fixed budget, held-out metrics.

Every configuration trains a small autoencoder on real photos (Tiny ImageNet 64-px shards and BSDS500 train
crops from --data-root; BSDS500 train alone at 256 px) and is measured during training on held-out photos
(BSDS500 test and Kodak, shorter side resized to the training resolution and center-cropped: never a training
image) with `latentae.evaluation.evaluate` (PSNR, SSIM, KL / active channels or codebook usage) and a
weight-free sharpness statistic (latentae.evaluation.sharpness). Groups of configurations:

  comparison   latentae at its defaults against the plain loop of the diffusers example script (diffusers
               AutoencoderKL, L1 + KL, AdamW with the script's defaults, fp32, no EMA), same architecture, initial
               weights, data and training minutes; ablation rows turn one latentae default off each
  codebook     LlamaGen: l2-normalized 8-d codes against plain 256-d codes; FSQ against VQ of the same size;
               the rotation trick, SimVQ, IBQ, BSQ and the two-level VQ-VAE-2 against plain 256-d VQ of the same code count
  kl-weight    the KL weight trade-off (three weights)
  collapse     at high weights (1 and 10): free bits and cyclical annealing against the constant weight
  gan          adversarial term off vs on at equal steps (the off run is kl-1e-6)
  diffusability  issue 12's latent regularizers, each on kl-1e-6 at equal steps: EQ-VAE, scale equivariance,
               noise-robust decoding (l-DeTok); then the diffusability probe on their latents (below)

The diffusability probe (`latentae.probe`, the budget's `probe` preset) runs after the trainings on the saved models
of kl-1e-6 and the diffusability rows, all in one probe call (same seed, DiT, budget and Tiny ImageNet latents for
every model; latents standardized per channel, since the export's default scaling factor is not measured): it
writes OUTPUT/probe/ and is reused while those models' results are unchanged, so `--report-only` probes models
trained by an earlier run.

The comparison group trains for --budget's seconds of training (evaluation excluded), the others for its steps.
LPIPS is not used: its trunk weights are not available offline (a random-trunk LPIPS is not LPIPS), so every
configuration trains with loss.perceptual_weight=0 and reports no perceptual metric.

Each configuration runs in its own process (accelerate's state, precision and peak memory stay its own) and
writes OUTPUT/runs/NAME/result.json and its final model (OUTPUT/runs/NAME/model/, latentae's export format);
the report (report.md, results.json, PNG plots and grids) is then rebuilt
from every result in OUTPUT made with the same budget, so `--only a,b` runs the study in pieces.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = ROOT / ".." / "shared" / "data"
HELDOUT = (("bsds500-test", "bsds500/test"), ("kodak", "kodak"))  # (label, folder under --data-root)
GROUPS = ("comparison", "codebook", "kl-weight", "collapse", "gan", "diffusability")
FREE_BITS = 0.25  # nats per latent element: chosen once, well above the 0.01-nat activity threshold (not tuned)
CYCLES = 4  # cyclical annealing: Fu et al. 2019's M = 4 cycles, R = 0.5
SCALE_EQ_WEIGHT = 0.25  # Skorokhodov et al. 2025's weight of the downsampled term, recalled from the paper: not
# checked against its text (offline copies hold only its abstract; BENCHMARKS.md, Diffusability)
EXAMPLE_ADAMW = ("train.betas=[0.9,0.999]", "train.weight_decay=0.01", "train.grad_clip=1.0")  # the script's
# defaults: --adam_beta1 0.9 --adam_beta2 0.999 --adam_weight_decay 1e-2 --max_grad_norm 1.0


@dataclass(frozen=True)
class Budget:
    name: str
    resolution: int
    batch_size: int
    lr: float
    steps: int  # optimizer steps of the step-bound configurations
    seconds: float  # training seconds (evaluation excluded) of the comparison group
    evals: int  # held-out evaluations per run, evenly spaced in steps (or in seconds)
    kl_model: dict
    vq_model: dict
    codebook_size: int
    fsq_levels: tuple[int, ...]  # product close to codebook_size (FSQ paper's choices)
    train: str  # training data, relative to --data-root
    heldout_cap: int | None = None  # the first N images of each held-out set (None: all)
    shuffle_buffer: int = 1000
    grid_images: int = 8
    one_process: bool = False  # every configuration in one worker process, accelerate's state reset between them
    # (saves an interpreter start-up per configuration; the real budgets isolate each run in its own process)
    scale: float = 1.0  # --scale: steps and seconds multiplied by it
    probe: str | None = None  # latentae.probe budget of the diffusability probe (None: no probe)
    probe_data: str = "tiny-imagenet-64/tiny-{00000..00009}.tar"  # the probe's images, relative to --data-root


BUDGETS = {
    "smoke": Budget(  # the test suite's end-to-end run: every configuration, a few steps, tiny models
        name="smoke", resolution=32, batch_size=4, lr=2e-4, steps=4, seconds=3.0, evals=2,
        kl_model={"block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8,
                  "mid_block_add_attention": False},
        vq_model={"block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8,
                  "mid_block_add_attention": False, "latent_channels": 16},
        codebook_size=64, fsq_levels=(4, 4, 4), train="tiny-imagenet-64/tiny-00000.tar,bsds500/train",
        heldout_cap=4, shuffle_buffer=32, grid_images=4, one_process=True, probe="smoke",
        probe_data="tiny-imagenet-64/tiny-00000.tar"),
    "cpu": Budget(  # the study on 2 cores: ~45 minutes on an idle machine
        name="cpu", resolution=64, batch_size=16, lr=2e-4, steps=500, seconds=180.0, evals=5,
        kl_model={"block_out_channels": [32, 64, 64], "layers_per_block": 1, "norm_num_groups": 16,
                  "mid_block_add_attention": False},
        vq_model={"block_out_channels": [32, 64, 64], "layers_per_block": 1, "norm_num_groups": 16,
                  "mid_block_add_attention": False, "latent_channels": 64},
        codebook_size=1024, fsq_levels=(8, 5, 5, 5), train="tiny-imagenet-64/tiny-{00000..00009}.tar,bsds500/train",
        probe="cpu"),  # the probe's cpu preset: its expected duration is printed before it runs
    "gpu": Budget(  # the same study at 256 px on one GPU (Tiny ImageNet's 64-px images would be upscaled 4x)
        name="gpu", resolution=256, batch_size=16, lr=1e-4, steps=3000, seconds=300.0, evals=6,
        kl_model={"block_out_channels": [64, 128, 256, 256], "layers_per_block": 2, "norm_num_groups": 32,
                  "mid_block_add_attention": True},
        vq_model={"block_out_channels": [64, 128, 128, 256, 256], "layers_per_block": 2, "norm_num_groups": 32,
                  "mid_block_add_attention": True, "latent_channels": 256},
        codebook_size=16384, fsq_levels=(8, 8, 8, 6, 5), train="bsds500/train", grid_images=4),
    # no probe at 256 px: its gpu preset reads 20000 images, and the data root has 400 photos at that size
}


@dataclass(frozen=True)
class Configuration:
    name: str
    group: str
    family: str  # kl | vq
    what: str
    overrides: tuple[str, ...] = ()  # dot-list; {steps}, {cycle}, {gan_start}, {gan_warmup}, {codebook_size},
    # {fsq_levels} and {fsq_dim} are filled in from the budget
    trainer: str = "latentae"  # or "plain": the diffusers example's loop
    bound: str = "steps"  # or "seconds"


CONFIGURATIONS = (
    Configuration("plain", "comparison", "kl", "diffusers example loop: AutoencoderKL, L1 + KL 1e-6, AdamW (0.9, "
                  "0.999) wd 0.01, grad clip 1.0, fp32", trainer="plain", bound="seconds"),
    Configuration("latentae", "comparison", "kl", "latentae defaults (precision auto, AdamW (0.5, 0.9), no clip)",
                  bound="seconds"),
    Configuration("latentae-fp32", "comparison", "kl", "latentae defaults, precision auto off (fp32)",
                  ("train.mixed_precision=fp32",), bound="seconds"),
    Configuration("latentae-example-adamw", "comparison", "kl", "latentae defaults with the example's AdamW "
                  "(0.9, 0.999), wd 0.01, clip 1.0", EXAMPLE_ADAMW, bound="seconds"),
    Configuration("kl-1e-6", "kl-weight", "kl", "KL weight 1e-6 (SD's), no GAN"),
    Configuration("kl-1e-2", "kl-weight", "kl", "KL weight 1e-2", ("loss.kl.weight=1e-2",)),
    Configuration("kl-1", "kl-weight", "kl", "KL weight 1, constant", ("loss.kl.weight=1",)),
    Configuration("kl-1-free-bits", "collapse", "kl", f"KL weight 1, free bits {FREE_BITS} nats/element",
                  ("loss.kl.weight=1", f"loss.kl.free_bits={FREE_BITS}")),
    Configuration("kl-1-cyclical", "collapse", "kl", f"KL weight 1, cyclical annealing ({CYCLES} cycles, R 0.5)",
                  ("loss.kl.weight=1", "loss.kl.schedule=cyclical", "loss.kl.anneal_steps={cycle}",
                   "loss.kl.cycle_ratio=0.5")),
    # weight 1 left every channel above the activity threshold in the cpu study (no collapse to prevent), so the
    # collapse comparison is repeated at weight 10; free bits and cycles unchanged
    Configuration("kl-10", "collapse", "kl", "KL weight 10, constant", ("loss.kl.weight=10",)),
    Configuration("kl-10-free-bits", "collapse", "kl", f"KL weight 10, free bits {FREE_BITS} nats/element",
                  ("loss.kl.weight=10", f"loss.kl.free_bits={FREE_BITS}")),
    Configuration("kl-10-cyclical", "collapse", "kl", f"KL weight 10, cyclical annealing ({CYCLES} cycles, R 0.5)",
                  ("loss.kl.weight=10", "loss.kl.schedule=cyclical", "loss.kl.anneal_steps={cycle}",
                   "loss.kl.cycle_ratio=0.5")),
    Configuration("kl-1e-6-gan", "gan", "kl", "kl-1e-6 + hinge PatchGAN (defaults: batch norm, adaptive x0.5), "
                  "D from 20% of the steps, G term from 40%",
                  ("loss.disc.start={gan_start}", "loss.disc.warmup_steps={gan_warmup}")),
    # issue 12: each regularizer at its paper's settings, added to kl-1e-6 (the baseline of the probe too)
    Configuration("kl-eq", "diffusability", "kl", "kl-1e-6 + EQ-VAE (Kouzelis et al. 2025): p 0.5 per batch, "
                  "downscale by 8/32..31/32 then 1-3 quarter turns, weight 2 (the term is added: at p 0.5 weight 2 "
                  "is the paper's balance, where it replaces the batch's reconstruction)",
                  ("loss.equivariance.weight=2",)),
    Configuration("kl-scale-eq", "diffusability", "kl", f"kl-1e-6 + scale equivariance (Skorokhodov et al. 2025): "
                  f"every batch, bilinear 2x and 4x downsampling of latent and image, weight {SCALE_EQ_WEIGHT:g}",
                  (f"loss.scale_equivariance.weight={SCALE_EQ_WEIGHT:g}",)),
    Configuration("kl-latent-noise", "diffusability", "kl", "kl-1e-6 + noise-robust decoding (l-DeTok, Yang et al. "
                  "2025): decode (1-t) z + 3t eps, t ~ U[0, 1] per image, weight 1 (added to the clean "
                  "reconstruction: l-DeTok decodes only noised latents)", ("loss.latent_noise.weight=1",)),
    Configuration("vq-256d", "codebook", "vq", "VQ, {codebook_size} codes of 256-d, not normalized",
                  ("model.vq_embed_dim=256", "model.quantizer.kind=vq",
                   "model.quantizer.codebook_size={codebook_size}")),
    Configuration("vq-8d-l2", "codebook", "vq", "VQ, {codebook_size} codes of 8-d, l2-normalized (LlamaGen)",
                  ("model.vq_embed_dim=8", "model.quantizer.kind=vq", "model.quantizer.codebook_size={codebook_size}",
                   "model.quantizer.l2_normalize=true")),
    Configuration("fsq", "codebook", "vq", "FSQ levels {fsq_levels} = {fsq_size} codes, no auxiliary loss",
                  ("model.vq_embed_dim={fsq_dim}", "model.quantizer.kind=fsq", "model.quantizer.levels={fsq_levels}")),
    # issue 13's quantizers, each at vq-256d's code width (where plain VQ collapses) and code count
    Configuration("vq-256d-rotation", "codebook", "vq", "vq-256d with the rotation trick (Fifty et al. 2024) "
                  "instead of the straight-through copy",
                  ("model.vq_embed_dim=256", "model.quantizer.kind=vq", "model.quantizer.codebook_size={codebook_size}",
                   "model.quantizer.grad_estimator=rotation")),
    Configuration("simvq", "codebook", "vq", "SimVQ: {codebook_size} frozen random 256-d codes x one learned "
                  "linear map (Zhu et al. 2024)",
                  ("model.vq_embed_dim=256", "model.quantizer.kind=simvq",
                   "model.quantizer.codebook_size={codebook_size}")),
    Configuration("ibq", "codebook", "vq", "IBQ: {codebook_size} codes of 256-d, softmax straight-through "
                  "(Shi et al. 2024)",
                  ("model.vq_embed_dim=256", "model.quantizer.kind=ibq", "model.quantizer.codebook_size={codebook_size}")),
    Configuration("bsq", "codebook", "vq", "BSQ: {codebook_size} codes = log2 bits on the sphere, projected "
                  "from 256-d (Zhao et al. 2024)",
                  ("model.vq_embed_dim=256", "model.quantizer.kind=bsq", "model.quantizer.codebook_size={codebook_size}")),
    Configuration("vqvae2", "codebook", "vq", "VQ-VAE-2: a {codebook_size}-code top level at half resolution "
                  "conditioning a {codebook_size}-code bottom level, EMA codebooks (Razavi et al. 2019; 1.25x the "
                  "tokens of one level)",
                  ("model.quantizer.kind=vqvae2", "model.quantizer.codebook_size={codebook_size}")),
    Configuration("vqvae2-restart", "codebook", "vq", "vqvae2 with dead-code restart (codes used < 1 time per "
                  "update, decayed, restart to batch vectors; not in the paper)",
                  ("model.quantizer.kind=vqvae2", "model.quantizer.codebook_size={codebook_size}",
                   "model.quantizer.dead_code_threshold=1.0")),
)
BY_NAME = {c.name: c for c in CONFIGURATIONS}
PROBED = ("kl-1e-6", *(c.name for c in CONFIGURATIONS if c.group == "diffusability"))  # the baseline first
PROBE_NORMALIZATION = "measured"  # per-channel standardization: the export's 0.18215 is SD's, not these models'


def scaled(budget: Budget, scale: float) -> Budget:
    if scale <= 0:
        raise SystemExit(f"--scale must be > 0, got {scale}")
    return dataclasses.replace(budget, steps=max(1, round(budget.steps * scale)), seconds=budget.seconds * scale,
                               scale=scale)


def budget_values(budget: Budget) -> dict:
    return {"steps": budget.steps, "cycle": max(1, budget.steps // CYCLES), "gan_start": budget.steps * 2 // 5,
            "gan_warmup": budget.steps // 5, "codebook_size": budget.codebook_size,
            "fsq_levels": list(budget.fsq_levels), "fsq_dim": len(budget.fsq_levels),
            "fsq_size": math.prod(budget.fsq_levels)}


def describe(conf: Configuration, budget: Budget) -> str:
    return conf.what.format(**budget_values(budget))


def add_arguments(p):
    p.epilog = "configurations (sizes of --budget cpu):\n" + "\n".join(
        f"  {c.name:24s} {c.group:10s} {describe(c, BUDGETS['cpu'])}" for c in CONFIGURATIONS)
    p.add_argument("--budget", choices=sorted(BUDGETS), default="cpu", help="smoke: minutes, for the test suite; "
                   "cpu: the study on 2 cores (~45 min idle); gpu: the same study at 256 px (default cpu)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the budget's steps and seconds (e.g. 0.2 to "
                   "fit a short GPU lease); results of another scale in --output are left out of the report")
    p.add_argument("--only", default=None, metavar="NAME,NAME", help="run these configurations only; the report "
                   "still shows every result of the same budget already in --output")
    p.add_argument("--output", default=None, help="output folder (default: quality-BUDGET)")
    p.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT), help="folder holding tiny-imagenet-64/, "
                   "bsds500/ and kodak/ (default: ../shared/data beside the checkout)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads per run (default: "
                   "all CPUs; on a machine other jobs share, 1: two threads per op then wait on each other)")
    p.add_argument("--report-only", action="store_true", help="train no autoencoder: rebuild the report from the "
                   "results already in --output (the diffusability probe still runs where its result is missing or "
                   "older than its models)")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: train and measure one configuration


# ---------------------------------------------------------------------------------------------- configs


def base_config(budget: Budget, family: str, data_root: Path) -> dict:
    """What every configuration of a family shares: architecture, data, batch, learning rate, no LPIPS."""
    model = {"family": family, **(budget.kl_model if family == "kl" else budget.vq_model)}
    if family == "kl":
        model["latent_channels"] = 4
    loss: dict = {"perceptual_weight": 0.0}  # LPIPS trunk weights are not available offline
    train: dict = {"batch_size": budget.batch_size, "lr": budget.lr, "max_steps": budget.steps}
    if family == "vq":  # LlamaGen's recipe without LPIPS and GAN: L2, mean reduction (VQ needs it), Adam (0.9, 0.95)
        loss.update(pixel_loss="l2", reduction="mean", disc={"weight": 0.0})
        train["betas"] = [0.9, 0.95]
    train_spec = ",".join(str(data_root / part) for part in budget.train.split(","))
    data = {"train": train_spec, "resolution": budget.resolution, "num_workers": 1,
            "shuffle_buffer": budget.shuffle_buffer}
    return {"seed": 0, "model": model, "loss": loss, "data": data, "train": train}


def config_overrides(conf: Configuration, budget: Budget) -> list[str]:
    values = budget_values(budget)
    return [o.format(**values) for o in conf.overrides]


def run_config(conf: Configuration, budget: Budget, data_root: Path, run_dir: Path):
    """The RunConfig of `conf`: the family's base written as run_dir/study.yaml, then the dot-list overrides."""
    import yaml

    from latentae.trainer.config import load_run_config

    run_dir.mkdir(parents=True, exist_ok=True)
    base = run_dir / "study.yaml"
    base.write_text(yaml.safe_dump(base_config(budget, conf.family, data_root), sort_keys=False))
    return load_run_config(str(base), [f"output_dir={run_dir / 'trainer'}", *config_overrides(conf, budget)])


# ---------------------------------------------------------------------------------------------- trainers


def primed_batches(cfg):
    """latentae's training batches for `cfg` with the first one already fetched: the loader's worker start-up and
    first shuffle-buffer fill stay off the training clock (the same for every trainer)."""
    from latentae.data.train_stream import train_loader

    batches = iter(train_loader(cfg.data, batch_size=cfg.train.batch_size, seed=cfg.seed))
    return itertools.chain([next(batches)], batches)


class LatentaeLoop:
    """latentae's trainer, one `Run.train_step` per optimizer step (what `Run.fit` runs, without its checkpoints,
    validation and export)."""

    def __init__(self, cfg):
        from latentae.trainer.loop import Run

        self.run = Run(cfg)  # resolves train.mixed_precision: auto
        self.batches = primed_batches(cfg)
        self.precision = self.run.placement.precision

    def step(self, step: int) -> None:
        self.run.train_step(self.batches, step)

    def model(self):
        return self.run.export_model()


class PlainLoop:
    """The algorithm of diffusers' examples/research_projects/autoencoderkl/train_autoencoderkl.py with
    --rec_loss l1, without LPIPS (no weights offline) and before its --disc_start (the budget never reaches
    50001 steps; the script's discriminator forward and adaptive-weight gradients, wasted before disc_start,
    are left out so the baseline is not slowed down by them): diffusers AutoencoderKL, L1 summed per image +
    kl_scale x KL summed per image (both averaged over the batch), AdamW with the script's defaults (betas
    (0.9, 0.999), weight decay 1e-2, eps 1e-8), grad-norm clip 1.0, constant learning rate, fp32, no EMA. Same
    architecture and initial weights as latentae's model of the config (converted with kl_to_diffusers), same
    batches (latentae's training loader), same learning rate and KL weight."""

    def __init__(self, cfg):
        import torch

        from latentae.exporting import kl_to_diffusers
        from latentae.models import build_model

        if cfg.model.family != "kl":
            raise SystemExit("the plain loop trains KL autoencoders only")
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(cfg.seed)  # the initial weights Run(cfg) builds
        self.vae = kl_to_diffusers(build_model(cfg.model)).to(self.device).train()
        self.opt = torch.optim.AdamW(self.vae.parameters(), lr=cfg.train.lr, betas=(0.9, 0.999), weight_decay=1e-2,
                                     eps=1e-8)
        self.kl_scale = cfg.loss.kl.weight
        self.batches = primed_batches(cfg)
        self.precision = "fp32"

    def step(self, step: int) -> None:
        import torch
        import torch.nn.functional as F

        images = next(self.batches)["image"].to(self.device)
        posterior = self.vae.encode(images).latent_dist
        rec = self.vae.decode(posterior.sample()).sample
        nll = F.l1_loss(rec.float(), images.float(), reduction="none").sum() / images.shape[0]
        kl = posterior.kl().sum() / images.shape[0]
        (nll + self.kl_scale * kl).backward()
        torch.nn.utils.clip_grad_norm_(self.vae.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad()

    def model(self):
        from latentae.exporting import kl_from_diffusers

        return kl_from_diffusers(self.vae)  # shares the weights: evaluate() needs latentae's model interface


# ---------------------------------------------------------------------------------------------- held-out


def heldout_sets(budget: Budget, data_root: Path) -> list[tuple[str, list]]:
    """(label, sources) of each held-out set: all its images, or the budget's first N."""
    from latentae.data.sources import expand_sources

    sets = []
    for label, folder in HELDOUT:
        sources = expand_sources(str(data_root / folder))
        sets.append((label, sources[: budget.heldout_cap] if budget.heldout_cap else sources))
    return sets


class HeldOut:
    """Measures a model on the held-out photos: evaluate() once over both sets (fp32, center crops at the
    training resolution), per-set PSNR / SSIM from its per-image values, and the sharpness statistic."""

    def __init__(self, cfg, budget: Budget, data_root: Path):
        from latentae.data.eval_stream import eval_loader

        sets = heldout_sets(budget, data_root)
        self.sets = [(label, {s.key for s in sources}) for label, sources in sets]
        spec = ",".join(s.url for _, sources in sets for s in sources)
        self.n_images = sum(len(keys) for _, keys in self.sets)
        # decoded and cropped once, kept in memory (224 crops: 11 MB at 64 px, 176 MB at 256 px): every evaluation
        # of the run then costs only the model and the metrics
        self.batches = list(eval_loader(dataclasses.replace(cfg.data, num_workers=0), batch_size=32, source=spec))
        self.examples = None

    def measure(self, model) -> dict:
        from latentae.evaluation import evaluate
        from latentae.evaluation.sharpness import high_frequency_ratio

        result = evaluate(model, self.batches, metrics=("psnr", "ssim"), examples=self.n_images,
                          data_name="the held-out photos")
        point = {"psnr": result.metrics["psnr"], "ssim": result.metrics["ssim"], "n_images": result.n_images}
        for label, keys in self.sets:
            idx = [i for i, k in enumerate(result.image_keys) if k in keys]
            for metric in ("psnr", "ssim"):
                point[f"{metric}/{label}"] = sum(result.per_image[metric][i] for i in idx) / max(len(idx), 1)
        for key in ("kl", "kl_per_channel", "active_channels", "latent_channels", "codebook_usage", "perplexity",
                    "codebook_size"):
            if key in result.metrics:
                point[key] = result.metrics[key]
        point["hf_ratio"] = high_frequency_ratio(result.examples["input"], result.examples["reconstruction"])
        self.examples = result.examples
        return point


# ---------------------------------------------------------------------------------------------- one run


def worker(args) -> int:
    """Train and measure the configurations named by --worker (comma-separated), one after the other."""
    import torch
    from accelerate.state import AcceleratorState, GradientState

    torch.set_num_threads(args.threads)
    for i, name in enumerate(args.worker.split(",")):
        if i:  # a fresh accelerate state for the next run's precision (as the test suite does between runs)
            gc.collect()  # the previous run's loader worker goes with its iterator
            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()
        train_and_measure(BY_NAME[name], scaled(BUDGETS[args.budget], args.scale), Path(args.data_root).resolve(),
                          Path(args.output), args.threads)
    return 0


def train_and_measure(conf: Configuration, budget: Budget, data_root: Path, output: Path, threads: int) -> None:
    """Train and measure one configuration; write OUTPUT/runs/NAME/result.json (+ examples.npz)."""
    import numpy as np
    import torch

    run_dir = output / "runs" / conf.name
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = run_config(conf, budget, data_root, run_dir)
    trainer = (PlainLoop if conf.trainer == "plain" else LatentaeLoop)(cfg)
    heldout = HeldOut(cfg, budget, data_root)
    limit = budget.steps if conf.bound == "steps" else budget.seconds
    print(f"[{conf.name}] {describe(conf, budget)}; {conf.trainer} trainer, {trainer.precision}, "
          f"{limit:g} {conf.bound}; load average {load_average()}", flush=True)

    curve, step, train_s, cpu_s, next_eval = [], 0, 0.0, 0.0, 1
    load_start = os.getloadavg()
    while True:
        t, c = time.perf_counter(), time.process_time()
        trainer.step(step)
        train_s += time.perf_counter() - t
        cpu_s += time.process_time() - c
        step += 1
        progress = (step if conf.bound == "steps" else train_s) / limit
        if progress * budget.evals >= next_eval or progress >= 1:
            point = {"step": step, "train_seconds": train_s, **heldout.measure(trainer.model())}
            curve.append(point)
            print(f"[{conf.name}] step {step} ({train_s / 60:.1f} min): held-out PSNR {point['psnr']:.2f} dB, "
                  f"SSIM {point['ssim']:.4f}, {bottleneck_text(point)}, HF ratio {point['hf_ratio']:.3f}", flush=True)
            next_eval = math.floor(progress * budget.evals) + 1
        if progress >= 1:
            break
    result = {
        "name": conf.name, "budget": budget.name, "scale": budget.scale, "group": conf.group, "family": conf.family,
        "what": describe(conf, budget), "trainer": conf.trainer, "bound": conf.bound,
        "overrides": config_overrides(conf, budget), "base": base_config(budget, conf.family, Path("DATA_ROOT")),
        "precision": trainer.precision, "threads": threads,
        "params": sum(p.numel() for p in trainer.model().parameters()),
        "steps": step, "train_seconds": train_s, "cpu_seconds": cpu_s,
        "images_per_second": step * budget.batch_size / train_s,
        "load_average_start": list(load_start), "load_average_end": list(os.getloadavg()),
        "curve": curve, "final": curve[-1],
    }
    n = budget.grid_images
    np.savez_compressed(run_dir / "examples.npz", input=heldout.examples["input"][:n].numpy(),
                        reconstruction=heldout.examples["reconstruction"][:n].numpy())
    from latentae.exporting import export

    # the final weights, for the diffusability probe (a later --report-only run probes them too)
    export(trainer.model(), run_dir / "model", metadata={"configuration": conf.name, "step": step})
    (run_dir / "result.json").write_text(json.dumps(result, indent=1))  # last: a result means a finished run


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def bottleneck_text(point: dict) -> str:
    if "codebook_usage" in point:
        return f"codebook usage {point['codebook_usage']:.1%} (perplexity {point['perplexity']:.0f})"
    return f"KL {point['kl']:.3g} nats/element, {point['active_channels']}/{point['latent_channels']} active channels"


# ---------------------------------------------------------------------------------------------- the study


def selected(only: str | None) -> list[Configuration]:
    if not only:
        return list(CONFIGURATIONS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(BY_NAME)}")
    return [BY_NAME[n] for n in names]


def check_data(data_root: Path, budget: Budget) -> None:
    needed = [str(Path(part.split("{")[0]).parent) if "{" in part else part for part in budget.train.split(",")]
    needed += [folder for _, folder in HELDOUT]
    missing = [p for p in needed if not (data_root / p).exists()]
    if missing:
        raise SystemExit(f"data not found under {data_root}: {', '.join(missing)} (see shared/data/README.md; "
                         "--data-root names the folder)")


def spawn(confs: list[Configuration], args, out: Path) -> bool:
    cmd = [sys.executable, str(Path(__file__).with_name("benchmark.py")), "quality", "--worker",
           ",".join(c.name for c in confs),
           "--budget", args.budget, "--scale", repr(args.scale), "--output", str(out), "--data-root", args.data_root,
           "--threads", str(args.threads)]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(cmd, env=env, cwd=ROOT).returncode == 0


def collect(out: Path, budget: Budget) -> dict[str, dict]:
    """Every result in `out` made with `budget` (and its scale), in the order of CONFIGURATIONS."""
    results = {}
    for conf in CONFIGURATIONS:
        path = out / "runs" / conf.name / "result.json"
        if path.is_file():
            result = json.loads(path.read_text())
            if (result.get("budget"), result.get("scale")) == (budget.name, budget.scale):
                results[conf.name] = result
    return results


def result_digests(out: Path, names: list[str]) -> dict[str, str]:
    """A digest of each run's result.json: a re-run changes it, so a probe of the older models is not reused."""
    import hashlib

    return {n: hashlib.sha256((out / "runs" / n / "result.json").read_bytes()).hexdigest()[:16] for n in names}


def diffusability_probe(out: Path, budget: Budget, data_root: Path, results: dict) -> dict | None:
    """The probe's report on the saved models of PROBED in `out` (OUTPUT/probe/report.json, with the digests of
    the results it probed under "study"), run in one `probe` call, or reused when those digests still match.
    None when the budget has no probe or kl-1e-6 and one regularized row are not both there."""
    import torch

    from latentae.probe import BUDGETS as PROBE_BUDGETS
    from latentae.probe import probe
    from latentae.probe.run import markdown

    names = [n for n in PROBED if n in results and (out / "runs" / n / "model").is_dir()]
    if budget.probe is None or PROBED[0] not in names or len(names) < 2:
        print(f"diffusability probe: not run (budget {budget.name}: probe {budget.probe}; models: "
              f"{', '.join(names) or 'none'}; it needs {PROBED[0]} and at least one of {', '.join(PROBED[1:])})")
        return None
    settings = dataclasses.replace(PROBE_BUDGETS[budget.probe], resolution=budget.resolution)
    path = out / "probe" / "report.json"
    study = {"budget": budget.name, "scale": budget.scale, "data": budget.probe_data, "probe": budget.probe,
             "settings": settings.as_dict(), "normalize": PROBE_NORMALIZATION, "results": result_digests(out, names)}
    if path.is_file():
        report = json.loads(path.read_text())
        if report.get("study") == study:
            print(f"diffusability probe: reusing {path} ({', '.join(names)})")
            return report
    from latentae.loading import load
    from latentae.runtime import default_device

    device = default_device()
    models = {n: load(out / "runs" / n / "model", device=device) for n in names}
    print(f"diffusability probe ({budget.probe} preset, {settings.steps} DiT steps per model, "
          f"{PROBE_NORMALIZATION} normalization) on {', '.join(names)}; load average {load_average()}", flush=True)
    t = time.perf_counter()
    report = probe(models, str(data_root / budget.probe_data), budget=settings, budget_name=budget.probe, seed=0,
                   normalize=PROBE_NORMALIZATION, output=out / "probe", device=device)
    report.update(data=f"DATA_ROOT/{budget.probe_data}", study=study,  # no machine paths in the committed copy
                  run={"seconds": time.perf_counter() - t, "threads": torch.get_num_threads()})
    path.write_text(json.dumps(report, indent=2) + "\n")
    (out / "probe" / "report.md").write_text(markdown(report))
    print(f"diffusability probe: {report['run']['seconds'] / 60:.1f} min; ranking by {report['rank_by']}: "
          f"{', '.join(report['ranking'])}", flush=True)
    return report


def run(args):
    if args.worker:
        return worker(args)
    budget = scaled(BUDGETS[args.budget], args.scale)
    confs = selected(args.only)
    data_root = Path(args.data_root).resolve()
    check_data(data_root, budget)
    out = Path(args.output or f"quality-{budget.name}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    import torch

    from latentae.precision import machine_description

    torch.set_num_threads(args.threads)  # as the runs use (the machine line names it)
    print(f"{machine_description()}; load average {load_average()}")
    print(f"budget {budget.name} x{budget.scale:g}: {budget.resolution} px, batch {budget.batch_size}, "
          f"lr {budget.lr:g}, {budget.steps} steps or {budget.seconds:g} s (comparison group); {len(confs)} "
          f"configuration(s) -> {out}",
          flush=True)
    failed = []
    started = time.perf_counter()
    for batch in [] if args.report_only else [confs] if budget.one_process else [[c] for c in confs]:
        t = time.perf_counter()
        results = [out / "runs" / c.name / "result.json" for c in batch]
        for path in results:  # a result left from an earlier study must not stand in for a failed run
            path.unlink(missing_ok=True)
        ok = spawn(batch, args, out)
        lost = [c.name for c, path in zip(batch, results) if not path.is_file()]
        failed += lost or ([] if ok else [c.name for c in batch])
        print(f"[{','.join(c.name for c in batch)}] {'FAILED: ' + ', '.join(lost) if lost or not ok else 'done'} in "
              f"{(time.perf_counter() - t) / 60:.1f} min; load average {load_average()}", flush=True)
    if not args.report_only:
        print(f"ran {len(confs)} configuration(s) in {(time.perf_counter() - started) / 60:.1f} min")
    results = collect(out, budget)
    if not results:
        print(f"no results of budget {budget.name} x{budget.scale:g} in {out}: no report")
    else:
        from quality_report import write_report

        probe_report = diffusability_probe(out, budget, data_root, results)
        heldout = [(label, len(sources)) for label, sources in heldout_sets(budget, data_root)]
        for path in write_report(results, budget, out, heldout, probe=probe_report):
            print(f"wrote {path}")
    if failed:
        print(f"failed: {', '.join(failed)} (see their output above)")
        return 1
    return 0
