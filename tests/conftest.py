"""Shared fixtures: tiny real models built in-process (no downloads)."""

from __future__ import annotations

import pytest


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
    from ip2p.components import save_diffusers

    return save_diffusers(tiny_components, tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def picture():
    from ip2p.tiny import gradient_image

    return gradient_image()
