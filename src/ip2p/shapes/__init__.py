"""The synthetic shapes world: unlimited exact InstructPix2Pix triplets and an exact benchmark.

Pure Python + numpy + Pillow; nothing here imports torch (the benchmark only calls an editor it is
given). See docs/shapes.md.
"""

from .edits import SPLITS, Edit, make_example, references, world_seed
from .phrasing import EDIT_KINDS, HELD_OUT, TEMPLATES, vocabulary
from .render import render
from .scene import KINDS, Background, Scene, Shape, caption, random_scene

__all__ = [
    "EDIT_KINDS",
    "HELD_OUT",
    "KINDS",
    "SPLITS",
    "TEMPLATES",
    "Background",
    "Edit",
    "Scene",
    "Shape",
    "caption",
    "make_example",
    "random_scene",
    "references",
    "render",
    "vocabulary",
    "world_seed",
]
