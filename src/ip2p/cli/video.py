"""``ip2p video IN -i INSTRUCTION -o OUT``: edit every frame of a video, GIF or frame folder.

Parsing and printing only; the work is :meth:`ip2p.editor.Editor.edit_video` (:mod:`ip2p.video_edit`)
and :mod:`ip2p.video`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import BadOptions
from ..options import check_instruction
from .common import ProgressBar, add_edit_options, add_model_options, load_editor_for, options_from_args

#: Edit options that do not apply to a video (one output per frame).
NOT_FOR_VIDEO = ("num_images", "mask_feather", "mask_threshold", "mask_dilation")


def register(sub) -> None:
    from ..options import OPTIONS
    from ..video import DEFAULT_MAX_FRAMES
    from ..video_edit import ANCHORS, CARRIES, DEFAULT_PRESET, PRESETS

    p = sub.add_parser("video", help="edit every frame of a video with one instruction, without flicker",
                       description="Edit IN (mp4/webm/mov/mkv, animated GIF/WebP, or a folder of frames) and write "
                                   "OUT in the format its name says (a name without suffix: a folder of PNGs). The "
                                   "frame rate, size and audio track are kept. A killed run resumes where it stopped.")
    p.add_argument("input", metavar="IN", help="video file, animated GIF/WebP, or folder of frames")
    p.add_argument("-i", "--instruction", "--prompt", dest="instruction", help="what to change, e.g. 'make it winter'")
    p.add_argument("-o", "--output", help="output video, GIF/WebP, or folder")
    g = p.add_argument_group("frames")
    g.add_argument("--start", type=float, default=0.0, help="first second to edit (default 0)")
    g.add_argument("--end", type=float, default=None, help="second to stop before (default: the end)")
    g.add_argument("--every", type=int, default=1, help="edit every Nth frame and carry the edit to the frames "
                                                        "between (default 1: edit every frame)")
    g.add_argument("--carry", choices=CARRIES, default="hold", help="with --every: hold each edited frame until "
                                                                     "the next (default), or map the frames between "
                                                                     "through its colour map")
    g.add_argument("--max-frames", type=int, default=DEFAULT_MAX_FRAMES,
                   help=f"refuse inputs with more frames than this (default {DEFAULT_MAX_FRAMES})")
    g.add_argument("--fps", type=float, default=None, help="frame rate of a folder of frames (default 24)")
    c = p.add_argument_group("temporal consistency")
    c.add_argument("--consistency", choices=PRESETS, default=DEFAULT_PRESET,
                   help="naive: each frame alone; noise: one initial noise for all; attention: plus cross-frame "
                        "attention to the first frame; attention+previous: to the first and the previous frame; "
                        f"blend: attention plus still regions kept from the previous output (default {DEFAULT_PRESET})")
    c.add_argument("--anchor", choices=ANCHORS, default=None, help="override the preset's attention anchor")
    c.add_argument("--batch-size", type=int, default=4, help="frames per UNet batch, anchor included (default 4)")
    c.add_argument("--report", action="store_true", help="print the flicker figures (and, with --targets, the "
                                                         "per-frame success) as JSON on stdout")
    c.add_argument("--targets", metavar="CLIP", help="a clip folder from `ip2p shapes video`: score every frame "
                                                     "against its exact target")
    c.add_argument("--keep-work", action="store_true", help="keep the folder of edited frames after writing OUT")
    add_edit_options(p, only=tuple(o.name for o in OPTIONS if o.name not in NOT_FOR_VIDEO))
    add_model_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or notes on stderr")
    p.set_defaults(func=run_video)


def _say(args, text: str) -> None:
    if not args.quiet:
        print(f"ip2p: {text}", file=sys.stderr)


def run_video(args) -> int:
    from ..video import ReadLimits, kind_of, read_video, write_video
    from ..video_edit import VideoOptions, discard_work, work_folder_for

    if args.instruction is None:
        raise BadOptions("no instruction given (-i/--instruction)", param="--instruction")
    check_instruction(args.instruction, "--instruction")
    if args.output is None:
        raise BadOptions("no output given (-o/--output)")
    out_kind = kind_of(args.output)
    changes = {"every": args.every, "carry": args.carry, "batch_size": args.batch_size}
    if args.anchor is not None:
        changes["anchor"] = args.anchor
    video_options = VideoOptions.preset(args.consistency, **changes)
    options = options_from_args(args)
    options.check()  # a bad flag fails here, before the video is decoded or the model loads
    clip = _targets(args.targets) if args.targets else None

    video = read_video(args.input, ReadLimits(start=args.start, end=args.end, max_frames=args.max_frames,
                                              fps=args.fps))
    if clip is not None and len(clip.frames) != len(video.frames):
        raise BadOptions(f"--targets {args.targets} has {len(clip.frames)} frames, the input {len(video.frames)}")
    editor = load_editor_for(args)
    work = work_folder_for(args.output)
    bar = ProgressBar(not args.quiet, desc="video", unit="frame")
    try:
        result = editor.edit_video(video.frames, args.instruction, options, video=video_options, work_dir=work,
                                   progress=bar)
    finally:
        bar.close()
    if result.report["resumed_frames"]:
        _say(args, f"resumed: {result.report['resumed_frames']} of {result.report['edited_frames']} edited frames "
                   f"were already done in {work}")
    if video.audio is not None and out_kind != "container":
        _say(args, f"the audio track is not kept: {Path(args.output).name} cannot hold one")
    written = write_video(video.replace_frames(result.frames), args.output, result.params)
    if not args.keep_work:
        discard_work(work)
    _say(args, f"wrote {written} ({len(result.frames)} frames at {float(video.fps):g} fps, seed {result.params['seed']}, "
               f"flicker ratio {_ratio(result.report['flicker_ratio'])})")
    if args.report:
        report = dict(result.report, consistency=args.consistency, seed=result.params["seed"])
        if clip is not None:
            from ..shapes.animate import score_clip

            report["targets"] = score_clip(clip, result.frames)
        print(json.dumps(report))
    return 0


def _ratio(value) -> str:
    return "n/a (still input)" if value is None else f"{value:.3f}"


def _targets(folder: str):
    from ..shapes.animate import read_clip

    return read_clip(folder)


# ------------------------------------------------------------------------------------------------
# ip2p shapes video / ip2p bench video (registered by ip2p.cli.shapes)


def register_shapes_video(sub) -> None:
    p = sub.add_parser("video", help="write animated shapes clips with an exact target for every frame")
    p.add_argument("--frames", type=int, default=24, help="frames per clip (default 24)")
    p.add_argument("--n", type=int, default=1, help="number of clips (default 1)")
    p.add_argument("--size", type=int, default=64, help="frame side in pixels, 64-512 (default 64)")
    p.add_argument("--seed", type=int, default=0, help="first clip seed (default 0)")
    p.add_argument("--split", default="test", help="train | test (default test)")
    p.add_argument("--kinds", default=None, help="comma-separated edit kinds (default all)")
    p.add_argument("--fps", type=int, default=12, help="frame rate of the GIFs (default 12)")
    p.add_argument("--out", required=True, help="folder for clip-NNNNN/ folders")
    p.set_defaults(func=run_shapes_video)


def _kinds(text: str | None):
    return None if not text else tuple(k.strip() for k in text.split(",") if k.strip())


def run_shapes_video(args) -> int:
    from ..shapes.animate import make_clip, write_clip

    if args.n < 1:
        raise BadOptions(f"--n must be a positive integer, got {args.n}")
    if not 1 <= args.fps <= 100:
        raise BadOptions(f"--fps must be from 1 to 100, got {args.fps}")
    out = Path(args.out)
    for seed in range(args.seed, args.seed + args.n):
        clip = make_clip(seed, args.frames, args.size, kinds=_kinds(args.kinds), split=args.split, fps=args.fps)
        folder = write_clip(clip, out / f"clip-{seed:05d}")
        print(json.dumps({"clip": str(folder), "kind": clip.kind, "instruction": clip.instruction,
                          "frames": len(clip.frames)}))
    return 0


def register_bench_video(bench_sub) -> None:
    from ..shapes.videobench import TECHNIQUES

    b = bench_sub.add_parser("video", help="flicker and per-frame success of each temporal-consistency technique "
                                           "on animated shapes clips")
    b.add_argument("--n", type=int, default=6, help="clips (default 6)")
    b.add_argument("--frames", type=int, default=16, help="frames per clip (default 16)")
    b.add_argument("--size", type=int, default=64)
    b.add_argument("--clip-seed", type=int, default=0, help="first clip (default 0); --seed is the edits' seed")
    b.add_argument("--kinds", default=None, help="comma-separated edit kinds (default all)")
    b.add_argument("--techniques", default=",".join(TECHNIQUES),
                   help=f"comma-separated presets, each with optional changes such as blend/every=2/carry=hold "
                        f"(default {','.join(TECHNIQUES)})")
    b.add_argument("--label", default="", help="title of the report (say which model it measured)")
    b.add_argument("--out", required=True, help="folder for report.md, report.json, strip.png, side_by_side.gif")
    add_edit_options(b, only=("steps", "guidance_scale", "image_guidance_scale", "scheduler", "seed", "resolution"))
    add_model_options(b)
    b.set_defaults(func=run_bench_video)


def run_bench_video(args) -> int:
    from ..shapes.videobench import TECHNIQUES, markdown_table, run_video_benchmark
    from ..video_edit import technique

    techniques = _kinds(args.techniques) or TECHNIQUES
    for name in techniques:
        technique(name)  # a bad one fails here, before the model loads
    options = options_from_args(args)
    options.check()
    editor = load_editor_for(args)
    bar = ProgressBar(True, desc="clips", unit="edit")
    try:
        report = run_video_benchmark(editor, n=args.n, frames=args.frames, size=args.size, seed=args.clip_seed,
                                     kinds=_kinds(args.kinds), techniques=techniques,
                                     edit_options={k: v for k, v in options.to_dict().items() if v is not None
                                                   and getattr(args, k, None) is not None},
                                     out_dir=args.out, callback=bar, label=args.label)
    finally:
        bar.close()
    sys.stdout.write(markdown_table(report["rows"], args.label or f"Video benchmark ({args.n} clips)"))
    return 0
