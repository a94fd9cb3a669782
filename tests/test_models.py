"""Model references: folders, hub ids in the cache, bundled names, wrong architectures, device/dtype."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from ip2p.components import save_diffusers
from ip2p.errors import BadModel, BadOptions, ModelNotFound
from ip2p.models import load_components, resolve_device, resolve_dtype


def test_folder_round_trip_gives_the_same_edit(tiny_editor, tiny_model_dir, picture):
    from ip2p.editor import Editor

    loaded = Editor.load(str(tiny_model_dir), device="cpu")
    a = tiny_editor.edit(picture, "make it blue", steps=3, seed=5).image
    b = loaded.edit(picture, "make it blue", steps=3, seed=5).image
    assert a.tobytes() == b.tobytes()


def test_stock_diffusers_loads_our_folder(tiny_model_dir, picture, tiny_editor):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    stock = pipe("make it blue", image=picture, num_inference_steps=3,
                 generator=[torch.Generator().manual_seed(9)]).images[0]
    ours = tiny_editor.edit(picture, "make it blue", steps=3, seed=9).image
    diff = np.abs(np.asarray(stock, np.int16) - np.asarray(ours, np.int16)).max()
    assert diff <= 1


def test_hub_id_from_cache_honours_hf_home(tmp_path, monkeypatch, tiny_model_dir, picture, tiny_editor):
    """A hub id resolves from a cache laid out as huggingface_hub lays it out, under HF_HOME."""
    from ip2p.editor import Editor

    hub = tmp_path / "hf" / "hub"
    repo = hub / "models--someone--tiny-ip2p"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_model_dir, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import importlib

    import huggingface_hub.constants as constants

    importlib.reload(constants)
    try:
        editor = Editor.load("someone/tiny-ip2p", device="cpu")
        assert editor.edit(picture, "x", steps=2, seed=1).image.tobytes() == \
            tiny_editor.edit(picture, "x", steps=2, seed=1).image.tobytes()
        with pytest.raises(ModelNotFound, match=r"not in the local Hugging Face cache.*ip2p download someone/other"):
            load_components("someone/other")
    finally:
        monkeypatch.undo()
        importlib.reload(constants)


def test_unknown_reference_is_one_clear_line(tmp_path):
    with pytest.raises(ModelNotFound, match="not found"):
        load_components(str(tmp_path / "nope" / "deeper" / "x"))


def test_folder_without_model_index(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadModel, match="no model_index.json"):
        load_components(str(tmp_path / "empty"))


def test_text_to_image_folder_is_refused(tmp_path):
    from ip2p.tiny import build_tiny_components

    folder = save_diffusers(build_tiny_components(in_channels=4), tmp_path / "t2i")
    with pytest.raises(BadModel, match="4 input channels, a text-to-image model"):
        load_components(str(folder))


def test_sdxl_like_folder_is_refused(tmp_path, tiny_model_dir):
    folder = tmp_path / "xl"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "unet" / "config.json").read_text())
    config["addition_embed_type"] = "text_time"
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(BadModel, match="SDXL"):
        load_components(str(folder))


def test_garbage_weights_are_refused(tmp_path, tiny_model_dir):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(BadModel, match="could not load the model"):
        load_components(str(folder))


def test_device_and_dtype_resolution():
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(BadOptions, match="unknown device"):
        resolve_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(BadOptions, match="CUDA is not available"):
            resolve_device("cuda")
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(BadOptions, match="unknown dtype"):
        resolve_dtype("fp7", cpu)


def test_bf16_edit_runs_on_cpu(tiny_model_dir, picture):
    from ip2p.editor import Editor

    editor = Editor.load(str(tiny_model_dir), device="cpu", dtype="bf16")
    assert editor.dtype == torch.bfloat16
    result = editor.edit(picture, "x", steps=2, seed=0)
    assert result.image.size == picture.size and result.params[0]["dtype"] == "bfloat16"
