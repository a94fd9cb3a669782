"""Speed and memory modes (ip2p.fast): exact modes reproduce the default output, the approximate
mode's change is bounded and reported, low-memory edits large images, and the benchmark runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ip2p.editor import Editor
from ip2p.errors import BadOptions
from ip2p.fast import DeepCacheUNet, check_mode, optimize
from ip2p.tiny import build_tiny_components, gradient_image

ROOT = Path(__file__).resolve().parents[1]
EDIT = {"steps": 4, "seed": 11, "scheduler": "euler_a"}


def psnr(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mse = ((a - b) ** 2).mean()
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def fresh_editor(mode: str = "default", **kwargs) -> Editor:
    """A new tiny model per test: modes change modules in place, the session fixture must stay stock."""
    editor = Editor(build_tiny_components(seed=0))
    return optimize(editor, mode, **kwargs) if mode != "default" else editor


@pytest.fixture(scope="module")
def reference():
    image = gradient_image(32, 32, seed=4)
    return image, fresh_editor().edit(image, "make it blue", **EDIT).image


def test_fast_layout_mode_equals_default(reference):
    image, expected = reference
    editor = fresh_editor("fast", compile=False)
    assert editor.components.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    out = editor.edit(image, "make it blue", **EDIT)
    diff = np.abs(np.asarray(out.image, np.int16) - np.asarray(expected, np.int16)).max()
    assert diff <= 1 and psnr(out.image, expected) >= 40.0
    assert out.params[0]["mode"] == "fast"


@pytest.mark.slow
def test_fast_compiled_equals_default_and_caches(reference, tmp_path, monkeypatch):
    """torch.compile (inductor C++ on CPU) gives the default image; its artifacts land on disk.

    Without freezing: torch does not cache frozen graphs (the CPU default), so the cache is tested
    on the cacheable configuration, which is also the CUDA one."""
    monkeypatch.setenv("IP2P_CACHE_DIR", str(tmp_path))
    image, expected = reference
    editor = fresh_editor("fast", freeze=False)
    assert editor.runner.compiled and not editor.runner.cache_loaded
    out = editor.edit(image, "make it blue", **EDIT)
    assert psnr(out.image, expected) >= 40.0
    files = list((tmp_path / "compile").glob("*.bin"))
    assert len(files) == 1 and files[0].stat().st_size > 0
    again = fresh_editor("fast", freeze=False)  # same model, same settings: the saved artifacts are loaded
    assert again.runner.cache_loaded and again.runner.cache_file == files[0]


def test_low_memory_equals_default_within_one_tile(reference):
    image, expected = reference
    editor = fresh_editor("low-memory")
    assert editor.components.vae.use_tiling
    out = editor.edit(image, "make it blue", **EDIT)
    assert np.abs(np.asarray(out.image, np.int16) - np.asarray(expected, np.int16)).max() <= 1


def test_approx_change_is_bounded_and_marked(reference):
    image, expected = reference
    editor = fresh_editor("approx", interval=2)
    out = editor.edit(image, "make it blue", **EDIT)
    run = editor.runner.last_run
    assert run.calls == 4 and run.full_calls == 2  # half the steps skip the deep UNet
    change = psnr(out.image, expected)
    assert 25.0 <= change < float("inf"), change  # it is approximate, and the change stays small
    assert out.params[0]["mode"] == "approx"
    assert editor.runner.describe()["approximate"] is True


def test_deepcache_with_interval_one_is_the_stock_forward(tiny_components):
    unet = tiny_components.unet
    torch.manual_seed(0)
    x, context = torch.randn(3, 8, 16, 16), torch.randn(3, 77, 32)
    with torch.inference_mode():
        stock = unet(x, torch.tensor(401), encoder_hidden_states=context)[0]
        ours = DeepCacheUNet(unet, 1)(x, torch.tensor(401), context)[0]
        cached = DeepCacheUNet(unet, 3)
        first = cached(x, torch.tensor(401), context)[0]
        second = cached(x, torch.tensor(401), context)[0]  # same input, reused deep features: same output
    assert torch.equal(stock, ours) and torch.equal(first, stock)
    assert torch.allclose(second, stock, atol=1e-5)


def _tiny_f8():
    """A tiny model with an 8x VAE and attention only at the coarsest level: a 2048x2048 edit is
    1 step of a 256x256 latent, cheap enough for a CPU test (the f=2 tiny model would be 1024x1024)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    base = build_tiny_components(seed=1)
    torch.manual_seed(1)
    base.unet = UNet2DConditionModel(
        sample_size=32, in_channels=8, out_channels=4, block_out_channels=(32, 32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32).eval().requires_grad_(False)
    base.vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16), latent_channels=4, layers_per_block=1, norm_num_groups=8,
        sample_size=256).eval().requires_grad_(False)
    return base


def test_low_memory_tiles_above_one_tile_with_a_small_change():
    """Above one tile the VAE blends tiles: a different computation, so the change is measured."""
    image = gradient_image(512, 512, seed=2)
    plain = Editor(_tiny_f8()).edit(image, "make it blue", steps=1, seed=3, resolution=512).image
    low = optimize(Editor(_tiny_f8()), "low-memory")
    assert low.components.vae.tile_sample_min_size == 256
    tiled = low.edit(image, "make it blue", steps=1, seed=3, resolution=512).image
    assert psnr(tiled, plain) >= 25.0


@pytest.mark.slow
def test_low_memory_edits_2048():
    image = gradient_image(2048, 2048, seed=5)
    editor = optimize(Editor(_tiny_f8()), "low-memory")
    result = editor.edit(image, "make it blue", steps=1, seed=0, resolution=2048)
    out = np.asarray(result.image)
    assert result.image.size == (2048, 2048) and result.params[0]["working_width"] == 2048
    assert out.std() > 1.0  # a picture, not a constant


def test_bad_modes_are_one_line_errors():
    with pytest.raises(BadOptions, match="unknown mode 'warp'; choose one of: default, fast"):
        check_mode("warp")
    assert check_mode("low_memory") == "low-memory"
    editor = fresh_editor("approx")
    with pytest.raises(BadOptions, match="already in mode 'approx'"):
        optimize(editor, "fast")
    with pytest.raises(BadOptions, match="interval must be an integer from 1 to 10"):
        optimize(fresh_editor(), "approx", interval=0)
    with pytest.raises(BadOptions, match="compile= and freeze= apply to mode 'fast' only"):
        optimize(fresh_editor(), "low-memory", compile=True)
    with pytest.raises(BadOptions, match="unknown mode"):
        Editor.load("tiny-does-not-matter", mode="turbo")


def test_editor_load_with_mode(tiny_model_dir):
    editor = Editor.load(tiny_model_dir, device="cpu", mode="low-memory")
    assert editor.runner.mode == "low-memory" and editor.components.vae.use_tiling
    out = editor.edit(gradient_image(24, 24), "make it blue", steps=2, seed=0)
    assert out.image.size == (24, 24)


def test_benchmark_smoke_writes_valid_json(tmp_path):
    target = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "edit_speed.py"), "--smoke", "--json",
                           str(target)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(target.read_text())
    modes = {r["mode"] for r in report["latency"]}
    assert {"ip2p-default", "ip2p-fast-eager", "ip2p-approx", "stock-eager"} <= modes
    for row in report["latency"]:
        assert row["median_s"] > 0 and len(row["times_s"]) == report["meta"]["reps"]
        if row["exact_mode"]:
            assert row["ok"] is True and row["psnr_vs_stock_db"] >= 40.0
    assert report["batch"] and all(b["images_per_s"] > 0 for b in report["batch"])
    cold = report["cold_start"][0]
    assert "error" not in cold and cold["first_edit_s"] > 0 and cold["peak_rss_mb"] > 0
    assert report["meta"]["loadavg_start"] and report["meta"]["torch"] == torch.__version__


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_predrawn_euler_ancestral_matches_diffusers(tiny_editor, prediction):
    """Fast mode's Euler ancestral (noise drawn before the loop) agrees with diffusers' to 1e-5."""
    from ip2p.fast import PredrawnEulerAncestral
    from ip2p.sampler import Conditioning, denoise, make_scheduler

    comps = tiny_editor.components
    config = dict(comps.scheduler_config, prediction_type=prediction)
    cond = Conditioning(tiny_editor.encode_instruction("make it blue"), tiny_editor.encode_instruction(""),
                        tiny_editor.encode_images([gradient_image(16, 16, seed=1), gradient_image(16, 16, seed=2)]))
    runs = []
    for scheduler in (make_scheduler("euler_a", config), PredrawnEulerAncestral.from_config(config)):
        gens = [torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)]
        with torch.inference_mode():
            runs.append(denoise(comps.unet, scheduler, cond, steps=5, text_scale=7.5, image_scale=1.5,
                                generators=gens))
    assert (runs[0] - runs[1]).abs().max().item() <= 1e-5
    assert fresh_editor("fast", compile=False).runner.make_scheduler("euler_a", config).__class__ is PredrawnEulerAncestral


def test_the_diffusers_internals_fast_relies_on_are_still_there(tiny_components):
    """PredrawnEulerAncestral and DeepCacheUNet use diffusers' private scheduler state and the UNet's
    blocks directly; a diffusers upgrade that renames them must fail here, by name, not as wrong pixels."""
    import inspect

    from diffusers import EulerAncestralDiscreteScheduler
    from diffusers.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteSchedulerOutput

    scheduler = EulerAncestralDiscreteScheduler.from_config(tiny_components.scheduler_config)
    scheduler.set_timesteps(4)
    for name in ("_step_index", "_init_step_index", "set_begin_index", "step_index", "sigmas", "config"):
        assert hasattr(scheduler, name), f"EulerAncestralDiscreteScheduler lost {name}"
    step = inspect.signature(EulerAncestralDiscreteScheduler.step).parameters
    assert list(step)[:4] == ["self", "model_output", "timestep", "sample"] and "generator" in step
    assert {"prev_sample", "pred_original_sample"} <= set(EulerAncestralDiscreteSchedulerOutput.__dataclass_fields__)

    unet = tiny_components.unet
    for name in ("time_embedding", "get_time_embed", "time_embed_act", "conv_in", "down_blocks", "mid_block",
                 "up_blocks", "conv_norm_out", "conv_act", "conv_out", "num_upsamplers"):
        assert hasattr(unet, name), f"UNet2DConditionModel lost {name}"
    for block in unet.down_blocks:
        assert {"hidden_states", "temb"} <= set(inspect.signature(block.forward).parameters)
    for block in unet.up_blocks:
        assert {"hidden_states", "temb", "res_hidden_states_tuple"} <= set(inspect.signature(block.forward).parameters)
        assert hasattr(block, "resnets")
