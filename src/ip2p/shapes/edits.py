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
from .phrasing import (
    ALL_KINDS,
    DIRECTIONS,
    EDIT_KINDS,
    NUMBERS,
    PHRASINGS,
    PLACES,
    PLURALS,
    REMOVE_NUMBERS,
    RESIZE_WORDS,
    fill,
    templates_for,
)
from .render import GLOBAL_EDITS, Rendering, check_size, mirror, render
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
#: A rotation or flip is only made where the object's old and new pixels overlap at most this much (IoU).
MAX_TURN_IOU = 0.85


@dataclass
class Edit:
    """One triplet with everything needed to score an editor on it.

    ``mask`` is True where ``after`` differs from ``before``. ``focus_before``/``focus_after`` are
    the pixels showing only the edited object (None where there is none). ``target`` holds the
    JSON-able facts the scorer needs (object id, target colour and RGB, direction, blob counts).
    ``free``, when set, marks pixels outside the mask that a correct answer may also change (which
    ones of a group "remove two of the circles" takes is the editor's choice).
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
    free: np.ndarray | None = None
    reference: str | None = None  # how the instruction names the edited object (REFERENCE_TYPES), if it does

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
    free_ids: tuple[int, ...] = ()  # objects whose pixels any correct answer may change
    output_caption: str | None = None  # a transform's caption, when not the kind's template


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


REFERENCE_TYPES = ("kind", "colour", "colour+kind", "position")


def reference_type(phrase: str) -> str:
    """Which of :func:`references`' forms ``phrase`` is: it names the shape's kind ("the circle"), its
    colour ("the red one"), both ("the red circle"), or its place among shapes of its kind."""
    words = phrase.split()
    if words[-1] in ("left", "right", "top", "bottom") or words[1] in ("leftmost", "rightmost", "topmost", "lowest"):
        return "position"
    if words[-1] in ("shape", "one", "object"):
        return "colour"
    return "kind" if len(words) == 2 else "colour+kind"


#: How a training example picks its referring expression among :func:`references`: "phrase", every
#: phrase equally likely (most are colour forms, so "the circle" is rare); "type", each form the object
#: admits (REFERENCE_TYPES) equally likely, then a phrase of that form; "kind", the bare kind 70 % of
#: the time the object admits it, else as "type" (~46 % of object edits then name only the shape, so no
#: colour word can stand in for the shape word).
REFERENCE_MIXES = ("phrase", "type", "kind")
BARE_KIND_P = 0.7  # the "kind" mix's chance of the bare kind, where the object admits it


def _by_type(rng: np.random.Generator, phrases: list[str], kind_p: float = 0.0) -> str:
    forms = {}
    for phrase in phrases:
        forms.setdefault(reference_type(phrase), []).append(phrase)
    if kind_p and "kind" in forms and rng.random() < kind_p:
        return forms["kind"][0]
    return _pick(rng, _pick(rng, list(forms.values())))


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


def _groups(scene: Scene, rng: np.random.Generator) -> list[tuple[str, list[Shape]]]:
    """Every kind and every colour with two or more objects, named ("circles", "red shapes")."""
    groups: list[tuple[str, list[Shape]]] = []
    for kind in sorted({o.kind for o in scene.objects}):
        members = [o for o in scene.objects if o.kind == kind]
        if len(members) >= 2:
            groups.append((PLURALS[kind], members))
    for color in sorted({o.color for o in scene.objects}):
        members = [o for o in scene.objects if o.color == color]
        if len(members) >= 2:
            groups.append((f"{color} {_pick(rng, ['shapes', 'objects'])}", members))
    return groups


def _count_remove(scene: Scene, rng: np.random.Generator) -> _Plan | None:
    groups = _groups(scene, rng)
    if not groups:
        return None
    things, members = _pick(rng, groups)
    edited = scene.without(*(o.id for o in members))
    target = {"object_ids": [o.id for o in members], "colors": sorted({o.color for o in members})}
    return _Plan({"things": things}, target, edited)


# ----------------------------------------------------------------------------- failure-mode plans


def _count_remove_n(scene: Scene, rng: np.random.Generator) -> _Plan | None:
    """Remove one or two of a group (a kind, or a colour) and keep at least one: only the count is
    prescribed, so the whole group's pixels are ``free``."""
    groups = _groups(scene, rng)
    if not groups:
        return None
    things, members = _pick(rng, groups)
    n = int(rng.integers(1, min(2, len(members) - 1) + 1))
    removed = [members[int(i)] for i in rng.permutation(len(members))[:n]]
    edited = scene.without(*(o.id for o in removed))
    colors = sorted({o.color for o in members})
    target = {"removed": n, "object_ids": [o.id for o in removed], "group_ids": [o.id for o in members],
              "colors": colors}
    return _Plan({"n": REMOVE_NUMBERS[n], "things": things}, target, edited, free_ids=tuple(o.id for o in members))


def _swap_objects(scene: Scene, rng: np.random.Generator) -> _Plan | None:
    """Exchange the places of two objects of different colours at least 20 % of the side apart."""
    candidates = _referable(scene)
    pairs = [(a, b) for a in candidates for b in candidates
             if a.id < b.id and a.color != b.color and np.hypot(a.x - b.x, a.y - b.y) >= 0.2]
    if not pairs:
        return None
    a, b = _pick(rng, pairs)
    if rng.random() < 0.5:
        a, b = b, a
    edited = scene.swap(a.replace(x=b.x, y=b.y)).swap(b.replace(x=a.x, y=a.y))
    if not layout_ok(edited):  # in frame, and no same-coloured objects touching at the new places
        return None
    slots = {"obj": _pick(rng, references(scene, a)), "obj2": _pick(rng, references(scene, b))}
    return _Plan(slots, {"object_ids": [a.id, b.id], "colors": [a.color, b.color]}, edited)


#: Kinds whose outline a quarter turn changes, and those a half turn (upside down) changes.
ROTATABLE = ("triangle", "star", "heart", "diamond", "hexagon")
FLIPPABLE = ("triangle", "star", "heart")


def _turn(angle: float, kinds: tuple[str, ...]) -> Callable[[Scene, np.random.Generator], _Plan | None]:
    def plan(scene: Scene, rng: np.random.Generator) -> _Plan | None:
        candidates = [o for o in _referable(scene) if o.kind in kinds]
        if not candidates:
            return None
        shape = _pick(rng, candidates)
        edited = scene.swap(shape.replace(angle=float((shape.angle + angle) % 360)))
        if not layout_ok(edited):
            return None
        target = {"object_id": shape.id, "color": shape.color, "angle": angle}
        return _Plan({"obj": _pick(rng, references(scene, shape))}, target, edited, focus=shape.id)

    return plan


def _flip_scene(scene: Scene, rng: np.random.Generator) -> _Plan:
    """The picture mirrored left to right (exact on the pixels); the caption swaps left and right."""
    mirrored = scene.replace(objects=tuple(o.replace(x=round(1 - o.x, 4)) for o in scene.objects))
    return _Plan({}, {}, transform=mirror, output_caption=caption(mirrored))


def _keep_object(scene: Scene, rng: np.random.Generator) -> _Plan | None:
    """A large edit elsewhere (a background recolour) that names an object to keep as it is."""
    plan = _recolor_background(scene, rng)
    candidates = _referable(scene)
    if plan is None or not candidates:
        return None
    shape = _pick(rng, candidates)
    plan.slots["obj"] = _pick(rng, references(scene, shape))
    plan.target["object_id"] = shape.id
    plan.focus = shape.id
    return plan


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
    "count_remove_n": _count_remove_n,
    "swap_objects": _swap_objects,
    "rotate_object": _turn(90.0, ROTATABLE),
    "flip_object": _turn(180.0, FLIPPABLE),
    "flip_scene": _flip_scene,
    "keep_object": _keep_object,
}

#: Scene hints per kind: the range of the number of objects and the chance of repeated kinds.
_SCENE_HINTS = {"count_remove": (2, 5, 0.7), "count_add": (1, 3, 0.35), "add_object": (1, 4, 0.35),
                "count_remove_n": (3, 5, 0.7), "swap_objects": (2, 4, 0.35)}

_GLOBAL_CAPTIONS = {
    "grayscale": "a black and white picture of {}",
    "invert": "an inverted picture of {}",
    "darken": "{} at night",
    "brighten": "a bright picture of {}",
}
#: The output caption of each global edit, "{}" being the input's caption.
GLOBAL_CAPTIONS = _GLOBAL_CAPTIONS


# ----------------------------------------------------------------------------- examples


def world_seed(seed: int, split: str) -> int:
    """The generator seed of example ``seed`` of ``split``; train and test seed ranges are disjoint."""
    if split not in SPLITS:
        raise BadOptions(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not isinstance(seed, int) or not 0 <= seed < TEST_SEED_OFFSET:
        raise BadOptions(f"seed must be an integer from 0 to 2**40 - 1, got {seed!r}")
    return seed + (TEST_SEED_OFFSET if split == "test" else 0)


def check_kinds(kinds: Sequence[str] | None) -> tuple[str, ...]:
    """The kinds named (any of :data:`~ip2p.shapes.phrasing.ALL_KINDS`), or the default mix
    :data:`~ip2p.shapes.phrasing.EDIT_KINDS` for None."""
    if kinds is None:
        return EDIT_KINDS
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in ALL_KINDS]
    if unknown or not kinds:
        raise BadOptions(f"unknown edit kind {unknown[0] if unknown else '(none)'!r}; known: {', '.join(ALL_KINDS)}")
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
    reference_mix: str = "phrase",
    phrasings: str = "stock",
) -> Edit:
    """The example number ``seed`` of ``split``: same arguments, same bytes.

    The edit kind is drawn uniformly from ``kinds``. Training examples use training templates
    only; test examples use a held-out template with probability ``held_out_p`` (default 0.5).
    ``reference_mix`` "type" redraws the phrase naming the edited object so that each form it admits
    is equally likely, "kind" favours the bare kind (:data:`REFERENCE_MIXES`); "phrase" leaves every
    example as it always was. ``phrasings`` "target-first" adds :data:`~.phrasing.TARGET_FIRST`'s
    templates to a training example's draw; "stock" leaves it as it always was.
    """
    check_size(size)
    kinds = check_kinds(kinds)
    if reference_mix not in REFERENCE_MIXES:
        raise BadOptions(f"reference mix must be one of {', '.join(REFERENCE_MIXES)}, got {reference_mix!r}")
    if phrasings not in PHRASINGS:
        raise BadOptions(f"phrasings must be one of {', '.join(PHRASINGS)}, got {phrasings!r}")
    if phrasings != "stock" and split != "train":
        raise BadOptions(f"{phrasings} phrasings are for training examples only: test examples keep the stock ones")
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
        if reference_mix != "phrase" and plan.focus is not None and "obj" in plan.slots and "obj2" not in plan.slots:
            kind_p = BARE_KIND_P if reference_mix == "kind" else 0.0
            plan.slots["obj"] = _by_type(rng, references(scene, scene.get(plan.focus)), kind_p)
        edit = _realise(seed, split, size, kind, scene, plan, rng, held_out_p, phrasings)
        if edit is not None:
            return edit
    raise BadData(f"could not build a {kind} example for seed {seed} (the layout rules rejected every draw)")


def _clear_geometry(kind: str, before: np.ndarray | None, after: np.ndarray | None, size: int) -> bool:
    """Moves must shift the visible object by >= 15 % of the side, resizes change its visible area
    by >= 1.6x, turns leave at most 85 % of its pixels in place (IoU), so that occlusion never makes
    an edit too faint to score."""
    if kind in ("rotate_object", "flip_object"):
        return float((before & after).sum()) <= MAX_TURN_IOU * float((before | after).sum())
    if kind not in ("move_object", "resize_object"):
        return True
    a, b = float(before.sum()), float(after.sum())
    if kind == "resize_object":
        return max(a / b, b / a) >= 1.6
    (ax, ay), (bx, by) = centroid(before), centroid(after)
    return float(np.hypot(ax - bx, ay - by)) >= 0.15 * size


def _realise(seed, split, size, kind, scene, plan: _Plan, rng, held_out_p, phrasings="stock") -> Edit | None:
    before = render(scene, size)
    if not _visible_enough(scene, before, size):
        return None
    focus_before = focus_after = None
    if plan.transform is not None:
        after_image = plan.transform(before.image)
        output_caption = plan.output_caption
        if output_caption is None:
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
    elif kind == "count_remove_n":
        target["total"] = sum(count_blobs(after_image, c, size) for c in target["colors"])
    free = None
    if plan.free_ids:
        free = np.any(np.stack([before.visible[i] > 0 for i in plan.free_ids]), axis=0) & ~mask
    held_out = bool(held_out_p) and rng.random() < held_out_p
    template_id, template = _pick(rng, templates_for(kind, held_out, phrasings))
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
        free=free,
        reference=reference_type(plan.slots["obj"]) if "obj" in plan.slots and "obj2" not in plan.slots else None,
    )

