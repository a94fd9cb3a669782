"""The bundled demo model, end to end: shipping, stock diffusers, real edits (the README command: test_readme.py).

Everything here runs the real shipped weights (src/ip2p/data/models/demo: an exact pixel-unshuffle
autoencoder and a residual x0 UNet, 64x64) at the model's own settings (its ip2p.json) on real
pixels, against the shapes world's exact targets. The floors it asserts sit under the figures
measured in docs/demo-model.md, so a regression fails and a better model passes.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "shapes.png"
DEMO_DIR = ROOT / "src" / "ip2p" / "data" / "models" / "demo"
INSTRUCTION = "make the circle blue"

pytestmark = pytest.mark.skipif(
    not (DEMO_DIR / "model_index.json").is_file(),
    reason="the demo model is not shipped (docs/demo-model.md)",
)

torch.set_num_threads(1)


def _example_module():
    spec = importlib.util.spec_from_file_location("make_shapes_example", ROOT / "examples" / "make_shapes_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scene():
    """(input, exact target, circle core mask) of examples/shapes.png, rendered by ip2p.shapes."""
    return _example_module().images()


@pytest.fixture(scope="module")
def demo_editor():
    import ip2p

    return ip2p.load_editor("demo", device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def recommended() -> dict:
    return json.loads((DEMO_DIR / "ip2p.json").read_text())


# ------------------------------------------------------------------------------------------ shipping


def test_demo_ships_inside_the_package_as_safetensors_under_30_mb(recommended):
    from ip2p.models import bundled_models

    assert bundled_models().get("demo") == DEMO_DIR
    files = [p for p in DEMO_DIR.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in (".bin", ".safetensors", ".pt", ".ckpt", ".pth")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert sum(p.stat().st_size for p in files) <= 30 * 2**20
    scheduler = json.loads((DEMO_DIR / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "sample"
    unet = json.loads((DEMO_DIR / "unet" / "config.json").read_text())
    vae = json.loads((DEMO_DIR / "vae" / "config.json").read_text())
    assert unet["_class_name"] in ("ResidualUNet2DConditionModel", "ImageStemUNet2DConditionModel",
                                   "KindStemUNet2DConditionModel")
    assert vae["_class_name"] == "PixelUnshuffleAutoencoder"
    assert unet["in_channels"] == 2 * vae["latent_channels"] == 96
    assert recommended["scheduler"] == "euler"  # Euler ancestral cannot step an x0 model


def test_example_image_is_the_rendered_scene(scene):
    before, _, circle = scene
    assert np.array_equal(np.asarray(Image.open(EXAMPLE).convert("RGB")), before)
    assert circle.sum() > 300  # a large circle, not a speck


def test_stock_diffusers_runs_the_shipped_folder_and_agrees_with_ip2p(demo_editor, recommended):
    """The line docs/models.md gives for stock diffusers, at the model's own settings."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from ip2p.architectures import UNET_CLASSES, PixelUnshuffleAutoencoder

    folder = str(DEMO_DIR)
    unet_class = UNET_CLASSES[json.loads((DEMO_DIR / "unet" / "config.json").read_text())["_class_name"]]
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
        folder, vae=PixelUnshuffleAutoencoder.from_pretrained(folder, subfolder="vae"),
        unet=unet_class.from_pretrained(folder, subfolder="unet"), safety_checker=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    image = Image.open(EXAMPLE).convert("RGB")
    stock = pipe(INSTRUCTION, image=image, num_inference_steps=recommended["steps"],
                 guidance_scale=recommended["guidance_scale"],
                 image_guidance_scale=recommended["image_guidance_scale"],
                 generator=torch.Generator("cpu").manual_seed(5), output_type="np").images[0]
    ours = demo_editor.edit(image, INSTRUCTION, seed=5, watermark=False).image
    assert ours.size == (64, 64)
    # Ours is rounded to 8 bits; the stock float output lies within one level of it.
    assert np.abs(stock * 255 - np.asarray(ours, np.float32)).max() <= 1.0


def test_same_seed_same_output(demo_editor):
    image = Image.open(EXAMPLE).convert("RGB")
    first, again = (np.asarray(demo_editor.edit(image, INSTRUCTION, seed=3).image) for _ in range(2))
    assert np.array_equal(first, again)


# The README command (offline, no --model, so the demo is the default) is run by tests/test_readme.py.


# ------------------------------------------------------------------ real edits against exact targets

#: kind -> the least share of 12 test-split examples the shipped model must edit right (scored by
#: ip2p.shapes.score: the right pixels changed to the target, the rest kept). Floors sit under
#: the 240-example bench in docs/demo-model.md.
FLOORS = {"recolor_object": 0.5, "remove_object": 0.25, "darken": 0.75}


@pytest.mark.parametrize("kind", sorted(FLOORS))
def test_the_demo_edits_test_examples_right(demo_editor, kind):
    from ip2p.shapes.bench import run_benchmark

    report = run_benchmark(demo_editor, n=12, size=64, kinds=[kind], grid_examples=0)
    success = report["rows"][kind]["success"]
    assert success >= FLOORS[kind], (kind, success)
