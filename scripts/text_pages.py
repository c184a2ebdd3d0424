"""Procedural document pages: small rendered text, a domain tiny autoencoders reconstruct poorly (their f8 latents
blur glyph strokes a few pixels wide). Deterministic per seed; pages of any size share one text scale, so pages
of 128 px (training crops that need no resize) and of 256 px (held-out) show the same glyph sizes."""
from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

LETTERS = "abcdefghijklmnopqrstuvwxyz"
SIZES = (9, 10, 11, 12, 14, 16, 20)  # font pixel sizes: body text, then headings


def word(rng: random.Random) -> str:
    w = "".join(rng.choice(LETTERS) for _ in range(rng.randint(1, 9)))
    return w.capitalize() if rng.random() < 0.15 else w + ("," if rng.random() < 0.08 else "")


def page(size: int, rng: random.Random) -> Image.Image:
    """One page: a tinted paper background, lines of words in one or two inks, an occasional heading or rule."""
    paper = tuple(rng.randint(225, 255) for _ in range(3))
    img = Image.new("RGB", (size, size), paper)
    draw = ImageDraw.Draw(img)
    ink = tuple(rng.randint(0, 70) for _ in range(3))
    accent = (rng.randint(90, 200), rng.randint(0, 90), rng.randint(0, 160))
    body = ImageFont.load_default(size=rng.choice(SIZES[:5]))
    margin = rng.randint(2, 10)
    y = rng.randint(-4, 6)
    while y < size:
        kind = rng.random()
        if kind < 0.1:  # a horizontal rule
            draw.line((margin, y + 2, size - margin, y + 2), fill=ink, width=rng.randint(1, 2))
            y += 6
            continue
        font = ImageFont.load_default(size=rng.choice(SIZES[4:])) if kind < 0.2 else body
        colour = accent if kind < 0.2 or rng.random() < 0.1 else ink
        line = " ".join(word(rng) for _ in range(size // 12))
        draw.text((margin + rng.randint(0, 8), y), line, font=font, fill=colour)
        y += int(font.size * rng.uniform(1.15, 1.5))
    return img


def write_pages(folder: Path, n: int, size: int, seed: int) -> list[Path]:
    """`n` PNG pages of `size` x `size` in `folder` (page i from seed (seed, i): any n gives the same first pages)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"page-{seed}-{i:05d}.png"
        page(size, random.Random(f"text-pages/{seed}/{i}")).save(path)
        paths.append(path)
    return paths
