"""The synthetic shapes world: unlimited exact InstructPix2Pix triplets and an exact benchmark.

Pure Python + numpy + Pillow; nothing here imports torch (the benchmark only calls an editor it is
given). See docs/shapes.md.
"""

from .edits import REFERENCE_TYPES, SPLITS, Edit, make_example, reference_type, references, world_seed
from .phrasing import EDIT_KINDS, HELD_OUT, TEMPLATES, vocabulary
from .render import render
from .scene import KINDS, Background, Scene, Shape, caption, random_scene

__all__ = [
    "EDIT_KINDS",
    "HELD_OUT",
    "KINDS",
    "REFERENCE_TYPES",
    "SPLITS",
    "TEMPLATES",
    "Background",
    "Edit",
    "Scene",
    "Shape",
    "caption",
    "make_example",
    "random_scene",
    "reference_type",
    "references",
    "render",
    "vocabulary",
    "world_seed",
]
