"""ip2p: instruction-guided image editing with InstructPix2Pix (Brooks, Holynski, Efros 2023)."""

from .errors import BadImage, BadModel, BadOptions, ImageTooLarge, Ip2pError, ModelNotFound, OutOfMemory
from .options import EditOptions
from .version import __version__

__all__ = [
    "BadImage",
    "BadModel",
    "BadOptions",
    "EditOptions",
    "ImageTooLarge",
    "Ip2pError",
    "ModelNotFound",
    "OutOfMemory",
    "load_editor",
    "__version__",
]


def load_editor(model=None, device="auto", dtype="auto", **kwargs):
    """Load a model and return an :class:`ip2p.editor.Editor` ready to edit."""
    from .editor import Editor

    return Editor.load(model, device=device, dtype=dtype, **kwargs)
