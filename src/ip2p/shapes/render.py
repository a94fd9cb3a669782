"""Anti-aliased rendering of scenes, deterministic and size-independent (64 to 512 px).

Each shape's coverage is drawn with Pillow at ``SUPERSAMPLE`` times the target size inside its own
bounding box and box-filtered down, which gives the fraction of every pixel the shape covers.
Shapes are then alpha-composited over the background in z-order. Because compositing with a
coverage of exactly 0 leaves a pixel bit-identical, two renders of scenes that differ in one
object differ exactly where that object was or is: the change mask is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from ..errors import BadOptions
from .color import COLORS
from .scene import EXTENT, KINDS, Background, Scene, Shape, background_shades, outline

MIN_SIZE, MAX_SIZE = 64, 512


def supersample(size: int) -> int:
    return 4 if size <= 256 else 2


def check_size(size: int) -> int:
    if not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise BadOptions(f"image size must be an integer from {MIN_SIZE} to {MAX_SIZE}, got {size!r}")
    return size


@dataclass
class Rendering:
    """A rendered scene: ``image`` (H, W, 3) uint8 and, per object id, its visible coverage (H, W) in 0..1."""

    image: np.ndarray
    visible: dict[int, np.ndarray]

    def core(self, object_id: int) -> np.ndarray:
        """Pixels showing nothing but this object (visible coverage >= 0.99)."""
        return self.visible[object_id] >= 0.99


@lru_cache(maxsize=512)
def coverage(shape: Shape, size: int) -> tuple[np.ndarray, int, int]:
    """Coverage (h, w) float32 of ``shape`` inside its pixel bounding box, and the box's top-left."""
    ss = supersample(size)
    cx, cy, r = shape.x * size, shape.y * size, shape.radius * size
    reach = r * EXTENT + 2
    x0, y0 = max(0, math.floor(cx - reach)), max(0, math.floor(cy - reach))
    x1, y1 = min(size, math.ceil(cx + reach)), min(size, math.ceil(cy + reach))
    canvas = Image.new("L", ((x1 - x0) * ss, (y1 - y0) * ss), 0)
    draw = ImageDraw.Draw(canvas)
    # pixel centres sit at +0.5: shift so that supersampled pixel k covers [k/ss, (k+1)/ss)
    px, py, pr = (cx - x0) * ss - 0.5, (cy - y0) * ss - 0.5, r * ss
    if shape.kind == "circle":
        draw.ellipse([px - pr, py - pr, px + pr, py + pr], fill=255)
    else:
        draw.polygon(outline(shape.kind, px, py, pr, shape.angle), fill=255)
    small = canvas.reduce(ss) if ss > 1 else canvas
    alpha = np.asarray(small, dtype=np.float32) / 255.0
    alpha.setflags(write=False)
    return alpha, x0, y0


@lru_cache(maxsize=64)
def render_background(background: Background, size: int) -> np.ndarray:
    """The background as (size, size, 3) float32 in 0..255."""
    base = np.asarray(COLORS[background.color], dtype=np.float64)
    if background.style == "plain":
        out = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    elif background.style == "gradient":
        a, b = background_shades("gradient", background.color)
        t = _ramp(size, background.angle)
        out = (a * (1 - t[..., None]) + b * t[..., None]).astype(np.float32)
    elif background.style == "stripes":
        a, b = background_shades("stripes", background.color)
        band = _stripes(size, background.angle, background.period * size)
        out = (a * (1 - band[..., None]) + b * band[..., None]).astype(np.float32)
    else:
        rng = np.random.default_rng(background.seed)
        grid = Image.fromarray(rng.uniform(-1, 1, (5, 5)).astype(np.float32), mode="F")
        noise = np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)
        lo, hi = background_shades("texture", background.color)
        t = np.clip((noise + 1) / 2, 0, 1)[..., None]
        out = (lo * (1 - t) + hi * t).astype(np.float32)
    out = np.ascontiguousarray(out)
    out.setflags(write=False)
    return out


def _ramp(n: int, angle: float) -> np.ndarray:
    """0..1 across the image along ``angle`` degrees, sampled at pixel centres of an n x n grid."""
    c = (np.arange(n) + 0.5) / n
    theta = math.radians(angle)
    dx, dy = math.cos(theta), math.sin(theta)
    t = c[None, :] * dx + c[:, None] * dy
    lo, hi = min(0, dx) + min(0, dy), max(0, dx) + max(0, dy)
    return (t - lo) / (hi - lo)


def _stripes(size: int, angle: float, width: float) -> np.ndarray:
    """Coverage of every other band of width ``width`` px along ``angle``, anti-aliased analytically:
    the signed distance from the pixel centre to the band edge, over the pixel's extent across it."""
    theta = math.radians(angle)
    dx, dy = math.cos(theta), math.sin(theta)
    c = np.arange(size) + 0.5
    u = c[None, :] * dx + c[:, None] * dy
    m = np.mod(u, 2 * width)
    inside = width / 2 - np.abs(np.mod(m - 0.5 * width, 2 * width) - width)
    return np.clip(0.5 + inside / (abs(dx) + abs(dy)), 0.0, 1.0)


def render(scene: Scene, size: int) -> Rendering:
    """Render ``scene`` at ``size`` x ``size``; same scene and size, same bytes."""
    check_size(size)
    image = render_background(scene.background, size).copy()
    boxes = []
    for shape in scene.objects:
        alpha, x0, y0 = coverage(shape, size)
        h, w = alpha.shape
        color = np.asarray(COLORS[shape.color], dtype=np.float32)
        region = image[y0 : y0 + h, x0 : x0 + w]
        a = alpha[..., None]
        region *= 1 - a
        region += color * a
        boxes.append((shape.id, alpha, x0, y0))
    visible: dict[int, np.ndarray] = {}
    remaining = np.ones((size, size), dtype=np.float32)
    for object_id, alpha, x0, y0 in reversed(boxes):
        h, w = alpha.shape
        vis = np.zeros((size, size), dtype=np.float32)
        vis[y0 : y0 + h, x0 : x0 + w] = alpha * remaining[y0 : y0 + h, x0 : x0 + w]
        remaining[y0 : y0 + h, x0 : x0 + w] *= 1 - alpha
        visible[object_id] = vis
    return Rendering(np.rint(np.clip(image, 0, 255)).astype(np.uint8), visible)


def kind_map(scene: Scene, size: int) -> np.ndarray:
    """(H, W) uint8: 0 where the background shows most, else 1 + ``KINDS.index`` of the shape that does.

    A dense label of what each pixel shows, so a trainer can ask the features for shape itself (the
    denoising loss asks only through the few pixels an edit changes).
    """
    visible = render(scene, size).visible
    shares = [1.0 - sum(visible.values(), np.zeros((size, size), dtype=np.float32))]
    labels = [0]
    for shape in scene.objects:
        shares.append(visible[shape.id])
        labels.append(1 + KINDS.index(shape.kind))
    return np.asarray(labels, dtype=np.uint8)[np.argmax(np.stack(shares), axis=0)]


def full_coverage(shape: Shape, size: int) -> np.ndarray:
    """The shape's coverage over the whole image, ignoring anything on top of it."""
    alpha, x0, y0 = coverage(shape, size)
    out = np.zeros((size, size), dtype=np.float32)
    out[y0 : y0 + alpha.shape[0], x0 : x0 + alpha.shape[1]] = alpha
    return out


# ----------------------------------------------------------------------------- global edits


def grayscale(image: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma (what Pillow's "L" mode uses), repeated on three channels."""
    luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.repeat(np.rint(luma).astype(np.uint8)[..., None], 3, axis=-1)


def invert(image: np.ndarray) -> np.ndarray:
    return 255 - image


def night(image: np.ndarray) -> np.ndarray:
    """Darker and bluer: each channel scaled (0.35, 0.40, 0.55)."""
    scaled = image.astype(np.float32) * np.array([0.35, 0.40, 0.55], dtype=np.float32)
    return np.rint(scaled).astype(np.uint8)


def brighten(image: np.ndarray) -> np.ndarray:
    """45 % of the way to white."""
    x = image.astype(np.float32)
    return np.rint(x + (255 - x) * 0.45).astype(np.uint8)


def mirror(image: np.ndarray) -> np.ndarray:
    """Left and right swapped (a horizontal flip), exactly."""
    return np.ascontiguousarray(image[:, ::-1])


GLOBAL_EDITS = {"grayscale": grayscale, "invert": invert, "darken": night, "brighten": brighten}
