"""The bundled demo model, end to end: shipping, stock diffusers, the README command, real edits.

Everything here runs the real shipped weights (src/ip2p/data/models/demo: an exact pixel-unshuffle
autoencoder and a residual x0 UNet, 64x64) at the model's own settings (its ip2p.json) on real
pixels, against the shapes world's exact targets. The floors it asserts sit under the figures
measured in docs/demo-model.md, so a regression fails and a better model passes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
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


def _outside(mask: np.ndarray, grow: int = 2) -> np.ndarray:
    """Pixels farther than ``grow`` px from the changed region (anti-aliased edges change too)."""
    near = mask.copy()
    for _ in range(grow):
        near = near | np.roll(near, 1, 0) | np.roll(near, -1, 0) | np.roll(near, 1, 1) | np.roll(near, -1, 1)
    return ~near


def _mae(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32))[where].mean())


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


# ------------------------------------------------------------------------------- the README command


@pytest.fixture(scope="module")
def readme_output(tmp_path_factory):
    """Run the README's first command exactly, offline, with an empty HF cache (so the demo is the default)."""
    tmp = tmp_path_factory.mktemp("readme")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp / "hf-home"), TRANSFORMERS_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    out = tmp / "out.png"
    # With no --seed a newcomer gets a random one; the test pins one so that it cannot flake (how many
    # seeds turn the circle blue: benchmarks/readme_example.py, docs/demo-model.md).
    proc = subprocess.run(
        [sys.executable, "-m", "ip2p", "edit", "examples/shapes.png", "-i", INSTRUCTION, "-o", str(out), "--seed", "0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    return proc, out


def test_readme_command_runs_offline_with_the_demo_as_default(readme_output):
    from ip2p.models import describe_default

    proc, out = readme_output
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert describe_default("demo") in proc.stderr.splitlines()
    assert Image.open(out).size == (64, 64)


def test_readme_command_turns_the_circle_blue(readme_output, scene):
    """At least 80 % of the circle's core is within CIE76 dE 20 of the shapes world's blue."""
    from ip2p.shapes.color import COLORS, delta_e

    proc, out = readme_output
    assert proc.returncode == 0, proc.stderr[-2000:]
    _, _, circle = scene
    edited = np.asarray(Image.open(out).convert("RGB"))
    blue = delta_e(edited, np.asarray(COLORS["blue"], dtype=np.uint8)[None, None])[circle]
    assert (blue < 20).mean() >= 0.8, float((blue < 20).mean())


def test_readme_command_keeps_everything_but_the_circle(readme_output, scene):
    """Outside the circle (and a 2 px rim) the mean error is within the issue's 6/255 bar."""
    proc, out = readme_output
    assert proc.returncode == 0, proc.stderr[-2000:]
    before, after, _ = scene
    keep = _outside(np.any(before != after, axis=-1))
    edited = np.asarray(Image.open(out).convert("RGB"))
    assert _mae(edited, before, keep) <= 6.0


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
