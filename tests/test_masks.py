"""Masked edits: exactness outside the mask, auto and text masks, bad masks, replay."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ip2p.errors import BadImage, BadOptions
from ip2p.masks import (
    TextSegmenter,
    change_mask,
    feather,
    latent_keep,
    load_mask,
    mask_digest,
    mask_from_alpha,
    paste_back,
    resize_mask,
)

FAST = dict(steps=2, resolution=32, seed=3)


def box_mask(size=(32, 32), box=(8, 8, 20, 20)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def outside(mask: Image.Image, feather_px: int) -> np.ndarray:
    """Pixels beyond the feather band around the white area."""
    return feather(np.asarray(mask) > 127, feather_px) == 0


@pytest.mark.parametrize("scheduler", ["euler_a", "ddim", "dpm++2m"])
def test_pixels_outside_the_mask_are_the_inputs_own(tiny_editor, picture, scheduler):
    mask = box_mask()
    plain = tiny_editor.edit(picture, "make it blue", scheduler=scheduler, **FAST).image
    masked = tiny_editor.edit(picture, "make it blue", scheduler=scheduler, mask=mask, **FAST)
    out, src = np.asarray(masked.image), np.asarray(picture)
    keep = outside(mask, masked.params[0]["mask_feather"])
    assert keep.sum() > 500
    assert np.array_equal(out[keep], src[keep])
    # Inside, the model did edit (and the unmasked edit differs from the input everywhere).
    inside = np.asarray(mask) > 127
    assert np.abs(out[inside].astype(int) - src[inside]).mean() > 1
    assert np.abs(np.asarray(plain)[keep].astype(int) - src[keep]).mean() > 1


@pytest.mark.parametrize("mode,kwargs", [("fast", {"compile": False}), ("approx", {}), ("low-memory", {})])
def test_exact_outside_the_mask_in_speed_modes(picture, mode, kwargs):
    from ip2p.editor import Editor
    from ip2p.fast import optimize
    from ip2p.tiny import build_tiny_components

    editor = optimize(Editor(build_tiny_components(seed=0)), mode, **kwargs)  # modes change modules in place
    mask = box_mask()
    result = editor.edit(picture, "make it blue", mask=mask, mask_feather=0, **FAST)
    keep = ~(np.asarray(mask) > 127)
    assert np.array_equal(np.asarray(result.image)[keep], np.asarray(picture)[keep])


def test_exact_at_another_input_size(tiny_editor):
    from ip2p.tiny import gradient_image

    picture = gradient_image(48, 40, seed=1)  # working size differs: the result is resized back
    mask = box_mask((48, 40), (10, 10, 30, 30))
    result = tiny_editor.edit(picture, "make it red", mask=mask, **FAST)
    keep = outside(mask, 3)
    assert result.image.size == (48, 40)
    assert np.array_equal(np.asarray(result.image)[keep], np.asarray(picture)[keep])


def test_latent_blend_keeps_the_latent_outside_on_the_inputs_path(tiny_editor, picture):
    """Without the paste-back the blend alone already holds the outside close to the input."""
    mask = box_mask(box=(0, 0, 8, 8))
    plain = tiny_editor.edit(picture, "make it blue", **FAST).image
    result = tiny_editor.edit(picture, "make it blue", mask=mask, mask_feather=0, **FAST)
    far = ~resize_mask(np.asarray(mask) > 127, (32, 32))
    far[:16, :16] = False
    src = np.asarray(picture).astype(int)
    assert np.abs(np.asarray(result.image)[far] - src[far]).max() == 0
    assert np.abs(np.asarray(plain)[far] - src[far]).mean() > 1


def test_params_record_the_mask_and_replay_reproduces(tiny_editor, picture):
    mask = box_mask()
    first = tiny_editor.edit(picture, "make it blue", mask=mask, **FAST)
    record = first.params[0]
    assert record["mask"] == "image"
    assert record["mask_sha256"] == mask_digest(np.asarray(mask) > 127)
    assert "mask_threshold" not in record  # only auto masks have one
    again = tiny_editor.edit(picture, record["instruction"], mask=mask, steps=record["steps"],
                             seed=record["seed"], resolution=record["resolution"],
                             mask_feather=record["mask_feather"])
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    unmasked = tiny_editor.edit(picture, "make it blue", **FAST).params[0]
    assert not any(key.startswith("mask") for key in unmasked)


def test_auto_mask_keeps_the_local_change_and_undoes_drift(tiny_editor):
    """A hand-made 'first pass' checks change_mask; the editor path checks plumbing and exactness."""
    before = Image.new("RGB", (32, 32), (200, 200, 200))
    after = before.copy()
    after.paste((20, 20, 220), (10, 10, 18, 18))
    drift = np.asarray(after).astype(int) + 3  # a small shift everywhere: below the threshold
    after = Image.fromarray(np.clip(drift, 0, 255).astype(np.uint8))
    changed = change_mask(before, after, threshold=12.0, dilation=1)
    assert changed[12, 12] and not changed[0, 0] and not changed[25, 25]
    assert changed.sum() == pytest.approx(10 * 10 - 4, abs=8)  # the 8x8 square grown by one pixel

    from ip2p.tiny import gradient_image

    picture = gradient_image(seed=2)
    result = tiny_editor.edit(picture, "make it blue", mask="auto", mask_threshold=6.0, **FAST)
    record = result.params[0]
    assert record["mask"] == "auto" and record["mask_threshold"] == 6.0 and "mask_sha256" in record
    again = tiny_editor.edit(picture, "make it blue", mask="auto", mask_threshold=6.0, **FAST)
    assert again.params[0]["mask_sha256"] == record["mask_sha256"]
    assert np.array_equal(np.asarray(result.image), np.asarray(again.image))


def test_auto_mask_progress_counts_both_passes(tiny_editor, picture):
    seen = []
    tiny_editor.edit(picture, "make it blue", mask="auto", mask_threshold=1.0, callback=lambda d, t: seen.append((d, t)),
                     **FAST)
    assert seen[-1] == (4, 4) and [d for d, _ in seen] == [1, 2, 3, 4]


def test_bad_masks_are_one_line_errors(tiny_editor, picture, tmp_path):
    with pytest.raises(BadImage, match="no white"):
        tiny_editor.edit(picture, "x", mask=Image.new("L", (32, 32), 0), **FAST)
    with pytest.raises(BadImage, match="is 40x20 but the image is 32x32"):
        tiny_editor.edit(picture, "x", mask=Image.new("L", (40, 20), 255), **FAST)
    bogus = tmp_path / "mask.png"
    bogus.write_text("not an image")
    with pytest.raises(BadImage, match="not an image"):
        tiny_editor.edit(picture, "x", mask=str(bogus), **FAST)
    with pytest.raises(BadOptions, match="needs a phrase"):
        tiny_editor.edit(picture, "x", mask="text:", **FAST)
    with pytest.raises(BadOptions, match="2 masks for 1 images"):
        tiny_editor.edit(picture, "x", mask=[box_mask(), box_mask()], **FAST)


def test_a_mask_of_another_size_but_the_same_shape_is_scaled_and_said(picture):
    mask, note = load_mask(box_mask((64, 64), (16, 16, 40, 40)), (32, 32))
    assert mask.shape == (32, 32) and mask[10, 10] and not mask[2, 2]
    assert note == "mask scaled from 64x64 to 32x32"


def test_openai_convention_transparent_pixels_are_editable():
    rgba = Image.new("RGBA", (32, 32), (10, 200, 10, 255))
    rgba.paste((0, 0, 0, 0), (4, 4, 12, 12))
    data = io.BytesIO()
    rgba.save(data, format="PNG")
    mask, _ = mask_from_alpha(data.getvalue(), (32, 32))
    assert mask[5, 5] and not mask[20, 20] and mask.sum() == 64
    opaque = io.BytesIO()
    Image.new("RGB", (32, 32), "white").save(opaque, format="PNG")
    with pytest.raises(BadImage, match="alpha channel"):
        mask_from_alpha(opaque.getvalue(), (32, 32))


def test_latent_keep_and_feather_shapes():
    mask = np.zeros((16, 16), bool)
    mask[5, 5] = True
    keep = latent_keep(mask, 4)
    assert keep.shape == (4, 4) and keep[1, 1] == 0 and keep.sum() == 15
    weights = feather(mask, 2)
    assert weights[5, 5] == 1 and 0 < weights[5, 7] < 1 and weights[5, 9] == 0
    a = Image.new("RGB", (16, 16), (0, 0, 0))
    b = Image.new("RGB", (16, 16), (255, 255, 255))
    out = np.asarray(paste_back(a, b, mask, 0))
    assert out[5, 5].tolist() == [255, 255, 255] and out.sum() == 3 * 255


def tiny_clipseg(tmp_path):
    from transformers import CLIPImageProcessor, CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor

    from ip2p.text import build_clip_tokenizer

    tokenizer = build_clip_tokenizer(["the circle"])
    config = CLIPSegConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                           num_hidden_layers=2, num_attention_heads=2),
        projection_dim=16, reduce_dim=16, extract_layers=[1], decoder_num_attention_heads=2,
        decoder_intermediate_size=16,
    )
    import torch

    torch.manual_seed(0)
    model = CLIPSegForImageSegmentation(config).eval()
    processor = CLIPSegProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    folder = tmp_path / "clipseg"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_text_mask_plumbing_with_a_tiny_clipseg(tiny_editor, picture, tmp_path):
    folder = tiny_clipseg(tmp_path)
    segmenter = TextSegmenter(str(folder), threshold=0.0)  # a random model: take every pixel above 0
    mask = segmenter(picture, "the circle")
    assert mask.shape == (32, 32) and mask.dtype == bool
    result = tiny_editor.edit(picture, "make it blue", mask="text:the circle", segmenter=segmenter, **FAST)
    assert result.params[0]["mask"] == "text:the circle"
    assert result.params[0]["mask_sha256"] == mask_digest(mask)
    with pytest.raises(BadOptions, match="need a CLIPSeg model"):
        TextSegmenter(str(tmp_path / "missing"))


# ------------------------------------------------------------------------------------------------
# The command line


def run_cli(*args):
    import os
    import subprocess
    import sys

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "ip2p", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_mask_keeps_the_outside_saves_the_mask_and_replays(tmp_path, tiny_model_dir, picture):
    src, mask_file, out = tmp_path / "in.png", tmp_path / "mask.png", tmp_path / "out.png"
    picture.save(src)
    box_mask().save(mask_file)
    common = ["--model", tiny_model_dir, "--steps", "2", "--seed", "5", "-q"]
    done = run_cli("edit", src, "-i", "make it blue", "-o", out, "--mask", mask_file, "--mask-feather", "0",
                   "--save-mask", tmp_path / "used.png", *common)
    assert done.returncode == 0, done.stderr
    keep = ~(np.asarray(box_mask()) > 127)
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB"))[keep], np.asarray(picture)[keep])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "used.png")) > 127, ~keep)

    # Replay needs the same mask image again, and reproduces the pixels with it.
    again = tmp_path / "again.png"
    refused = run_cli("edit", "--replay", out, "-o", again, "--model", tiny_model_dir, "-q")
    assert refused.returncode == 2 and "give it again with --mask" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not again.exists()
    other = tmp_path / "other.png"
    box_mask(box=(0, 0, 10, 10)).save(other)
    wrong = run_cli("edit", "--replay", out, "-o", again, "--mask", other, "--model", tiny_model_dir, "-q")
    assert wrong.returncode == 2 and "is not the mask" in wrong.stderr and not again.exists()
    ok = run_cli("edit", "--replay", out, "-o", again, "--mask", mask_file, "--model", tiny_model_dir, "-q")
    assert ok.returncode == 0, ok.stderr
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(out)))


def test_cli_bad_masks_exit_2_in_one_line(tmp_path, tiny_model_dir, picture):
    src, out = tmp_path / "in.png", tmp_path / "out.png"
    picture.save(src)
    empty = tmp_path / "empty.png"
    Image.new("L", (32, 32), 0).save(empty)
    wide = tmp_path / "wide.png"
    Image.new("L", (64, 16), 255).save(wide)
    text = tmp_path / "text.txt"
    text.write_text("hello")
    for mask, words in ((empty, "no white"), (wide, "is 64x16 but the image is 32x32"), (text, "not an image"),
                        ("text:the cat", "need a CLIPSeg model")):
        done = run_cli("edit", src, "-i", "x", "-o", out, "--mask", mask, "--model", tiny_model_dir, "--steps", "1",
                       "--segmenter", tmp_path / "no-such-clipseg", "-q")
        assert done.returncode == 2 and words in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
        assert not out.exists()


# ------------------------------------------------------------------------------------------------
# Batch


def test_batch_mask_dir_keeps_outsides_resumes_and_reports_a_missing_mask(tmp_path, tiny_model_dir):
    import json

    from ip2p.cli import main
    from ip2p.tiny import gradient_image

    inputs, masks, out = tmp_path / "in", tmp_path / "masks", tmp_path / "out"
    (inputs / "sub").mkdir(parents=True)
    (masks / "sub").mkdir(parents=True)
    gradient_image(32, 32, seed=1).save(inputs / "a.png")
    gradient_image(32, 32, seed=2).save(inputs / "sub" / "b.jpg")
    gradient_image(32, 32, seed=3).save(inputs / "c.png")  # no mask for this one
    box_mask().save(masks / "a.png")
    box_mask(box=(0, 0, 16, 32)).save(masks / "sub" / "b.png")  # named like the input, another suffix
    args = ["batch", str(inputs), "-i", "make it blue", "-o", str(out), "--model", str(tiny_model_dir),
            "--mask-dir", str(masks), "--mask-feather", "0", "--steps", "2", "--resolution", "32", "-q"]
    assert main(args) == 1  # c.png failed: no mask
    for rel, src, mask in (("a.png", "a.png", "a.png"), ("sub/b.png", "sub/b.jpg", "sub/b.png")):
        keep = ~(np.asarray(Image.open(masks / mask)) > 127)
        edited = np.asarray(Image.open(out / rel).convert("RGB"))
        source = np.asarray(Image.open(inputs / src).convert("RGB"))
        assert np.array_equal(edited[keep], source[keep]) and not np.array_equal(edited[~keep], source[~keep])
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    failed = [r for r in records if r["status"] == "failed"]
    assert len(failed) == 1 and "no mask for c.png" in failed[0]["error"]

    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert main(args) == 1
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == mtimes  # resumed: nothing redone
    box_mask(box=(2, 2, 6, 6)).save(masks / "a.png")  # a changed mask redoes that output only
    assert main(args) == 1
    assert (out / "a.png").stat().st_mtime_ns != mtimes[out / "a.png"]
    assert (out / "sub" / "b.png").stat().st_mtime_ns == mtimes[out / "sub" / "b.png"]
