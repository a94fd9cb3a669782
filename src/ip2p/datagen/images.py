"""Paired text-to-image sampling: one noise, two prompts, shared attention (the image stage).

Each *pair* renders the caption and the edited caption from the same initial noise, with the same
ancestral noise at every step, so the two images differ only through their prompts and through
what Prompt-to-Prompt lets the edited branch see (:mod:`.p2p`). One UNet call per step evaluates
a batch of B pairs as ``[src | cond, edit | cond, src | uncond, edit | uncond]`` and applies
classifier-free guidance ``e = e_u + s (e_c - e_u)`` with a per-pair scale ``s``.

The sampler is Euler ancestral (Karras et al. 2022's Euler step with ancestral noise, eta = 1)
written out here, over the sigmas of the model's scheduler config. Every random choice of a pair
(noise, p, s) comes from its seed, so a pair is the same whether it is made alone or in a batch,
in the first run or after a resume.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..components import Components
from ..errors import BadModel, BadOptions
from . import p2p
from .util import derive_seed


@dataclass
class ImageOptions:
    """How pairs are sampled (defaults follow the paper: p ~ U[0.1, 0.9], s ~ U[7.5, 15])."""

    samples: int = 100
    steps: int = 50
    resolution: int = 512
    p_min: float = 0.1
    p_max: float = 0.9
    cfg_min: float = 7.5
    cfg_max: float = 15.0
    share: str = "self"
    batch_size: int = 4
    seed: int = 0
    negative_prompt: str = ""
    jpeg_quality: int = 95

    def check(self) -> ImageOptions:
        if not 1 <= self.samples <= 100_000:
            raise BadOptions(f"samples must be in [1, 100000], got {self.samples}")
        if not 1 <= self.steps <= 1000:
            raise BadOptions(f"steps must be in [1, 1000], got {self.steps}")
        if self.resolution < 8 or self.resolution % 8:
            raise BadOptions(f"resolution must be a multiple of 8, got {self.resolution}")
        if not 0.0 <= self.p_min <= self.p_max <= 1.0:
            raise BadOptions(f"need 0 <= p_min <= p_max <= 1, got {self.p_min}, {self.p_max}")
        if not 0.0 <= self.cfg_min <= self.cfg_max <= 100.0:
            raise BadOptions(f"need 0 <= cfg_min <= cfg_max <= 100, got {self.cfg_min}, {self.cfg_max}")
        if self.share not in p2p.SHARE_MODES:
            raise BadOptions(f"share must be one of {', '.join(p2p.SHARE_MODES)}, got {self.share!r}")
        if not 1 <= self.batch_size <= 1024:
            raise BadOptions(f"batch_size must be in [1, 1024], got {self.batch_size}")
        if not 1 <= self.jpeg_quality <= 100:
            raise BadOptions(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        return self


@dataclass(frozen=True)
class PairSpec:
    """The random choices of one pair: its seed, sharing fraction p and guidance scale."""

    seed: int
    p: float
    cfg: float


def pair_specs(prompt_index: int, options: ImageOptions, count: int | None = None) -> list[PairSpec]:
    """The ``count`` (default ``options.samples``) pairs of a prompt, a pure function of its index."""
    specs, seen = [], set()
    k = 0
    while len(specs) < (count or options.samples):
        seed = derive_seed("pair", options.seed, prompt_index, k)
        k += 1
        if seed in seen:
            continue
        seen.add(seed)
        rng = random.Random(seed)
        specs.append(PairSpec(seed, rng.uniform(options.p_min, options.p_max), rng.uniform(options.cfg_min, options.cfg_max)))
    return specs


# --------------------------------------------------------------------------------------------
# model


def load_t2i(model: str, device="auto", dtype="auto") -> Components:
    """Load an SD-1.x text-to-image model (4-channel UNet, VAE, text encoder and tokenizer) from a
    diffusers folder or a cached hub id; each part by the class the folder names, as
    :func:`ip2p.models.load_folder` loads them (the folder's pipeline class is ignored)."""
    from ..models import load_folder, resolve_device, resolve_dtype, resolve_folder

    folder = resolve_folder(str(model))
    for part in ("unet", "vae", "text_encoder", "tokenizer"):
        if not (folder / part).is_dir():
            raise BadModel(f"{folder}: missing the {part}/ folder of a diffusers Stable Diffusion model")
    try:
        config = json.loads((folder / "unet" / "config.json").read_text())
    except (OSError, ValueError):
        raise BadModel(f"{folder}: unreadable unet/config.json") from None
    if config.get("in_channels") != 4:
        raise BadModel(f"{folder}: UNet has {config.get('in_channels')} input channels; the image stage "
                       "needs a 4-channel text-to-image model (SD-1.x)")
    dev = resolve_device(device) if not hasattr(device, "type") else device
    dt = resolve_dtype(dtype, dev)
    components = load_folder(folder, name=str(model), instruct=False)
    components.to(dev, dt)
    components.vae.to(dtype=torch.float32)  # decode in fp32: fp16 SD VAEs overflow
    return components


@torch.no_grad()
def encode_text(components: Components, texts: Sequence[str]) -> tuple[torch.Tensor, list[list[int]]]:
    """CLIP text embeddings (n, L, D) of ``texts`` padded to the tokenizer's length, and the
    unpadded token ids (for Prompt-to-Prompt's token alignment)."""
    tok = components.tokenizer
    length = tok.model_max_length if tok.model_max_length < 10_000 else 77
    ids = tok(list(texts), padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
    raw = [tok(t, truncation=True, max_length=length).input_ids for t in texts]
    embeds = components.text_encoder(ids.to(components.text_encoder.device))[0]
    return embeds.to(components.unet.dtype), raw


# --------------------------------------------------------------------------------------------
# sampling


def _noise(generators: Sequence[torch.Generator], shape, device, dtype) -> torch.Tensor:
    return torch.cat([torch.randn((1, *shape), generator=g) for g in generators]).to(device, dtype)


@torch.no_grad()
def sample_pairs(
    components: Components,
    source: torch.Tensor,
    edited: torch.Tensor,
    uncond: torch.Tensor,
    specs: Sequence[PairSpec],
    *,
    steps: int,
    resolution: int,
    share: str = "self",
    token_map: torch.Tensor | None = None,
    callback: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render B pairs; returns (source images, edited images), each (B, 3, H, W) in [0, 1].

    ``source``/``edited``/``uncond`` are (1 or B, L, D) text embeddings. Pair b shares attention
    maps at step i when ``i < specs[b].p * steps``. ``token_map`` (B or 1, L) aligns tokens for
    cross-attention sharing (see :func:`p2p.align_tokens`).
    """
    from diffusers import EulerAncestralDiscreteScheduler

    unet, vae = components.unet, components.vae
    device, dtype = unet.device, unet.dtype
    pairs = len(specs)
    config = {k: v for k, v in components.scheduler_config.items() if not k.startswith("_")}
    scheduler = EulerAncestralDiscreteScheduler.from_config(config)
    scheduler.set_timesteps(steps)
    sigmas = scheduler.sigmas.tolist()
    timesteps = scheduler.timesteps.to(device)

    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if resolution % factor:
        raise BadOptions(f"resolution {resolution} is not a multiple of the VAE factor {factor}")
    shape = (unet.config.in_channels, resolution // factor, resolution // factor)
    generators = [torch.Generator().manual_seed(s.seed) for s in specs]
    x = _noise(generators, shape, device, torch.float32) * sigmas[0]
    x = torch.cat([x, x])  # [source; edited], identical noise

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t.to(device, dtype).expand(pairs, -1, -1)

    embeds = torch.cat([rows(source), rows(edited), rows(uncond), rows(uncond)])
    scale = torch.tensor([s.cfg for s in specs] * 2, device=device).view(-1, 1, 1, 1)
    cutoffs = torch.tensor([s.p * steps for s in specs])
    state = p2p.ShareState(mode=share, token_map=None if token_map is None else token_map.expand(pairs, -1))
    old = p2p.install(unet, state)
    try:
        for i, t in enumerate(timesteps):
            state.active = i < cutoffs
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            model_in = (torch.cat([x, x]) / (sigma**2 + 1) ** 0.5).to(dtype)
            eps = unet(model_in, t, encoder_hidden_states=embeds, return_dict=False)[0].float()
            e_cond, e_uncond = eps.chunk(2)
            eps = e_uncond + scale * (e_cond - e_uncond)
            denoised = x - sigma * eps
            sigma_up = min(sigma_next, (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
            sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
            x = denoised + eps * sigma_down
            if sigma_next > 0:
                noise = _noise(generators, shape, device, torch.float32)
                x = x + torch.cat([noise, noise]) * sigma_up
            if callback is not None:
                callback(i + 1, len(timesteps))
    finally:
        p2p.restore(unet, old)
    scaling = getattr(vae.config, "scaling_factor", 0.18215)
    images = vae.decode((x / scaling).to(vae.dtype), return_dict=False)[0]
    images = ((images.float() + 1) / 2).clamp(0, 1)
    return images[:pairs], images[pairs:]


def to_pil(images: torch.Tensor) -> list:
    """(B, 3, H, W) in [0, 1] -> PIL RGB images."""
    from PIL import Image

    arrays = (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return [Image.fromarray(a, "RGB") for a in arrays]


class PairRenderer:
    """Renders the pairs of one prompt at a time, encoding its two captions once."""

    def __init__(self, components: Components, options: ImageOptions):
        self.components = components
        self.options = options.check()

    def render(self, caption: str, output: str, specs: Sequence[PairSpec],
               callback: Callable[[int, int], None] | None = None):
        """Yield ``(specs, source images, edited images)`` per batch of ``batch_size`` pairs."""
        opts = self.options
        embeds, raw = encode_text(self.components, [caption, output, opts.negative_prompt])
        length = embeds.shape[1]
        token_map = torch.tensor([p2p.align_tokens(raw[0], raw[1], length)])
        for start in range(0, len(specs), opts.batch_size):
            chunk = list(specs[start:start + opts.batch_size])
            src, edit = sample_pairs(self.components, embeds[0:1], embeds[1:2], embeds[2:3], chunk,
                                     steps=opts.steps, resolution=opts.resolution, share=opts.share,
                                     token_map=token_map, callback=callback)
            yield chunk, src, edit
