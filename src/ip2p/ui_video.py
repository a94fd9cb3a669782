"""The web UI's Video tab: one instruction over a short uploaded video (:mod:`ip2p.ui` lays it out
beside the others and hands it its shared handlers).

:func:`edit_video_file` is the handler, a plain function that tests call without a browser; the
tab's limits are the server's (``max_video_frames``, ``max_video_pixels``) when it is mounted there.
It lives in its own module so that ``ui.py`` stays the picture editor's. (No ``from __future__
import annotations``: Gradio must see the ``gr.Request`` annotation as a type to fill it in.)
"""

import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .errors import BadOptions
from .options import EditOptions

DEFAULT_VIDEO_FRAMES = 48
DEFAULT_VIDEO_PIXELS = 48 * 512 * 512


def edit_video_file(editor, path: str | None, instruction: str, options: EditOptions, out_dir: str | Path, *,
                    consistency: str = "blend", every: int = 1, limits: Mapping[str, float] | None = None,
                    step: Callable[[int, int], None] | None = None) -> tuple[str, dict[str, Any]]:
    """Edit the video at ``path`` and write it as an mp4 (audio kept) into ``out_dir``; returns the
    file and the report (flicker figures, frames, seconds). Errors are one-line Ip2pErrors."""
    from .video import ReadLimits, read_video, write_video
    from .video_edit import VideoOptions

    if not path:
        raise BadOptions("upload a video first (mp4, webm, mov, GIF or WebP)")
    if not instruction or not instruction.strip():
        raise BadOptions("write an instruction first, e.g. 'make it winter'", param="What to change")
    limits = limits or {}
    video_options = VideoOptions.preset(consistency, every=int(every))
    read = ReadLimits(max_frames=int(limits.get("video_frames", DEFAULT_VIDEO_FRAMES)),
                      max_total_pixels=int(limits.get("video_pixels", DEFAULT_VIDEO_PIXELS)))
    source = read_video(path, read, name=Path(path).name)
    result = editor.edit_video(source.frames, instruction.strip(), options, video=video_options, callback=step)
    name = Path(out_dir) / f"video-{secrets.token_hex(4)}-s{result.params['seed']}.mp4"
    written = write_video(source.replace_frames(result.frames), name, result.params)
    return str(written), {**result.report, "seed": result.params["seed"], "consistency": consistency}


def video_tab(gr):
    from .video_edit import DEFAULT_PRESET, PRESETS

    v = SimpleNamespace()
    with gr.Tab("Video"):
        gr.Markdown("One instruction over every frame of a short video (the settings on the left apply). "
                    "*blend* ties the frames together best; *naive* edits each frame on its own.")
        v.source = gr.Video(label="Video", sources=["upload"], elem_id="video-input")
        v.consistency = gr.Dropdown(list(PRESETS), value=DEFAULT_PRESET, label="Temporal consistency")
        v.every = gr.Number(value=1, precision=0, minimum=1, label="Edit every Nth frame (carry between)")
        v.run = gr.Button("Edit video", variant="primary", elem_id="video-button")
        v.result = gr.Video(label="Edited video", interactive=False, elem_id="video-result")
        v.report = gr.JSON(label="Flicker and timing", elem_id="video-report")
    return v


def wire_video(gr, h, ui, concurrency_id: str) -> None:
    """The Video tab's button: ``h`` is the UI's shared handlers (stop flags, limits, scratch); the
    edit waits in the queue ``concurrency_id`` with the UI's other edits."""
    p, s, v = ui.input, ui.input.settings, ui.video

    def on_video(path, instruction, consistency, every, text_cfg, image_cfg, steps, seed, randomize, scheduler,
                 resolution, negative, request: gr.Request, progress=gr.Progress()):
        def work(feed):
            options = h.options(text_cfg, image_cfg, steps, seed, randomize, scheduler, resolution, negative)
            out, report = edit_video_file(h.editor, path, instruction, options, h.scratch.path,
                                          consistency=consistency, every=every or 1, limits=h.limits, step=feed)
            ratio = report["flicker_ratio"]
            note = f"Edited {report['frames']} frames in {report['seconds']:.1f} s (seed {report['seed']}" + (
                f", flicker ratio {ratio:.2f})." if ratio is not None else ").")
            return out, report, note

        return h.run(request, progress, work, 2)

    v.run.click(on_video, [v.source, p.instruction, v.consistency, v.every, s.text_cfg, s.image_cfg, s.steps, s.seed,
                           s.randomize, s.scheduler, s.resolution, p.negative], [v.result, v.report, p.status],
                show_progress_on=[v.result], concurrency_id=concurrency_id)
