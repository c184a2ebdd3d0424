"""Where and how a model runs for inference: device, bf16 autocast, channels-last memory format, and the
rank / world size of a distributed launch (torchrun or accelerate; a plain process is rank 0 of 1)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
from torch import Tensor

from latentae.errors import LatentaeError
from latentae.latents.options import PRECISIONS
from latentae.precision import resolve_precision

Precision = Literal["auto", "fp32", "bf16"]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Runtime:
    """A model moved (in place) to `device` in eval mode, plus the context its forwards run under.

    bf16 is autocast (weights stay fp32, convolutions and matmuls run in bf16: AVX512-BF16 / AMX on CPUs,
    tensor cores on GPUs); quantizers turn autocast off for their lookups, so codebooks are searched in
    fp32. channels_last lays activations out NHWC, which oneDNN and cuDNN convolve faster. auto becomes bf16
    where it is faster on this device, else fp32 (see latentae.precision; `self.precision` holds the result).
    """

    def __init__(self, model, *, device: str | torch.device | None = None, precision: Precision = "fp32",
                 channels_last: bool = False):
        if precision not in PRECISIONS:
            raise LatentaeError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.device = torch.device(device) if device is not None else default_device()
        self.precision = resolve_precision(precision, device=self.device, channels_last=channels_last)
        self.channels_last = channels_last
        self.model = model.to(self.device).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def inputs(self, x: Tensor | np.ndarray) -> Tensor:
        """A batch [B, C, H, W] on the device, in the model's memory format."""
        x = torch.as_tensor(x).to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def context(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


@dataclass(frozen=True)
class Launch:
    rank: int
    world_size: int
    device: torch.device
    barrier: Callable[[], None]  # every rank waits here until all arrive


def launch() -> Launch:
    """This process's place in a distributed launch. Under torchrun / accelerate launch the process group
    is initialized through accelerate; a plain process is rank 0 of 1 on the default device."""
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # without cpu=True a CPU torchrun stays 1 process
    return Launch(state.process_index, state.num_processes, state.device, state.wait_for_everyone)
