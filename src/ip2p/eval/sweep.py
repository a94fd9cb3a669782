"""Guidance sweeps and the paper's trade-off plot.

InstructPix2Pix reads its two guidance scales off one figure (Brooks et al. 2023): for each setting,
CLIP directional similarity (how well the change follows the caption change, x axis) against CLIP
image similarity to the input (how much of the input is kept, y axis); the paper holds the text scale
s_T = 7.5 and sweeps the image scale s_I over 1.0 to 2.2. ``--sweep image_guidance_scale=1.0:2.2:0.2``
gives those points; ``--sweep guidance_scale=3:12:1.5`` at a fixed s_I gives the other curve.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadOptions
from ..files import atomic_path

#: Sweepable options, by every name a user may give them.
SWEEP_NAMES = {
    "image_guidance_scale": "image_guidance_scale", "s_i": "image_guidance_scale", "image_cfg": "image_guidance_scale",
    "guidance_scale": "guidance_scale", "s_t": "guidance_scale", "text_cfg": "guidance_scale",
    "steps": "steps", "num_inference_steps": "steps",
}
SHORT = {"image_guidance_scale": "s_I", "guidance_scale": "s_T", "steps": "steps"}


@dataclass(frozen=True)
class Sweep:
    name: str
    values: tuple[float | int, ...]

    def settings(self) -> list[dict[str, Any]]:
        return [{self.name: v} for v in self.values]


def parse_sweep(text: str) -> Sweep:
    """``NAME=START:STOP:STEP`` (inclusive) or ``NAME=V1,V2,...``; NAME is image_guidance_scale (s_I),
    guidance_scale (s_T) or steps."""
    name, sep, spec = text.partition("=")
    key = SWEEP_NAMES.get(name.strip().lower().replace("-", "_"))
    if not sep or key is None:
        raise BadOptions(f"--sweep must be NAME=START:STOP:STEP or NAME=V1,V2 with NAME one of "
                         f"image_guidance_scale, guidance_scale, steps; got {text!r}", param="--sweep")
    kind = int if key == "steps" else float
    try:
        if ":" in spec:
            start, stop, step = (float(x) for x in spec.split(":"))
            if step <= 0 or stop < start:
                raise ValueError("need STEP > 0 and STOP >= START")
            count = int(round((stop - start) / step)) + 1
            if count > 100:
                raise ValueError(f"{count} settings is too many (at most 100)")
            values = [round(start + i * step, 6) for i in range(count)]
        else:
            values = [float(x) for x in spec.split(",") if x.strip()]
        if not values:
            raise ValueError("no values")
    except ValueError as exc:
        raise BadOptions(f"--sweep {text!r}: {exc}", param="--sweep") from None
    if kind is int and any(v != int(v) for v in values):
        raise BadOptions(f"--sweep {text!r}: steps must be whole numbers", param="--sweep")
    return Sweep(key, tuple(dict.fromkeys(kind(v) for v in values)))


def setting_label(setting: dict[str, Any]) -> str:
    """``s_I=1.2``; empty for the method's fixed settings."""
    return ", ".join(f"{SHORT.get(k, k)}={v:g}" if isinstance(v, float) else f"{SHORT.get(k, k)}={v}"
                     for k, v in setting.items())


def plot_tradeoff(points: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """The paper's figure: one marker per (method, setting) at (clip_direction, clip_image), a line
    through each method family's points, each point labelled with its ``annotation`` (the setting);
    written atomically."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BadOptions("the sweep figure needs matplotlib (pip install 'ip2p[eval]')") from None
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    families: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        if p.get("clip_direction") is not None and p.get("clip_image") is not None:
            families.setdefault(p["family"], []).append(p)
    for members in families.values():
        xs = [p["clip_direction"] for p in members]
        ys = [p["clip_image"] for p in members]
        names = sorted({p["method"] for p in members})
        # one method swept, or one baseline at several settings ("SDEdit (m, strength 0.5)" -> "SDEdit (m)")
        label = names[0] if len(names) == 1 else names[0].rpartition(", ")[0] + ")"
        ax.plot(xs, ys, marker="o", linestyle="-" if len(members) > 1 else "none", label=label)
        for k, p in enumerate(members):
            if p.get("annotation"):  # staggered, so that close points keep readable labels
                ax.annotate(p["annotation"], (p["clip_direction"], p["clip_image"]), textcoords="offset points",
                            xytext=(5, 4 + 9 * (k % 4)), fontsize=7)
    ax.set_xlabel("CLIP text-image direction similarity (edit follows the caption change) ->")
    ax.set_ylabel("CLIP image similarity to the input ->")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    if families:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path) as temp:
        fig.savefig(temp, format="png")
    plt.close(fig)
