"""Scenes of the synthetic shapes world: what is in a picture, independent of its pixel size.

A :class:`Scene` is a background and one to five flat-coloured shapes in z-order (first is at the
bottom). Positions and sizes are fractions of the image side, so the same scene renders at any
resolution. :func:`random_scene` draws scenes under layout rules that keep every later edit
unambiguous: shapes stay inside the frame, overlapping shapes never share a colour, shapes of one
colour never touch (so "count the red blobs" has one answer), and no shape is close in colour to
any shade of the background.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from functools import cache

import numpy as np

from .color import COLORS, srgb_to_lab

#: Shape kinds and their plurals.
KINDS = ("circle", "square", "triangle", "star", "heart", "diamond", "hexagon", "cross")
PLURALS = {kind: kind + ("es" if kind.endswith("s") else "s") for kind in KINDS}

#: Named sizes as a radius in fractions of the image side (at 64 px: 8.3, 11.5 and 15.4 px).
SIZES = {"small": 0.13, "medium": 0.18, "large": 0.24}
SIZE_ORDER = ("small", "medium", "large")

#: Background styles; each is drawn in shades of one named colour.
BACKGROUND_STYLES = ("plain", "gradient", "stripes", "texture")

#: Outer extent of a shape relative to its radius (the star and triangle reach a bit beyond r).
EXTENT = 1.12

#: Smallest Lab ΔE between a shape's colour and every shade of its background.
MIN_BACKGROUND_DELTA_E = 30.0


@dataclass(frozen=True)
class Shape:
    """One object: ``x``/``y`` is its centre as a fraction of the width/height; ``angle`` turns its
    outline clockwise by that many degrees (0 for every generated scene; rotate/flip edits set it)."""

    kind: str
    color: str
    size: str
    x: float
    y: float
    id: int = 0
    angle: float = 0.0

    @property
    def radius(self) -> float:
        return SIZES[self.size]

    def replace(self, **changes) -> Shape:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Background:
    """A plain colour, a two-shade gradient, stripes or a soft noise texture, all in one hue."""

    style: str
    color: str
    angle: float = 0.0
    period: float = 0.2
    seed: int = 0

    def replace(self, **changes) -> Background:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Scene:
    background: Background
    objects: tuple[Shape, ...]

    def replace(self, **changes) -> Scene:
        return dataclasses.replace(self, **changes)

    def get(self, object_id: int) -> Shape:
        return next(o for o in self.objects if o.id == object_id)

    def without(self, *object_ids: int) -> Scene:
        return self.replace(objects=tuple(o for o in self.objects if o.id not in object_ids))

    def swap(self, shape: Shape) -> Scene:
        """The scene with the object of the same id replaced (z-order kept)."""
        return self.replace(objects=tuple(shape if o.id == shape.id else o for o in self.objects))

    def next_id(self) -> int:
        return max((o.id for o in self.objects), default=-1) + 1


# ----------------------------------------------------------------------------- background shades


def mix(rgb, other, t: float) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float64) * (1 - t) + np.asarray(other, dtype=np.float64) * t


def background_shades(style: str, color: str) -> list[np.ndarray]:
    """The extreme colours a background of this style and colour contains."""
    base = np.asarray(COLORS[color], dtype=np.float64)
    light = srgb_to_lab(base)[0] >= 60
    if style == "plain":
        return [base]
    if style == "gradient":
        return [mix(base, (255, 255, 255), 0.2), mix(base, (0, 0, 0), 0.15)]
    if style == "stripes":
        return [base, mix(base, (0, 0, 0), 0.2) if light else mix(base, (255, 255, 255), 0.3)]
    return [np.clip(base * 0.9, 0, 255), np.clip(base * 1.1 + 4, 0, 255)]


@cache
def colors_on(style: str, color: str) -> tuple[str, ...]:
    """Colour names that stay far (ΔE >= 30) from every shade of this background."""
    shades = srgb_to_lab(np.array(background_shades(style, color)))
    ok = []
    for name, rgb in COLORS.items():
        d = np.linalg.norm(shades - srgb_to_lab(np.array(rgb, dtype=np.float64)), axis=-1)
        if name != color and d.min() >= MIN_BACKGROUND_DELTA_E:
            ok.append(name)
    return tuple(ok)


# ----------------------------------------------------------------------------- layout rules


def in_frame(shape: Shape) -> bool:
    margin = shape.radius * EXTENT + 0.01
    return margin <= shape.x <= 1 - margin and margin <= shape.y <= 1 - margin


def overlaps(a: Shape, b: Shape, slack: float = 0.0) -> bool:
    """Whether the bounding discs of two shapes overlap (or come closer than ``slack``)."""
    return math.hypot(a.x - b.x, a.y - b.y) < (a.radius + b.radius) * EXTENT + slack


def layout_ok(scene: Scene) -> bool:
    """The layout rules: in frame, overlapping shapes differ in colour, same colours keep apart."""
    allowed = colors_on(scene.background.style, scene.background.color)
    objs = scene.objects
    for i, a in enumerate(objs):
        if not in_frame(a) or a.color not in allowed:
            return False
        for b in objs[i + 1 :]:
            if a.color == b.color and overlaps(a, b, slack=0.03):
                return False
    return True


# ----------------------------------------------------------------------------- sampling


def random_background(rng: np.random.Generator) -> Background:
    style = BACKGROUND_STYLES[rng.integers(len(BACKGROUND_STYLES))]
    color = list(COLORS)[rng.integers(len(COLORS))]
    return Background(
        style=style,
        color=color,
        angle=float(rng.choice([0.0, 45.0, 90.0, 135.0])),
        period=float(rng.uniform(0.14, 0.26)),
        seed=int(rng.integers(2**31)),
    )


def random_shape(rng: np.random.Generator, colors: tuple[str, ...], kind=None, size=None, id=0) -> Shape:
    kind = kind or KINDS[rng.integers(len(KINDS))]
    size = size or SIZE_ORDER[rng.integers(len(SIZE_ORDER))]
    margin = SIZES[size] * EXTENT + 0.01
    return Shape(
        kind=kind,
        color=colors[rng.integers(len(colors))],
        size=size,
        x=round(float(rng.uniform(margin, 1 - margin)), 4),
        y=round(float(rng.uniform(margin, 1 - margin)), 4),
        id=id,
    )


def random_scene(
    rng: np.random.Generator,
    n_objects: int | None = None,
    max_objects: int = 5,
    duplicate_p: float = 0.35,
    tries: int = 200,
) -> Scene:
    """A scene obeying :func:`layout_ok`; ``duplicate_p`` is the chance a shape repeats an earlier kind
    (so references by colour and by position are needed)."""
    background = random_background(rng)
    colors = colors_on(background.style, background.color)
    n = n_objects or int(rng.integers(1, max_objects + 1))
    objects: list[Shape] = []
    for _ in range(tries):
        if len(objects) == n:
            break
        kind = None
        if objects and rng.random() < duplicate_p:
            kind = objects[rng.integers(len(objects))].kind
        shape = random_shape(rng, colors, kind=kind, id=len(objects))
        # a shape may overlap others but its centre stays outside them, which bounds the occlusion
        if any(math.hypot(shape.x - o.x, shape.y - o.y) < max(shape.radius, o.radius) for o in objects):
            continue
        candidate = Scene(background, tuple(objects) + (shape,))
        if layout_ok(candidate):
            objects.append(shape)
    return Scene(background, tuple(objects))


def free_spot(
    rng: np.random.Generator,
    scene: Scene,
    shape: Shape,
    region: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0),
    tries: int = 60,
) -> Shape | None:
    """``shape`` moved to a place inside ``region`` (x0, y0, x1, y1) touching no other object."""
    r = shape.radius * EXTENT
    margin = r + 0.01
    x0, y0 = max(region[0], margin), max(region[1], margin)
    x1, y1 = min(region[2], 1 - margin), min(region[3], 1 - margin)
    if x0 > x1 or y0 > y1:
        return None
    others = [(o.x, o.y, o.radius * EXTENT + r + 0.02) for o in scene.objects if o.id != shape.id]
    xs, ys = rng.uniform(x0, x1, tries), rng.uniform(y0, y1, tries)
    for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
        if all((x - ox) ** 2 + (y - oy) ** 2 >= d * d for ox, oy, d in others):
            return shape.replace(x=round(x, 4), y=round(y, 4))
    return None


# ----------------------------------------------------------------------------- captions


def place_phrase(shape: Shape) -> str:
    """A coarse position ("at the top left", "on the right", "in the center") of a shape's centre."""
    h = "left" if shape.x < 0.36 else "right" if shape.x > 0.64 else ""
    v = "top" if shape.y < 0.36 else "bottom" if shape.y > 0.64 else ""
    if h and v:
        return f"at the {v} {h}"
    if h:
        return f"on the {h}"
    if v:
        return f"at the {v}"
    return "in the center"


def fix_articles(text: str) -> str:
    """"a orange star" -> "an orange star"."""
    return _A_VOWEL.sub(lambda m: m.group(1) + "n " + m.group(2), text)


_A_VOWEL = re.compile(r"\b([aA]) ([aeiou])")


def background_phrase(background: Background) -> str:
    c = background.color
    return fix_articles(
        {
            "plain": f"a {c} background",
            "gradient": f"a {c} gradient background",
            "stripes": f"a striped {c} background",
            "texture": f"a textured {c} background",
        }[background.style]
    )


def describe(shape: Shape) -> str:
    turned = {0.0: "", 180.0: "upside-down "}.get(float(shape.angle) % 360, "rotated ")
    return f"a {shape.size} {turned}{shape.color} {shape.kind} {place_phrase(shape)}"


def caption(scene: Scene) -> str:
    """E.g. "a small red circle on the left and a large blue star at the top right on a white background"."""
    parts = [describe(o) for o in scene.objects]
    if not parts:
        return f"an empty picture with {background_phrase(scene.background)}"
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{body} on {background_phrase(scene.background)}"


#: Every word a caption can contain besides colours, kinds and sizes.
CAPTION_WORDS = (
    "a an and on at in the of top bottom left right center background gradient striped textured "
    "empty picture with upside-down rotated"
)


# ----------------------------------------------------------------------------- geometry


def outline(kind: str, cx: float, cy: float, r: float, angle: float = 0.0) -> list[tuple[float, float]]:
    """Polygon vertices (pixel units, y down) of a shape of radius ``r`` centred at (cx, cy), turned
    ``angle`` degrees clockwise about its centre (with y down, a positive rotation looks clockwise).

    Circles are drawn as ellipses by the renderer and have no outline here.
    """
    points = _outline(kind, cx, cy, r)
    if not angle % 360:
        return points  # unrotated shapes keep their exact vertices (and so their exact pixels)
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in points]


def _outline(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:

    def ring(n: int, radius: float, start: float) -> list[tuple[float, float]]:
        return [
            (cx + radius * math.cos(start + 2 * math.pi * k / n), cy + radius * math.sin(start + 2 * math.pi * k / n))
            for k in range(n)
        ]

    if kind == "square":
        h = 0.86 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if kind == "triangle":
        # centroid at the centre; vertices at distance 1.12 r
        return ring(3, 1.12 * r, -math.pi / 2)
    if kind == "diamond":
        return [(cx, cy - 1.1 * r), (cx + 0.8 * r, cy), (cx, cy + 1.1 * r), (cx - 0.8 * r, cy)]
    if kind == "hexagon":
        return ring(6, r, 0.0)
    if kind == "star":
        outer, inner = ring(5, 1.12 * r, -math.pi / 2), ring(5, 0.5 * r, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner, strict=True) for p in pair]
    if kind == "cross":
        a, w = 0.95 * r, 0.36 * r
        pts = [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w)]
        return [(cx + x, cy + y) for x, y in pts]
    if kind == "heart":
        # the classic parametric heart x = 16 sin^3 t, y = 13 cos t - 5 cos 2t - 2 cos 3t - cos 4t
        pts = []
        for k in range(48):
            t = 2 * math.pi * k / 48
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((cx + x / 16 * 1.05 * r, cy - (y + 2.5) / 16 * 1.05 * r))
        return pts
    raise ValueError(f"unknown shape kind {kind!r}")
