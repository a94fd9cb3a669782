"""Training InstructPix2Pix models (``ip2p train``): from SD-1.x, from an IP2P model, or from scratch.

The public API is :func:`train` with a :class:`TrainConfig`; see docs/training.md. Heavy modules
(torch, diffusers, accelerate) load only when a function is called.
"""

from __future__ import annotations

from .config import TrainConfig

__all__ = ["TrainConfig", "export_checkpoint", "train", "widen_conv_in"]


def train(config, *, resume: bool = False, callback=None, export: bool = True):
    """Train per ``config`` (a :class:`TrainConfig`, a mapping or a YAML path); see :mod:`.loop`."""
    from .loop import train as _train

    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_mapping(config) if isinstance(config, dict) else TrainConfig.from_yaml(config)
    return _train(config, resume=resume, callback=callback, export=export)


def export_checkpoint(checkpoint, target):
    """Export a checkpoint folder's EMA weights as a diffusers InstructPix2Pix model."""
    from .export import export_checkpoint as _export

    return _export(checkpoint, target)


def widen_conv_in(unet, in_channels: int = 8):
    """Widen a text-to-image UNet's first convolution (zero-initialised new channels)."""
    from .model import widen_conv_in as _widen

    return _widen(unet, in_channels)
