"""Cross-frame attention: every frame of a video batch attends to an anchor frame's keys and values.

Text2Video-Zero (Khachatryan et al. 2023, Sec. 3.2) makes the frames of one batch share
appearance by replacing each frame's self-attention keys and values with those of the first frame:
``Attn(Q_i, K_1, V_1)`` instead of ``Attn(Q_i, K_i, V_i)``. With ``anchor="first+previous"`` each
frame attends to the first frame and the frame before it (the concatenation ``[K_1, K_{i-1}]``),
the sparse-causal form of Tune-A-Video (Wu et al. 2023), which follows motion better.

The processor is installed on the UNet's self-attention layers (``attn1``) for the duration of
one video batch (:func:`cross_frame_attention`) and the previous processors are put back after.
It must know how the batch is laid out: the denoising loop stacks ``rows`` guidance chunks of
``frames`` rows each, ``[full x B, image-only x B, uncond x B]`` (:func:`ip2p.sampler.denoise`), so
row ``r * B + b`` is frame ``b`` of chunk ``r``, and the anchor of every frame is taken within its
own chunk. Frame 0 of a batch is the anchor; a video longer than a batch is edited in batches that
each start with the same anchor frame.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

ANCHORS = ("first", "first+previous")


def _anchored(tensor: torch.Tensor, frames: int, anchor: str) -> torch.Tensor:
    """(rows * frames, seq, dim) keys or values -> the anchor's for every frame, per guidance chunk."""
    total, seq, dim = tensor.shape
    grouped = tensor.view(total // frames, frames, seq, dim)
    first = grouped[:, :1].expand(-1, frames, -1, -1)
    if anchor == "first+previous":
        previous = torch.cat([grouped[:, :1], grouped[:, :-1]], dim=1)
        first = torch.cat([first, previous], dim=2)
    return first.reshape(total, -1, dim)


class CrossFrameAttention:
    """A diffusers attention processor for self-attention over a batch of ``frames`` video frames.

    Queries stay each frame's own; keys and values come from the anchor (see the module docstring).
    With one frame per chunk every frame is its own anchor, and the result is plain attention.
    """

    def __init__(self, frames: int, anchor: str = "first"):
        if anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {ANCHORS}, got {anchor!r}")
        self.frames, self.anchor = int(frames), anchor

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 **kwargs) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("cross-frame attention applies to unmasked self-attention (attn1) only")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial = hidden_states.ndim == 4
        if spatial:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        total = hidden_states.shape[0]
        if total % self.frames:
            raise ValueError(f"a batch of {total} rows is not whole guidance chunks of {self.frames} frames")
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        key = _anchored(attn.to_k(hidden_states), self.frames, self.anchor)
        value = _anchored(attn.to_v(hidden_states), self.frames, self.anchor)
        heads = attn.heads
        head_dim = key.shape[-1] // heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(total, -1, heads, head_dim).transpose(1, 2)

        query, key, value = split(query), split(key), split(value)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(total, -1, heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if spatial:
            out = out.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def self_attention_layers(unet) -> list:
    """The UNet's self-attention modules (``...attn1`` of every transformer block)."""
    from diffusers.models.attention_processor import Attention

    return [m for name, m in unet.named_modules() if name.endswith("attn1") and isinstance(m, Attention)]


@contextlib.contextmanager
def cross_frame_attention(unet, frames: int, anchor: str = "first") -> Iterator[int]:
    """Install :class:`CrossFrameAttention` on every ``attn1`` of ``unet`` for the block, then put the
    previous processors back (also on error). Yields the number of layers changed."""
    layers = self_attention_layers(unet)
    previous = [layer.processor for layer in layers]
    processor = CrossFrameAttention(frames, anchor)
    try:
        for layer in layers:
            layer.set_processor(processor)
        yield len(layers)
    finally:
        for layer, old in zip(layers, previous, strict=True):
            layer.set_processor(old)
