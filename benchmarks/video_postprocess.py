"""The model-free parts of ``ip2p video`` (the still-region blend, and carrying the edit between
edited frames with ``--every``) on a simulated editor that is exactly right but wobbles.

A diffusion model's per-frame edits are roughly right and differ from frame to frame in low
frequencies. Simulated here: each output frame is the exact target plus its own smooth noise (a
4 x 4 grid of N(0, sigma) offsets per channel, bicubically upsampled; sigma 8 on 0-255). That
isolates what the post-processing does to the flicker ratio and to the per-frame success
(``ip2p.shapes.score.score_edit``), which a random-weight model cannot show (it never succeeds).

    python benchmarks/video_postprocess.py --n 24 --frames 16 --out benchmarks/results/video-postprocess.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ip2p.shapes.animate import make_clip, score_clip
from ip2p.video_edit import blend_still, carry


def wobble(target: Image.Image, rng: np.random.Generator, sigma: float) -> Image.Image:
    """``target`` plus smooth per-frame noise: what one frame of a flickering but correct edit looks like."""
    grid = rng.normal(0, sigma, (4, 4, 3)).astype(np.float32)
    noise = np.stack([np.asarray(Image.fromarray(grid[..., c], mode="F").resize(target.size, Image.Resampling.BICUBIC))
                      for c in range(3)], -1)
    return Image.fromarray(np.clip(np.asarray(target, np.float32) + noise, 0, 255).round().astype(np.uint8))


def ways(clip, outputs):
    inputs = clip.inputs()
    every2 = {i: outputs[i] for i in range(0, len(outputs), 2)}
    blended2 = blend_still([inputs[i] for i in every2], list(every2.values()))
    return {
        "per frame (simulated naive)": outputs,
        "+ still-region blend": blend_still(inputs, outputs),
        "every 2, colormap carry": carry(inputs, every2, "colormap"),
        "every 2, hold": carry(inputs, every2, "hold"),
        "blend + every 2, hold": carry(inputs, dict(zip(every2, blended2, strict=True)), "hold"),
        "blend + every 2, colormap carry": carry(inputs, dict(zip(every2, blended2, strict=True)), "colormap"),
        "exact targets (no wobble)": clip.targets(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--sigma", type=float, default=8.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    rows: dict[str, list[dict]] = {}
    kinds = []
    for seed in range(args.n):
        clip = make_clip(seed, args.frames, args.size)
        kinds.append(clip.kind)
        rng = np.random.default_rng(seed)
        outputs = [wobble(t, rng, args.sigma) for t in clip.targets()]
        for name, frames in ways(clip, outputs).items():
            rows.setdefault(name, []).append(score_clip(clip, frames))

    def mean(values):
        values = [v for v in values if v is not None]
        return round(float(np.mean(values)), 3)

    table = [{"way": name, "flicker_ratio": mean([r["flicker_ratio"] for r in results]),
              "target_ratio": mean([r["target_ratio"] for r in results]),
              "success": mean([r["success"] for r in results])} for name, results in rows.items()]
    lines = ["| way | flicker ratio | target's ratio | per-frame success |", "|---|---|---|---|"]
    lines += [f"| {r['way']} | {r['flicker_ratio']:.3f} | {r['target_ratio']:.3f} | {r['success']:.3f} |" for r in table]
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps({"n": args.n, "frames": args.frames, "size": args.size,
                                              "sigma": args.sigma, "kinds": kinds, "rows": table}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
