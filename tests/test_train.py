"""The trainer: widening, data formats, objective, exact resume, export, LoRA, from scratch, CLI."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ip2p.errors import BadData, BadOptions, Cancelled
from ip2p.train import TrainConfig, train

torch.set_num_threads(1)  # the CPU is shared: oversubscribed OpenMP threads make tiny steps 30x slower

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220), "yellow": (230, 220, 30)}


def make_pair(seed: int, size: int = 16) -> tuple[Image.Image, Image.Image, str]:
    """An input with a coloured square and the same picture with the square recoloured."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    before, after = rng.choice(len(names), 2, replace=False)
    image = np.full((size, size, 3), 235, np.uint8)
    x, y = rng.integers(0, size // 2, 2)
    side = size // 2
    image[y:y + side, x:x + side] = COLOURS[names[before]]
    edited = image.copy()
    edited[y:y + side, x:x + side] = COLOURS[names[after]]
    return Image.fromarray(image), Image.fromarray(edited), f"make the square {names[after]}"


def write_jsonl(folder: Path, count: int = 6, size: int = 16) -> Path:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        a, b, text = make_pair(i, size)
        a.save(folder / "images" / f"{i}_in.png")
        b.save(folder / "images" / f"{i}_out.png")
        rows.append({"input_image": f"images/{i}_in.png", "edit_prompt": text, "edited_image": f"images/{i}_out.png"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def write_ip2p(folder: Path, count: int = 4, size: int = 16) -> Path:
    seeds = []
    for group in range(2):
        sub = folder / f"{group:07d}"
        sub.mkdir(parents=True)
        ids = list(range(group * 100, group * 100 + count // 2))
        text = make_pair(group * 100, size)[2]
        (sub / "prompt.json").write_text(json.dumps({"caption": "a square", "output": "a square", "edit": text}))
        for seed in ids:
            a, b, _ = make_pair(group * 100, size)
            suffix = ".jpg" if seed % 2 else ".png"
            a.save(sub / f"{seed}_0{suffix}")
            b.save(sub / f"{seed}_1{suffix}")
        seeds.append([sub.name, ids])
    (folder / "seeds.json").write_text(json.dumps(seeds))
    return folder


def write_parquet(folder: Path, count: int = 4, size: int = 16, columns=("input_image", "edit_prompt", "edited_image")):
    import datasets

    rows = {c: [] for c in columns}
    for i in range(count):
        a, b, text = make_pair(i, size)
        rows[columns[0]].append(a)
        rows[columns[1]].append(text)
        rows[columns[2]].append(b)
    features = datasets.Features({columns[0]: datasets.Image(), columns[1]: datasets.Value("string"),
                                  columns[2]: datasets.Image()})
    folder.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(folder / "train.parquet"))
    return folder


@pytest.fixture(scope="module")
def t2i_dir(tmp_path_factory):
    from ip2p.components import save_diffusers
    from ip2p.tiny import build_tiny_components

    return save_diffusers(build_tiny_components(seed=3, in_channels=4), tmp_path_factory.mktemp("t2i") / "m")


def tiny_config(tmp_path: Path, data_dir: Path, base, **sections) -> TrainConfig:
    mapping = {
        "model": {"start": "text2image", "base": str(base)},
        "data": {"path": str(data_dir), "resolution": 16, "validation_count": 0},
        "optim": {"lr": 1e-3, "batch_size": 2, "ema_decay": 0.9},
        "run": {"output_dir": str(tmp_path / "run"), "max_steps": 4, "checkpoint_every": 0, "log_every": 1,
                "device": "cpu", "tensorboard": False, "seed": 1},
    }
    for name, values in sections.items():
        mapping.setdefault(name, {}).update(values)
    return TrainConfig.from_mapping(mapping)


# --------------------------------------------------------------------------------------------
# widening and objective


def test_widened_unet_matches_base_when_extra_channels_are_zero():
    from ip2p.tiny import build_tiny_components
    from ip2p.train import widen_conv_in

    base = build_tiny_components(seed=5, in_channels=4).unet
    torch.manual_seed(0)
    with torch.no_grad():
        base.conv_in.bias.normal_()  # a non-zero bias, so dropping it would show
    import copy

    wide = widen_conv_in(copy.deepcopy(base))
    assert wide.config.in_channels == 8 and wide.conv_in.weight.shape[1] == 8
    assert torch.equal(wide.conv_in.bias, base.conv_in.bias)
    assert torch.count_nonzero(wide.conv_in.weight[:, 4:]) == 0
    x = torch.randn(2, 4, 16, 16)
    text = torch.randn(2, 5, 32)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        expected = base(x, t, text).sample
        got = wide(torch.cat([x, torch.zeros_like(x)], 1), t, text).sample
        other = wide(torch.cat([x, torch.ones_like(x)], 1), t, text).sample
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(other, expected, atol=1e-6)  # zero-initialised: the image has no effect at step 0


# --------------------------------------------------------------------------------------------
# data


def test_three_formats_give_same_pixels(tmp_path):
    from ip2p.train.config import DataConfig
    from ip2p.train.data import EditPairDataset, open_source

    for name, folder in (("jsonl", write_jsonl(tmp_path / "j", 4)), ("ip2p", write_ip2p(tmp_path / "o", 4)),
                         ("hf", write_parquet(tmp_path / "p", 4))):
        cfg = DataConfig(path=str(folder), resolution=16, random_crop=False, flip=False)
        source = open_source(cfg)
        assert len(source) == 4, name
        item = EditPairDataset(source, cfg)[(0, 0)]
        assert item["input"].shape == (3, 16, 16) and item["text"].startswith("make the square"), name
        assert float(item["input"].min()) >= -1 and float(item["input"].max()) <= 1
        assert not torch.equal(item["input"], item["edited"])


def test_parquet_column_mapping_and_missing_column(tmp_path):
    from ip2p.train.config import DataConfig
    from ip2p.train.data import open_source

    folder = write_parquet(tmp_path / "p", 3, columns=("before", "instruction", "after"))
    with pytest.raises(BadData, match="no column 'input_image'"):
        open_source(DataConfig(path=str(folder)))
    source = open_source(DataConfig(path=str(folder), input_column="before", instruction_column="instruction",
                                    edited_column="after"))
    assert len(source) == 3 and source.record(1).instruction.startswith("make")


def test_same_crop_and_flip_on_both_images(tmp_path):
    from ip2p.train.config import DataConfig
    from ip2p.train.data import augment_pair

    a = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 40, 3), dtype=np.uint8))
    cfg = DataConfig(resolution=16, resize_max=20, random_crop=True, flip=True)
    outs = {augment_pair(a, a.copy(), cfg, seed)[0].tobytes() for seed in range(8)}
    assert len(outs) > 2  # the augmentation varies with the seed ...
    for seed in range(8):
        x, y = augment_pair(a, a.copy(), cfg, seed)
        assert x.size == (16, 16) and x.tobytes() == y.tobytes()  # ... and is identical on both images
        assert augment_pair(a, a.copy(), cfg, seed)[0].tobytes() == x.tobytes()  # deterministic
    # a kind map takes the same crop and flip (exactly: no resize here) ...
    strip = Image.fromarray(np.asarray(a)[:16])  # short side 16: no resize, a crop along the width
    labels = Image.fromarray(np.asarray(strip)[..., 0])
    cfg = DataConfig(resolution=16, random_crop=True, flip=True)
    for seed in range(8):
        x, _, y = augment_pair(strip, strip.copy(), cfg, seed, labels)
        assert np.array_equal(np.asarray(x)[..., 0], np.asarray(y))
    # ... and a resize by nearest neighbour, which never makes a class that was not there
    cfg = DataConfig(resolution=16, resize_max=20, random_crop=True, flip=True)
    few = Image.fromarray((np.asarray(a)[..., 0] // 64).astype(np.uint8))
    for seed in range(8):
        _, _, y = augment_pair(a, a.copy(), cfg, seed, few)
        assert y.size == (16, 16) and set(np.unique(np.asarray(y))) <= {0, 1, 2, 3}


def test_bad_samples_are_skipped_with_warning(tmp_path, t2i_dir):
    data = write_jsonl(tmp_path / "d", 4)
    (data / "images" / "1_in.png").write_bytes(b"not a png")
    with (data / "metadata.jsonl").open("a") as handle:
        handle.write(json.dumps({"input_image": "images/0_in.png"}) + "\n")  # missing fields
    events = []
    result = train(tiny_config(tmp_path, data, t2i_dir, run={"max_steps": 3}), callback=events.append, export=False)
    warnings = [e.message for e in events if e.kind == "warning"]
    assert any("1 bad rows" in w for w in warnings)
    assert any("skipping bad sample 1" in w and "unreadable" in w for w in warnings)
    assert result.steps == 3 and result.bad_samples >= 2 and all(np.isfinite(result.losses))


def test_no_valid_sample_is_bad_data(tmp_path, t2i_dir):
    data = write_jsonl(tmp_path / "d", 2)
    for path in (data / "images").iterdir():
        path.write_bytes(b"junk")
    with pytest.raises(BadData, match="no valid sample"):
        train(tiny_config(tmp_path, data, t2i_dir), export=False)


# --------------------------------------------------------------------------------------------
# config


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("model:\n  start: scratch\noptim:\n  learning_rate: 0.1\n")
    with pytest.raises(BadOptions, match="unknown key optim.'learning_rate'"):
        TrainConfig.from_yaml(bad)
    bad.write_text("modle: {}\n")
    with pytest.raises(BadOptions, match="unknown config section 'modle'"):
        TrainConfig.from_yaml(bad)
    with pytest.raises(BadOptions, match="optim.batch_size must be an integer"):
        TrainConfig.from_mapping({"optim": {"batch_size": "four"}})
    with pytest.raises(BadOptions, match="model.base is required"):
        TrainConfig.from_mapping({"data": {"path": "x"}}).check()
    with pytest.raises(BadOptions, match="cache_latents"):
        TrainConfig.from_mapping({"model": {"start": "scratch"}, "data": {"path": "x", "cache_latents": "true"}}).check()
    with pytest.raises(BadOptions, match="model.vae_widths must be a list of multiples of model.vae_norm_groups"):
        TrainConfig.from_mapping({"model": {"start": "scratch", "vae_widths": [16, 24], "vae_norm_groups": 16},
                                  "data": {"path": "x"}}).check()


def test_example_configs_load():
    root = Path(__file__).resolve().parents[1] / "configs"
    for name in ("demo-shapes.yaml", "demo-shapes-gpu.yaml", "finetune-sd15.yaml"):
        cfg = TrainConfig.from_yaml(root / name).check()
        assert cfg.run.max_steps > 0
    demo = TrainConfig.from_yaml(root / "demo-shapes.yaml")
    assert demo.model.start == "scratch" and demo.model.prediction_type == "sample" and demo.model.residual
    assert demo.model.autoencoder == "pixel_unshuffle"
    assert demo.data.resolution == 64


def test_gpu_demo_recipe_keeps_the_cpu_levers_and_fits_the_package():
    """PROFILE=gpu only scales the CPU recipe: the levers runs 5-10 measured stay, and fp16 fits 30 MB."""
    from ip2p.train.model import build_scratch

    root = Path(__file__).resolve().parents[1] / "configs"
    cpu = TrainConfig.from_yaml(root / "demo-shapes.yaml").check()
    gpu = TrainConfig.from_yaml(root / "demo-shapes-gpu.yaml").check()
    for section, name in [("model", "autoencoder"), ("model", "residual"), ("model", "prediction_type"),
                          ("optim", "edit_weight"), ("optim", "snr_gamma"), ("data", "unknown_words"),
                          ("data", "keep_words"), ("run", "validation_text_scale"),
                          ("run", "validation_image_scale")]:
        assert getattr(getattr(gpu, section), name) == getattr(getattr(cpu, section), name), f"{section}.{name}"
    parts = build_scratch(gpu, ["make the circle blue"])
    params = sum(p.numel() for module in (parts.unet, parts.text_encoder) for p in module.parameters())
    assert 10e6 < params and 2 * params < 30 * 2**20   # fp16 export (scripts/train_demo.sh)


# --------------------------------------------------------------------------------------------
# runs


def _read_log(run: Path) -> list[tuple[int, float]]:
    with (run / "log.csv").open() as handle:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(handle)]


def _stop_after(cfg: TrainConfig, stop: int, stage: str = "unet") -> TrainConfig:
    """Run ``cfg`` and cancel it from the progress callback right after ``stage``'s step ``stop``."""

    def stop_here(event):
        if event.kind == "step" and event.stage == stage and event.step == stop:
            raise Cancelled("simulated stop")

    with pytest.raises(Cancelled):
        train(cfg, callback=stop_here, export=False)
    return cfg


def _stopped_run(folder: Path, data, base, extra: dict, stop: int) -> TrainConfig:
    return _stop_after(tiny_config(folder, data, base, **extra), stop)


def test_interrupted_run_resumes_exactly(tmp_path, t2i_dir):
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "d", 5)
    extra = {"optim": {"grad_accum": 2, "warmup_steps": 3}, "run": {"max_steps": 6, "checkpoint_every": 2},
             "data": {"resize_max": 20}}
    straight = train(tiny_config(tmp_path / "a", data, t2i_dir, **extra), export=False)
    cfg = _stopped_run(tmp_path / "b", data, t2i_dir, extra, 3)
    run_b = Path(cfg.run.output_dir)
    assert sorted(p.name for p in (run_b / "checkpoints").iterdir()) == ["step-0000002", "step-0000003"]
    with pytest.raises(BadOptions, match="--resume"):
        train(cfg, export=False)
    resumed = train(cfg, resume=True, export=False)
    assert resumed.steps == 6 and len(resumed.losses) == 3
    assert resumed.losses == straight.losses[3:]
    assert _read_log(run_b) == _read_log(Path(straight.output_dir))
    assert [s for s, _ in _read_log(run_b)] == [1, 2, 3, 4, 5, 6]
    a = load_file(str(Path(straight.output_dir) / "checkpoints" / "step-0000006" / "ema.safetensors"))
    b = load_file(str(run_b / "checkpoints" / "step-0000006" / "ema.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # two checkpoints kept (keep_checkpoints default), no temporary folders left
    assert sorted(p.name for p in (run_b / "checkpoints").iterdir()) == ["step-0000004", "step-0000006"]


def test_training_lowers_loss_and_exports_loadable_model(tmp_path, t2i_dir):
    """Fine-tune an IP2P model (start: ip2p); the export loads in ip2p and in stock diffusers."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    import ip2p

    data = write_jsonl(tmp_path / "d", 4)
    wide_run = train(tiny_config(tmp_path / "w", data, t2i_dir, run={"max_steps": 1}), export=True)
    ip2p_base = wide_run.model_dir
    cfg = tiny_config(tmp_path, data, ip2p_base, model={"start": "ip2p"},
                      data={"random_crop": False, "flip": False, "validation_count": 2},
                      optim={"lr": 3e-3, "batch_size": 4, "drop_text": 0, "drop_image": 0, "drop_both": 0},
                      run={"max_steps": 40, "validation_steps": 2, "tensorboard": True})
    result = train(cfg)
    assert np.mean(result.losses[-8:]) < 0.7 * np.mean(result.losses[:4])
    grids = list((result.output_dir / "validation").glob("*.png"))
    assert len(grids) == 1 and Image.open(grids[0]).size == (3 * 64, 2 * (64 + 12))
    assert list((result.output_dir / "tensorboard").iterdir())
    model = result.model_dir
    editor = ip2p.load_editor(str(model), device="cpu")
    picture = make_pair(9, 16)[0]
    mine = editor.edit(picture, "make the square red", steps=3, seed=0, resolution=64).images[0]
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(model), safety_checker=None)
    theirs = pipe("make the square red", image=picture.resize((64, 64)), num_inference_steps=3,
                  generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert mine.size == (16, 16) and theirs.shape == (64, 64, 3) and np.isfinite(theirs).all()
    # the exported UNet holds the EMA weights of the last checkpoint-less step
    from safetensors.torch import load_file

    exported = load_file(str(model / "unet" / "diffusion_pytorch_model.safetensors"))
    base = load_file(str(Path(ip2p_base) / "unet" / "diffusion_pytorch_model.safetensors"))
    assert not torch.equal(exported["conv_in.weight"], base["conv_in.weight"])


def test_cached_latents_match_uncached_training(tmp_path, t2i_dir):
    data = write_jsonl(tmp_path / "d", 4)
    plain = {"random_crop": False, "flip": False}
    cached = train(tiny_config(tmp_path / "c", data, t2i_dir, data={**plain, "cache_latents": "true"}), export=False)
    fresh = train(tiny_config(tmp_path / "f", data, t2i_dir, data={**plain, "cache_latents": "false"}), export=False)
    assert np.allclose(cached.losses, fresh.losses, rtol=1e-4, atol=1e-6)


def test_cached_latents_are_written_once_and_reused_on_resume(tmp_path, t2i_dir):
    data = write_jsonl(tmp_path / "d", 5)
    extra = {"data": {"random_crop": False, "flip": False, "cache_latents": "true"},
             "run": {"max_steps": 4, "checkpoint_every": 2}, "optim": {"batch_size": 2}}
    straight = train(tiny_config(tmp_path / "a", data, t2i_dir, **extra), export=False)
    cfg = _stopped_run(tmp_path / "b", data, t2i_dir, extra, 2)  # a step with a periodic checkpoint
    cache = Path(cfg.run.output_dir) / "latents.pt"
    written = cache.stat().st_mtime_ns
    assert len(torch.load(cache, weights_only=True)["items"]) == 5
    resumed = train(cfg, resume=True, export=False)
    assert cache.stat().st_mtime_ns == written  # read back, not encoded and written again
    assert resumed.losses == straight.losses[2:]


def test_lora_trains_adapters_and_export_merges(tmp_path, t2i_dir):
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "d", 4)
    cfg = tiny_config(tmp_path, data, t2i_dir, model={"lora_rank": 4},
                      optim={"lr": 1e-2, "drop_text": 0, "drop_image": 0, "drop_both": 0}, run={"max_steps": 3,
                                                                                                 "checkpoint_every": 3})
    result = train(cfg)
    trained = load_file(str(result.output_dir / "checkpoints" / "step-0000003" / "trainable.safetensors"))
    assert trained and all("lora_" in k or "conv_in" in k for k in trained)
    base = load_file(str(result.output_dir / "base" / "unet" / "diffusion_pytorch_model.safetensors"))
    exported = load_file(str(result.model_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    assert exported.keys() == base.keys()  # merged: a plain UNet again
    changed = [k for k in base if not torch.equal(base[k], exported[k])]
    assert any("to_q" in k for k in changed) and not any("resnets" in k for k in changed)
    # exporting the checkpoint gives the same weights as the end-of-run export
    from ip2p.train import export_checkpoint

    again = export_checkpoint(result.output_dir / "checkpoints" / "step-0000003", tmp_path / "again")
    redo = load_file(str(again / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.allclose(redo[k], exported[k], atol=1e-6) for k in exported)


def scratch_config(run: Path, data: Path, vae: dict | None = None, **run_keys) -> TrainConfig:
    return TrainConfig.from_mapping({
        "model": {"start": "scratch", "prediction_type": "v_prediction", "unet_widths": [32, 64],
                  "text_hidden_size": 32, "text_max_length": 16, "vae_widths": [16, 32], "vae_norm_groups": 4,
                  "unet_norm_groups": 8},
        "vae": {"steps": 6, "batch_size": 4, "lr": 1e-3, **(vae or {})},
        "data": {"path": str(data), "resolution": 16, "validation_count": 1},
        "optim": {"batch_size": 2, "lr": 1e-3},
        "run": {"output_dir": str(run), "max_steps": 3, "checkpoint_every": 0, "device": "cpu",
                "tensorboard": False, "validation_steps": 2, **run_keys},
    })


def test_from_scratch_vae_stage_then_denoiser(tmp_path):
    import ip2p

    data = write_ip2p(tmp_path / "d", 4, size=16)
    cfg = scratch_config(tmp_path / "run", data)
    stages = []
    result = train(cfg, callback=lambda e: stages.append((e.kind, e.stage)) if e.kind in ("stage", "step") else None)
    assert ("stage", "vae") in stages and stages.count(("step", "vae")) == 6 and stages.count(("step", "unet")) == 3
    model = result.model_dir
    vae_cfg = json.loads((model / "vae" / "config.json").read_text())
    assert vae_cfg["scaling_factor"] != 0.18215 and vae_cfg["latent_channels"] == 4
    assert vae_cfg["norm_num_groups"] == 4 and vae_cfg["block_out_channels"] == [16, 32]
    assert json.loads((model / "unet" / "config.json").read_text())["norm_num_groups"] == 8
    tok = json.loads((model / "tokenizer" / "vocab.json").read_text())
    assert "square</w>" in tok and "make</w>" in tok  # the tokenizer was built from the instructions
    base_vae = json.loads((result.output_dir / "base" / "vae" / "config.json").read_text())
    assert base_vae["scaling_factor"] == vae_cfg["scaling_factor"]
    out = ip2p.load_editor(str(model), device="cpu").edit(make_pair(0)[0], "make the square red", steps=2, seed=1,
                                                           resolution=64)
    assert out.images[0].size == (16, 16)
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(model), safety_checker=None)
    assert pipe.scheduler.config.prediction_type == "v_prediction"  # stock diffusers samples it right
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)


@pytest.mark.parametrize("stop_at", [2, 3])  # on a periodic checkpoint, and between two
def test_stopped_vae_stage_resumes_exactly(tmp_path, stop_at):
    from safetensors.torch import load_file

    data = write_ip2p(tmp_path / "d", 4, size=16)
    vae = {"steps": 5, "final_lr_ratio": 0.1}
    lrs = []
    straight = scratch_config(tmp_path / "a", data, vae, max_steps=1, checkpoint_every=2)
    train(straight, export=False, callback=lambda e: lrs.append(e.lr) if e.stage == "vae" and e.kind == "step" else 0)
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(
        math.pi * 4 / 5))))  # a half cosine towards lr * final_lr_ratio

    cfg = _stop_after(scratch_config(tmp_path / "b", data, vae, max_steps=1, checkpoint_every=2), stop_at, "vae")
    stage = Path(cfg.run.output_dir) / "vae-stage.pt"
    assert torch.load(stage, weights_only=False)["step"] == stop_at and not (stage.parent / "base").exists()
    with pytest.raises(BadOptions, match="--resume"):  # a fresh start would overwrite the stopped stage
        train(cfg, export=False)
    steps = []
    train(cfg, resume=True, export=False,
          callback=lambda e: steps.append(e.step) if e.stage == "vae" and e.kind == "step" else 0)
    assert steps == list(range(stop_at + 1, 6)) and not stage.exists()  # consumed once base/ is written
    weights = [load_file(str(Path(c.run.output_dir) / "base" / "vae" / "diffusion_pytorch_model.safetensors"))
               for c in (straight, cfg)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_trains_and_exports(tmp_path, t2i_dir, capsys):
    import yaml

    from ip2p.cli import main

    data = write_jsonl(tmp_path / "d", 3)
    cfg = tiny_config(tmp_path, data, t2i_dir).to_dict()
    cfg["run"].update(max_steps=2, checkpoint_every=2)
    cfg["data"]["path"] = str(tmp_path / "not-here")  # --data below names the real folder
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    out = tmp_path / "cli-run"
    proc = subprocess.run([sys.executable, "-m", "ip2p", "train", "--config", str(path), "--output", str(out),
                           "--data", str(data), "--threads", "1"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "trained 2 steps" in proc.stdout and "unet" in proc.stderr  # tqdm bar on stderr
    assert "Writing model shards" not in proc.stderr and "Loading weights" not in proc.stderr  # only our bars
    assert (out / "model" / "model_index.json").is_file()
    capsys.readouterr()
    assert main(["train", "export", str(out / "checkpoints" / "step-0000002"), str(tmp_path / "exported")]) == 0
    assert (tmp_path / "exported" / "unet" / "config.json").is_file()
    assert main(["train", "--config", str(path), "--threads", "0"]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lr: -1}\n")
    capsys.readouterr()
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.base is required" in err
