"""One worker process: train and measure configurations one after the other, each writing its result."""
from __future__ import annotations

import gc
import json
import math
import os
import shutil
import time
from pathlib import Path

from machine import load_average

from ..loops import LatentaeLoop, PlainLoop
from .heldout import HeldOut
from .study import BUDGETS, BY_NAME, Budget, Configuration, base_config, config_overrides, describe, run_config, scaled

TRAINERS = {"latentae": LatentaeLoop, "plain": PlainLoop}  # a configuration's `trainer`


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
    """Train and measure one configuration; write OUTPUT/runs/NAME/result.json (+ examples.npz, model/)."""
    import numpy as np

    run_dir = output / "runs" / conf.name
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = run_config(conf, budget, data_root, run_dir)
    trainer = TRAINERS[conf.trainer](cfg)
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


def bottleneck_text(point: dict) -> str:
    if "codebook_usage" in point:
        return f"codebook usage {point['codebook_usage']:.1%} (perplexity {point['perplexity']:.0f})"
    return f"KL {point['kl']:.3g} nats/element, {point['active_channels']}/{point['latent_channels']} active channels"
