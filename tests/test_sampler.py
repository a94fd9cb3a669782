"""The dual-guidance sampler against diffusers' own InstructPix2Pix pipeline, and its guarantees."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ip2p.errors import BadOptions, Cancelled
from ip2p.sampler import guidance_rows, make_scheduler
from ip2p.tiny import gradient_image


def _stock_pipeline(components, scheduler):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=make_scheduler(scheduler, components.scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("scheduler", ["euler_a", "ddim", "dpm++2m", "euler", "unipc", "lms", "pndm"])
def test_matches_diffusers_pipeline(tiny_components, tiny_editor, scheduler):
    image = gradient_image(32, 24)
    pipe = _stock_pipeline(tiny_components, scheduler)
    stock = pipe(
        "make it blue", image=image, num_inference_steps=6, guidance_scale=7.5, image_guidance_scale=1.5,
        generator=[torch.Generator("cpu").manual_seed(123)], output_type="np",
    ).images[0]
    ours = tiny_editor.edit(image, "make it blue", steps=6, seed=123, scheduler=scheduler).image
    ours = np.asarray(ours, dtype=np.float32) / 255.0
    assert ours.shape == stock.shape
    # Ours is rounded to 8 bits; the stock float output must lie within half a level (+1e-4) of it.
    assert np.abs(stock - ours).max() <= 0.5 / 255 + 1e-4


def test_latents_match_within_1e_4(tiny_components, tiny_editor):
    """The pre-decode latents agree with the stock pipeline's to 1e-4 (float32, CPU)."""
    image = gradient_image(32, 32, seed=3)
    for scheduler in ("euler_a", "ddim", "dpm++2m"):
        pipe = _stock_pipeline(tiny_components, scheduler)
        stock = pipe("turn it red", image=image, num_inference_steps=5,
                     generator=[torch.Generator("cpu").manual_seed(7)], output_type="latent").images
        from ip2p.sampler import Conditioning, denoise

        text = tiny_editor.encode_instruction("turn it red")
        uncond = tiny_editor.encode_instruction("")
        cond = Conditioning(text, uncond, tiny_editor.encode_images([image]))
        ours = denoise(tiny_components.unet, make_scheduler(scheduler, tiny_components.scheduler_config), cond,
                       steps=5, text_scale=7.5, image_scale=1.5,
                       generators=[torch.Generator("cpu").manual_seed(7)])
        assert torch.allclose(ours, stock, atol=1e-4), (scheduler, (ours - stock).abs().max())


def test_guidance_rows():
    assert guidance_rows(7.5, 1.5) == 3
    assert guidance_rows(7.5, 1.0) == 2
    assert guidance_rows(1.0, 1.0) == 1
    assert guidance_rows(1.0, 1.5) == 3


@pytest.mark.parametrize("text_scale,image_scale,rows", [(7.5, 1.0, 2), (1.0, 1.0, 1)])
def test_reduced_passes_equal_the_full_formula(tiny_components, tiny_editor, text_scale, image_scale, rows):
    """Fewer rows compute the same guidance (the algebra of eq. 3 with s_I = 1) and run fewer rows."""
    from ip2p.sampler import Conditioning, denoise

    image = gradient_image(16, 16, seed=5)
    cond = Conditioning(tiny_editor.encode_instruction("make it night"), tiny_editor.encode_instruction(""),
                        tiny_editor.encode_images([image]))
    seen = []
    hook = tiny_components.unet.register_forward_hook(lambda m, a, k: seen.append(a[0].shape[0]))
    try:
        fast = denoise(tiny_components.unet, make_scheduler("ddim", tiny_components.scheduler_config), cond,
                       steps=3, text_scale=text_scale, image_scale=image_scale,
                       generators=[torch.Generator().manual_seed(1)])
    finally:
        hook.remove()
    assert seen == [rows] * 3
    pipe = _stock_pipeline(tiny_components, "ddim")
    # The stock pipeline always evaluates three rows (when it guides at all).
    stock = pipe("make it night", image=image, num_inference_steps=3, guidance_scale=text_scale,
                 image_guidance_scale=image_scale, generator=[torch.Generator().manual_seed(1)],
                 output_type="latent").images
    if text_scale > 1.0:
        assert torch.allclose(fast, stock, atol=1e-4)
    else:  # diffusers turns guidance off at s_T <= 1 and runs the full branch alone: same as ours
        assert torch.allclose(fast, stock, atol=1e-4)


def test_same_seed_same_bytes_and_batch_independence(tiny_editor):
    a = gradient_image(24, 24, seed=1)
    b = gradient_image(24, 24, seed=2)
    one = tiny_editor.edit(a, "make it blue", steps=3, seed=42)
    again = tiny_editor.edit(a, "make it blue", steps=3, seed=42)
    assert one.image.tobytes() == again.image.tobytes()
    other = tiny_editor.edit(a, "make it blue", steps=3, seed=43)
    assert other.image.tobytes() != one.image.tobytes()
    # Image 0 of a batch equals the same image edited alone with that seed.
    batch = tiny_editor.edit([a, b], "make it blue", steps=3, seed=42)
    assert [p["seed"] for p in batch.params] == [42, 43]
    diff = np.abs(np.asarray(batch.images[0], np.int16) - np.asarray(one.image, np.int16)).max()
    assert diff <= 1


def test_text_encoded_once_for_a_list(tiny_components):
    from ip2p.editor import Editor

    editor = Editor(tiny_components)
    images = [gradient_image(16, 16, seed=s) for s in range(5)]
    result = editor.edit(images, "turn it red", steps=2, seed=0, batch_size=2)
    assert len(result.images) == 5
    assert editor.stats["text_encodes"] == 2  # the instruction and the empty negative prompt
    assert editor.stats["unet_batches"] == 3  # 5 images in batches of 2
    editor.edit(images[:1], "turn it red", steps=2, seed=0)
    assert editor.stats["text_encodes"] == 2  # cached


def test_callback_progress_and_cancel(tiny_editor, picture):
    seen = []
    tiny_editor.edit(picture, "x", steps=4, seed=0, callback=lambda s, t: seen.append((s, t)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]

    def cancel(step, total):
        if step == 2:
            raise Cancelled("stopped by the user")

    with pytest.raises(Cancelled):
        tiny_editor.edit(picture, "x", steps=4, seed=0, callback=cancel)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"steps": 0}, "steps must be between"),
        ({"steps": 2.5}, "steps must be an integer"),
        ({"guidance_scale": -1}, "guidance_scale must be between"),
        ({"image_guidance_scale": float("nan")}, "image_guidance_scale must be finite"),
        ({"scheduler": "warp"}, "unknown scheduler 'warp'"),
        ({"seed": -3}, "seed must be between"),
        ({"num_images": 0}, "num_images must be between"),
        ({"resolution": 10}, "resolution must be between 16"),
        ({"align": 16}, "align must be 8 or 64"),
    ],
)
def test_bad_options(tiny_editor, picture, kwargs, needle):
    with pytest.raises(BadOptions, match=needle.replace("(", r"\(")):
        tiny_editor.edit(picture, "x", **kwargs)


@pytest.mark.parametrize("scheduler", ["euler_a", "ddim", "dpm++2m", "euler", "unipc", "lms", "pndm"])
def test_preview_estimates_converge_to_the_result(tiny_editor, scheduler):
    """The x0 estimate each step hands a live preview ends at the final latents and gets closer as
    the steps go: the clean-estimate formula matches each scheduler's latent space."""
    image = gradient_image(32, 24)
    estimates, steps, ticks = [], [], []
    result = tiny_editor.edit(image, "make it blue", steps=8, seed=5, scheduler=scheduler, callback=lambda d, t: ticks.append((d, t)),
                              preview=lambda step, total, pictures: (estimates.append(np.asarray(pictures[0], float)),
                                                                     steps.append((step, total))),
                              preview_every=1)
    final = np.asarray(result.image, float)
    assert np.array_equal(estimates[-1], final) and steps[-1] == (8, 8) == ticks[-1]  # pndm: 9 scheduler steps
    assert all(t == 8 and 0 < d <= 8 for d, t in ticks)
    errors = [np.abs(e - final).mean() for e in estimates]
    assert errors[-2] < errors[0] and errors[0] < 60  # a picture, not noise, even at the first step
