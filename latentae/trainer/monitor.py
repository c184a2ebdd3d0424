"""What a run reports: TensorBoard scalars and image grids, a progress bar, and the throughput it measures."""
from __future__ import annotations

import time

import torch
from torch import Tensor
from tqdm.auto import tqdm

from latentae.data.skips import REASONS
from latentae.evaluation.metrics import to_uint8
from latentae.evaluation.report import comparison_grid


class Monitor:
    """Accumulates per-step numbers and writes them every `log_every` steps (all ranks call `step_done`)."""

    def __init__(self, accelerator, *, start_step: int, max_steps: int, log_every: int, images_per_step: int):
        self.accelerator = accelerator
        self.log_every = log_every
        self.images_per_step = images_per_step
        self.bar = tqdm(total=max_steps, initial=start_step, desc="train", dynamic_ncols=True,
                        disable=not accelerator.is_main_process)
        self.window_start = time.perf_counter()
        self.window_steps = 0
        self.data_wait = 0.0

    def step_done(self, step: int, report, skipped: dict[str, int]) -> None:
        """`step` is the number of optimizer steps done, `report` its Run.train_step's; its logs are written with
        the `train/` prefix."""
        logs: dict[str, Tensor | float] = report.logs
        self.data_wait += report.data_wait_s
        self.window_steps += 1
        self.bar.update(1)
        if step % self.log_every and step != self.bar.total:
            return
        elapsed = time.perf_counter() - self.window_start
        img_s = self.window_steps * self.images_per_step / max(elapsed, 1e-9)
        scalars = {f"train/{k}": float(v) for k, v in logs.items()}
        scalars["train/img_per_s"] = img_s
        scalars["train/data_wait_s"] = self.data_wait / self.window_steps
        counts = torch.tensor([skipped.get(r, 0) for r in REASONS], dtype=torch.float64,
                              device=self.accelerator.device)
        counts = self.accelerator.reduce(counts, reduction="sum")  # every rank's skips, not just rank 0's
        scalars.update({f"train/skipped/{r}": float(c) for r, c in zip(REASONS, counts.tolist())})
        self.accelerator.log(scalars, step=step)
        self.bar.set_postfix(loss=f"{scalars.get('train/loss/total', float('nan')):.4f}", img_s=f"{img_s:.1f}")
        self.window_start, self.window_steps, self.data_wait = time.perf_counter(), 0, 0.0

    def images(self, step: int, images: Tensor, reconstructions: Tensor, prefix: str = "train", n: int = 4) -> None:
        self.grid(f"{prefix}/input_reconstruction_difference", step, to_uint8(images[:n]), to_uint8(reconstructions[:n]))

    def grid(self, tag: str, step: int, inputs_u8: Tensor, reconstructions_u8: Tensor) -> None:
        if self.accelerator.is_main_process:
            writer = self.accelerator.get_tracker("tensorboard", unwrap=True)
            writer.add_image(tag, comparison_grid(inputs_u8, reconstructions_u8), step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.accelerator.log(values, step=step)

    def close(self) -> None:
        self.bar.close()
