"""Render ``examples/shapes.png``: the shapes-world scene the README's first command edits.

A large red circle and a medium yellow star on a plain white background, 64x64 (the bundled demo
model's native size). ``edited()`` is the exact answer to "make the circle blue", which
tests/test_demo.py compares the demo model's output against.

    python examples/make_shapes_example.py            # rewrites examples/shapes.png
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ip2p.shapes.render import render
from ip2p.shapes.scene import Background, Scene, Shape

SIZE = 64
INSTRUCTION = "make the circle blue"
CIRCLE_ID = 0


def scene() -> Scene:
    return Scene(
        background=Background(style="plain", color="white"),
        objects=(
            Shape(kind="circle", color="red", size="large", x=0.32, y=0.38, id=CIRCLE_ID),
            Shape(kind="star", color="yellow", size="medium", x=0.72, y=0.68, id=1),
        ),
    )


def edited() -> Scene:
    return scene().swap(scene().get(CIRCLE_ID).replace(color="blue"))


def images(size: int = SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input, exact target, circle core mask) as uint8 HxWx3, uint8 HxWx3, bool HxW."""
    before = render(scene(), size)
    after = render(edited(), size)
    return before.image, after.image, before.core(CIRCLE_ID)


if __name__ == "__main__":
    from PIL import Image

    out = Path(__file__).with_name("shapes.png")
    tmp = out.with_suffix(".tmp.png")
    Image.fromarray(images()[0]).save(tmp)
    tmp.replace(out)
    print(f"wrote {out}")
