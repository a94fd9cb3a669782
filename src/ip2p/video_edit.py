"""Editing a video with one instruction, frame by frame, without the flicker that brings.

Edited one at a time, InstructPix2Pix frames flicker: each frame starts from other noise and the
model settles each on its own version of the edit. The techniques here (measured in docs/video.md):

* **same noise**: every frame starts from the same initial latent noise (one seed for all);
* **cross-frame attention** (Text2Video-Zero, Khachatryan et al. 2023): every frame's
  self-attention reads its keys and values from an anchor frame, the first, or the first and the
  previous (:mod:`ip2p.attention`). Frames go through the UNet in batches; every batch after the
  first starts with the anchor frame (and, for ``first+previous``, the frame before the batch), whose
  outputs are made again and dropped, so all batches share one anchor;
* **still-region blend**: where the input did not change since the previous frame, the output
  takes the previous output's pixels (feathered at the edges of the changed area), so static
  regions cannot flicker at all;
* ``every N`` edits every Nth frame and holds each edited frame until the next one (``carry="hold"``);
  ``carry="colormap"`` instead maps the frames between through the nearest edited frame's colour map
  (each input colour to the mean output colour it became) where the input changed. Measured, the
  colour map is not better than holding (docs/video.md), so holding is the default.

Frames already edited are kept as PNGs in a work folder (``{output}.ip2p-work``): a run that is
killed and started again with the same input and settings redoes only the unfinished batches (a
run without ``--seed`` takes the seed the first one drew), and gives the same video.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from .errors import BadOptions
from .files import write_atomic
from .options import EditOptions
from .video import flicker

ANCHORS = ("none", "first", "first+previous")
CARRIES = ("hold", "colormap")
#: Named combinations of the techniques (``--consistency``); see docs/video.md for their figures.
PRESETS = ("naive", "noise", "attention", "attention+previous", "blend")
DEFAULT_PRESET = "blend"
WORK_SUFFIX = ".ip2p-work"


@dataclass(frozen=True)
class VideoOptions:
    """How frames are tied together (module docstring); :meth:`preset` names the usual combinations."""

    same_noise: bool = True
    anchor: str = "first"
    blend: bool = True
    blend_threshold: float = 10.0  # max channel change (0-255) under which an input pixel counts as still
    blend_feather: int = 2  # px over which the changed area fades into the previous output
    every: int = 1
    carry: str = "hold"  # measured: colormap is no better (docs/video.md)
    batch_size: int = 4

    @classmethod
    def preset(cls, name: str, **changes: Any) -> VideoOptions:
        table = {
            "naive": cls(same_noise=False, anchor="none", blend=False),
            "noise": cls(anchor="none", blend=False),
            "attention": cls(blend=False),
            "attention+previous": cls(anchor="first+previous", blend=False),
            "blend": cls(),
        }
        if name not in table:
            raise BadOptions(f"--consistency must be one of {', '.join(PRESETS)}, got {name!r}", param="consistency")
        return dataclasses.replace(table[name], **changes).check()

    def check(self) -> VideoOptions:
        if self.anchor not in ANCHORS:
            raise BadOptions(f"anchor must be one of {', '.join(ANCHORS)}, got {self.anchor!r}", param="anchor")
        if self.carry not in CARRIES:
            raise BadOptions(f"--carry must be one of {', '.join(CARRIES)}, got {self.carry!r}", param="carry")
        for name, lo in (("every", 1), ("batch_size", 1), ("blend_feather", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < lo:
                raise BadOptions(f"--{name.replace('_', '-')} must be an integer >= {lo}, got {value!r}", param=name)
        if not 0 <= self.blend_threshold <= 255:
            raise BadOptions(f"--blend-threshold must be between 0 and 255, got {self.blend_threshold!r}")
        least = {"none": 1, "first": 2, "first+previous": 3}[self.anchor]
        if self.batch_size < least:
            raise BadOptions(f"--batch-size must be at least {least} with anchor {self.anchor!r} (the anchor frame "
                             "goes into every batch)", param="batch_size")
        return self


def technique(spec: str) -> VideoOptions:
    """A preset with changes, ``NAME[/key=value...]``: ``blend/every=2/carry=hold`` (keys: every,
    carry, anchor, batch_size). What ``Editor.edit_video(video="...")`` and the benchmark take."""
    name, *changes = str(spec).split("/")
    values: dict[str, Any] = {}
    for change in changes:
        key, _, value = change.partition("=")
        if key not in ("every", "carry", "anchor", "batch_size") or not value:
            raise BadOptions(f"{spec!r}: a change must be every=N, carry=NAME, anchor=NAME or batch_size=N")
        try:
            values[key] = int(value) if key in ("every", "batch_size") else value
        except ValueError:
            raise BadOptions(f"{spec!r}: {key} must be an integer") from None
    return VideoOptions.preset(name, **values)


@dataclass
class VideoResult:
    """The edited frames (input order), the parameters they share, and the run's figures."""

    frames: list[Image.Image]
    params: dict[str, Any]
    report: dict[str, Any] = field(default_factory=dict)


FrameCallback = Callable[[int, int], None]


def plan_batches(keyframes: Sequence[int], batch_size: int, anchor: str) -> list[tuple[list[int], list[int]]]:
    """(frames in the batch, frames it makes) for every UNet batch; later batches start with the anchor
    (and the frame before them, for ``first+previous``), whose outputs are dropped."""
    keys = list(keyframes)
    if anchor == "none":
        return [(keys[i:i + batch_size], keys[i:i + batch_size]) for i in range(0, len(keys), batch_size)]
    batches = [(keys[:batch_size], keys[:batch_size])]
    context = 1 if anchor == "first" else 2
    i = batch_size
    while i < len(keys):
        new = keys[i:i + batch_size - context]
        lead = [keys[0]] if anchor == "first" else [keys[0], keys[i - 1]]
        batches.append((lead + new, new))
        i += len(new)
    return batches


def edit_video(editor, frames: Sequence[Image.Image], instruction: str, options: EditOptions,
               video: VideoOptions | None = None, *, work_dir: str | Path | None = None,
               progress: FrameCallback | None = None, step_callback: Callable[[int, int], None] | None = None,
               ) -> VideoResult:
    """Edit every frame of ``frames`` with ``instruction`` (see the module docstring).

    ``progress(frames_done, frames)`` is called after every batch; ``step_callback`` is the editor's
    denoising-step callback (a server's cancel check). ``work_dir`` keeps finished frames for a resume.
    """
    from .attention import cross_frame_attention

    video = (video or VideoOptions()).check()
    frames = [im.convert("RGB") for im in frames]
    if not frames:
        raise BadOptions("the video has no frames")
    if options.num_images != 1:
        raise BadOptions("a video edit makes one output per frame: --num-images must be 1", param="num_images")
    if video.anchor != "none" and getattr(editor.runner, "compiled", False):
        raise BadOptions("cross-frame attention needs an uncompiled UNet: use --mode default, or "
                         "--consistency noise", param="consistency")
    started = time.monotonic()
    work = _WorkFolder(work_dir, editor, frames, instruction, options, video) if work_dir else None
    seed = work.seed if work else options.check(editor.recommended).seed
    options = dataclasses.replace(options, seed=seed)
    keyframes = list(range(0, len(frames), video.every))
    edited: dict[int, Image.Image] = {}
    resumed = 0
    for members, new in plan_batches(keyframes, video.batch_size, video.anchor):
        done = work.load(new) if work else None
        if done is not None:
            edited.update(done)
            resumed += len(new)
        else:
            seeds = [seed] * len(members) if video.same_noise else [seed + i for i in members]
            batch = [frames[i] for i in members]
            if video.anchor == "none":
                result = editor.edit_with(batch, instruction, options, seeds=seeds, batch_size=len(batch),
                                          callback=step_callback)
            else:
                with cross_frame_attention(editor.components.unet, len(batch), video.anchor):
                    result = editor.edit_with(batch, instruction, options, seeds=seeds, batch_size=len(batch),
                                              callback=step_callback)
            made = dict(zip(members, result.images, strict=True))
            params = result.params[0]
            if work:
                work.save({i: made[i] for i in new}, params)
            edited.update({i: made[i] for i in new})
        if progress is not None:
            progress(len(edited), len(frames))

    keys = [edited[i] for i in keyframes]
    if video.blend:
        keys = blend_still([frames[i] for i in keyframes], keys, video.blend_threshold, video.blend_feather)
    outputs = carry(frames, dict(zip(keyframes, keys, strict=True)), video.carry)
    params = _video_params(editor, instruction, options, video, frames)
    report = {"frames": len(frames), "edited_frames": len(keyframes), "resumed_frames": resumed,
              "seconds": round(time.monotonic() - started, 3), "flicker_input": round(flicker(frames), 4),
              "flicker_output": round(flicker(outputs), 4)}
    base = report["flicker_input"]
    report["flicker_ratio"] = round(report["flicker_output"] / base, 4) if base else None
    return VideoResult(outputs, params, report)


# ------------------------------------------------------------------------------------------------
# Still-region blend and carrying between edited frames


def _changed(a, b, threshold: float) -> np.ndarray:
    """Where two pictures (images or float arrays) differ by more than ``threshold`` in any channel."""
    return np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max(-1) > threshold


def _keep_weight(change: np.ndarray, size: tuple[int, int], feather: int) -> np.ndarray:
    """Weight (H, W, 1) at ``size`` of what was there before: 0 over ``change`` grown and feathered."""
    mask = Image.fromarray(change.astype(np.uint8) * 255)
    if mask.size != size:
        mask = mask.resize(size, Image.Resampling.BILINEAR)
    if feather:
        mask = mask.filter(ImageFilter.MaxFilter(2 * feather + 1)).filter(ImageFilter.BoxBlur(feather))
    return 1.0 - np.asarray(mask, np.float32)[..., None] / 255.0


def _resized(weights: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    image = Image.fromarray(weights[..., 0].astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    return np.asarray(image, np.float32)[..., None]


def blend_still(inputs: Sequence[Image.Image], outputs: Sequence[Image.Image], threshold: float = 10.0,
                feather: int = 2, output_threshold: float = 48.0) -> list[Image.Image]:
    """Each output with the previous (blended) output's pixels where its input stayed still.

    "Still" is measured against the input the kept pixels were made from, not just the previous
    frame, so a slow change (an edge creeping a little every frame) is refreshed once it adds up
    past ``threshold``. Where the new output differs from the kept one by more than
    ``output_threshold`` the new output is taken too: an edit can move things where the input is
    still (a moved or added object that follows a path), and those changes are no flicker.
    """
    result = [outputs[0]]
    shown = np.asarray(inputs[0], np.float32)  # the input behind each pixel of result[-1]
    for i in range(1, len(outputs)):
        current, fresh = np.asarray(inputs[i], np.float32), np.asarray(outputs[i], np.float32)
        before = np.asarray(result[-1], np.float32)
        change = _changed(shown, current, threshold)
        if change.shape != fresh.shape[:2]:
            change = np.asarray(Image.fromarray(change).resize(outputs[i].size, Image.Resampling.NEAREST))
        keep = _keep_weight(change | _changed(before, fresh, output_threshold), outputs[i].size, feather)
        result.append(Image.fromarray(np.rint(keep * before + (1 - keep) * fresh).astype(np.uint8)))
        at_input = keep if keep.shape[:2] == current.shape[:2] else _resized(keep, current.shape[1::-1])
        shown = at_input * shown + (1 - at_input) * current
    return result


def colormap(key_in: Image.Image, key_out: Image.Image, frame: Image.Image, levels: int = 32) -> Image.Image:
    """``frame`` through the edit ``key_in`` -> ``key_out`` seen as a colour map: every input colour (in
    ``levels``^3 bins) becomes the mean output colour of its bin; colours the key frame lacks get the
    frame's own colour shifted by the mean change. ``frame`` and ``key_in`` share a size."""
    step = 256 // levels
    a = np.asarray(key_in, np.int64)
    b = np.asarray(key_out.resize(key_in.size, Image.Resampling.BILINEAR) if key_out.size != key_in.size
                   else key_out, np.float64)
    bins = ((a // step) * np.array([levels * levels, levels, 1])).sum(-1).ravel()
    counts = np.bincount(bins, minlength=levels**3)
    sums = np.stack([np.bincount(bins, weights=b[..., c].ravel(), minlength=levels**3) for c in range(3)], -1)
    f = np.asarray(frame, np.int64)
    fb = ((f // step) * np.array([levels * levels, levels, 1])).sum(-1)
    shift = (b - a).reshape(-1, 3).mean(0)
    seen = counts[fb] > 0
    mapped = np.where(seen[..., None], sums[fb] / np.maximum(counts[fb], 1)[..., None], f + shift)
    out = Image.fromarray(np.clip(np.rint(mapped), 0, 255).astype(np.uint8))
    return out if out.size == key_out.size else out.resize(key_out.size, Image.Resampling.LANCZOS)


def carry(frames: Sequence[Image.Image], edited: dict[int, Image.Image], how: str = "hold") -> list[Image.Image]:
    """Every frame's output: edited frames as they are; the others from the nearest earlier edited frame,
    held (``hold``) or through its colour map where the input changed (``colormap``)."""
    outputs, key = [], None
    for i, frame in enumerate(frames):
        if i in edited:
            key = i
            outputs.append(edited[i])
        elif how == "hold":
            outputs.append(edited[key])
        else:
            mapped = colormap(frames[key], edited[key], frame)
            keep = _keep_weight(_changed(frames[key], frame, 10.0), mapped.size, 1)
            mixed = keep * np.asarray(edited[key], np.float32) + (1 - keep) * np.asarray(mapped, np.float32)
            outputs.append(Image.fromarray(np.rint(mixed).astype(np.uint8)))
    return outputs


# ------------------------------------------------------------------------------------------------
# Parameters and the work folder


def frames_digest(frames: Sequence[Image.Image]) -> str:
    digest = hashlib.sha256()
    for frame in frames:
        data = np.asarray(frame)
        digest.update(str(data.shape).encode())
        digest.update(data.tobytes())
    return digest.hexdigest()[:16]


def _video_params(editor, instruction: str, options: EditOptions, video: VideoOptions, frames) -> dict[str, Any]:
    checked = options.check(editor.recommended)
    kept = {k: v for k, v in checked.to_dict().items() if k != "num_images" and not k.startswith("mask_")}
    params = {"instruction": instruction, **kept,
              "model": editor.model_name, "frames": len(frames), "video": dataclasses.asdict(video)}
    if editor.runner.mode != "default":
        params["mode"] = editor.runner.mode
    return params


def work_folder_for(output: str | Path) -> Path:
    """The folder beside ``output`` that keeps finished frames until the video is written."""
    output = Path(output)
    return output.with_name(output.name + WORK_SUFFIX)


def discard_work(path: str | Path) -> None:
    """Remove a work folder once its video is written (only one that holds a job)."""
    path = Path(path)
    if (path / "job.json").is_file():
        shutil.rmtree(path, ignore_errors=True)


class _WorkFolder:
    """Finished frames of one job as PNGs, and ``job.json`` saying which job they belong to."""

    def __init__(self, path, editor, frames, instruction: str, options: EditOptions, video: VideoOptions):
        self.path = Path(path)
        key_opts = {k: v for k, v in options.check(editor.recommended).to_dict().items() if k != "seed"}
        self.key = {"instruction": instruction, "options": key_opts, "video": dataclasses.asdict(video),
                    "input": frames_digest(frames), "model": editor.model_name, "mode": editor.runner.mode}
        job = self.path / "job.json"
        recorded = None
        if job.is_file():
            try:
                recorded = json.loads(job.read_text())
            except ValueError:
                recorded = None
        same = recorded is not None and recorded.get("key") == self.key
        if same and (options.seed is None or recorded.get("seed") == options.seed):
            self.seed = int(recorded["seed"])
        else:
            if recorded is not None or job.is_file():
                shutil.rmtree(self.path)  # another job's frames: they cannot be reused
            elif self.path.exists() and any(self.path.iterdir()):
                raise BadOptions(f"work folder {self.path} exists and holds no ip2p job; remove it or choose another")
            self.seed = options.check(editor.recommended).seed
            self.path.mkdir(parents=True, exist_ok=True)
            write_atomic(job, json.dumps({"key": self.key, "seed": self.seed}, indent=1, default=str))

    def _file(self, index: int) -> Path:
        return self.path / f"{index:06d}.png"

    def load(self, indices: Sequence[int]) -> dict[int, Image.Image] | None:
        """The frames of one batch when all of them are done, else None (the batch is made again)."""
        if not all(self._file(i).is_file() for i in indices):
            return None
        from .images import load_image

        return {i: load_image(self._file(i)) for i in indices}

    def save(self, frames: dict[int, Image.Image], params: dict[str, Any]) -> None:
        from .images import save_image

        for index, frame in frames.items():
            save_image(frame, self._file(index), {**params, "frame": index})
