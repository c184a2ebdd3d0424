"""A procedural image set that needs no download: the quickstart's embedded default dataset and test data.

Each image is a smooth two-colour gradient with random ellipses, rectangles and polygons in random colours and
a little grain: edges, flat regions and texture, enough for a tiny autoencoder to learn something visible.
Deterministic in (seed, index).
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def demo_image(index: int, size: int = 96, seed: int = 0) -> Image.Image:
    rng = random.Random(seed * 1_000_003 + index)
    a, b = (np.array([rng.randrange(256) for _ in range(3)], dtype=np.float32) for _ in range(2))
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = Image.fromarray((a * (1 - t) + b * t).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(2, 6)):
        color = tuple(rng.randrange(256) for _ in range(3))
        x0, y0 = rng.randrange(size), rng.randrange(size)
        x1, y1 = x0 + rng.randint(size // 8, size // 2), y0 + rng.randint(size // 8, size // 2)
        shape = rng.choice(("ellipse", "rectangle", "polygon"))
        if shape == "polygon":
            points = [(rng.randrange(size), rng.randrange(size)) for _ in range(rng.randint(3, 6))]
            draw.polygon(points, fill=color)
        else:
            getattr(draw, shape)((x0, y0, x1, y1), fill=color)
    grain = np.random.default_rng(seed * 7919 + index).normal(0, 4, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + grain, 0, 255).astype(np.uint8))


def write_demo_images(output: str | Path, count: int = 256, size: int = 96, seed: int = 0) -> list[Path]:
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = output / f"demo-{i:05d}.png"
        demo_image(i, size, seed).save(path)
        paths.append(path)
    return paths
