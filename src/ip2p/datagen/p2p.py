"""Prompt-to-Prompt attention sharing (Hertz et al. 2022) as a diffusers attention processor.

The sampler runs a pair batch laid out as four blocks of ``B`` rows::

    [source | cond, edited | cond, source | uncond, edited | uncond]

During the first ``p * N`` of ``N`` steps (``p`` per pair), the edited rows attend with the
*source* rows' attention maps: ``out_edit = softmax(Q_src K_src^T / sqrt(d)) V_edit``. The values
stay the edited branch's own, so what the edit changes is carried through while the layout (where
things are, what attends to what) is the source's.

* ``self`` sharing (the default, what the InstructPix2Pix data script does) injects the maps of
  the self-attention layers.
* ``cross`` sharing injects the maps of the cross-attention layers, token by token (Prompt-to-
  Prompt's word swap when both prompts have the same token count; otherwise tokens are aligned
  by longest common runs, the "refine" variant, and unaligned tokens keep their own maps).
* ``both`` does both.

When no pair is sharing at a step the processor uses fused scaled-dot-product attention.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import BadOptions

SHARE_MODES = ("self", "cross", "both", "none")


@dataclass
class ShareState:
    """What the processors read at every call: which pairs share now, and the token alignment.

    ``active`` is a (B,) bool tensor set by the sampler before each step; ``token_map`` is (B, L)
    long, for each edited-prompt token the source token whose map it takes (-1: keep its own).
    """

    mode: str = "self"
    active: torch.Tensor | None = None
    token_map: torch.Tensor | None = None
    calls: int = field(default=0, repr=False)

    def __post_init__(self):
        if self.mode not in SHARE_MODES:
            raise BadOptions(f"attention sharing must be one of {', '.join(SHARE_MODES)}, got {self.mode!r}")

    @property
    def shares_self(self) -> bool:
        return self.mode in ("self", "both")

    @property
    def shares_cross(self) -> bool:
        return self.mode in ("cross", "both")


def align_tokens(source_ids: Sequence[int], edit_ids: Sequence[int], length: int) -> list[int]:
    """For each of ``length`` edited-prompt positions, the source position to copy (-1: none).

    ``*_ids`` are the unpadded token ids (with start and end tokens). Equal lengths give the
    identity (word swap). Otherwise matching runs are aligned (difflib), and the padding after
    the end token is aligned end to end.
    """
    ns, ne = len(source_ids), len(edit_ids)
    if ns == ne:
        return list(range(length))
    mapping = [-1] * length
    matcher = difflib.SequenceMatcher(a=list(source_ids), b=list(edit_ids), autojunk=False)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            if block.b + k < length:
                mapping[block.b + k] = block.a + k
    for j in range(ne, length):
        src = j - ne + ns
        mapping[j] = src if src < length else -1
    return mapping


class SharedAttnProcessor:
    """Attention that can replace the edited rows' maps by the source rows' maps."""

    def __init__(self, state: ShareState):
        self.state = state

    def _sharing(self, cross: bool) -> torch.Tensor | None:
        state = self.state
        wanted = state.shares_cross if cross else state.shares_self
        if not wanted or state.active is None or not bool(state.active.any()):
            return None
        return state.active

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        if attention_mask is not None:
            raise BadOptions("attention masks are not supported by the Prompt-to-Prompt processor")

        heads = attn.heads
        q = attn.to_q(hidden_states)
        k = attn.to_k(context)
        v = attn.to_v(context)
        dim = q.shape[-1] // heads
        q, k, v = (t.view(batch, -1, heads, dim).transpose(1, 2) for t in (q, k, v))  # (4B, h, n, d)

        cross = encoder_hidden_states is not None
        active = self._sharing(cross)
        self.state.calls += 1
        if active is None:
            out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        else:
            out = self._shared(q, k, v, attn.scale, active, cross)
        out = out.transpose(1, 2).reshape(batch, -1, heads * dim).to(q.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _shared(self, q, k, v, scale, active, cross):
        """Edited rows of active pairs take the source rows' maps (token-aligned for cross)."""
        rows = q.shape[0]
        if rows % 4:
            raise BadOptions(f"Prompt-to-Prompt needs a [src, edit] x [cond, uncond] batch; got {rows} rows")
        pairs = rows // 4
        if not cross:
            return self._shared_self(q, k, v, scale, active, pairs)
        probs = (q.float() @ k.float().transpose(-1, -2) * scale).softmax(dim=-1)
        probs = probs.view(4, pairs, *probs.shape[1:])  # (4, B, h, n, m)
        source = probs[0::2]  # source rows of the cond and uncond halves
        edited = probs[1::2]
        token_map = self.state.token_map
        if token_map is None:
            token_map = torch.arange(probs.shape[-1]).expand(pairs, -1)
        token_map = token_map.to(probs.device)
        keep = token_map < 0  # edited-prompt tokens with no source counterpart keep their own map
        index = token_map.clamp(min=0)[None, :, None, None, :].expand_as(source)
        shared = torch.where(keep[None, :, None, None, :], edited, source.gather(-1, index))
        mask = active.to(probs.device)[None, :, None, None, None]
        probs[1::2] = torch.where(mask, shared, edited)
        return probs.view(rows, *probs.shape[2:]).to(v.dtype) @ v

    @staticmethod
    def _shared_self(q, k, v, scale, active, pairs):
        """Self-attention sharing: only the source rows' maps are materialised, then applied to
        both branches' values; edited rows of pairs not sharing now use fused attention."""
        q4, k4, v4 = (t.view(4, pairs, *t.shape[1:]) for t in (q, k, v))
        maps = (q4[0::2].float() @ k4[0::2].float().transpose(-1, -2) * scale).softmax(dim=-1).to(v.dtype)
        out = q4.new_empty((4, pairs, q.shape[1], q.shape[2], v.shape[3]), dtype=v.dtype)
        out[0::2] = maps @ v4[0::2]
        shared = maps @ v4[1::2]
        if bool(active.all()):
            out[1::2] = shared
        else:
            own = F.scaled_dot_product_attention(q4[1::2], k4[1::2], v4[1::2], scale=scale)
            out[1::2] = torch.where(active.to(q.device)[None, :, None, None, None], shared, own)
        return out.view(-1, *out.shape[2:])


def install(unet, state: ShareState) -> dict:
    """Put a :class:`SharedAttnProcessor` on every attention layer; returns the old processors."""
    old = dict(unet.attn_processors)
    new = {name: SharedAttnProcessor(state) for name in old}
    unet.set_attn_processor(new)
    return old


def restore(unet, processors: dict) -> None:
    unet.set_attn_processor(processors)
