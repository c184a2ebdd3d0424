"""Checkpoints: every piece of training state, written atomically, newest K kept, `resume=auto`.

A checkpoint is an `accelerator.save_state` directory (models as safetensors, both optimizers, schedulers,
grad scaler, per-rank RNG, EMA and TrainState via register_for_checkpointing). It is written under a temporary
name and renamed when every rank has finished, so a kill during the write leaves the previous one intact.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from latentae.errors import LatentaeError

_NAME = re.compile(r"^step-(\d+)$")


@dataclass
class TrainState:
    """Counters that must survive a resume (the data position is `step`: the stream is a function of it)."""

    step: int = 0
    nan_skipped: int = 0
    consecutive_nan: int = 0
    samples_skipped: dict[str, int] = field(default_factory=dict)

    def state_dict(self) -> dict:
        return {"step": self.step, "nan_skipped": self.nan_skipped, "consecutive_nan": self.consecutive_nan,
                "samples_skipped": dict(self.samples_skipped)}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.nan_skipped = int(state["step"]), int(state["nan_skipped"])
        self.consecutive_nan = int(state["consecutive_nan"])
        self.samples_skipped = dict(state["samples_skipped"])


def checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | None, directory: Path) -> Path | None:
    """The checkpoint to resume from: None, the newest one for "auto", or an explicit path."""
    if resume is None:
        return None
    if resume == "auto":
        found = checkpoints(directory)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_dir():
        raise LatentaeError(f"train.resume={resume}: no such checkpoint directory")
    return path


def save(accelerator, directory: Path, step: int, keep: int) -> Path:
    """Write checkpoint `step-N` atomically on every rank; prune to the newest `keep`. Call on all ranks."""
    final = directory / f"step-{step:08d}"
    tmp = directory / f".tmp-step-{step:08d}"
    if accelerator.is_main_process:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        for stale in directory.glob(".tmp-step-*"):  # left by a run killed mid-write
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoints(directory)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
