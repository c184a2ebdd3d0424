"""Side by side: several autoencoders on the same images (`latentae eval --model A --model B ...`).

One table, a row per model: PSNR, SSIM, LPIPS, rFID, and FD-DINOv2 / CMMD when they were asked for (as `evaluate`
measures them; a metric asked for but unavailable shows n/a), the latent shape of one image, the compression ratio
(pixels x 3 / latent elements), and encode / decode milliseconds per image; and one grid: the inputs on top, each
model's reconstructions in a row below, in the order given.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from latentae.evaluation.evaluator import EvalResult
from latentae.evaluation.report import _ROWS, _fmt, _jsonable, save_png
from latentae.runtime import autocast

TIMING_REPEATS = 3  # timed runs after one warm-up; the median is reported
COLUMNS = ("psnr", "ssim", "lpips", "rfid", "fd_dinov2", "cmmd")  # each shown when some model has it


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def speed_and_shape(model, images: Tensor, *, precision: str = "fp32") -> dict[str, Any]:
    """Latent shape [C, h, w] of `images` (fp32 [B, 3, H, W] on the model's device), compression ratio, and the
    median encode / decode time per image over TIMING_REPEATS runs of this batch after one warm-up."""
    device = images.device
    x = images.to(model.dtype)
    timings: dict[str, list[float]] = {"encode": [], "decode": []}
    with autocast(device.type, precision):
        for repeat in range(TIMING_REPEATS + 1):
            _synchronize(device)
            start = time.perf_counter()
            z = model.encode(x)
            _synchronize(device)
            middle = time.perf_counter()
            model.decode(z)
            _synchronize(device)
            if repeat:  # the first run warms up kernels and caches
                timings["encode"].append(middle - start)
                timings["decode"].append(time.perf_counter() - middle)
    shape = list(z.shape[1:])
    n = len(images)
    return {"latent_shape": shape, "compression": 3 * images.shape[-2] * images.shape[-1] / math.prod(shape),
            "timed_batch": n,
            **{f"{k}_ms_per_image": sorted(v)[len(v) // 2] * 1000 / n for k, v in timings.items()}}


def comparison_rows(results: dict[str, EvalResult], speeds: dict[str, dict]) -> list[dict[str, Any]]:
    rows = []
    for name, result in results.items():
        row = {"model": name, "family": speeds[name]["family"]}
        row.update({k: result.metrics.get(k) for k in COLUMNS if k in result.metrics or k in result.unavailable})
        row.update({k: v for k, v in speeds[name].items() if k != "family"})
        rows.append(row)
    return rows


def comparison_markdown(rows: list[dict[str, Any]], setup: dict[str, Any]) -> str:
    metrics = [k for k in COLUMNS if any(k in r for r in rows)]
    header = ["model", "family", *[_ROWS[m][0].removesuffix(" (dB)") for m in metrics], "latent (C x h x w)",
              "compression", "encode ms/img", "decode ms/img"]
    lines = [f"## Side by side: {len(rows)} models on {setup.get('data')}", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        values = ["n/a" if r.get(m) is None else _fmt(m, r[m]) for m in metrics]
        lines.append("| " + " | ".join([f"`{r['model']}`", r["family"], *values, "x".join(map(str, r["latent_shape"])),
                                        f"{r['compression']:.1f}", f"{r['encode_ms_per_image']:.2f}",
                                        f"{r['decode_ms_per_image']:.2f}"]) + " |")
    lines += ["", "Protocol:", ""]
    lines += [f"- {k}: {v}" for k, v in setup.items() if v is not None]
    lines += ["- compression: pixels x 3 / latent elements of one image (encode's output: KL posterior mean, VQ "
              "quantized latent, FLUX.2 unpatchified)",
              f"- encode / decode ms per image: median of {TIMING_REPEATS} runs after one warm-up, on the first "
              f"batch ({rows[0]['timed_batch']} images), on this machine; every model on the same batch",
              "- per-model reports (metrics, protocol, per-image values): the model's own folder",
              "- grid.png rows: input, then each model's reconstruction in the order of the table"]
    return "\n".join(lines) + "\n"


def write_comparison(results: dict[str, EvalResult], speeds: dict[str, dict], output: Path,
                     setup: dict[str, Any]) -> dict[str, Path]:
    """compare.json, compare.md and grid.png in `output` (each model's own report goes to output/NAME)."""
    from torchvision.utils import make_grid

    output.mkdir(parents=True, exist_ok=True)
    rows = comparison_rows(results, speeds)
    written = {"json": output / "compare.json", "markdown": output / "compare.md"}
    written["json"].write_text(json.dumps(_jsonable({"setup": setup, "models": rows}), indent=2) + "\n")
    written["markdown"].write_text(comparison_markdown(rows, setup))
    examples = [r.examples for r in results.values()]
    if all(examples):
        n = min(len(e["input"]) for e in examples)
        grid = torch.cat([examples[0]["input"][:n], *(e["reconstruction"][:n] for e in examples)]).float() / 255
        written["grid"] = output / "grid.png"
        save_png(make_grid(grid, nrow=n, padding=2, pad_value=1.0), written["grid"])
    return written
