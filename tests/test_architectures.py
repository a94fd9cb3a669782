"""The exact autoencoder, the residual x0 UNet, per-model edit defaults (ip2p.json), and stock diffusers
running such a model: trained from scratch here in a few steps, on real pixels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import make_pair, write_ip2p

from ip2p.architectures import PixelUnshuffleAutoencoder, ResidualUNet2DConditionModel
from ip2p.errors import BadModel, BadOptions
from ip2p.train import TrainConfig, train

torch.set_num_threads(1)


def plain_unet():
    """A tiny stock UNet2DConditionModel: not residual, so the grown stems refuse it."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=8, in_channels=8, out_channels=4, block_out_channels=(32, 64),
                                norm_num_groups=8, cross_attention_dim=32,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


def x0_config(run: Path, data: Path, **model) -> TrainConfig:
    return TrainConfig.from_mapping({
        "model": {"start": "scratch", "autoencoder": "pixel_unshuffle", "residual": True, "prediction_type": "sample",
                  "unet_widths": [32, 64], "text_hidden_size": 32, "text_max_length": 16, "vae_widths": [16, 32],
                  "vae_norm_groups": 4, "unet_norm_groups": 8, **model},
        "data": {"path": str(data), "resolution": 16, "validation_count": 1, "random_crop": False, "flip": False},
        "optim": {"batch_size": 2, "lr": 1e-3, "snr_gamma": 5.0, "final_lr_ratio": 0.1},
        "run": {"output_dir": str(run), "max_steps": 3, "checkpoint_every": 0, "device": "cpu", "tensorboard": False,
                "validation_steps": 2, "validation_text_scale": 3.0, "validation_image_scale": 1.2},
    })


@pytest.fixture(scope="module")
def x0_model(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("x0")
    data = write_ip2p(tmp / "d", 4, size=16)
    result = train(x0_config(tmp / "run", data))
    return result.model_dir


def test_pixel_unshuffle_round_trip_is_exact_and_saves(tmp_path):
    ae = PixelUnshuffleAutoencoder(factor=4)
    pixels = torch.from_numpy(np.array(make_pair(3, 32)[0])).permute(2, 0, 1)[None].float() / 127.5 - 1
    latents = ae.encode(pixels).latent_dist.mode()
    assert latents.shape == (1, 48, 8, 8)
    assert torch.equal(ae.decode(latents).sample, pixels)
    ae.save_pretrained(tmp_path / "vae")
    back = PixelUnshuffleAutoencoder.from_pretrained(tmp_path / "vae")
    assert back.config.latent_channels == 48 and len(back.config.block_out_channels) == 3  # diffusers: factor 4
    assert back.dtype == torch.float32


def test_step_zero_residual_model_returns_the_input(tmp_path):
    """conv_out starts at zero, so with s_I = 1 every x0 prediction is the input latent: the edit is the input."""
    data = write_ip2p(tmp_path / "d", 4, size=16)
    cfg = x0_config(tmp_path / "run", data)
    from ip2p.train.model import load_start

    components = load_start(cfg, ["make the square red"])
    assert isinstance(components.unet, ResidualUNet2DConditionModel)
    assert not components.unet.conv_out.weight.any()
    source = make_pair(1, 16)[0]
    from ip2p.editor import Editor

    out = Editor(components).edit(source, "make the square red", steps=4, seed=0, guidance_scale=3.0,
                                       image_guidance_scale=1.0, scheduler="euler", resolution=16)
    diff = np.abs(np.asarray(out.image, float) - np.asarray(source, float)).max()
    assert diff <= 1


def test_x0_training_exports_recommended_settings_and_model_classes(x0_model):
    import ip2p

    index = json.loads((x0_model / "model_index.json").read_text())
    assert index["unet"] == ["ip2p.architectures", "ResidualUNet2DConditionModel"]
    assert index["vae"] == ["ip2p.architectures", "PixelUnshuffleAutoencoder"]
    assert index["scheduler"] == ["diffusers", "EulerDiscreteScheduler"]
    assert json.loads((x0_model / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == "sample"
    assert json.loads((x0_model / "ip2p.json").read_text()) == {
        "scheduler": "euler", "steps": 2, "guidance_scale": 3.0, "image_guidance_scale": 1.2}
    editor = ip2p.load_editor(str(x0_model), device="cpu")
    assert isinstance(editor.components.vae, PixelUnshuffleAutoencoder)
    source = make_pair(0, 16)[0]
    used = editor.edit(source, "make the square red", seed=3).params[0]
    assert (used["scheduler"], used["steps"], used["guidance_scale"], used["image_guidance_scale"]) == \
        ("euler", 2, 3.0, 1.2)
    assert used["model_defaults"] == ["steps", "scheduler", "guidance_scale", "image_guidance_scale"]
    mine = editor.edit(source, "make the square red", seed=3, steps=3, scheduler="ddim").params[0]
    assert (mine["scheduler"], mine["steps"], mine["guidance_scale"]) == ("ddim", 3, 3.0)
    assert mine["model_defaults"] == ["guidance_scale", "image_guidance_scale"]
    with pytest.raises(BadOptions, match="cannot run this model"):
        editor.edit(source, "make the square red", scheduler="euler_a")


def test_stock_diffusers_matches_ip2p_on_an_x0_residual_model(x0_model):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    import ip2p

    folder = str(x0_model)
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
        folder, vae=PixelUnshuffleAutoencoder.from_pretrained(folder, subfolder="vae"),
        unet=ResidualUNet2DConditionModel.from_pretrained(folder, subfolder="unet"), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    source = make_pair(2, 16)[0]
    theirs = pipe("make the square red", image=source, num_inference_steps=4, guidance_scale=3.0,
                  image_guidance_scale=1.2, generator=torch.Generator().manual_seed(5), output_type="np").images[0]
    ours = ip2p.load_editor(folder, device="cpu").edit(source, "make the square red", steps=4, seed=5,
                                                       guidance_scale=3.0, image_guidance_scale=1.2)
    assert np.abs(theirs * 255 - np.asarray(ours.image, float)).max() <= 1.0


def test_same_seed_same_output(x0_model):
    import ip2p

    editor = ip2p.load_editor(str(x0_model), device="cpu")
    source = make_pair(1, 16)[0]
    a, b = (np.asarray(editor.edit(source, "make the square blue", seed=9).image) for _ in range(2))
    assert np.array_equal(a, b)


def test_cli_refuses_an_ancestral_scheduler_on_an_x0_model(x0_model, tmp_path):
    source = tmp_path / "in.png"
    make_pair(0, 16)[0].save(source)
    proc = subprocess.run([sys.executable, "-m", "ip2p", "edit", str(source), "-i", "make the square red", "-o",
                           str(tmp_path / "out.png"), "--model", str(x0_model), "--scheduler", "euler_a", "-q"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and not (tmp_path / "out.png").exists()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "euler_a" in lines[0] and "x0" in lines[0], proc.stderr


def test_bad_recommendation_file_is_a_one_line_model_error(x0_model, tmp_path):
    import shutil

    import ip2p

    copy = tmp_path / "m"
    shutil.copytree(x0_model, copy)
    (copy / "ip2p.json").write_text(json.dumps({"steps": 0}))
    with pytest.raises(BadModel, match="ip2p.json: steps must be between"):
        ip2p.load_editor(str(copy), device="cpu")
    (copy / "ip2p.json").write_text(json.dumps({"strength": 1}))
    with pytest.raises(BadModel, match="expected an object with some of"):
        ip2p.load_editor(str(copy), device="cpu")


def test_config_checks_for_the_new_keys(tmp_path):
    data = tmp_path / "d"
    with pytest.raises(BadOptions, match="model.autoencoder must be one of"):
        x0_config(tmp_path / "r", data, autoencoder="vq").check()
    with pytest.raises(BadOptions, match="model.residual .* needs model.autoencoder pixel_unshuffle"):
        x0_config(tmp_path / "r", data, autoencoder="kl").check()
    with pytest.raises(BadOptions, match="snr_gamma weights the x0 loss"):
        x0_config(tmp_path / "r", data, residual=False, prediction_type="epsilon").check()
    with pytest.raises(BadOptions, match="model.prediction_type must be one of"):
        x0_config(tmp_path / "r", data, prediction_type="flow").check()


def test_head_channels_set_the_attention_heads_per_level(tmp_path):
    from ip2p.train.model import build_scratch

    def heads(cfg):
        unet = build_scratch(cfg.check(), ["make it red"]).unet
        return sorted({(m.heads, m.inner_dim // m.heads) for m in unet.modules() if type(m).__name__ == "Attention"})

    data = tmp_path / "d"
    # the default: diffusers' attention_head_dim 8 is 8 heads, 4 and 8 channels each at widths 32 and 64
    assert heads(x0_config(tmp_path / "r", data)) == [(8, 4), (8, 8)]
    assert heads(x0_config(tmp_path / "r", data, unet_head_channels=16)) == [(2, 16), (4, 16)]
    with pytest.raises(BadOptions, match=r"model.unet_widths must be multiples of model.unet_head_channels \(24\)"):
        x0_config(tmp_path / "r", data, unet_head_channels=24).check()


def test_x0_training_lowers_the_loss(tmp_path):
    data = write_ip2p(tmp_path / "d", 4, size=16)
    cfg = x0_config(tmp_path / "run", data)
    cfg.run.max_steps, cfg.optim.final_lr_ratio, cfg.data.validation_count = 30, 1.0, 0
    losses = train(cfg, export=False).losses
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_edit_weight_weighs_the_changed_latent_pixels(tmp_path):
    """optim.edit_weight: the same run, the same first batch, a heavier loss when only the edited
    pixels weigh more (they hold the error of a residual model at step 0), and a checked range."""
    data = write_ip2p(tmp_path / "d", 4, size=16)
    first = {}
    for weight in (0.0, 4.0):
        cfg = x0_config(tmp_path / f"run{weight}", data)
        cfg.run.max_steps, cfg.data.validation_count, cfg.optim.edit_weight = 1, 0, weight
        first[weight] = train(cfg, export=False).losses[0]
    assert first[4.0] > 1.5 * first[0.0]
    _check_exact_latent_weight(tmp_path, data, "edit_weight")


def _check_exact_latent_weight(tmp_path, data, key: str) -> None:
    """optim.edit_weight and optim.grounding_weight: >= 0, and only on an exact autoencoder."""
    with pytest.raises(BadOptions, match=f"optim.{key} must be >= 0"):
        bad = x0_config(tmp_path / "r", data)
        setattr(bad.optim, key, -1.0)
        bad.check()
    with pytest.raises(BadOptions, match=f"{key} .* needs model.autoencoder pixel_unshuffle"):
        kl = x0_config(tmp_path / "r", data, autoencoder="kl", residual=False)
        setattr(kl.optim, key, 1.0)
        kl.check()


def test_unknown_words_keep_content_words_and_resume_exactly():
    """data.unknown_words: a made-up word replaces a non-content word or is inserted; colours, shapes,
    places and global-edit words are never replaced; the same generator state gives the same texts."""
    from ip2p.text import split_words
    from ip2p.train.data import keep_word_set, with_unknown_words

    keep = keep_word_set("shapes")
    assert {"blue", "circle", "left", "background", "darker", "negative"} <= keep and "remove" not in keep
    texts = ["make the red circle blue", "remove the star on the left", "make it darker",
             "add a green square in the top right corner"] * 25
    first = with_unknown_words(texts, 1.0, keep, torch.Generator().manual_seed(3))
    again = with_unknown_words(texts, 1.0, keep, torch.Generator().manual_seed(3))
    assert first == again and first != texts
    for before, after in zip(texts, first, strict=True):
        old, new = split_words(before), split_words(after)
        assert len(new) in (len(old), len(old) + 1)
        kept = [w for w in old if w in keep]
        assert [w for w in new if w in keep] == kept  # every content word survives, in order
    replaced = sum(len(split_words(a)) == len(split_words(b)) for a, b in zip(texts, first, strict=True))
    assert 20 < replaced < 80  # about half replace, half insert
    assert with_unknown_words(texts, 0.0, keep, torch.Generator().manual_seed(3)) == texts
    assert keep_word_set("Paint it") == {"paint", "it"}


def test_unknown_word_count_adds_up_to_n_words_and_keeps_the_one_word_stream():
    """data.unknown_word_count N: a chosen instruction gets 1..N made-up words, content words survive
    in order, a second word never overwrites the first, and N = 1 draws exactly what it always drew."""
    from ip2p.text import split_words
    from ip2p.train.data import keep_word_set, with_unknown_words

    keep = keep_word_set("shapes")
    texts = ["make the red circle blue", "kindly recolour the star green", "remove the square"] * 40

    def one_word_reference(seed):  # the draws data.unknown_words has taken since run 6
        gen, out = torch.Generator().manual_seed(seed), []
        for text in texts:
            chance, how, where = torch.rand(3, generator=gen).tolist()
            length = int(torch.randint(3, 9, (1,), generator=gen))
            letters = torch.randint(0, 26, (8,), generator=gen).tolist()
            word, words = "".join(chr(ord("a") + c) for c in letters[:length]), text.split()
            free = [i for i, w in enumerate(words) if not set(split_words(w)) & keep]
            if chance < 0.7:
                if free and how < 0.5:
                    words[free[int(where * len(free))]] = word
                else:
                    words.insert(int(where * (len(words) + 1)), word)
            out.append(" ".join(words))
        return out

    assert with_unknown_words(texts, 0.7, keep, torch.Generator().manual_seed(5)) == one_word_reference(5)
    two = with_unknown_words(texts, 1.0, keep, torch.Generator().manual_seed(5), count=2)
    assert two == with_unknown_words(texts, 1.0, keep, torch.Generator().manual_seed(5), count=2)
    made_up = []
    for before, after in zip(texts, two, strict=True):
        old, new = split_words(before), split_words(after)
        assert [w for w in new if w in keep] == [w for w in old if w in keep]
        made_up.append(len([w for w in new if w not in old]))
    assert set(made_up) <= {1, 2} and 30 < made_up.count(2) < 90  # about half get a second word


def test_unknown_words_train_and_are_checked(tmp_path):
    data = write_ip2p(tmp_path / "d", 4, size=16)
    cfg = x0_config(tmp_path / "run", data)
    cfg.run.max_steps, cfg.data.validation_count = 2, 0
    cfg.data.unknown_words, cfg.data.keep_words = 0.5, "shapes"
    assert len(train(cfg, export=False).losses) == 2
    with pytest.raises(BadOptions, match=r"data.unknown_words must be a probability in \[0, 1\], got 1.5"):
        bad = x0_config(tmp_path / "r", data)
        bad.data.unknown_words = 1.5
        bad.check()
    for count in (0, 1.5, True):
        bad = x0_config(tmp_path / "r", data)
        bad.data.unknown_word_count = count
        with pytest.raises(BadOptions, match=f"data.unknown_word_count must be a positive integer, got {count!r}"):
            bad.check()


def test_training_continues_from_a_shipped_x0_model(x0_model, tmp_path):
    """model.start ip2p on an exported residual x0 folder: its weights are step 0, the residual UNet
    and the exact autoencoder stay, and edit_weight with snr_gamma train on it (how the demo model
    improves in place across sessions, docs/demo-model.md)."""
    from safetensors.torch import load_file

    data = write_ip2p(tmp_path / "d", 4, size=16)
    cfg = TrainConfig.from_mapping({
        "model": {"start": "ip2p", "base": str(x0_model), "prediction_type": "sample", "train_text_encoder": True},
        "data": {"path": str(data), "resolution": 16, "validation_count": 0, "random_crop": False, "flip": False},
        "optim": {"batch_size": 2, "lr": 1e-3, "snr_gamma": 5.0, "edit_weight": 4.0},
        "run": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "checkpoint_every": 0, "device": "cpu",
                "tensorboard": False},
    })
    result = train(cfg, export=False)
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))
    base = tmp_path / "run" / "base"
    assert json.loads((base / "unet" / "config.json").read_text())["_class_name"] == "ResidualUNet2DConditionModel"
    assert json.loads((base / "vae" / "config.json").read_text())["_class_name"] == "PixelUnshuffleAutoencoder"
    shipped, step0 = (load_file(next((d / "unet").glob("*.safetensors"))) for d in (x0_model, base))
    assert shipped.keys() == step0.keys() and all(torch.equal(shipped[k], step0[k]) for k in shipped)


def grown_config(x0_model: Path, tmp_path: Path, **model) -> TrainConfig:
    """Two steps on start ip2p from ``x0_model`` with ``model`` keys that grow it, a checkpoint a step."""
    data = write_ip2p(tmp_path / "d", 4, size=16)
    return TrainConfig.from_mapping({
        "model": {"start": "ip2p", "base": str(x0_model), "prediction_type": "sample", "train_text_encoder": True,
                  **model},
        "data": {"path": str(data), "resolution": 16, "validation_count": 0, "random_crop": False, "flip": False},
        "optim": {"batch_size": 2, "lr": 1e-3, "snr_gamma": 5.0},
        "run": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "checkpoint_every": 1, "device": "cpu",
                "tensorboard": False},
    })


SETTINGS = dict(steps=4, seed=3, guidance_scale=3.0, image_guidance_scale=1.2)


def assert_stock_agrees(folder: str, unet_class, editor=None):
    """Stock diffusers, given the folder's UNet class and the exact autoencoder, edits as ip2p does."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    import ip2p

    source, text = make_pair(2, 16)[0], "make the square red"
    ours = (editor or ip2p.load_editor(folder, device="cpu")).edit(source, text, **SETTINGS)
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
        folder, vae=PixelUnshuffleAutoencoder.from_pretrained(folder, subfolder="vae"),
        unet=unet_class.from_pretrained(folder, subfolder="unet"), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(text, image=source, num_inference_steps=4, guidance_scale=3.0, image_guidance_scale=1.2,
                  generator=torch.Generator().manual_seed(3), output_type="np").images[0]
    assert np.abs(theirs * 255 - np.asarray(ours.image, float)).max() <= 1.0


def assert_edits_alike(a: Path, b: Path):
    """The two model folders edit the same picture pixel for pixel alike."""
    import ip2p

    source, text = make_pair(2, 16)[0], "make the square red"
    one, two = (np.asarray(ip2p.load_editor(str(m), device="cpu").edit(source, text, **SETTINGS).image) for m in (a, b))
    assert np.array_equal(one, two)


def test_growing_transformer_layers_keeps_the_trained_model(x0_model, tmp_path):
    """model.unet_transformer_layers and model.text_layers on start ip2p add UNet and text-encoder
    layers that start as the identity: the step-0 model edits pixel for pixel like the base, then the
    new layers train and the run resumes."""
    import ip2p
    from ip2p.train.model import grow_text_layers, grow_transformer_layers

    cfg = grown_config(x0_model, tmp_path, unet_transformer_layers=[2, 2], text_layers=3)
    result = train(cfg, export=True)
    base = tmp_path / "run" / "base"
    assert json.loads((base / "unet" / "config.json").read_text())["transformer_layers_per_block"] == [2, 2]
    assert_edits_alike(x0_model, base)
    trained = ip2p.load_editor(str(result.model_dir), device="cpu")
    blocks = [m for m in trained.components.unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    grown = trained.components.unet.mid_block.attentions[0].transformer_blocks[1]
    # one layer a block in the base (16x16 down, middle, two in the 16x16 up block), two now
    assert len(blocks) == 8 and grown.ff.net[-1].weight.abs().sum() > 0  # zero at step 0: it trained
    encoder = trained.components.text_encoder
    stack = next(n for n, _ in encoder.named_modules() if n.endswith("encoder.layers"))
    assert encoder.config.num_hidden_layers == 3 and encoder.get_submodule(stack)[2].mlp.fc2.weight.abs().sum() > 0
    cfg.run.max_steps = 3
    assert len(train(cfg, resume=True, export=False).losses) == 1
    with pytest.raises(BadModel, match=r"has fewer layers than the base UNet's \[2, 2\]"):
        grow_transformer_layers(trained.components.unet, [1, 2])
    with pytest.raises(BadModel, match="model.text_layers 2 is fewer than the base text encoder's 3"):
        grow_text_layers(encoder, 2)
    cfg.model.text_layers = 0
    with pytest.raises(BadOptions, match="model.text_layers must be a positive integer, got 0"):
        cfg.check()
    cfg.model.text_layers = 3
    cfg.model.unet_transformer_layers = [0, 2]
    with pytest.raises(BadOptions, match="model.unet_transformer_layers must be a list of positive integers"):
        cfg.check()


def test_edit_weight_on_a_base_with_a_learned_autoencoder_is_one_error(tmp_path):
    from ip2p.components import save_diffusers
    from ip2p.tiny import build_tiny_components

    base = save_diffusers(build_tiny_components(seed=1), tmp_path / "base")
    data = write_ip2p(tmp_path / "d", 4, size=16)
    cfg = TrainConfig.from_mapping({
        "model": {"start": "ip2p", "base": str(base)},
        "data": {"path": str(data), "resolution": 16, "validation_count": 0},
        "optim": {"batch_size": 2, "edit_weight": 4.0},
        "run": {"output_dir": str(tmp_path / "run"), "max_steps": 1, "device": "cpu", "tensorboard": False},
    })
    with pytest.raises(BadOptions, match="edit_weight .* has a learned autoencoder, not an exact one"):
        train(cfg, export=False)


def test_image_from_stock_loader_without_passing_classes(x0_model):
    """model_index.json names ip2p's classes, so a plain from_pretrained (ip2p installed) loads them too."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(x0_model), safety_checker=None)
    assert isinstance(pipe.vae, PixelUnshuffleAutoencoder) and isinstance(pipe.unet, ResidualUNet2DConditionModel)


def test_server_and_batch_use_the_model_recommendation(x0_model, tmp_path):
    """Over real HTTP and a real batch process: left-out settings come from ip2p.json, given ones win."""
    import base64
    import io

    import httpx

    import ip2p
    from ip2p.images import read_params
    from ip2p.server import BackgroundServer, ServerSettings, create_app

    source = make_pair(0, 16)[0]
    buffer = io.BytesIO()
    source.save(buffer, format="PNG")
    editor = ip2p.load_editor(str(x0_model), device="cpu")
    settings = ServerSettings(ui=False, default_resolution=16)
    with BackgroundServer(create_app(editor, settings)) as running, httpx.Client(base_url=running.url, timeout=120) as c:
        body = {"image": base64.b64encode(buffer.getvalue()).decode(), "instruction": "make the square red", "seed": 1}
        params = c.post("/v1/edit", json=body).json()["images"][0]["params"]
        assert (params["scheduler"], params["steps"], params["guidance_scale"]) == ("euler", 2, 3.0)
        assert params["model_defaults"] == ["steps", "scheduler", "guidance_scale", "image_guidance_scale"]
        bad = c.post("/v1/edit", json={**body, "scheduler": "euler_a"})
        assert bad.status_code == 422 and "cannot run this model" in bad.json()["error"]["message"]

    folder = tmp_path / "in"
    folder.mkdir()
    source.save(folder / "a.png")
    proc = subprocess.run([sys.executable, "-m", "ip2p", "batch", str(folder), "-i", "make the square red", "-o",
                           str(tmp_path / "out"), "--model", str(x0_model), "--steps", "3", "-q"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    recorded = read_params(next((tmp_path / "out").glob("a*.png")))
    assert (recorded["scheduler"], recorded["steps"], recorded["image_guidance_scale"]) == ("euler", 3, 1.2)


def test_single_file_export_refuses_the_ip2p_classes(x0_model, tmp_path):
    from ip2p.convert import save_single_file
    from ip2p.models import load_folder

    with pytest.raises(BadModel, match="keep it as a diffusers folder"):
        save_single_file(load_folder(x0_model), tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_deepcache_forward_keeps_the_residual(x0_model):
    """approx mode re-implements the UNet forward; at interval 1 it must equal the class's own forward."""
    from diffusers import UNet2DConditionModel

    from ip2p.fast import DeepCacheUNet
    from ip2p.models import load_folder

    unet = load_folder(x0_model).unet
    gen = torch.Generator().manual_seed(0)
    channels = unet.config.in_channels
    sample = torch.randn(2, channels, 4, 4, generator=gen)
    context = torch.randn(2, 16, 32, generator=gen)
    with torch.no_grad():
        expected = unet(sample, 500, context, return_dict=False)[0]
        got = DeepCacheUNet(unet, 1)(sample, 500, context)[0]
        plain = UNet2DConditionModel.forward(unet, sample, 500, context, return_dict=False)[0]
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(expected - plain, sample[:, channels // 2:], atol=1e-5)  # the residual is the image half


def test_image_stem_grows_exactly_trains_and_runs_in_every_path(x0_model, tmp_path):
    """model.image_stem on start ip2p: the grown UNet (ImageStemUNet2DConditionModel) edits pixel for
    pixel like the base at step 0, its stem trains and resumes, and stock diffusers and DeepCache run it."""

    import ip2p
    from ip2p.architectures import ImageStemUNet2DConditionModel
    from ip2p.fast import DeepCacheUNet

    cfg = grown_config(x0_model, tmp_path, image_stem=True)
    result = train(cfg, export=True)
    base = tmp_path / "run" / "base"
    assert json.loads((base / "unet" / "config.json").read_text())["_class_name"] == "ImageStemUNet2DConditionModel"
    assert_edits_alike(x0_model, base)

    folder = str(result.model_dir)
    editor = ip2p.load_editor(folder, device="cpu")
    unet = editor.components.unet
    assert isinstance(unet, ImageStemUNet2DConditionModel) and unet.conv_in.stem[-1].weight.abs().sum() > 0
    assert_stock_agrees(folder, ImageStemUNet2DConditionModel, editor)

    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(2, unet.config.in_channels, 8, 8, generator=gen)
    context = torch.randn(2, 16, 32, generator=gen)
    with torch.no_grad():
        expected = unet(sample, 500, context, return_dict=False)[0]
        assert torch.allclose(DeepCacheUNet(unet, 1)(sample, 500, context)[0], expected, atol=1e-5)
        unet.conv_in.stem[-1].weight.zero_()
        unet.conv_in.stem[-1].bias.zero_()
        assert not torch.allclose(unet(sample, 500, context, return_dict=False)[0], expected, atol=1e-4)
    cfg.run.max_steps = 3
    assert len(train(cfg, resume=True, export=False).losses) == 1


def test_image_stem_from_scratch_and_its_errors(x0_model, tmp_path):

    from ip2p.architectures import ImageStemUNet2DConditionModel
    from ip2p.train.model import add_image_stem

    data = write_ip2p(tmp_path / "d", 4, size=16)
    result = train(x0_config(tmp_path / "run", data, image_stem=True))
    unet = json.loads((result.model_dir / "unet" / "config.json").read_text())
    assert unet["_class_name"] == "ImageStemUNet2DConditionModel" and unet["out_channels"] == 12
    with pytest.raises(BadOptions, match="model.image_stem is a residual UNet's: it needs model.residual true"):
        x0_config(tmp_path / "r2", data, image_stem=True, residual=False).check()
    with pytest.raises(BadOptions, match="model.image_stem must be true or false, got 'yes'"):
        x0_config(tmp_path / "r3", data, image_stem="yes").check()
    plain = plain_unet()
    with pytest.raises(BadModel, match="model.image_stem needs a residual UNet over the exact autoencoder"):
        add_image_stem(plain)
    with pytest.raises(ValueError, match="an image stem needs 3 f\\^2 latent channels"):
        ImageStemUNet2DConditionModel.from_config({**plain.config, "in_channels": 8, "out_channels": 4})


def test_grounding_head_learns_where_the_edit_goes_and_is_not_exported(tmp_path):
    """optim.grounding_weight: a 1x1 head on a UNet module learns the changed latent pixels (its
    cross-entropy, logged in log.csv, falls from log 2), the run resumes exactly with it, and the
    exported model has no head weights and edits."""
    import csv

    from safetensors.torch import load_file

    import ip2p

    data = write_ip2p(tmp_path / "d", 4, size=16)

    def config(run: str, steps: int, layer: str = "up_blocks.0") -> TrainConfig:
        cfg = x0_config(tmp_path / run, data)
        cfg.run.max_steps, cfg.run.checkpoint_every, cfg.data.validation_count = steps, 10, 0
        cfg.optim.grounding_weight, cfg.optim.grounding_layer, cfg.optim.final_lr_ratio = 1.0, layer, 1.0
        return cfg.check()

    whole = train(config("whole", 20), export=True)
    rows = list(csv.DictReader((tmp_path / "whole" / "log.csv").open()))
    grounding = [float(row["grounding"]) for row in rows]
    assert len(grounding) == 2 and grounding[-1] < grounding[0] - 0.01 and grounding[0] < np.log(2) + 1e-3
    # resumed from step 10: the same losses as the run that never stopped
    first = train(config("parts", 10), export=False)
    rest = train(config("parts", 20), resume=True, export=False)
    assert np.allclose(first.losses + rest.losses, whole.losses, rtol=1e-5, atol=1e-7)
    unet = load_file(next((whole.model_dir / "unet").glob("*.safetensors")))
    assert not [k for k in unet if "grounding" in k or k.startswith("proj.")]
    image = ip2p.load_editor(str(whole.model_dir), device="cpu").edit(make_pair(2, 16)[0], "make the square red",
                                                                      **SETTINGS).image
    assert image.size == (16, 16)
    # a coarser level (the 2x2 down block of a 4x4 latent) trains against the pooled mask
    assert np.isfinite(train(config("coarse", 2, "down_blocks.1"), export=False).losses).all()


def test_grounding_head_errors(tmp_path):
    data = write_ip2p(tmp_path / "d", 2, size=16)
    cfg = x0_config(tmp_path / "run", data)
    cfg.optim.grounding_weight, cfg.optim.grounding_layer = 1.0, "up_blocks.9"
    with pytest.raises(BadOptions, match="optim.grounding_layer 'up_blocks.9' is not a module of the UNet"):
        train(cfg, export=False)
    with pytest.raises(BadOptions, match="optim.grounding_layer must name a UNet module"):
        cfg.optim.grounding_layer = ""
        cfg.check()
    _check_exact_latent_weight(tmp_path, data, "grounding_weight")


def _shapes_config(tmp_path, run: str, data: Path, steps: int, **optim) -> TrainConfig:
    cfg = x0_config(tmp_path / run, data)
    cfg.data.resolution, cfg.data.validation_count = 64, 0
    cfg.run.max_steps, cfg.run.checkpoint_every, cfg.run.log_every, cfg.optim.final_lr_ratio = steps, 10, 1, 1.0
    for key, value in optim.items():
        setattr(cfg.optim, key, value)
    return cfg.check()


def test_kind_heads_learn_the_kind_map_and_are_not_exported(tmp_path):
    """optim.kind_weight: 1x1 heads on the modules of optim.kind_layers learn the data set's kind map
    (their cross-entropy, logged in log.csv, starts at log 9 classes and falls), the run resumes
    exactly with them beside a grounding head, and the exported model has no head weights."""
    import csv

    from safetensors.torch import load_file

    from ip2p.shapes.dataset import MakeOptions, make_dataset

    data = tmp_path / "shapes"
    make_dataset(MakeOptions(out=str(data), n=4, size=64, format="ip2p", workers=1,
                             kinds=("recolor_object",)).check())
    heads = {"kind_weight": 1.0, "grounding_weight": 0.5, "drop_text": 0.0, "drop_image": 0.0, "drop_both": 0.0}
    whole = train(_shapes_config(tmp_path, "whole", data, 20, **heads), export=True)
    rows = list(csv.DictReader((tmp_path / "whole" / "log.csv").open()))
    kind = [float(row["kind"]) for row in rows]  # one row a step (log_every 1)
    assert len(kind) == 20 and abs(kind[0] - np.log(9)) < 1e-3 and np.mean(kind[-5:]) < kind[0] - 0.3
    assert all(float(row["grounding"]) > 0 for row in rows)
    first = train(_shapes_config(tmp_path, "parts", data, 10, **heads), export=False)
    rest = train(_shapes_config(tmp_path, "parts", data, 20, **heads), resume=True, export=False)
    assert np.allclose(first.losses + rest.losses, whole.losses, rtol=1e-5, atol=1e-7)
    unet = load_file(next((whole.model_dir / "unet").glob("*.safetensors")))
    assert not [k for k in unet if "kind_heads" in k or k.startswith("proj.")]


def test_kind_map_reference_and_stem_probe(tmp_path):
    """benchmarks/kind_map_reference.py and kind_stem_probe.py, as processes: knowing where the objects
    are beats knowing nothing, knowing their kinds too beats both; the stem probe trains and scores;
    a folder without kind maps is one line for both."""
    from ip2p.shapes.dataset import MakeOptions, make_dataset

    data = tmp_path / "shapes"
    make_dataset(MakeOptions(out=str(data), n=6, size=64, format="ip2p", workers=1).check())
    script = str(Path(__file__).parents[1] / "benchmarks" / "kind_map_reference.py")
    out = tmp_path / "ref.json"
    proc = subprocess.run([sys.executable, script, "--data", str(data), "--out", str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    heads = json.loads(out.read_text())["heads"]
    assert set(heads) == {"16x16", "8x8"}
    for ref in heads.values():
        assert ref["knows_nothing"] > ref["knows_where_not_kind"] > ref["knows_everything"] > 0
    pairs = write_ip2p(tmp_path / "d", 2, size=16)
    proc = subprocess.run([sys.executable, script, "--data", str(pairs), "--out", str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "has no kind maps" in proc.stderr and "Traceback" not in proc.stderr
    # kind_stem_probe.py trains the first layers alone on the same maps: a curve, a test score, one line on bad data
    stem = str(Path(__file__).parents[1] / "benchmarks" / "kind_stem_probe.py")
    proc = subprocess.run([sys.executable, stem, "--data", str(data), "--steps", "10", "--batch", "4", "--test", "3",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert len(report["curve"]) == 10 and report["n"] == 6 and report["params"] > 0
    assert report["test"]["objects"] > 0 and 0 <= report["test"]["kind_read"] <= 1 and report["test"]["cross_entropy"] > 0
    proc = subprocess.run([sys.executable, stem, "--data", str(pairs), "--out", str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "has no kind maps" in proc.stderr and "Traceback" not in proc.stderr


def test_kind_head_errors(tmp_path):
    pairs = write_ip2p(tmp_path / "d", 2, size=16)  # no kind maps
    cfg = x0_config(tmp_path / "run", pairs)
    cfg.optim.kind_weight = 1.0
    with pytest.raises(BadOptions, match="optim.kind_weight trains against kind maps, and data set .* has none"):
        train(cfg.check(), export=False)
    from ip2p.shapes.dataset import MakeOptions, make_dataset

    data = tmp_path / "shapes"
    make_dataset(MakeOptions(out=str(data), n=2, size=64, format="ip2p", workers=1).check())
    with pytest.raises(BadOptions, match="optim.kind_layers 'down_blocks.7' is not a module of the UNet"):
        train(_shapes_config(tmp_path, "r2", data, 1, kind_weight=1.0, kind_layers=["down_blocks.7"]), export=False)
    with pytest.raises(BadOptions, match="optim.kind_layers must list UNet modules"):
        _shapes_config(tmp_path, "r3", data, 1, kind_weight=1.0, kind_layers=[])
    with pytest.raises(BadOptions, match="optim.kind_weight must be >= 0, got -1"):
        _shapes_config(tmp_path, "r4", data, 1, kind_weight=-1.0)


def test_grounding_probe_reads_the_head_back_from_a_checkpoint(tmp_path):
    """benchmarks/grounding_probe.py, as a process, on a 64-px shapes run with a grounding head and
    kind heads: one row per object edit, found only where another object could be pointed at, the
    summary's rates in [0, 1], a kind-read rate per kind head."""
    from ip2p.shapes.dataset import MakeOptions, make_dataset

    data = tmp_path / "shapes"
    make_dataset(MakeOptions(out=str(data), n=8, size=64, format="ip2p", workers=1,
                             kinds=("recolor_object", "remove_object")).check())
    cfg = x0_config(tmp_path / "run", data)
    cfg.data.resolution, cfg.data.validation_count = 64, 0
    cfg.run.max_steps, cfg.run.checkpoint_every, cfg.optim.grounding_weight, cfg.optim.kind_weight = 2, 2, 1.0, 1.0
    result = train(cfg.check(), export=True)
    out = tmp_path / "probe.json"
    proc = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "benchmarks" / "grounding_probe.py"),
                           "--model", str(result.model_dir), "--checkpoint", str(tmp_path / "run/checkpoints/step-0000002"),
                           "--n", "6", "--kinds", "recolor_object,remove_object", "--out", str(out),
                           "--figure", str(tmp_path / "probe.png")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert len(report["rows"]) == 6 and {r["kind"] for r in report["rows"]} == {"recolor_object", "remove_object"}
    for row in report["rows"]:
        assert (row["found"] is None) == (row["objects"] == 1) and 0 <= row["target_p"] <= 1
    summary = report["summary"]["all"]
    assert len(summary["kind_read"]) == 2 and all(0 <= k <= 1 for k in summary["kind_read"])  # one a kind head
    assert summary["n"] == 6 and summary["n_several_objects"] == sum(r["objects"] > 1 for r in report["rows"])
    if summary["n_several_objects"]:  # and one figure row each: input | head map | true change
        assert 0 <= summary["found"] <= 1 and 0 < summary["chance"] <= 0.5
        from PIL import Image

        assert Image.open(tmp_path / "probe.png").size == (3 * 128, summary["n_several_objects"] * (128 + 14))
    # a checkpoint without a head is one line, not a traceback
    plain = x0_config(tmp_path / "plain", data)
    plain.data.resolution, plain.data.validation_count = 64, 0
    plain.run.max_steps, plain.run.checkpoint_every = 1, 1
    train(plain.check(), export=False)
    proc = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "benchmarks" / "grounding_probe.py"),
                           "--model", str(result.model_dir), "--checkpoint", str(tmp_path / "plain/checkpoints/step-0000001"),
                           "--n", "1", "--out", str(tmp_path / "p.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "has no grounding head" in proc.stderr and "Traceback" not in proc.stderr


def test_kind_stem_pretrains_its_branch_freezes_it_and_runs_in_every_path(x0_model, tmp_path):
    """model.kind_stem on start ip2p: the branch learns the kind maps alone first (its cross-entropy
    falls), the grown step-0 model edits pixel for pixel like the base, the branch stays frozen while
    the projection trains, a resume does not train the branch again, and stock diffusers agrees."""
    from safetensors.torch import load_file

    from ip2p.architectures import KindStemUNet2DConditionModel
    from ip2p.shapes.dataset import MakeOptions, make_dataset

    data = tmp_path / "shapes"
    make_dataset(MakeOptions(out=str(data), n=4, size=64, format="ip2p", workers=1).check())
    cfg = grown_config(x0_model, tmp_path, kind_stem=True, kind_stem_steps=30, kind_stem_examples=4)
    cfg.data.path, cfg.data.resolution = str(data), 32
    events = []
    result = train(cfg.check(), export=True, callback=events.append)
    curve = [e.loss for e in events if e.kind == "step" and e.stage == "kind-stem"]
    assert len(curve) == 3 and curve[-1] < curve[0] - 0.3
    assert any(e.stage == "kind-stem-done" and "cross-entropy" in e.message for e in events)
    base = tmp_path / "run" / "base"
    assert json.loads((base / "unet" / "config.json").read_text())["_class_name"] == "KindStemUNet2DConditionModel"
    assert_edits_alike(x0_model, base)
    step0, shipped = (load_file(next((d / "unet").glob("*.safetensors"))) for d in (base, result.model_dir))
    assert int(step0["conv_in.kind_steps"]) == 30
    branch = [k for k in step0 if k.startswith("conv_in.kinds.")]
    assert branch and all(torch.equal(step0[k], shipped[k]) for k in branch)  # frozen
    assert step0["conv_in.kind_proj.weight"].abs().sum() == 0 < shipped["conv_in.kind_proj.weight"].abs().sum()

    assert_stock_agrees(str(result.model_dir), KindStemUNet2DConditionModel)

    events.clear()
    cfg.run.max_steps = 3
    assert len(train(cfg, resume=True, export=False, callback=events.append).losses) == 1
    assert not [e for e in events if e.stage.startswith("kind-stem")]


def test_kind_stem_errors(x0_model, tmp_path):
    from ip2p.train.model import add_kind_stem

    cfg = grown_config(x0_model, tmp_path, kind_stem=True)  # write_ip2p data: no kind maps
    with pytest.raises(BadOptions, match="model.kind_stem trains against kind maps, and data set .* has none"):
        train(cfg.check(), export=False)
    data = tmp_path / "d2"
    with pytest.raises(BadOptions, match="model.kind_stem grows a residual UNet over the exact autoencoder"):
        x0_config(tmp_path / "r2", data, kind_stem=True, residual=False).check()
    with pytest.raises(BadOptions, match="model.kind_stem_steps must be > 0, got 0"):
        x0_config(tmp_path / "r3", data, kind_stem=True, kind_stem_steps=0).check()
    with pytest.raises(BadOptions, match="model.kind_stem must be true or false, got 1"):
        x0_config(tmp_path / "r4", data, kind_stem=1).check()
    plain = plain_unet()
    with pytest.raises(BadModel, match="model.kind_stem needs a residual UNet over the exact autoencoder"):
        add_kind_stem(plain)
