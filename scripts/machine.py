"""What the benchmarks print about the machine they ran on: CPU model and the flags that decide bf16 speed
(latentae.precision.machine_description), the bf16 and fp32 GEMM rates measured now, and the load average."""
from __future__ import annotations

import os
import time


def matmul_rate(dtype, sizes=(1024, 2048), repeats=3) -> float:
    """Best FLOP/s of square matmuls of `dtype` over a few sizes (2 n^3 per product)."""
    import torch

    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        a @ b  # warm-up: kernel selection, page faults
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def describe() -> dict:
    """Print the machine and this moment's GEMM rates; return the rates (FLOP/s) by dtype name."""
    import torch

    from latentae.precision import machine_description

    rates = {"bf16": matmul_rate(torch.bfloat16), "fp32": matmul_rate(torch.float32)}
    print(machine_description())
    print(f"GEMM (best square matmul): bf16 {rates['bf16'] / 1e9:.0f} GFLOP/s, fp32 {rates['fp32'] / 1e9:.0f} "
          f"GFLOP/s ({rates['bf16'] / rates['fp32']:.2f}x); load average {load_average()}", flush=True)
    return rates
