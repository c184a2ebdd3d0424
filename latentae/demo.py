"""A procedural image set that needs no download: the quickstart's embedded default dataset and test data.

Each image is a small synthetic photograph rather than flat shapes: a landscape (sky with clouds over a textured
hillside) or an interior (a lit wall over a wooden table), slightly out of focus, then objects drawn far to near
so that they occlude each other - shaded spheres with a highlight, boxes in wood / checked cloth / stone, and
irregular stones - each casting a soft shadow away from one light, sometimes an out-of-focus object in the
foreground, then a vignette and sensor noise. Gradients, textures at several scales, soft and hard edges,
occlusion and noise, as in photographs; numpy + Pillow only, deterministic in (seed, index).
"""
from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 4  # shapes are drawn at 4x and area-averaged: anti-aliased edges, as a camera records them


def demo_image(index: int, size: int = 96, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng([seed, index])
    angle = rng.uniform(0, 2 * np.pi)
    light = np.array([np.cos(angle), np.sin(angle), rng.uniform(0.5, 1.2)])
    light /= np.linalg.norm(light)
    scene = (_landscape if rng.random() < 0.5 else _interior)(rng, size, light)
    scene = _blur(scene, rng.uniform(0.2, 1.0) * size / 96)  # the background is out of focus
    for scale in np.sort(rng.uniform(0.12, 0.4, rng.integers(2, 6))):  # far (small) to near (large)
        scene = _add_object(scene, rng, size, light, scale)
    if rng.random() < 0.3:
        scene = _foreground_blur(scene, rng, size)
    yy, xx = _grid(size)
    scene = scene * (1 - rng.uniform(0, 0.35) * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2))[..., None]  # vignette
    scene = scene + rng.normal(0, rng.uniform(1, 5) / 255, scene.shape)  # sensor noise
    return Image.fromarray((np.clip(scene, 0, 1) * 255).round().astype(np.uint8))


def write_demo_images(output: str | Path, count: int = 256, size: int = 96, seed: int = 0) -> list[Path]:
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = output / f"demo-{i:05d}.png"
        demo_image(i, size, seed).save(path)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------- backgrounds


def _landscape(rng, size: int, light) -> np.ndarray:
    yy, xx = _grid(size)
    horizon = rng.uniform(0.3, 0.65) + 0.08 * _fractal(rng, size, octaves=3)[0]  # a hill line, one value per column
    top, low = _colour(rng, hue=(0.5, 0.7), sat=(0.2, 0.7), val=(0.5, 0.9)), _colour(rng, sat=(0.05, 0.3), val=(0.8, 1))
    sky = _mix(top, low, (yy / horizon[None, :]).clip(0, 1))
    clouds = np.clip(_fractal(rng, size, octaves=4) * 1.5 - rng.uniform(0, 1.5), 0, 1)[..., None]
    sky = sky * (1 - clouds) + rng.uniform(0.85, 1) * clouds
    ground = _colour(rng, hue=(0.05, 0.4), sat=(0.3, 0.8), val=(0.3, 0.7))
    grass = ground * (1 + 0.35 * _fractal(rng, size, octaves=5, first=4))[..., None]
    grass = grass * (0.6 + 0.6 * yy)[..., None]  # brighter towards the camera
    return _over(sky, grass, _soft_step(yy - horizon[None, :], width=1.5 / size))


def _interior(rng, size: int, light) -> np.ndarray:
    yy, xx = _grid(size)
    spot = np.exp(-((xx - 0.5 + 0.5 * light[0]) ** 2 + (yy - 0.5 + 0.5 * light[1]) ** 2) / rng.uniform(0.1, 0.5))
    wall = _colour(rng, sat=(0.05, 0.4), val=(0.5, 0.9)) * (0.45 + 0.55 * spot)[..., None]
    wall = wall * (1 + 0.05 * _fractal(rng, size, octaves=4, first=8))[..., None]  # plaster
    table = _wood(rng, size, _colour(rng, hue=(0.03, 0.12), sat=(0.4, 0.8), val=(0.35, 0.75)))
    edge = rng.uniform(0.45, 0.8) + (xx[0] - 0.5) * rng.uniform(-0.2, 0.2)
    return _over(wall, table * (0.7 + 0.4 * yy)[..., None], _soft_step(yy - edge[None, :], width=1 / size))


# ---------------------------------------------------------------------------------------------- objects


def _add_object(scene, rng, size: int, light, scale: float) -> np.ndarray:
    """One object of radius `scale` (fraction of the side) with its shadow, over `scene`."""
    centre = rng.uniform(0.05, 0.95, 2)
    radii = scale * rng.uniform(0.6, 1.0, 2)
    rotation = rng.uniform(0, np.pi)
    kind = rng.choice(["sphere", "box", "stone"])
    if kind == "sphere":
        points = _ellipse(centre, radii, rotation)
    elif kind == "box":
        points = _ellipse(centre, radii, rotation, n=4)
    else:
        points = _ellipse(centre, radii * rng.uniform(0.7, 1.3, 11)[:, None], rotation, n=11)
    offset = -light[:2] * scale * rng.uniform(0.15, 0.4)
    shadow = _blur(_mask(points + offset, size)[..., None], radius=scale * size * 0.15)
    scene = scene * (1 - rng.uniform(0.3, 0.6) * shadow)
    colour = _colour(rng, sat=(0.3, 0.95), val=(0.4, 1))
    yy, xx = _grid(size)
    # coordinates in the object's frame, -1..1 across it: what its shading and texture depend on
    c, s = np.cos(rotation), np.sin(rotation)
    u = ((xx - centre[0]) * c + (yy - centre[1]) * s) / radii[0]
    v = (-(xx - centre[0]) * s + (yy - centre[1]) * c) / radii[1]
    nx, ny = u * c - v * s, u * s + v * c  # the normal's image-plane part
    if kind == "sphere":
        nz = np.sqrt(np.clip(1 - nx ** 2 - ny ** 2, 0, 1))
        lambert = np.clip(nx * light[0] + ny * light[1] + nz * light[2], 0, 1)
        half = light + np.array([0, 0, 1.0])
        half /= np.linalg.norm(half)
        specular = np.clip(nx * half[0] + ny * half[1] + nz * half[2], 0, 1) ** rng.uniform(10, 40)
        look = colour * (0.2 + 0.8 * lambert)[..., None] + rng.uniform(0.2, 0.7) * specular[..., None]
    elif kind == "box":
        texture = rng.choice(["wood", "cloth", "stone"])
        if texture == "wood":
            look = _wood(rng, size, colour, u=u * radii[0], v=v * radii[1])
        elif texture == "cloth":
            period = rng.uniform(0.06, 0.2)
            checks = np.sin(np.pi * u * radii[0] / period) * np.sin(np.pi * v * radii[1] / period)
            look = _mix(colour, _colour(rng, val=(0.7, 1), sat=(0, 0.3)), _soft_step(checks, width=0.3))
        else:
            look = colour * (1 + 0.3 * _fractal(rng, size, octaves=5, first=4))[..., None]
        look = look * (0.75 + 0.25 * (nx * light[0] + ny * light[1]))[..., None]  # a tilted, evenly lit face
    else:
        look = colour * (0.6 + 0.25 * _fractal(rng, size, octaves=4, first=4)
                         + 0.3 * (nx * light[0] + ny * light[1]).clip(-1, 1))[..., None]
    return _over(scene, look, _mask(points, size))


def _foreground_blur(scene, rng, size: int) -> np.ndarray:
    """A large out-of-focus object entering from an edge (a branch, a post): occludes part of the scene."""
    side = rng.integers(4)
    points = np.array([[-0.2, rng.uniform(0, 1)], [rng.uniform(0.1, 0.35), rng.uniform(0, 1)],
                       [rng.uniform(0.1, 0.35), rng.uniform(0, 1)], [-0.2, rng.uniform(0, 1)]])  # from the left
    if side % 2:
        points = points[:, ::-1]  # from the top
    if side >= 2:
        points = 1 - points  # from the right / the bottom
    mask = _blur(_mask(points, size)[..., None], radius=size * rng.uniform(0.02, 0.05))
    return _over(scene, _colour(rng, sat=(0.1, 0.6), val=(0.05, 0.35)), mask[..., 0])


# ---------------------------------------------------------------------------------------------- helpers


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1]: (y, x)."""
    t = (np.arange(size) + 0.5) / size
    return np.meshgrid(t, t, indexing="ij")


def _fractal(rng, size: int, octaves: int, first: int = 2) -> np.ndarray:
    """Zero-mean noise with detail at `octaves` scales (grids of first, 2 first, ... cells, halving amplitude),
    each grid upsampled bicubically: clouds, grass, plaster, stone. About unit standard deviation."""
    total = np.zeros((size, size), np.float32)
    for octave in range(octaves):
        cells = first * 2 ** octave
        grid = Image.fromarray(rng.standard_normal((cells + 1, cells + 1)).astype(np.float32))
        total += 0.5 ** octave * np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC))
    return total / np.sqrt(sum(0.25 ** o for o in range(octaves)))


def _wood(rng, size: int, colour, u=None, v=None) -> np.ndarray:
    """Wood grain: rings of a random period, warped by low-frequency noise, across the u axis."""
    if u is None:
        v, u = _grid(size)
    warp = 0.04 * _fractal(rng, size, octaves=3)
    rings = 0.5 + 0.5 * np.sin(2 * np.pi * (u + 0.15 * v ** 2 + warp) / rng.uniform(0.03, 0.1))
    return colour * (0.7 + 0.3 * rings + 0.08 * _fractal(rng, size, octaves=2, first=16))[..., None]


def _colour(rng, hue=(0.0, 1.0), sat=(0.0, 1.0), val=(0.0, 1.0)) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(rng.uniform(*hue), rng.uniform(*sat), rng.uniform(*val)), np.float32)


def _ellipse(centre, radii, rotation: float, n: int = 48) -> np.ndarray:
    """n points on the rotated ellipse (n = 4: a rotated rectangle's corners, 45 degrees off its axes)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False) + (np.pi / 4 if n == 4 else 0)
    radii = np.broadcast_to(np.asarray(radii, np.float64), (n, 2)) if np.ndim(radii) == 2 else radii
    local = np.stack([np.cos(t), np.sin(t)], axis=1) * radii * (np.sqrt(2) if n == 4 else 1)
    c, s = np.cos(rotation), np.sin(rotation)
    return local @ np.array([[c, s], [-s, c]]) + centre


def _mask(points, size: int) -> np.ndarray:
    """The polygon's coverage of each pixel (0..1), `points` in [0, 1] image coordinates (x, y)."""
    big = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE))
    ImageDraw.Draw(big).polygon([tuple(p) for p in np.asarray(points) * size * SUPERSAMPLE], fill=255)
    return np.asarray(big.resize((size, size), Image.Resampling.BOX), np.float32) / 255


def _blur(image: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur (sigma `radius` pixels) of an H x W x C float image, edges extended."""
    k = max(int(np.ceil(3 * radius)), 1)
    weights = np.exp(-0.5 * (np.arange(-k, k + 1) / max(radius, 1e-3)) ** 2)
    weights /= weights.sum()
    h, w = image.shape[:2]
    padded = np.pad(image, ((k, k), (0, 0), (0, 0)), mode="edge")
    image = sum(wt * padded[i:i + h] for i, wt in enumerate(weights))
    padded = np.pad(image, ((0, 0), (k, k), (0, 0)), mode="edge")
    return sum(wt * padded[:, i:i + w] for i, wt in enumerate(weights))


def _soft_step(x: np.ndarray, width: float) -> np.ndarray:
    return np.clip(x / width + 0.5, 0, 1)


def _mix(a, b, t: np.ndarray) -> np.ndarray:
    return a * (1 - t[..., None]) + b * t[..., None]


def _over(under: np.ndarray, over, alpha: np.ndarray) -> np.ndarray:
    return under * (1 - alpha[..., None]) + over * alpha[..., None]
