"""Original single-file (CompVis LDM layout) checkpoints: exact round trips, safety, wrong architectures."""

from __future__ import annotations

import os
import pickle
import re
import sys
import types

import pytest
import torch
from safetensors.torch import load_file, save_file

from ip2p.convert import (
    load_single_file,
    read_checkpoint,
    real_clip_tokenizer,
    save_single_file,
    to_ldm_state_dict,
)
from ip2p.errors import BadModel, BadOptions
from ip2p.tiny import build_tiny_components

PARTS = ("unet", "vae", "text_encoder")


def assert_same_weights(a, b):
    for part in PARTS:
        sa, sb = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert sa.keys() == sb.keys(), part
        for key in sa:
            assert sa[key].dtype == sb[key].dtype == torch.float32, key
            assert torch.equal(sa[key], sb[key]), f"{part}.{key}"


def forward_outputs(c):
    """One real forward pass through each of the three networks on fixed inputs."""
    gen = torch.Generator().manual_seed(3)
    latents = torch.randn(2, 8, 16, 16, generator=gen)
    pixels = torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1
    ids = c.tokenizer(["make it a red circle", ""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        text = c.text_encoder(ids)
        noise = c.unet(latents, torch.tensor([10, 500]), encoder_hidden_states=text.last_hidden_state).sample
        posterior = c.vae.encode(pixels).latent_dist
        decoded = c.vae.decode(posterior.mode()).sample
    return [text.last_hidden_state, text.pooler_output, noise, posterior.mean, posterior.std, decoded]


def write_safetensors(state, path):
    save_file({k: v.contiguous().clone() for k, v in state.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def ldm_state(tiny_components):
    return to_ldm_state_dict(tiny_components)


# --------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_round_trip_is_exact(tiny_components, tmp_path, suffix):
    path = save_single_file(tiny_components, tmp_path / f"model{suffix}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp file left behind
    loaded = load_single_file(path)
    assert_same_weights(tiny_components, loaded)
    for ours, theirs in zip(forward_outputs(tiny_components), forward_outputs(loaded), strict=True):
        assert torch.equal(ours, theirs)
    for part in ("unet", "vae"):
        want, got = getattr(tiny_components, part).config, getattr(loaded, part).config
        for key in ("in_channels", "block_out_channels", "down_block_types", "up_block_types", "sample_size",
                    "layers_per_block", "attention_head_dim", "cross_attention_dim", "scaling_factor",
                    "latent_channels"):
            assert want.get(key) == got.get(key), (part, key)
    assert loaded.tokenizer.get_vocab() == tiny_components.tokenizer.get_vocab()
    assert loaded.scheduler_config == tiny_components.scheduler_config
    assert loaded.unet.training is False and not any(p.requires_grad for p in loaded.unet.parameters())
    assert loaded.name == loaded.source == str(path) and loaded.extra["weights"] == "model"


def test_sd15_shaped_topology_round_trips(tmp_path):
    """Four levels, two resnets per level, attention on the first three: SD-1.5's block layout."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    c = build_tiny_components()
    torch.manual_seed(1)
    c.unet = UNet2DConditionModel(
        sample_size=8, in_channels=8, out_channels=4, block_out_channels=(32, 64, 64, 64), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), cross_attention_dim=32,
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, attention_head_dim=8).eval()
    c.vae = AutoencoderKL(block_out_channels=(32, 32, 64, 64), layers_per_block=2, latent_channels=4,
                          down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4).eval()
    path = save_single_file(c, tmp_path / "sd15-shaped.safetensors")
    upsamplers = sorted(k for k in load_file(str(path)) if re.search(r"output_blocks\.\d+\.\d\.conv\.weight", k))
    assert upsamplers == [f"model.diffusion_model.output_blocks.{i}.conv.weight" for i in ("2.1", "5.2", "8.2")]
    loaded = load_single_file(path)
    assert_same_weights(c, loaded)
    assert loaded.unet.config.down_block_types == c.unet.config.down_block_types
    assert loaded.vae.config.block_out_channels == (32, 32, 64, 64)


def test_file_is_in_the_original_ldm_layout(tiny_components, tmp_path):
    raw = load_file(str(save_single_file(tiny_components, tmp_path / "m.safetensors")))
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model.")
    assert all(k.startswith(prefixes) for k in raw)
    assert raw["model.diffusion_model.input_blocks.0.0.weight"].shape == (32, 8, 3, 3)
    assert raw["model.diffusion_model.out.2.weight"].shape == (4, 32, 3, 3)
    # level 0: resnet + transformer, then downsampler; level 1: resnet; middle: resnet, transformer, resnet
    assert "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" in raw
    assert "model.diffusion_model.input_blocks.2.0.op.weight" in raw
    assert "model.diffusion_model.input_blocks.3.0.skip_connection.weight" in raw
    assert "model.diffusion_model.middle_block.2.emb_layers.1.weight" in raw
    assert "model.diffusion_model.output_blocks.1.1.conv.weight" in raw  # upsampler after a plain level
    assert "model.diffusion_model.output_blocks.3.1.proj_in.weight" in raw
    assert raw["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    assert "first_stage_model.decoder.up.1.upsample.conv.weight" in raw  # LDM numbers decoder levels upwards
    assert "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight" in raw
    assert raw["cond_stage_model.transformer.text_model.embeddings.position_ids"].tolist() == [list(range(77))]


def test_lightning_style_ckpt_loads(ldm_state, tiny_components, tmp_path, monkeypatch):
    """PyTorch Lightning 1.x keys callback state by the callback class: harmless, must load."""
    names = ("pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint")
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))

    class ModelCheckpoint:
        pass

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = names[-1], "ModelCheckpoint"
    sys.modules[names[-1]].ModelCheckpoint = ModelCheckpoint
    checkpoint = {"state_dict": dict(ldm_state), "global_step": 22000, "epoch": 3,
                  "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.1)}}}
    torch.save(checkpoint, tmp_path / "lightning.ckpt")
    for name in names:
        monkeypatch.delitem(sys.modules, name)
    loaded = load_single_file(tmp_path / "lightning.ckpt", tokenizer=tiny_components.tokenizer)
    assert_same_weights(tiny_components, loaded)


def test_ema_weights_are_preferred_when_complete(ldm_state, tiny_components, tmp_path):
    other = to_ldm_state_dict(build_tiny_components(seed=1))
    unet_keys = [k for k in ldm_state if k.startswith("model.diffusion_model.")]
    ema = {"model_ema." + k[len("model."):].replace(".", ""): other[k] for k in unet_keys}
    ema["model_ema.decay"], ema["model_ema.num_updates"] = torch.tensor(0.9999), torch.tensor(22000)
    tok = tiny_components.tokenizer
    path = write_safetensors({**ldm_state, **ema}, tmp_path / "ema.safetensors")

    with_ema = load_single_file(path, tokenizer=tok)
    assert with_ema.extra["weights"] == "ema"
    assert torch.equal(with_ema.unet.conv_in.weight, build_tiny_components(seed=1).unet.conv_in.weight)
    assert torch.equal(with_ema.vae.encoder.conv_in.weight, tiny_components.vae.encoder.conv_in.weight)
    without = load_single_file(path, tokenizer=tok, hints={"ema": False})
    assert_same_weights(tiny_components, without)

    partial = dict(ema)
    del partial["model_ema.diffusion_modelinput_blocks00weight"]
    path2 = write_safetensors({**ldm_state, **partial}, tmp_path / "partial.safetensors")
    fallback = load_single_file(path2, tokenizer=tok)
    assert fallback.extra["weights"].startswith("model (EMA incomplete")
    assert_same_weights(tiny_components, fallback)
    with pytest.raises(BadModel, match="EMA weights asked for"):
        load_single_file(path2, tokenizer=tok, hints={"ema": True})


def test_file_from_another_tool_uses_sd15_defaults(ldm_state, tiny_components, tmp_path):
    """No ip2p metadata: shapes give the architecture, SD-1.x conventions the rest."""
    path = write_safetensors(ldm_state, tmp_path / "plain.safetensors")
    with pytest.raises(BadModel, match="non-standard vocabulary .*tokenizer folder must be given"):
        load_single_file(path)
    from ip2p.text import save_tokenizer

    save_tokenizer(tiny_components.tokenizer, tmp_path / "tok")
    loaded = load_single_file(path, tokenizer=tmp_path / "tok")
    assert_same_weights(tiny_components, loaded)
    assert loaded.unet.config.sample_size == 64 and loaded.unet.config.attention_head_dim == 8
    assert loaded.text_encoder.config.num_attention_heads == 4  # 32 wide: hidden / 8
    assert loaded.vae.config.scaling_factor == pytest.approx(0.18215)
    hinted = load_single_file(path, tokenizer=tiny_components.tokenizer,
                              hints={"sample_size": 16, "prediction_type": "v_prediction", "text_heads": 2})
    assert hinted.unet.config.sample_size == 16 and hinted.scheduler_config["prediction_type"] == "v_prediction"
    assert hinted.text_encoder.config.num_attention_heads == 2
    with pytest.raises(BadOptions, match="unknown checkpoint hint"):
        load_single_file(path, tokenizer=tiny_components.tokenizer, hints={"heads": 3})
    with pytest.raises(BadModel, match="not divisible by 5 heads"):
        load_single_file(path, tokenizer=tiny_components.tokenizer, hints={"attention_head_dim": 5})


def test_half_precision_file_loads_as_float32(ldm_state, tiny_components, tmp_path):
    half = {k: v.half() if v.is_floating_point() else v for k, v in ldm_state.items()}
    loaded = load_single_file(write_safetensors(half, tmp_path / "fp16.safetensors"),
                              tokenizer=tiny_components.tokenizer)
    assert loaded.dtype == torch.float32
    want = tiny_components.unet.conv_in.weight.half().float()
    assert torch.equal(loaded.unet.conv_in.weight, want)
    assert not torch.equal(want, tiny_components.unet.conv_in.weight)  # the file really was fp16


def test_embedded_metadata_is_used_and_can_be_overridden(tiny_components, tmp_path):
    c = build_tiny_components(prediction_type="v_prediction")
    path = save_single_file(c, tmp_path / "v.ckpt")
    assert load_single_file(path).scheduler_config["prediction_type"] == "v_prediction"
    assert load_single_file(path, hints={"prediction_type": "epsilon"}).scheduler_config["prediction_type"] == "epsilon"
    state = torch.load(path, weights_only=True)
    state["ip2p"] = "{not json"
    torch.save(state, tmp_path / "bad-meta.ckpt")
    with pytest.raises(BadModel, match="metadata is not valid JSON"):
        load_single_file(tmp_path / "bad-meta.ckpt")


def test_standard_clip_vocabulary_gets_the_real_tokenizer(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    c = build_tiny_components()
    torch.manual_seed(0)
    c.text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=37,
                                                  num_hidden_layers=1, num_attention_heads=4)).eval()
    c.tokenizer = real_clip_tokenizer()
    path = save_single_file(c, tmp_path / "clip.safetensors")
    loaded = load_single_file(path)
    assert len(loaded.tokenizer) == 49408
    assert loaded.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    ids = loaded.tokenizer(["turn the sky into a starry night"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(c.text_encoder(ids).pooler_output, loaded.text_encoder(ids).pooler_output)


def test_real_clip_tokenizer_matches_clip_ids():
    tok = real_clip_tokenizer()
    assert len(tok) == 49408
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    padded = tok("A  Photo of a CAT!", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[:6] == [49406, 320, 1125, 539, 320, 2368] and padded[-1] == 49407
    assert tok.decode(tok("zebra striped qwxz").input_ids, skip_special_tokens=True).strip() == "zebra striped qwxz"
    assert real_clip_tokenizer(max_length=20).model_max_length == 20


# --------------------------------------------------------------------------------------------
# refusals


def test_text_to_image_checkpoint_is_refused(tmp_path):
    path = save_single_file(build_tiny_components(in_channels=4), tmp_path / "sd15.safetensors")
    with pytest.raises(BadModel, match="UNet has 4 input channels: a text-to-image Stable Diffusion checkpoint, "
                                       "not InstructPix2Pix; train one with `ip2p train`"):
        load_single_file(path)


def test_sdxl_and_sd2_checkpoints_are_refused(ldm_state, tmp_path):
    xl = {k.replace("cond_stage_model.", "conditioner.embedders.0."): v for k, v in ldm_state.items()}
    with pytest.raises(BadModel, match="SDXL checkpoint, ip2p runs SD-1.x InstructPix2Pix"):
        load_single_file(write_safetensors(xl, tmp_path / "xl.safetensors"))
    label = {**ldm_state, "model.diffusion_model.label_emb.0.0.weight": torch.zeros(128, 2816)}
    with pytest.raises(BadModel, match="SDXL checkpoint"):
        load_single_file(write_safetensors(label, tmp_path / "xl2.safetensors"))
    sd2 = {k: v for k, v in ldm_state.items() if not k.startswith("cond_stage_model.")}
    sd2["cond_stage_model.model.token_embedding.weight"] = torch.zeros(49408, 32)
    sd2["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(96, 32)
    with pytest.raises(BadModel, match="SD-2.x checkpoint \\(OpenCLIP text encoder"):
        load_single_file(write_safetensors(sd2, tmp_path / "sd2.safetensors"))


def test_unrecognised_weights_are_refused(tiny_components, tmp_path):
    torch.save(tiny_components.unet.state_dict(), tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(BadModel, match=r"no Stable Diffusion weights found \(keys look like conv_in.bias"):
        load_single_file(tmp_path / "diffusion_pytorch_model.bin")
    unet_only = {k: v for k, v in to_ldm_state_dict(tiny_components).items() if k.startswith("model.")}
    with pytest.raises(BadModel, match="has a UNet but no VAE"):
        load_single_file(write_safetensors(unet_only, tmp_path / "unet.safetensors"))


def test_incomplete_weights_are_refused(ldm_state, tiny_components, tmp_path):
    for dropped, part in (("model.diffusion_model.out.2.weight", "UNet"),
                          ("model.diffusion_model.input_blocks.1.0.out_layers.3.weight", "UNet"),
                          ("first_stage_model.encoder.down.1.block.0.conv2.weight", "VAE"),
                          ("first_stage_model.decoder.mid.block_1.conv1.weight", "VAE"),
                          ("cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight", "CLIP")):
        state = {k: v for k, v in ldm_state.items() if k != dropped}
        path = write_safetensors(state, tmp_path / "cut.safetensors")
        with pytest.raises(BadModel, match=f"{part}.* weights (are incomplete|do not fit)") as info:
            load_single_file(path, tokenizer=tiny_components.tokenizer)
        assert "\n" not in str(info.value)


def test_corrupt_files_are_refused(ldm_state, tmp_path):
    rng = torch.Generator().manual_seed(0)
    garbage = bytes(torch.randint(0, 256, (4096,), generator=rng, dtype=torch.uint8).tolist())
    for name in ("garbage.ckpt", "garbage.safetensors", "garbage.pt"):
        (tmp_path / name).write_bytes(garbage)
        with pytest.raises(BadModel, match="unreadable"):
            load_single_file(tmp_path / name)
    torch.save({"state_dict": ldm_state}, tmp_path / "full.ckpt")
    data = (tmp_path / "full.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadModel, match="corrupt or truncated"):
        load_single_file(tmp_path / "cut.ckpt")
    write_safetensors(ldm_state, tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadModel, match="unreadable .safetensors"):
        load_single_file(tmp_path / "cut.safetensors")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(BadModel, match="unreadable"):
        load_single_file(tmp_path / "empty.ckpt")


class _Payload:
    """What a malicious checkpoint does: run a shell command while being unpickled."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.target}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_code_executing_pickle_is_refused_without_running(ldm_state, tmp_path, writer):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.ckpt"
    payload = {"state_dict": dict(ldm_state), "callbacks": _Payload(target)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps({"x": _Payload(target)}, protocol=2))
    with pytest.raises(BadModel) as info:
        load_single_file(path)
    message = str(info.value)
    assert "refused" in message and "could execute code" in message and ".safetensors" in message
    assert "system" in message  # names the offending global
    assert "\n" not in message
    assert not target.exists()

    from ip2p.models import load_components

    with pytest.raises(BadModel, match="could execute code"):
        load_components(path, device="cpu")
    assert not target.exists()


def test_save_checks_its_arguments(tiny_components, tmp_path):
    with pytest.raises(BadOptions, match="must end in .safetensors or .ckpt"):
        save_single_file(tiny_components, tmp_path / "model.onnx")
    with pytest.raises(BadModel, match="no such checkpoint"):
        read_checkpoint(tmp_path / "missing.ckpt")


# --------------------------------------------------------------------------------------------
# end to end through the model loader and the editor


def test_single_file_edits_like_the_diffusers_folder(tiny_components, tiny_model_dir, tmp_path, picture):
    import ip2p
    from ip2p.models import load_components

    path = save_single_file(tiny_components, tmp_path / "ip2p-tiny.safetensors")
    components = load_components(path, device="cpu", dtype="fp32")
    assert components.name == str(path) and components.dtype == torch.float32
    from_file = ip2p.load_editor(str(path), device="cpu", dtype="fp32")
    from_folder = ip2p.load_editor(str(tiny_model_dir), device="cpu", dtype="fp32")
    a = from_file.edit(picture, "make it blue", steps=2, seed=11, resolution=64)
    b = from_folder.edit(picture, "make it blue", steps=2, seed=11, resolution=64)
    assert a.image.size == (32, 32)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.image.tobytes() != picture.tobytes()


# --------------------------------------------------------------------------------------------
# `ip2p convert`


def run_convert_command(argv):
    import argparse

    from ip2p.cli.convert import register

    parser = argparse.ArgumentParser(prog="ip2p")
    register(parser.add_subparsers())
    args = parser.parse_args(["convert", *argv])
    return args.func(args)


def test_convert_command_between_layouts(tiny_components, tiny_model_dir, tmp_path, capsys):
    from ip2p.models import load_folder

    assert run_convert_command([str(tiny_model_dir), str(tmp_path / "a.ckpt")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "a.ckpt")
    run_convert_command([str(tmp_path / "a.ckpt"), str(tmp_path / "b.safetensors")])  # pickle -> safetensors
    run_convert_command([str(tmp_path / "b.safetensors"), str(tmp_path / "folder")])
    assert_same_weights(tiny_components, load_single_file(tmp_path / "b.safetensors"))
    assert_same_weights(tiny_components, load_folder(tmp_path / "folder"))
    with pytest.raises(BadOptions, match="already exists"):
        run_convert_command([str(tmp_path / "b.safetensors"), str(tmp_path / "folder")])
    with pytest.raises(BadOptions, match="expected KEY=VALUE"):
        run_convert_command([str(tmp_path / "b.safetensors"), str(tmp_path / "c.ckpt"), "--hint", "sample_size"])
    run_convert_command([str(tmp_path / "b.safetensors"), str(tmp_path / "c.ckpt"), "--hint", "sample_size=24"])
    assert load_single_file(tmp_path / "c.ckpt").unet.config.sample_size == 24


def test_ip2p_convert_refuses_an_unsafe_file_in_one_line(tmp_path):
    import subprocess

    target = tmp_path / "pwned.txt"
    (tmp_path / "evil.ckpt").write_bytes(pickle.dumps({"x": _Payload(target)}, protocol=2))
    proc = subprocess.run([sys.executable, "-m", "ip2p", "convert", str(tmp_path / "evil.ckpt"),
                           str(tmp_path / "out.safetensors")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "could execute code" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not target.exists() and not (tmp_path / "out.safetensors").exists()
