"""The bundled demo model, end to end: shipping, loading two ways, the README command, real edits.

Everything here runs the real shipped weights (src/ip2p/data/models/demo, 64x64, 20 steps) on real
pixels; the numbers it asserts against are measured in docs/demo-model.md.
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
    reason="the demo model is not shipped yet (issue 5: no trained weights; see docs/demo-model.md)",
)


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


def _round_trip(editor, image: Image.Image) -> np.ndarray:
    """The demo VAE's own encode/decode of ``image``: the floor for any edit's preservation error."""
    with torch.inference_mode():
        latents = editor.encode_images([image])
        return np.asarray(editor.decode_latents(latents * editor.components.vae.config.scaling_factor)[0])


def _outside(mask: np.ndarray, grow: int = 2) -> np.ndarray:
    """Pixels farther than ``grow`` px from the changed region (the VAE blurs edges by ~1 latent px)."""
    near = mask.copy()
    for _ in range(grow):
        near = near | np.roll(near, 1, 0) | np.roll(near, -1, 0) | np.roll(near, 1, 1) | np.roll(near, -1, 1)
    return ~near


def _mae(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32))[where].mean())


def _delta_e_to(image: np.ndarray, rgb) -> np.ndarray:
    from ip2p.shapes.color import delta_e

    return delta_e(image, np.asarray(rgb, dtype=np.uint8)[None, None])


# ------------------------------------------------------------------------------------------ shipping


def test_demo_ships_inside_the_package_as_safetensors_under_30_mb():
    from ip2p.models import bundled_models

    assert bundled_models().get("demo") == DEMO_DIR
    files = [p for p in DEMO_DIR.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in (".bin", ".safetensors", ".pt", ".ckpt", ".pth")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert sum(p.stat().st_size for p in files) <= 30 * 2**20
    scheduler = json.loads((DEMO_DIR / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "v_prediction"
    unet = json.loads((DEMO_DIR / "unet" / "config.json").read_text())
    vae = json.loads((DEMO_DIR / "vae" / "config.json").read_text())
    assert unet["in_channels"] == 2 * vae["latent_channels"] == 8
    assert unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1) >= 64


def test_example_image_is_the_rendered_scene(scene):
    before, _, circle = scene
    assert np.array_equal(np.asarray(Image.open(EXAMPLE).convert("RGB")), before)
    assert circle.sum() > 300  # a large circle, not a speck


def test_load_editor_and_stock_diffusers_give_the_same_image(demo_editor):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
        DEMO_DIR, safety_checker=None, requires_safety_checker=False, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"  # ip2p's default, euler_a
    image = Image.open(EXAMPLE).convert("RGB")
    stock = pipe(INSTRUCTION, image=image, num_inference_steps=8, guidance_scale=7.5, image_guidance_scale=1.5,
                 generator=[torch.Generator("cpu").manual_seed(5)], output_type="np").images[0]
    ours = demo_editor.edit(image, INSTRUCTION, steps=8, seed=5).image
    assert ours.size == (64, 64)
    ours = np.asarray(ours, dtype=np.float32) / 255.0
    # Ours is rounded to 8 bits; the stock float output lies within half a level (+1e-4) of it.
    assert np.abs(stock - ours).max() <= 0.5 / 255 + 1e-4


# ------------------------------------------------------------------------------- the README command


@pytest.fixture(scope="module")
def readme_output(tmp_path_factory):
    """Run the README's first command exactly, offline, with an empty HF cache (so the demo is the default)."""
    tmp = tmp_path_factory.mktemp("readme")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp / "hf-home"), TRANSFORMERS_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    out = tmp / "out.png"
    proc = subprocess.run(
        [sys.executable, "-m", "ip2p", "edit", "examples/shapes.png", "-i", INSTRUCTION, "-o", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    return proc, out


def test_readme_command_runs_offline_with_the_demo_as_default(readme_output):
    from ip2p.models import describe_default

    proc, out = readme_output
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert describe_default("demo") in proc.stderr.splitlines()
    assert Image.open(out).size == (64, 64)


def test_readme_command_keeps_everything_but_the_circle(readme_output, scene, demo_editor):
    """Outside the circle (and a 2 px rim) the edit is as close to the input as the VAE itself allows.

    The issue's bar: preservation error no worse than 1.5x the VAE's own round-trip error.
    """
    proc, out = readme_output
    assert proc.returncode == 0, proc.stderr[-2000:]
    before, after, _ = scene
    changed = np.any(before != after, axis=-1)
    keep = _outside(changed)
    edited = np.asarray(Image.open(out).convert("RGB"))
    vae_error = _mae(_round_trip(demo_editor, Image.fromarray(before)), before, keep)
    edit_error = _mae(edited, before, keep)
    assert edit_error <= 1.5 * vae_error + 1.0, (edit_error, vae_error)


def test_readme_command_turns_the_circle_blue(readme_output, scene):
    """At least 80 % of the circle's pixels are within CIE76 dE 20 of the shapes world's blue."""
    from ip2p.shapes.color import COLORS

    proc, out = readme_output
    assert proc.returncode == 0, proc.stderr[-2000:]
    _, _, circle = scene
    edited = np.asarray(Image.open(out).convert("RGB"))
    blue = _delta_e_to(edited, COLORS["blue"])[circle]
    assert (blue < 20).mean() >= 0.8, float((blue < 20).mean())
