"""Evaluation report files: report.json, report.md (numbers with the protocol beside them), per_image.csv,
grid.png (input / reconstruction / difference rows) and psnr_hist.png. Drawn with PIL and torchvision only.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from latentae.evaluation.evaluator import EvalResult
from latentae.evaluation.metrics import IMAGE_METRICS

DIFF_GAIN = 4  # grid difference row: |input - reconstruction| x this, so small errors show

# metric key -> (label, format, better direction)
_ROWS = {
    "psnr": ("PSNR (dB)", "{:.3f}", "higher"),
    "ssim": ("SSIM", "{:.4f}", "higher"),
    "lpips": ("LPIPS", "{:.4f}", "lower"),
    "rfid": ("rFID", "{:.3f}", "lower"),
    "fd_dinov2": ("FD-DINOv2", "{:.3f}", "lower"),
    "cmmd": ("CMMD", "{:.4f}", "lower"),
    "codebook_usage": ("codebook usage", "{:.2%}", "higher"),
    "perplexity": ("codebook perplexity", "{:.1f}", "higher"),
    "entropy_bits": ("code entropy (bits)", "{:.3f}", ""),
    "bits_per_pixel": ("bits per pixel (log2 K x tokens / pixels)", "{:.4f}", ""),
    "entropy_bits_per_pixel": ("bits per pixel (entropy x tokens / pixels)", "{:.4f}", ""),
    "codebook_size": ("codebook size K", "{}", ""),
    "num_stages": ("quantizer stages", "{}", ""),
    "kl": ("KL (nats / latent element)", "{:.4f}", ""),
    "kl_per_channel": ("KL per channel (nats / element)", "", ""),
    "active_channels": ("active latent channels", "{}", ""),
    "latent_channels": ("latent channels", "{}", ""),
    "latent_shape": ("latent shape (C x h x w)", "", ""),
}


def _fmt(key: str, value: Any) -> str:
    if isinstance(value, list):  # a shape is integers, per-channel values are floats
        return "x".join(map(str, value)) if all(isinstance(v, int) for v in value) else \
            ", ".join(f"{v:.4f}" for v in value)
    if key in _ROWS:
        return _ROWS[key][1].format(value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _label(key: str) -> str:
    if key in _ROWS:
        label, _, better = _ROWS[key]
        return f"{label} {'↑' if better == 'higher' else '↓' if better == 'lower' else ''}".strip()
    return key


def _jsonable(value: Any) -> Any:
    """NaN / inf are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def report_dict(result: EvalResult, setup: dict[str, Any]) -> dict[str, Any]:
    """result.to_dict() with the caller's setup (model, data, resolution, crop, ...) added to the protocol."""
    out = result.to_dict()
    out["protocol"] = {**setup, **out["protocol"]}
    return _jsonable(out)


def markdown(result: EvalResult, setup: dict[str, Any]) -> str:
    """The metrics table followed by the protocol they were measured under."""
    title = setup.get("model", "model")
    lines = [f"## Reconstruction metrics: {title}", "", "| metric | value |", "|---|---|"]
    lpips_net = setup.get("lpips_net")
    requested = [k for k in IMAGE_METRICS if k in result.metrics or k in result.unavailable]
    rest = [k for k in result.metrics if k not in IMAGE_METRICS]
    for key in requested + rest:
        label = _label(key)
        if key == "lpips" and lpips_net:
            label = label.replace("LPIPS", f"LPIPS-{lpips_net}")
        value = "unavailable (see below)" if key in result.unavailable else _fmt(key, result.metrics[key])
        lines.append(f"| {label} | {value} |")
    skipped = ", ".join(f"{r}={n}" for r, n in result.skipped.items()) or "none"
    p = result.protocol
    lines += ["", "Protocol:", ""]
    lines += [f"- {k}: {v}" for k, v in setup.items() if k not in ("model", "lpips_net") and v is not None]
    lines += [f"- images evaluated: {result.n_images} (skipped samples: {skipped})",
              f"- model precision: {p.get('model_precision')}, processes: {p.get('processes')}"]
    lines += [f"- {k}: {v}" for k, v in p.get("metrics", {}).items()]
    for k, files in p.get("weight_files", {}).items():
        lines.append(f"- {k} weight files: {', '.join(files)}")
    if "tiling" in p:
        lines.append(f"- tiling: {p['tiling']}")
    if "bottleneck" in p:
        lines.append(f"- bottleneck statistics: {' '.join(p['bottleneck'].split())}")
    lines += [f"- note: {n}" for n in p.get("notes", [])]
    lines += [f"- {k} unavailable: {reason}" for k, reason in result.unavailable.items()]
    if result.examples:
        lines.append(f"- grid.png rows: input, reconstruction, |input - reconstruction| x {DIFF_GAIN} "
                     f"({len(result.examples['input'])} images of the first process)")
    return "\n".join(lines) + "\n"


def comparison_grid(inputs: Tensor, reconstructions: Tensor) -> Tensor:
    """uint8 [N, 3, H, W] pairs -> float [3, H', W'] in [0, 1]: rows input, reconstruction, |difference| x
    DIFF_GAIN."""
    from torchvision.utils import make_grid

    x, r = inputs.float() / 255, reconstructions.float() / 255
    diff = ((x - r).abs() * DIFF_GAIN).clamp(0, 1)
    return make_grid(torch.cat([x, r, diff]), nrow=len(x), padding=2, pad_value=1.0)


def save_png(image: Tensor, path: Path) -> None:
    """A float [3, H, W] image in [0, 1] as PNG (the pixels torchvision's save_image writes) at zlib level 1: a
    grid of photos is only ~4% smaller at PIL's default level 6, which takes 2.6x as long (4.4 s instead of 1.7 s
    for 8 native-size Kodak images on 2 cores)."""
    pixels = image.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    Image.fromarray(pixels).save(path, compress_level=1)


def histogram_image(values: list[float], *, title: str, bins: int = 30, size: tuple[int, int] = (640, 400)
                    ) -> Image.Image:
    """A bar chart of `values` drawn with PIL: counts per bin, with axis ticks at both ends and the mean."""
    width, height = size
    left, right, top, bottom = 50, 20, 40, 50
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:  # one value: a single bar around it
        lo, hi = lo - 0.5, hi + 0.5
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / (hi - lo) * bins), bins - 1)] += 1
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max(counts)
    for i, c in enumerate(counts):
        x0 = left + i * plot_w / bins
        x1 = left + (i + 1) * plot_w / bins - 1
        draw.rectangle([x0, top + plot_h * (1 - c / peak), x1, top + plot_h], fill=(70, 110, 180))
    draw.line([left, top + plot_h, left + plot_w, top + plot_h], fill="black")
    draw.line([left, top, left, top + plot_h], fill="black")
    mean = sum(values) / len(values)
    mx = left + (mean - lo) / (hi - lo) * plot_w
    draw.line([mx, top, mx, top + plot_h], fill=(200, 40, 40), width=2)
    draw.text((left, 10), f"{title}: {len(values)} images, mean {mean:.3f} (red line)", fill="black", font=font)
    draw.text((left, top + plot_h + 8), f"{lo:.2f}", fill="black", font=font)
    draw.text((left + plot_w - 40, top + plot_h + 8), f"{hi:.2f}", fill="black", font=font)
    draw.text((5, top), str(peak), fill="black", font=font)
    draw.text((5, top + plot_h - 10), "0", fill="black", font=font)
    return img


def write_report(result: EvalResult, output: str | Path, setup: dict[str, Any]) -> dict[str, Path]:
    """Write the report files into `output` (created); returns {kind: path} of what was written."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    written = {"json": out / "report.json", "markdown": out / "report.md", "per_image": out / "per_image.csv"}
    written["json"].write_text(json.dumps(report_dict(result, setup), indent=2) + "\n")
    written["markdown"].write_text(markdown(result, setup))
    names = list(result.per_image)
    classes = result.image_classes
    with open(written["per_image"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["key", *(["class"] if classes else []), *names])
        for i, key in enumerate(result.image_keys):
            label = [classes[i]] if classes else []
            writer.writerow([key, *label, *(f"{result.per_image[n][i]:.6f}" for n in names)])
    if result.examples:
        written["grid"] = out / "grid.png"
        save_png(comparison_grid(result.examples["input"], result.examples["reconstruction"]), written["grid"])
    if result.per_image_psnr:
        written["psnr_hist"] = out / "psnr_hist.png"
        histogram_image(result.per_image_psnr, title="per-image PSNR (dB)").save(written["psnr_hist"])
    return written
