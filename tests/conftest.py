"""Shared fixtures: tiny real models built in-process (no downloads)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def tiny_components():
    from ip2p.tiny import build_tiny_components

    return build_tiny_components(seed=0)


@pytest.fixture(scope="session")
def tiny_editor(tiny_components):
    from ip2p.editor import Editor

    return Editor(tiny_components)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_components):
    """The tiny model saved as a stock diffusers InstructPix2Pix folder."""
    from ip2p.models import save_diffusers

    return save_diffusers(tiny_components, tmp_path_factory.mktemp("models") / "tiny")


def gradient_image(width: int = 32, height: int = 32, seed: int = 0) -> Image.Image:
    """A deterministic colourful test picture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) * 127 / max(width + height, 1)], -1)
    base += rng.normal(0, 8, base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


@pytest.fixture
def picture():
    return gradient_image()
