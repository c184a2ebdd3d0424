"""Figures with Pillow only: labelled image grids and bar charts (matplotlib is not a dependency)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from latentae.data.transforms import to_pil

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
BAR = (52, 101, 164)
PAD = 4


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=_font())
    return right - left, bottom - top


def image_grid(rows: Sequence[Sequence[torch.Tensor]], *, row_labels: Sequence[str] | None = None,
               col_labels: Sequence[str] | None = None, captions: Sequence[Sequence[str]] | None = None,
               title: str | None = None) -> Image.Image:
    """Images [3, H, W] in [-1, 1] laid out in rows (all the same size), with optional labels: one per row
    (left), per column (top), per image (`captions`, below each) and a title."""
    tiles = [[to_pil(img) for img in row] for row in rows]
    w, h = tiles[0][0].size
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line = _text_size(scratch, "Ag")[1] + PAD
    left = max((_text_size(scratch, s)[0] for s in row_labels or []), default=0) + (PAD if row_labels else 0)
    top = (line if title else 0) + (line if col_labels else 0)
    row_h = h + PAD + (line if captions else 0)
    cols = max(len(r) for r in tiles)
    width = max(left + cols * (w + PAD) + PAD, _text_size(scratch, title)[0] + 2 * PAD if title else 0)
    out = Image.new("RGB", (width, top + len(tiles) * row_h + PAD), BACKGROUND)
    draw = ImageDraw.Draw(out)
    if title:
        draw.text((PAD, PAD // 2), title, fill=INK, font=_font())
    for c, label in enumerate(col_labels or []):
        draw.text((left + PAD + c * (w + PAD), top - line), label, fill=INK, font=_font())
    for r, row in enumerate(tiles):
        y = top + PAD + r * row_h
        if row_labels:
            draw.text((PAD, y + h // 2 - line // 2), row_labels[r], fill=INK, font=_font())
        for c, tile in enumerate(row):
            out.paste(tile, (left + PAD + c * (w + PAD), y))
            if captions:
                draw.text((left + PAD + c * (w + PAD), y + h + PAD // 2), captions[r][c], fill=INK, font=_font())
    return out


def bar_chart(values: Sequence[float], *, labels: Sequence[str] | None = None, title: str = "",
              y_label: str = "", width: int = 640, height: int = 320) -> Image.Image:
    """Vertical bars from 0 (values >= 0), y axis ticks at 0, half and the maximum. With many values
    the bars narrow down to one pixel; labels are drawn when they fit."""
    values = [float(v) for v in values]
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line = _text_size(scratch, "Ag")[1] + PAD
    top_value = max(values, default=0.0) or 1.0
    ticks = [top_value, top_value / 2, 0.0]
    axis_x = max(_text_size(scratch, _fmt(t))[0] for t in ticks) + 2 * PAD
    plot_w = max(width - axis_x - PAD, len(values))
    top, bottom = (3 if y_label else 2) * line, height - 2 * line
    out = Image.new("RGB", (axis_x + plot_w + PAD, height), BACKGROUND)
    draw = ImageDraw.Draw(out)
    draw.text((PAD, PAD // 2), title, fill=INK, font=_font())
    if y_label:
        draw.text((PAD, line), y_label, fill=INK, font=_font())
    for t in ticks:
        y = bottom - (bottom - top) * t / top_value
        draw.line([(axis_x - PAD // 2, y), (axis_x, y)], fill=INK)
        draw.text((PAD, y - line // 2), _fmt(t), fill=INK, font=_font())
    draw.line([(axis_x, top), (axis_x, bottom), (axis_x + plot_w, bottom)], fill=INK)
    slot = plot_w / max(len(values), 1)
    gap = slot * 0.2 if slot >= 4 else 0.0  # wide bars get a gap; narrow ones touch (a histogram)
    for i, v in enumerate(values):
        x0 = axis_x + 1 + math.floor(i * slot + gap / 2)
        x1 = max(x0, axis_x + math.floor((i + 1) * slot - gap / 2))
        if v > 0:  # at least one pixel high: a rarely used code still shows
            y = min(bottom - (bottom - top) * v / top_value, bottom - 1)
            draw.rectangle([(x0, y), (x1, bottom - 1)], fill=BAR)
    if labels and all(_text_size(scratch, s)[0] < slot for s in labels):
        for i, label in enumerate(labels):
            tw = _text_size(scratch, label)[0]
            draw.text((axis_x + (i + 0.5) * slot - tw / 2, bottom + PAD // 2), label, fill=INK, font=_font())
    return out


def stack_vertically(images: Sequence[Image.Image]) -> Image.Image:
    out = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images)), BACKGROUND)
    y = 0
    for img in images:
        out.paste(img, (0, y))
        y += img.height
    return out


def _fmt(v: float) -> str:
    return f"{v:.4g}"
