"""The shapes world, animated: objects move along paths over a still background, and every frame has
the edit's exact target.

A clip is one scene, one edit plan and one instruction (:mod:`ip2p.shapes.edits` draws them the way
single examples are drawn), plus a path for every object: still, a straight line, or a circle.
Frame ``t`` moves each object by its path's offset at ``u = t / (frames - 1)``, in the input scene
and in the edited scene alike (objects are matched by id; an object the edit adds stays where the
instruction put it), then renders both. So the target of every frame is exact, its change mask too,
and a video editor can be scored frame by frame with :func:`ip2p.shapes.score.score_edit`.

Every frame of a clip obeys the same rules as a single example (layout, visibility, a referring
expression that still picks out exactly one object); a draw that breaks them in any frame is
redrawn. Same arguments, same bytes. Nothing here imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..errors import BadData, BadOptions
from .color import delta_e
from .edits import (
    GLOBAL_CAPTIONS,
    MIN_GLOBAL_CHANGE,
    MIN_VISIBLE,
    PLANNERS,
    Edit,
    check_kinds,
    references,
    world_seed,
)
from .measure import count_blobs, min_blob_area
from .phrasing import EDIT_KINDS, fill, templates_for
from .render import Rendering, check_size, full_coverage, render
from .scene import Scene, caption, layout_ok, random_scene

#: Random streams of clips, apart from those of single examples.
CLIP_STREAM = 0x5EED_C11F
MAX_FRAMES = 240
#: (fewest, most objects, chance of a repeated kind) per edit kind; others (1, 4, 0.35).
SCENE_HINTS = {"count_remove": (2, 5, 0.7), "count_add": (1, 3, 0.35), "add_object": (1, 3, 0.35)}
PATH_KINDS = ("still", "line", "circle")


@dataclass(frozen=True)
class Path:
    """Where an object is, relative to its place in the scene, at clip time ``u`` in [0, 1]."""

    kind: str = "still"
    dx: float = 0.0  # line: the whole displacement (centred on the scene's place)
    dy: float = 0.0
    radius: float = 0.0  # circle: radius and starting angle, one turn per clip
    phase: float = 0.0

    def offset(self, u: float) -> tuple[float, float]:
        if self.kind == "line":
            return self.dx * (u - 0.5), self.dy * (u - 0.5)
        if self.kind == "circle":
            angle = self.phase + 2 * math.pi * u
            return self.radius * (math.cos(angle) - math.cos(self.phase)), \
                self.radius * (math.sin(angle) - math.sin(self.phase))
        return 0.0, 0.0


def random_path(rng: np.random.Generator) -> Path:
    kind = PATH_KINDS[int(rng.choice(3, p=[0.2, 0.5, 0.3]))]
    if kind == "line":
        length, angle = rng.uniform(0.12, 0.3), rng.uniform(0, 2 * math.pi)
        return Path("line", dx=round(length * math.cos(angle), 4), dy=round(length * math.sin(angle), 4))
    if kind == "circle":
        return Path("circle", radius=round(rng.uniform(0.04, 0.1), 4), phase=round(rng.uniform(0, 2 * math.pi), 4))
    return Path()


def moved(scene: Scene, paths: dict[int, Path], u: float) -> Scene:
    """``scene`` with every object that has a path moved to its place at time ``u``."""
    objects = []
    for shape in scene.objects:
        dx, dy = paths[shape.id].offset(u) if shape.id in paths else (0.0, 0.0)
        objects.append(shape.replace(x=round(shape.x + dx, 4), y=round(shape.y + dy, 4)))
    return scene.replace(objects=tuple(objects))


@dataclass
class Clip:
    """An animated example: one :class:`~ip2p.shapes.edits.Edit` per frame, all with one instruction."""

    seed: int
    split: str
    size: int
    kind: str
    fps: int
    instruction: str
    template_id: str
    frames: list[Edit]
    paths: dict[int, Path]

    def inputs(self) -> list[Image.Image]:
        return [Image.fromarray(f.before) for f in self.frames]

    def targets(self) -> list[Image.Image]:
        return [Image.fromarray(f.after) for f in self.frames]

    def masks(self) -> list[Image.Image]:
        return [Image.fromarray(f.mask.astype(np.uint8) * 255) for f in self.frames]

    def record(self) -> dict[str, Any]:
        """JSON-able facts: enough to make the clip again (:func:`make_clip` with these arguments)."""
        return {"seed": self.seed, "split": self.split, "size": self.size, "kind": self.kind, "fps": self.fps,
                "frames": len(self.frames), "edit_prompt": self.instruction, "template_id": self.template_id,
                "caption": self.frames[0].caption, "output_caption": self.frames[0].output_caption,
                "paths": {str(k): vars(p) for k, p in self.paths.items()}}


def check_frames(frames: int) -> int:
    if not isinstance(frames, int) or isinstance(frames, bool) or not 2 <= frames <= MAX_FRAMES:
        raise BadOptions(f"--frames must be an integer from 2 to {MAX_FRAMES}, got {frames!r}")
    return frames


def make_clip(seed: int, frames: int = 24, size: int = 64, kinds: Sequence[str] | None = None,
              split: str = "test", fps: int = 12) -> Clip:
    """Clip number ``seed`` of ``split``: the edit kind is drawn from ``kinds``; the scene, plan and
    paths depend only on (seed, split, kind), so ``kinds=[clip.kind]`` makes the same clip again."""
    check_size(size)
    check_frames(frames)
    kinds = check_kinds(kinds)
    base = world_seed(seed, split)
    kind = kinds[int(np.random.default_rng([base, CLIP_STREAM]).integers(len(kinds)))]
    rng = np.random.default_rng([base, CLIP_STREAM, EDIT_KINDS.index(kind)])
    lo, hi, dup = SCENE_HINTS.get(kind, (1, 4, 0.35))
    for _ in range(400):
        scene = random_scene(rng, n_objects=int(rng.integers(lo, hi + 1)), duplicate_p=dup)
        plan = PLANNERS[kind](scene, rng) if scene.objects else None
        if plan is None:
            continue
        template_id, template = templates_for(kind, False)[int(rng.integers(len(templates_for(kind, False))))]
        for _ in range(8):
            paths = {o.id: random_path(rng) for o in scene.objects}
            if all(p.kind == "still" for p in paths.values()):
                continue  # a clip where nothing moves tests nothing
            edits = _frames(seed, split, size, kind, scene, plan, paths, frames)
            if edits is not None:
                instruction = fill(template, plan.slots)
                for edit in edits:
                    edit.instruction, edit.template_id = instruction, template_id
                return Clip(seed, split, size, kind, fps, instruction, template_id, edits, paths)
    raise BadData(f"could not build a {kind} clip for seed {seed} (every draw broke a rule in some frame)")


def _visible(scene: Scene, rendering: Rendering, size: int) -> bool:
    for shape in scene.objects:
        full = float(full_coverage(shape, size).sum())
        if full <= 0 or float(rendering.visible[shape.id].sum()) < MIN_VISIBLE * full:
            return False
    return True


def _frames(seed, split, size, kind, scene, plan, paths, count) -> list[Edit] | None:
    """Every frame's exact example, or None as soon as one frame breaks a rule."""
    out = []
    phrase = plan.slots.get("obj")
    for t in range(count):
        u = t / (count - 1)
        now = moved(scene, paths, u)
        if not layout_ok(now):
            return None
        if phrase is not None and phrase not in references(now, now.get(plan.focus)):
            return None
        before = render(now, size)
        if not _visible(now, before, size):
            return None
        edited = None if plan.edited_scene is None else moved(plan.edited_scene, paths, u)
        focus_before = focus_after = None
        if plan.transform is not None:
            after_image = plan.transform(before.image)
            if (delta_e(before.image[::2, ::2], after_image[::2, ::2]) >= 20).mean() < MIN_GLOBAL_CHANGE:
                return None
        else:
            if not layout_ok(edited):
                return None
            after = render(edited, size)
            if not _visible(edited, after, size):
                return None
            after_image = after.image
            if plan.focus is not None:
                focus_before = before.core(plan.focus) if plan.focus in before.visible else None
                focus_after = after.core(plan.focus) if plan.focus in after.visible else None
                if focus_after is not None and focus_after.sum() < 2 * min_blob_area(size):
                    return None
        mask = np.any(before.image != after_image, axis=-1)
        if not mask.any():
            return None
        target = dict(plan.target)
        if kind == "count_add":
            target["counts"] = {target["color"]: count_blobs(after_image, target["color"], size)}
        elif kind == "count_remove":
            target["counts"] = {c: count_blobs(after_image, c, size) for c in target["colors"]}
        output_caption = caption(edited) if edited is not None else GLOBAL_CAPTIONS[kind].format(caption(now))
        out.append(Edit(seed=seed, split=split, size=size, kind=kind, instruction="", template_id="",
                        held_out=False, caption=caption(now), output_caption=output_caption,
                        before=before.image, after=after_image, mask=mask, target=target,
                        focus_before=focus_before, focus_after=focus_after, scene=now, edited_scene=edited))
    return out


def score_clip(clip: Clip, outputs: Sequence[Any]) -> dict[str, Any]:
    """Per-frame exact scores of ``outputs`` (one image per frame) and the clip's flicker figures.

    ``flicker_ratio`` is the outputs' mean frame-to-frame change over the inputs'; ``target_ratio``
    is the same for the exact targets: the ratio a perfect edit has (a darkening edit lowers it).
    """
    from ..video import flicker
    from .score import as_array, score_edit

    if len(outputs) != len(clip.frames):
        raise BadOptions(f"{len(outputs)} outputs for a clip of {len(clip.frames)} frames")
    arrays = [as_array(o, clip.size) for o in outputs]
    scores = [score_edit(frame, out) for frame, out in zip(clip.frames, arrays, strict=True)]
    f_in, f_out, f_target = flicker(clip.inputs()), flicker(arrays), flicker(clip.targets())
    return {
        "kind": clip.kind,
        "seed": clip.seed,
        "success": float(np.mean([s["success"] for s in scores])),
        "per_frame": [s["success"] for s in scores],
        "psnr": float(np.mean([s["psnr"] for s in scores])),
        "flicker_input": f_in,
        "flicker_output": f_out,
        "flicker_ratio": f_out / f_in if f_in else None,
        "target_ratio": f_target / f_in if f_in else None,
    }



# ----------------------------------------------------------------------------- clip folders

CLIP_FILE = "clip.json"


def write_clip(clip: Clip, folder) -> Any:
    """``folder`` (written atomically): ``input/``, ``target/`` and ``mask/`` as numbered PNG frames
    (exact), ``input.gif`` and ``target.gif`` to look at, and ``clip.json`` (:meth:`Clip.record`)."""
    import json
    from fractions import Fraction
    from pathlib import Path

    from ..files import atomic_folder
    from ..video import Video, write_video

    folder = Path(folder)
    with atomic_folder(folder) as temp:
        for name, images in (("input", clip.inputs()), ("target", clip.targets()), ("mask", clip.masks())):
            (temp / name).mkdir()
            for index, image in enumerate(images):
                image.save(temp / name / f"{index:06d}.png")
            if name != "mask":
                write_video(Video(images, Fraction(clip.fps)), temp / f"{name}.gif")
        (temp / CLIP_FILE).write_text(json.dumps(clip.record(), indent=1) + "\n")
    return folder


def read_clip(folder) -> Clip:
    """The clip a folder from :func:`write_clip` holds, made again from its ``clip.json``."""
    import json
    from pathlib import Path

    path = Path(folder) / CLIP_FILE
    try:
        record = json.loads(path.read_text())
        clip = make_clip(int(record["seed"]), int(record["frames"]), int(record["size"]), kinds=[record["kind"]],
                         split=record["split"], fps=int(record["fps"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadData(f"{folder}: not a shapes clip folder ({CLIP_FILE}: {exc})") from None
    if clip.instruction != record.get("edit_prompt"):
        raise BadData(f"{folder}: {CLIP_FILE} was written by another version of the shapes world")
    return clip
