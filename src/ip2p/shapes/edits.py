"""Edits of shapes scenes: instruction, both captions, exact before/after images and change mask.

This mirrors the paper's two stages (Brooks et al. 2023, Sec. 3.1): a text stage that turns a
caption into an instruction and an edited caption, and an image stage that produces a pair that
differs only in the edit. Here both are exact: the edited scene is re-rendered, so the target and
the mask of the pixels that should change are known to the bit.

An instruction that does not fit its scene is never produced: an object is only named by a
referring expression that picks out exactly one object (its kind, its colour, both, or its position
among objects of its kind), and a plan that would break a layout rule is rejected and redrawn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ..errors import BadData, BadOptions
from .color import COLORS, delta_e
from .measure import centroid, count_blobs, min_blob_area
from .phrasing import DIRECTIONS, EDIT_KINDS, NUMBERS, PLACES, PLURALS, RESIZE_WORDS, fill, templates_for
from .render import GLOBAL_EDITS, Rendering, check_size, render
from .scene import (
    SIZE_ORDER,
    Scene,
    Shape,
    caption,
    colors_on,
    free_spot,
    in_frame,
    layout_ok,
    random_scene,
    random_shape,
)

SPLITS = ("train", "test")
#: Test scenes use world seeds from here on, so no test scene is ever a training scene.
TEST_SEED_OFFSET = 2**40
#: Smallest visible share of any object (limits occlusion so every object can be seen and scored).
MIN_VISIBLE = 0.5
#: Global edits are only made where at least this share of pixels changes by ΔE >= 20.
MIN_GLOBAL_CHANGE = 0.05


@dataclass
class Edit:
    """One triplet with everything needed to score an editor on it.

    ``mask`` is True where ``after`` differs from ``before``. ``focus_before``/``focus_after`` are
    the pixels showing only the edited object (None where there is none). ``target`` holds the
    JSON-able facts the scorer needs (object id, target colour and RGB, direction, blob counts).
    """

    seed: int
    split: str
    size: int
    kind: str
    instruction: str
    template_id: str
    held_out: bool
    caption: str
    output_caption: str
    before: np.ndarray
    after: np.ndarray
    mask: np.ndarray
    target: dict[str, Any] = field(default_factory=dict)
    focus_before: np.ndarray | None = None
    focus_after: np.ndarray | None = None
    scene: Scene | None = None
    edited_scene: Scene | None = None

    def images(self) -> tuple[Image.Image, Image.Image, Image.Image]:
        """(input, edited, mask) as PIL images (RGB, RGB, L with 255 where pixels change)."""
        mask = Image.fromarray(self.mask.astype(np.uint8) * 255, mode="L")
        return Image.fromarray(self.before, mode="RGB"), Image.fromarray(self.after, mode="RGB"), mask

    def record(self) -> dict[str, Any]:
        """The JSON-able metadata of this example."""
        return {
            "seed": self.seed,
            "split": self.split,
            "size": self.size,
            "kind": self.kind,
            "edit_prompt": self.instruction,
            "template_id": self.template_id,
            "held_out": self.held_out,
            "caption": self.caption,
            "output_caption": self.output_caption,
            "target": self.target,
        }


@dataclass
class _Plan:
    slots: dict[str, str]
    target: dict[str, Any]
    edited_scene: Scene | None = None
    transform: Callable[[np.ndarray], np.ndarray] | None = None
    focus: int | None = None


# ----------------------------------------------------------------------------- referring expressions


def references(scene: Scene, shape: Shape) -> list[str]:
    """Every phrase that picks out ``shape`` and nothing else in ``scene``."""
    others = [o for o in scene.objects if o.id != shape.id]
    same_kind = [o for o in others if o.kind == shape.kind]
    k, c = shape.kind, shape.color
    out = []
    if not same_kind:
        out.append(f"the {k}")
    if not any(o.color == c for o in others):
        out += [f"the {c} shape", f"the {c} one", f"the {c} object"]
    if not any(o.color == c for o in same_kind):
        out.append(f"the {c} {k}")
    if same_kind:
        gap = 0.15
        if all(shape.x < o.x - gap for o in same_kind):
            out += [f"the {k} on the left", f"the leftmost {k}"]
        if all(shape.x > o.x + gap for o in same_kind):
            out += [f"the {k} on the right", f"the rightmost {k}"]
        if all(shape.y < o.y - gap for o in same_kind):
            out += [f"the {k} at the top", f"the topmost {k}"]
        if all(shape.y > o.y + gap for o in same_kind):
            out += [f"the {k} at the bottom", f"the lowest {k}"]
    return out


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def _referable(scene: Scene) -> list[Shape]:
    return [o for o in scene.objects if references(scene, o)]


# ----------------------------------------------------------------------------- plans, one per kind


def _recolor_object(scene: Scene, rng: np.random.Generator) -> _Plan | None:
    candidates = _referable(scene)
    if not candidates:
        return None
    shape = _pick(rng, candidates)
    colors = [c for c in colors_on(scene.background.style, scene.background.color) if c != shape.color]
    for color in rng.permutation(colors).tolist():
        edited = scene.swap(shape.replace(color=color))
        if layout_ok(edited):
            slots = {"obj": _pick(rng, references(scene, shape)), "color": color}
            target = {"object_id": shape.id, "color": color, "rgb": list(COLORS[color])}
            return _Plan(slots, target, edited, focus=shape.id)
    return None


def _recolor_background(scene: Scene, rng: np.random.Generator) -> _Plan | None:
    style = scene.background.style
    for color in rng.permutation(list(COLORS)).tolist():
        if color == scene.background.color:
            continue
        if all(o.color in colors_on(style, color) for o in scene.objects):
            edited = scene.replace(background=scene.background.replace(color=color))
            return _Plan({"color": color}, {"color": color, "rgb": list(COLORS[color])}, edited)
    return None


def _remove_object(scene: Scene, rng: np.random.Generator) -> _Plan | None:
    candidates = _referable(scene)
    if not candidates:
        return None
    shape = _pick(rng, candidates)
    target = {"object_id": shape.id, "color": shape.color}
    return _Plan({"obj": _pick(rng, references(scene, shape))}, target, scene.without(shape.id), focus=shape.id)


def _add_object(scene: Scene, rng: np.random.Generator) -> _Plan | None:
    if len(scene.objects) >= 5:
        return None
    colors = colors_on(scene.background.style, scene.background.color)
    new = random_shape(rng, colors, id=scene.next_id())
    for place in rng.permutation(list(PLACES)).tolist():
        shape = free_spot(rng, scene, new, PLACES[place], tries=20)
        if shape is not None:
            break
    else:
        return None
    edited = scene.replace(objects=scene.objects + (shape,))
    if not layout_ok(edited):
        return None
    slots = {"thing": f"a {shape.color} {shape.kind}", "place": place}
    target = {"object_id": shape.id, "color": shape.color, "rgb": list(COLORS[shape.color]), "place": place}
    return _Plan(slots, target, edited, focus=shape.id)


_STEP = {"left": (-0.25, 0.0), "right": (0.25, 0.0), "up": (0.0, -0.25), "down": (0.0, 0.25)}


def _move_object(scene: Scene, rng: np.random.Generator) -> _Plan | None:
    candidates = _referable(scene)
    if not candidates:
        return None
    shape = _pick(rng, candidates)
    for direction in rng.permutation(list(DIRECTIONS)).tolist():
        dx, dy = _STEP[direction]
        moved = shape.replace(x=round(shape.x + dx, 4), y=round(shape.y + dy, 4))
        edited = scene.swap(moved)
        if in_frame(moved) and layout_ok(edited):
            slots = {"obj": _pick(rng, references(scene, shape)), "dir": direction}
            target = {"object_id": shape.id, "color": shape.color, "direction": direction}
            return _Plan(slots, target, edited, focus=shape.id)
    return None


def _resize_object(scene: Scene, rng: np.random.Generator) -> _Plan | None:
    candidates = _referable(scene)
    if not candidates:
        return None
    shape = _pick(rng, candidates)
    step = SIZE_ORDER.index(shape.size)
    for direction in rng.permutation(["bigger", "smaller"]).tolist():
        new = step + (1 if direction == "bigger" else -1)
        if not 0 <= new < len(SIZE_ORDER):
            continue
        edited = scene.swap(shape.replace(size=SIZE_ORDER[new]))
        if layout_ok(edited):
            slots = {"obj": _pick(rng, references(scene, shape)), **RESIZE_WORDS[direction]}
            target = {"object_id": shape.id, "color": shape.color, "direction": direction}
            return _Plan(slots, target, edited, focus=shape.id)
    return None


def _count_add(scene: Scene, rng: np.random.Generator) -> _Plan | None:
    if not scene.objects:
        return None
    kind = _pick(rng, scene.objects).kind
    same = [o for o in scene.objects if o.kind == kind]
    colors = sorted({o.color for o in same})
    color = _pick(rng, colors)
    plural = PLURALS[kind]
    things = _pick(rng, [plural, f"{color} {plural}"]) if len(colors) == 1 else f"{color} {plural}"
    n = int(rng.integers(2, 4))
    size = _pick(rng, [o for o in same if o.color == color]).size
    edited = scene
    for _ in range(n):
        shape = free_spot(rng, edited, Shape(kind, color, size, 0.5, 0.5, edited.next_id()))
        if shape is None:
            return None
        edited = edited.replace(objects=edited.objects + (shape,))
    if not layout_ok(edited):
        return None
    target = {"kind": kind, "color": color, "added": n}
    return _Plan({"n": NUMBERS[n], "things": things}, target, edited)


def _count_remove(scene: Scene, rng: np.random.Generator) -> _Plan | None:
    groups: list[tuple[str, list[Shape]]] = []
    for kind in sorted({o.kind for o in scene.objects}):
        members = [o for o in scene.objects if o.kind == kind]
        if len(members) >= 2:
            groups.append((PLURALS[kind], members))
    for color in sorted({o.color for o in scene.objects}):
        members = [o for o in scene.objects if o.color == color]
        if len(members) >= 2:
            groups.append((f"{color} {_pick(rng, ['shapes', 'objects'])}", members))
    if not groups:
        return None
    things, members = _pick(rng, groups)
    edited = scene.without(*(o.id for o in members))
    target = {"object_ids": [o.id for o in members], "colors": sorted({o.color for o in members})}
    return _Plan({"things": things}, target, edited)


def _global(name: str) -> Callable[[Scene, np.random.Generator], _Plan]:
    def plan(scene: Scene, rng: np.random.Generator) -> _Plan:
        return _Plan({}, {}, transform=GLOBAL_EDITS[name])

    return plan


PLANNERS: dict[str, Callable[[Scene, np.random.Generator], _Plan | None]] = {
    "recolor_object": _recolor_object,
    "recolor_background": _recolor_background,
    "remove_object": _remove_object,
    "add_object": _add_object,
    "move_object": _move_object,
    "resize_object": _resize_object,
    "grayscale": _global("grayscale"),
    "invert": _global("invert"),
    "darken": _global("darken"),
    "brighten": _global("brighten"),
    "count_add": _count_add,
    "count_remove": _count_remove,
}

#: Scene hints per kind: the range of the number of objects and the chance of repeated kinds.
_SCENE_HINTS = {"count_remove": (2, 5, 0.7), "count_add": (1, 3, 0.35), "add_object": (1, 4, 0.35)}

_GLOBAL_CAPTIONS = {
    "grayscale": "a black and white picture of {}",
    "invert": "an inverted picture of {}",
    "darken": "{} at night",
    "brighten": "a bright picture of {}",
}


# ----------------------------------------------------------------------------- examples


def world_seed(seed: int, split: str) -> int:
    """The generator seed of example ``seed`` of ``split``; train and test seed ranges are disjoint."""
    if split not in SPLITS:
        raise BadOptions(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not isinstance(seed, int) or not 0 <= seed < TEST_SEED_OFFSET:
        raise BadOptions(f"seed must be an integer from 0 to 2**40 - 1, got {seed!r}")
    return seed + (TEST_SEED_OFFSET if split == "test" else 0)


def check_kinds(kinds: Sequence[str] | None) -> tuple[str, ...]:
    if kinds is None:
        return EDIT_KINDS
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in EDIT_KINDS]
    if unknown or not kinds:
        raise BadOptions(f"unknown edit kind {unknown[0] if unknown else '(none)'!r}; known: {', '.join(EDIT_KINDS)}")
    return kinds


def _visible_enough(scene: Scene, rendering: Rendering, size: int) -> bool:
    from .render import full_coverage

    for shape in scene.objects:
        full = float(full_coverage(shape, size).sum())
        if full <= 0 or float(rendering.visible[shape.id].sum()) < MIN_VISIBLE * full:
            return False
    return True


def make_example(
    seed: int,
    size: int = 64,
    kinds: Sequence[str] | None = None,
    split: str = "train",
    held_out_p: float | None = None,
) -> Edit:
    """The example number ``seed`` of ``split``: same arguments, same bytes.

    The edit kind is drawn uniformly from ``kinds``. Training examples use training templates
    only; test examples use a held-out template with probability ``held_out_p`` (default 0.5).
    """
    check_size(size)
    kinds = check_kinds(kinds)
    rng = np.random.default_rng(world_seed(seed, split))
    kind = _pick(rng, kinds)
    if held_out_p is None:
        held_out_p = 0.5 if split == "test" else 0.0
    if split == "train" and held_out_p:
        raise BadOptions("held-out templates never appear in training examples (held_out_p must be 0)")
    for _ in range(200):
        lo, hi, dup = _SCENE_HINTS.get(kind, (1, 5, 0.35))
        scene = random_scene(rng, n_objects=int(rng.integers(lo, hi + 1)), duplicate_p=dup)
        if not scene.objects:
            continue
        plan = PLANNERS[kind](scene, rng)
        if plan is None:
            continue
        edit = _realise(seed, split, size, kind, scene, plan, rng, held_out_p)
        if edit is not None:
            return edit
    raise BadData(f"could not build a {kind} example for seed {seed} (the layout rules rejected every draw)")


def _clear_geometry(kind: str, before: np.ndarray | None, after: np.ndarray | None, size: int) -> bool:
    """Moves must shift the visible object by >= 15 % of the side, resizes change its visible area
    by >= 1.6x, so that occlusion never makes an edit too faint to score."""
    if kind not in ("move_object", "resize_object"):
        return True
    a, b = float(before.sum()), float(after.sum())
    if kind == "resize_object":
        return max(a / b, b / a) >= 1.6
    (ax, ay), (bx, by) = centroid(before), centroid(after)
    return float(np.hypot(ax - bx, ay - by)) >= 0.15 * size


def _realise(seed, split, size, kind, scene, plan: _Plan, rng, held_out_p) -> Edit | None:
    before = render(scene, size)
    if not _visible_enough(scene, before, size):
        return None
    focus_before = focus_after = None
    if plan.transform is not None:
        after_image = plan.transform(before.image)
        output_caption = _GLOBAL_CAPTIONS[kind].format(caption(scene))
        # every other pixel is plenty to estimate the share of strongly changed pixels
        strong = delta_e(before.image[::2, ::2], after_image[::2, ::2]) >= 20
        if strong.mean() < MIN_GLOBAL_CHANGE:
            return None
    else:
        after = render(plan.edited_scene, size)
        if not _visible_enough(plan.edited_scene, after, size):
            return None
        after_image = after.image
        output_caption = caption(plan.edited_scene)
        if plan.focus is not None:
            if plan.focus in before.visible:
                focus_before = before.core(plan.focus)
            if plan.focus in after.visible:
                focus_after = after.core(plan.focus)
                if focus_after.sum() < 2 * min_blob_area(size):
                    return None
        if not _clear_geometry(kind, focus_before, focus_after, size):
            return None
    mask = np.any(before.image != after_image, axis=-1)
    if not mask.any():
        return None
    target = dict(plan.target)
    if kind == "count_add":
        target["counts"] = {target["color"]: count_blobs(after_image, target["color"], size)}
    elif kind == "count_remove":
        target["counts"] = {c: count_blobs(after_image, c, size) for c in target["colors"]}
    held_out = bool(held_out_p) and rng.random() < held_out_p
    template_id, template = _pick(rng, templates_for(kind, held_out))
    return Edit(
        seed=seed,
        split=split,
        size=size,
        kind=kind,
        instruction=fill(template, plan.slots),
        template_id=template_id,
        held_out=held_out,
        caption=caption(scene),
        output_caption=output_caption,
        before=before.image,
        after=after_image,
        mask=mask,
        target=target,
        focus_before=focus_before,
        focus_after=focus_after,
        scene=scene,
        edited_scene=plan.edited_scene,
    )

