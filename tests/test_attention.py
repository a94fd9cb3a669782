"""Cross-frame attention on the real (tiny) UNet: plain attention when every frame is its own anchor,
the anchor's keys for the others, processors restored after, and batches that share the anchor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ip2p.attention import CrossFrameAttention, cross_frame_attention, self_attention_layers


@pytest.fixture(scope="module")
def unet_inputs():
    torch.manual_seed(0)
    return torch.randn(6, 8, 16, 16), torch.tensor(400), torch.randn(6, 77, 32)


def run(unet, x, t, e):
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=e).sample


@pytest.mark.parametrize("anchor", ["first", "first+previous"])
def test_every_frame_its_own_anchor_is_plain_attention(tiny_components, unet_inputs, anchor):
    unet = tiny_components.unet
    x, t, e = unet_inputs
    plain = run(unet, x, t, e)
    with cross_frame_attention(unet, 1, anchor) as layers:  # one frame per guidance chunk
        crossed = run(unet, x, t, e)
    assert layers == 4
    torch.testing.assert_close(crossed, plain, rtol=1e-5, atol=1e-5)
    # six identical frames: every key set equals the frame's own
    same = x[:1].expand(6, -1, -1, -1).contiguous(), e[:1].expand(6, -1, -1).contiguous()
    with cross_frame_attention(unet, 3, anchor):
        crossed = run(unet, same[0], t, same[1])
    torch.testing.assert_close(crossed, run(unet, *same[:1], t, same[1]), rtol=1e-5, atol=1e-5)


def test_frames_attend_to_the_anchor_within_each_guidance_chunk(tiny_components, unet_inputs):
    unet = tiny_components.unet
    x, t, e = unet_inputs
    plain = run(unet, x, t, e)
    with cross_frame_attention(unet, 3):  # rows [0, 1, 2] and [3, 4, 5]: two chunks of three frames
        crossed = run(unet, x, t, e)
    for anchor in (0, 3):  # an anchor attends to itself: unchanged
        torch.testing.assert_close(crossed[anchor], plain[anchor], rtol=1e-5, atol=1e-5)
    assert (crossed[1] - plain[1]).abs().max() > 1e-3
    # frame 4 reads frame 3's keys, not frame 0's: the same as a batch of just (3, 4)
    with cross_frame_attention(unet, 2):
        pair = run(unet, x[3:5], t, e[3:5])
    torch.testing.assert_close(crossed[4], pair[1], rtol=1e-4, atol=1e-5)


def test_processors_are_put_back_even_after_an_error(tiny_components, unet_inputs):
    unet = tiny_components.unet
    before = [type(layer.processor) for layer in self_attention_layers(unet)]
    x, t, e = unet_inputs
    with pytest.raises(ValueError, match="not whole guidance chunks"), cross_frame_attention(unet, 4):
        run(unet, x, t, e)  # 6 rows are not chunks of 4
    assert [type(layer.processor) for layer in self_attention_layers(unet)] == before
    assert not any(isinstance(p, CrossFrameAttention) for p in unet.attn_processors.values())


def test_video_batches_share_the_anchor_so_batch_size_does_not_change_frames(tiny_editor):
    from ip2p.options import EditOptions
    from ip2p.tiny import gradient_image
    from ip2p.video_edit import VideoOptions, edit_video

    frames = [gradient_image(32, 32, seed=s) for s in range(5)]
    options = EditOptions(steps=2, seed=3, resolution=32)

    def frames_with(batch_size: int):
        video = VideoOptions.preset("attention", batch_size=batch_size)
        return edit_video(tiny_editor, frames, "make it blue", options, video).frames

    whole, pieces = frames_with(5), frames_with(2)  # one batch, or four batches that re-make frame 0
    for a, b in zip(whole, pieces, strict=True):
        assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 1
    alone = tiny_editor.edit_with([frames[0]], "make it blue", options, seeds=[3]).images[0]
    assert np.abs(np.asarray(whole[0], np.int16) - np.asarray(alone, np.int16)).max() <= 1
