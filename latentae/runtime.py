"""Where and how this process runs its models: device, precision, memory format and CPU threads. `resolve`
settles them once per process (auto precision measured or looked up, threads from the CPUs free now) into one
`Placement` that training, its validation and every inference command carry.

Precision is autocast: weights stay fp32; convolutions and matmuls run in bf16 (AVX512-BF16 / AMX on CPUs,
tensor cores on GPUs) or fp16; quantizers turn autocast off for their lookups, so codebooks are searched in fp32.
channels_last lays activations out NHWC, which oneDNN and cuDNN convolve faster.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from latentae.errors import LatentaeError
from latentae.options import PRECISIONS
from latentae.precision import resolve_precision
from latentae.threads import settle

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device_type: str, precision: str) -> torch.autocast:
    """The autocast a resolved precision ("fp32", "bf16" or "fp16") means; fp32 turns an outer autocast off."""
    return torch.autocast(device_type, dtype=AUTOCAST_DTYPES.get(precision, torch.bfloat16),
                          enabled=precision in AUTOCAST_DTYPES)


@dataclass(frozen=True)
class Placement:
    device: torch.device
    precision: str  # resolved: "fp32", "bf16" or "fp16"
    channels_last: bool
    threads: int  # torch's CPU threads in this process

    def autocast(self) -> torch.autocast:
        return autocast(self.device.type, self.precision)

    def inputs(self, x: Tensor | np.ndarray) -> Tensor:
        """A batch [B, C, H, W] on the device, in the memory format."""
        x = torch.as_tensor(x).to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def place(self, model: nn.Module) -> nn.Module:
        """`model` moved (in place) to the device and memory format."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


def resolve(*, device: str | torch.device | None = None, precision: str = "auto",
            channels_last: bool = False) -> Placement:
    """The placement for a requested device (None: CUDA when available), precision (auto: see latentae.precision,
    printed once per process with its reason) and memory format; the thread count is settled at the first call
    (see latentae.threads)."""
    threads = settle()  # first: the precision cache is keyed by the thread count
    device = torch.device(device) if device is not None else default_device()
    return Placement(device, resolve_precision(precision, device=device, channels_last=channels_last),
                     channels_last, threads)


class Runtime:
    """A model moved (in place) to a resolved placement, in eval mode, for the inference commands (which offer
    PRECISIONS: fp16 needs the loss scaling only training has)."""

    def __init__(self, model, *, device: str | torch.device | None = None, precision: str = "fp32",
                 channels_last: bool = False):
        if precision not in PRECISIONS:
            raise LatentaeError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.placement = resolve(device=device, precision=precision, channels_last=channels_last)
        self.device, self.precision, self.channels_last = self.placement.device, self.placement.precision, channels_last
        self.model = self.placement.place(model.eval())

    def inputs(self, x: Tensor | np.ndarray) -> Tensor:
        return self.placement.inputs(x)

    def context(self) -> contextlib.AbstractContextManager:
        return self.placement.autocast()
