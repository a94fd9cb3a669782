"""The video benchmark: each temporal-consistency technique against naive per-frame editing, on
animated shapes clips with exact per-frame targets.

For every clip and technique it records the flicker ratio (the output's mean frame-to-frame change
over the input's, :func:`ip2p.video.flicker_ratio`), the ratio the exact targets have (what a
perfect edit shows: a darkening edit lowers it), the per-frame edit success
(:func:`ip2p.shapes.score.score_edit`) and the time taken. The editor is only called
(``editor.edit_video(frames, instruction, video=technique, **options)``); nothing here imports torch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..files import write_atomic
from ..video import Video, write_video
from .animate import make_clip, score_clip
from .dataset import png_bytes

TECHNIQUES = ("naive", "noise", "attention", "attention+previous", "blend")


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 4) if values else None


def run_video_benchmark(editor, *, n: int = 6, frames: int = 16, size: int = 64, seed: int = 0,
                        kinds: Sequence[str] | None = None, techniques: Sequence[str] = TECHNIQUES,
                        edit_options: dict[str, Any] | None = None, out_dir: str | Path | None = None,
                        callback: Callable[[int, int], None] | None = None, label: str = "") -> dict[str, Any]:
    """Edit ``n`` test clips with every technique; returns (and writes to ``out_dir``) the report."""
    options = {k: v for k, v in (edit_options or {}).items() if v is not None}
    options.setdefault("seed", 0)
    clips = [make_clip(seed + i, frames, size, kinds=kinds) for i in range(n)]
    results: dict[str, list[dict[str, Any]]] = {t: [] for t in techniques}
    outputs: dict[str, list[Image.Image]] = {}
    done, total = 0, n * len(techniques)
    for index, clip in enumerate(clips):
        for technique in techniques:
            started = time.monotonic()
            result = editor.edit_video(clip.inputs(), clip.instruction, video=technique, **options)
            scored = score_clip(clip, result.frames)
            scored["seconds"] = round(time.monotonic() - started, 3)
            results[technique].append(scored)
            if index == 0:
                outputs[technique] = result.frames
            done += 1
            if callback is not None:
                callback(done, total)
    rows = [{"technique": t, "clips": len(r), "flicker_ratio": _mean([x["flicker_ratio"] for x in r]),
             "target_ratio": _mean([x["target_ratio"] for x in r]), "success": _mean([x["success"] for x in r]),
             "psnr": _mean([x["psnr"] for x in r]), "seconds": _mean([x["seconds"] for x in r])}
            for t, r in results.items()]
    report = {"label": label, "model": editor.model_name, "n": n, "frames": frames, "size": size, "seed": seed,
              "options": options, "rows": rows, "clips": [c.record() for c in clips], "per_clip": results}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "report.json", json.dumps(report, indent=1))
        write_atomic(out / "report.md", markdown_table(rows, label or f"Video benchmark ({n} clips)"))
        write_atomic(out / "strip.png", png_bytes(frame_strip(clips[0], outputs)))
        write_video(Video(side_by_side(clips[0], outputs), Fraction(clips[0].fps)), out / "side_by_side.gif")
    return report


def markdown_table(rows: Sequence[dict[str, Any]], title: str) -> str:
    def cell(value, digits=3):
        return "–" if value is None else f"{value:.{digits}f}"

    lines = [f"### {title}", "", "| technique | flicker ratio | target's ratio | per-frame success | PSNR (dB) "
             "| s / clip |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['technique']} | {cell(r['flicker_ratio'])} | {cell(r['target_ratio'])} | "
                     f"{cell(r['success'])} | {cell(r['psnr'], 1)} | {cell(r['seconds'], 1)} |")
    return "\n".join(lines) + "\n"


def _rows(clip, outputs) -> list[tuple[str, Sequence[Image.Image]]]:
    return [("input", clip.inputs()), ("exact target", clip.targets()), *outputs.items()]


def side_by_side(clip, outputs: dict[str, Sequence[Image.Image]], label_height: int = 14) -> list[Image.Image]:
    """Frames of an animation: input, target and every technique's output next to each other, each
    named above its column."""
    rows = _rows(clip, outputs)
    side = clip.size
    pictures = []
    for t in range(len(clip.frames)):
        canvas = Image.new("RGB", (side * len(rows), side + label_height), "white")
        draw = ImageDraw.Draw(canvas)
        for c, (name, frames) in enumerate(rows):
            draw.text((c * side + 2, 1), name[:10], fill="black")
            canvas.paste(frames[t].convert("RGB").resize((side, side)), (c * side, label_height))
        pictures.append(canvas)
    return pictures


def frame_strip(clip, outputs: dict[str, Sequence[Image.Image]], columns: int = 8, label_width: int = 132
                ) -> Image.Image:
    """Rows: input, exact target, then each technique's output; ``columns`` frames evenly spaced."""
    count = len(clip.frames)
    picks = sorted({round(i * (count - 1) / max(columns - 1, 1)) for i in range(columns)})
    rows = _rows(clip, outputs)
    side = clip.size
    strip = Image.new("RGB", (label_width + side * len(picks), side * len(rows)), "white")
    draw = ImageDraw.Draw(strip)
    for r, (name, frames) in enumerate(rows):
        draw.text((4, r * side + side // 2 - 6), name, fill="black")
        for c, index in enumerate(picks):
            frame = frames[index].convert("RGB")
            if frame.size != (side, side):
                frame = frame.resize((side, side), Image.Resampling.LANCZOS)
            strip.paste(frame, (label_width + c * side, r * side))
    return strip
