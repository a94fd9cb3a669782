"""Masked edits on the shapes world, where the change mask is exact (docs/masks.md).

For every test example it edits four ways, at the model's own settings and the same seed:
unmasked, with the true change mask (default feather, and feather 0), and with ``--mask auto``. It reports, per edit kind, the
mean and largest error outside the true mask (0-255 scale; ``free`` pixels an answer may also
change are left out) and the shapes scorer's success.

Two figures explain what ``--mask auto`` can do on a given model. ``auto_floor_mae``: the unmasked
edit's error outside the true mask counted only where the mask the auto edit used covers it (the
unmasked edit is that auto edit's first pass: same seed, same settings): error there is what the model changed strongly in the
wrong place, and no mask made from the change can remove it. ``auto_when_right``: unmasked and auto
error on the examples whose unmasked edit passed its kind's rule (the model edited the right thing).
``auto_nothing_changed``: auto edits whose first pass changed nothing; ``--mask auto`` then refuses
in one line (nothing could change), and the input itself is scored.

    python benchmarks/mask_preservation.py --model demo --n 16 --out benchmarks/results/masks-demo.json

``--model tiny`` uses a tiny random model (it edits noise: only the exactness column means
anything there). Run it on an otherwise idle machine, or say the load beside its figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

KINDS = ("recolor_object", "recolor_background", "remove_object", "add_object",
         "grayscale", "invert", "darken", "brighten")
WAYS = ("unmasked", "true mask", "true mask, feather 0", "auto mask")


def outside_error(example, output: np.ndarray, within: np.ndarray | None = None) -> tuple[float, int]:
    """(mean, largest) error outside the true mask, over all of those pixels; with ``within``, error
    elsewhere counts as 0 (the mean is still over all of them)."""
    keep = ~example.mask
    if example.free is not None:
        keep &= ~example.free
    diff = np.abs(output.astype(int) - example.before.astype(int)).max(axis=-1)
    if within is not None:
        diff = np.where(within, diff, 0)
    diff = diff[keep]
    return float(diff.mean()) if diff.size else 0.0, int(diff.max()) if diff.size else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--n", type=int, default=16, help="examples per kind")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--load", default="idle", help="what else ran on the machine (recorded)")
    parser.add_argument("--mask-threshold", type=float, default=None, help="--mask auto's ΔE (default: the editor's)")
    parser.add_argument("--mask-dilation", type=int, default=None, help="--mask auto's growth (default: the editor's)")
    args = parser.parse_args(argv)

    import torch

    from ip2p.editor import Editor
    from ip2p.errors import BadImage
    from ip2p.shapes.edits import make_example
    from ip2p.shapes.score import score_edit

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model == "tiny":
        from ip2p.tiny import build_tiny_components

        editor = Editor(build_tiny_components(seed=0, sample_size=args.size // 8))
    else:
        editor = Editor.load(args.model, device="cpu")
    rows: dict[str, dict[str, list]] = {kind: {way: [] for way in WAYS} for kind in KINDS}
    floors: dict[str, list[float]] = {kind: [] for kind in KINDS}
    right: dict[str, list[int]] = {kind: [] for kind in KINDS}  # indices whose unmasked edit passed its rule
    unchanged: dict[str, int] = {kind: 0 for kind in KINDS}  # auto edits whose first pass changed nothing
    auto = {k: v for k, v in (("mask_threshold", args.mask_threshold), ("mask_dilation", args.mask_dilation))
            if v is not None}
    auto_used: dict[str, float] = {}
    started = time.perf_counter()
    seed = 0
    for kind in KINDS:
        for _ in range(args.n):
            example = make_example(seed, size=args.size, kinds=[kind], split="test")
            seed += 1
            masks = {"unmasked": (None, {}), "true mask": (example.mask, {}),
                     "true mask, feather 0": (example.mask, {"mask_feather": 0}),
                     "auto mask": ("auto", auto)}
            for way, (mask, extra) in masks.items():
                try:
                    result = editor.edit(example.before, example.instruction, seed=example.seed,
                                         resolution=args.size, mask=mask, **extra)
                    output = np.asarray(result.image)
                except BadImage:  # --mask auto refuses an empty change mask: the user keeps the input
                    if way != "auto mask":
                        raise
                    result, output = None, example.before
                    unchanged[kind] += 1
                mean, worst = outside_error(example, output)
                score = score_edit(example, output)
                rows[kind][way].append({"outside_mae": mean, "outside_max": worst, "success": score["success"]})
                if way == "unmasked":
                    unmasked = output
                    if score["kind_ok"]:
                        right[kind].append(len(rows[kind][way]) - 1)
                elif way == "auto mask" and result is not None:
                    floors[kind].append(outside_error(example, unmasked, within=result.masks[0])[0])
                    auto_used = {k: result.params[0][k] for k in ("mask_threshold", "mask_dilation")}
                elif way == "auto mask":
                    floors[kind].append(0.0)  # an empty mask covers nothing
        print(f"{kind}: done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    table = {}
    for kind, ways in rows.items():
        table[kind] = {way: {"outside_mae": round(float(np.mean([r["outside_mae"] for r in items])), 3),
                             "outside_max": max(r["outside_max"] for r in items),
                             "success": round(float(np.mean([r["success"] for r in items])), 3)}
                       for way, items in ways.items()}
        table[kind]["auto_floor_mae"] = round(float(np.mean(floors[kind])), 3)
        table[kind]["auto_nothing_changed"] = unchanged[kind]
        table[kind]["auto_when_right"] = {"n": len(right[kind]), **{
            way: round(float(np.mean([ways[way][i]["outside_mae"] for i in right[kind]])), 3) if right[kind] else None
            for way in ("unmasked", "auto mask")}}
    report = {"benchmark": "mask_preservation", "model": args.model, "n_per_kind": args.n, "size": args.size,
              "edit_settings": editor.recommended or "global defaults", "load": args.load,
              "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                         f"{torch.get_num_threads()} threads",
              "auto_mask": auto_used, "date": time.strftime("%Y-%m-%d"),
              "seconds": round(time.perf_counter() - started, 1), "rows": table}
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(args.out)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
