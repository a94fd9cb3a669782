"""Optional speed and memory modes for an :class:`~ip2p.editor.Editor`.

A mode is a :class:`~ip2p.sampler.Runner`: ``make_runner(components, mode)`` builds one, and
``Editor.load(..., mode=...)`` or ``optimize(editor, mode)`` (a new editor over the same model) uses it.
The editor never looks inside a runner; the denoising loop stays one pure function.

``default``
    Nothing changes: the plain diffusers modules, eager PyTorch.
``fast`` (exact)
    channels_last memory layout and fused QKV projections for the UNet and VAE, then
    ``torch.compile`` of the UNet and the VAE decoder, one graph per shape (``dynamic=False``);
    on CPU with inductor's weight freezing (weights folded and pre-packed for oneDNN), on CUDA with
    ``mode="reduce-overhead"`` (CUDA graphs remove the per-kernel launch cost that
    dominates a 512x512 step). Compiled artifacts are saved to and re-loaded from
    ``~/.cache/ip2p/compile`` (``torch.compiler.save_cache_artifacts``), so a later process does
    not compile again. Exact: only floating-point summation order changes (checked to >= 40 dB PSNR
    against the default mode). ``compile=False`` keeps the layout changes alone. Euler ancestral
    draws all its per-step noise before the loop (:class:`PredrawnEulerAncestral`), which removes a
    blocking host-to-device copy per step on CUDA.
``low-memory``
    The VAE encodes and decodes in overlapping tiles (``vae.enable_tiling``) and one image at a
    time, so the decoder's full-resolution activations never exist at once: a 2048x2048 edit fits.
    On CUDA every model part also waits on the CPU until it runs (accelerate's offload hooks),
    so only one part is on the GPU at a time. Exact for images within one tile; larger images
    get blended tile seams (a small, measured change). Attention slicing is not used: PyTorch's
    scaled-dot-product attention already streams attention without materialising the score
    matrix, and the sliced processor would materialise it.
``approx`` (APPROXIMATE, marked as such in the result parameters)
    DeepCache-style feature reuse (Ma et al., "DeepCache", CVPR 2024): every ``interval``-th step
    runs the full UNet and keeps the input of its last up block; the steps between run only the
    first down block and the last up block and reuse the kept deep features, which change slowly
    between adjacent steps. Roughly ``(interval - 1) / interval`` of the deep UNet work is skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import BadModel, BadOptions
from .files import write_atomic
from .options import MODES
from .sampler import Runner

#: Modes whose output must equal the default mode's (to float rounding; see tests/test_fast.py).
EXACT_MODES = ("default", "fast", "low-memory")
#: Low-memory VAE tiles: at least this many pixels a side (SD-1.5's VAE is tiled at 512).
MIN_TILE = 256


def check_mode(mode: str) -> str:
    """Canonical mode name (``low_memory`` and ``lowmem`` are accepted) or a one-line error."""
    key = str(mode).strip().lower().replace("_", "-")
    key = {"lowmem": "low-memory", "low-mem": "low-memory", "exact-fast": "fast"}.get(key, key)
    if key not in MODES:
        raise BadOptions(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    return key


def cache_dir() -> Path:
    """Where compiled artifacts live: ``$IP2P_CACHE_DIR`` or ``~/.cache/ip2p``, plus ``compile``."""
    root = os.environ.get("IP2P_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "ip2p")
    return Path(root) / "compile"


@dataclass
class Speed(Runner):
    """A speed or memory mode's runner: the UNet, decoder and schedulers its edits call."""

    compiled: bool = False
    interval: int = 1
    cache_file: Path | None = None
    shapes_seen: set = field(default_factory=set)
    cache_loaded: bool = False
    last_run: Any = None  # the approx mode's DeepCacheUNet of the latest edit (its call counts)

    @property
    def approximate(self) -> bool:
        return self.mode not in EXACT_MODES

    def unet_for_edit(self):
        """The callable the denoising loop uses for one edit (fresh feature cache per edit)."""
        if self.mode == "approx":
            self.last_run = DeepCacheUNet(self.unet, self.interval)
            return self.last_run
        return self.unet

    def make_scheduler(self, name: str, config: dict):
        """The scheduler for one edit: in fast mode Euler ancestral draws its noise before the loop."""
        from .options import normalise_scheduler
        from .sampler import check_scheduler

        if self.mode == "fast" and normalise_scheduler(name) == "euler_a":
            check_scheduler(name, config)
            return PredrawnEulerAncestral.from_config({k: v for k, v in config.items() if not k.startswith("_")})
        return super().make_scheduler(name, config)

    def after_edit(self, shape: tuple) -> None:
        """After the first edit of a new shape, persist what the compiler produced."""
        if not self.compiled or shape in self.shapes_seen:
            return
        self.shapes_seen.add(shape)
        if self.cache_file is not None:
            save_compile_cache(self.cache_file)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "compiled": self.compiled,
                "deepcache_interval": self.interval if self.mode == "approx" else None,
                "compile_cache": str(self.cache_file) if self.cache_file else None}


# ------------------------------------------------------------------------------------------------
# entry points


def make_runner(components, mode: str = "default", *, compile: bool | None = None, interval: int = 3,
                use_cache: bool = True, freeze: bool | None = None) -> Runner:
    """The runner for ``mode`` (see the module docstring) over ``components``.

    The layout changes of a mode are made in place on the modules, so one set of components takes
    one mode. ``compile`` (fast mode only) defaults to True; ``freeze`` (fast mode on CPU, default
    True) compiles with inductor's weight freezing, which torch cannot cache on disk: pass False to
    trade ~10 % speed for the compile cache. ``interval`` is the approx mode's full-step interval.
    """
    mode = check_mode(mode)
    taken = components.extra.get("mode", "default")
    if taken != "default" and mode != "default":
        raise BadOptions(f"this model is already in mode {taken!r}; load it again for another mode")
    if not isinstance(interval, int) or isinstance(interval, bool) or not 1 <= interval <= 10:
        raise BadOptions(f"interval must be an integer from 1 to 10, got {interval!r}")
    if (compile is not None or freeze is not None) and mode != "fast":
        raise BadOptions("compile= and freeze= apply to mode 'fast' only")
    if mode == "default":
        return Runner.default(components)
    speed = Speed(mode=mode, unet=components.unet, decode=components.vae.decode)
    if mode == "fast":
        _fast(components, speed, compile=True if compile is None else bool(compile), use_cache=use_cache,
              freeze=components.device.type == "cpu" if freeze is None else bool(freeze))
    elif mode == "low-memory":
        _low_memory(components, speed)
    elif mode == "approx":
        check_deepcache_support(components.unet)
        speed.interval = interval
        speed.notes.append(f"approximate: DeepCache feature reuse, full UNet every {interval} steps")
    components.extra["mode"] = mode
    return speed


def optimize(editor, mode: str = "default", **kwargs):
    """A new :class:`~ip2p.editor.Editor` over ``editor``'s model in ``mode``; see :func:`make_runner`."""
    return type(editor)(editor.components, runner=make_runner(editor.components, mode, **kwargs))


def _fast(components, speed: Speed, *, compile: bool, use_cache: bool, freeze: bool) -> None:
    c = components
    for module in (c.unet, c.vae):
        module.to(memory_format=torch.channels_last)
        if hasattr(module, "fuse_qkv_projections"):
            module.fuse_qkv_projections()
    speed.notes.append("channels_last, fused QKV projections")
    if not compile:
        return
    cuda = c.device.type == "cuda"
    kwargs: dict[str, Any] = {"fullgraph": True, "dynamic": False}
    if cuda:
        kwargs["mode"] = "reduce-overhead"
    if use_cache and not freeze:  # torch keeps frozen graphs out of its caches
        speed.cache_file = cache_dir() / f"{model_key(c, kwargs.get('mode', 'default'))}.bin"
        speed.cache_loaded = load_compile_cache(speed.cache_file)
    speed.unet = _Compiled(torch.compile(c.unet, **kwargs), c.unet.dtype, cuda, freeze)
    speed.decode = _Compiled(torch.compile(c.vae.decode, **kwargs), c.unet.dtype, cuda, freeze)
    speed.compiled = True
    speed.notes.append(f"torch.compile {kwargs}" + (", inductor freezing (not cacheable)" if freeze else "")
                       + (" (compile cache loaded)" if speed.cache_loaded else ""))


class _Compiled:
    """Calls a compiled function with the settings its compilation needs.

    ``freeze``: inductor "freezing" treats the weights as constants, folds them and pre-packs them
    for oneDNN (1.46x on the sd-small UNet on a CPU core); the model must not be changed afterwards,
    and torch keeps such graphs out of its caches. CUDA: outputs of a CUDA-graph replay are overwritten by the next replay, so
    each call starts a new graph step and returns clones.
    """

    def __init__(self, fn, dtype, cuda: bool, freeze: bool):
        self.fn = fn
        self.dtype = dtype
        self.cuda = cuda
        self.freeze = freeze

    def __call__(self, *args, **kwargs):
        if not self.cuda:
            import torch._inductor.config as inductor_config

            with inductor_config.patch(freezing=self.freeze):
                return self.fn(*args, **kwargs)
        torch.compiler.cudagraph_mark_step_begin()
        out = self.fn(*args, **kwargs)
        if isinstance(out, tuple):
            return tuple(o.clone() if isinstance(o, torch.Tensor) else o for o in out)
        if hasattr(out, "sample"):
            out.sample = out.sample.clone()
            return out
        return out.clone()


def _low_memory(components, speed: Speed) -> None:
    c = components
    vae = c.vae
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    tile = max(int(vae.config.sample_size), MIN_TILE)
    tile = (tile // factor) * factor
    vae.enable_tiling()
    vae.enable_slicing()
    vae.tile_sample_min_size = tile
    vae.tile_latent_min_size = tile // factor
    speed.notes.append(f"VAE tiles of {tile}x{tile} px (blended seams above one tile), one image at a time")
    if c.device.type == "cuda":
        from accelerate import cpu_offload_with_hook

        device = c.device
        hook = None
        for module in (c.text_encoder, c.unet, vae):  # the order an edit uses them
            _, hook = cpu_offload_with_hook(module, device, prev_module_hook=hook)
        speed.notes.append("model offload: one part on the GPU at a time")


# ------------------------------------------------------------------------------------------------
# the compile cache


def model_key(components, compile_mode: str) -> str:
    """A file name that changes whenever the compiled code could: model shapes, dtype, device, versions."""
    c = components
    parts = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(c.device) if c.device.type == "cuda" else "cpu",
        "dtype": str(c.dtype),
        "compile_mode": compile_mode,
        "unet": dict(c.unet.config),
        "vae": dict(c.vae.config),
    }
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def load_compile_cache(path: Path) -> bool:
    """Hot-load saved compiler artifacts; a missing or stale file only means compiling again."""
    if not path.is_file():
        return False
    try:
        torch.compiler.load_cache_artifacts(path.read_bytes())
    except Exception:  # a cache from another build: ignore it (it is rewritten after this compile)
        return False
    return True


def save_compile_cache(path: Path) -> bool:
    """Write every artifact this process compiled so far, atomically."""
    saved = torch.compiler.save_cache_artifacts()
    if not saved:
        return False
    data = saved[0]
    try:
        write_atomic(path, data, parents=True)
    except OSError:
        return False
    return True


# ------------------------------------------------------------------------------------------------
# DeepCache


def check_deepcache_support(unet) -> None:
    """Feature reuse re-implements the plain SD UNet forward: refuse anything with extra inputs."""
    cfg = unet.config
    extras = [name for name in ("class_embed_type", "addition_embed_type", "encoder_hid_dim_type")
              if cfg.get(name) is not None]
    if extras or cfg.get("center_input_sample") or len(unet.up_blocks) < 2:
        raise BadModel(f"approx mode needs a plain SD-style UNet; this one has {', '.join(extras) or 'another layout'}")


class DeepCacheUNet:
    """The UNet with its deep features reused between full steps (one instance per edit).

    Call ``k`` (0-based) is a full forward when ``k % interval == 0``; it stores the hidden state
    entering the last up block. Other calls recompute only ``conv_in``, the first down block, the
    last up block and the output head, feeding the stored deep state to the last up block.
    With ``interval=1`` it is the stock forward exactly.
    """

    def __init__(self, unet, interval: int):
        self.unet = unet
        self.interval = interval
        self.calls = 0
        self.full_calls = 0
        self.deep: torch.Tensor | None = None
        self.dtype = unet.dtype

    def __call__(self, sample, timestep, encoder_hidden_states, return_dict=False):
        u = self.unet
        full = self.calls % self.interval == 0 or self.deep is None or self.deep.shape[0] != sample.shape[0]
        self.calls += 1
        up_factor = 2 ** u.num_upsamplers
        if any(d % up_factor for d in sample.shape[-2:]):  # odd sizes need upsample_size plumbing
            return u(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)
        emb = u.time_embedding(u.get_time_embed(sample=sample, timestep=timestep), None)
        if u.time_embed_act is not None:
            emb = u.time_embed_act(emb)
        h = u.conv_in(sample)
        res: tuple = (h,)
        blocks = u.down_blocks if full else u.down_blocks[:1]
        for block in blocks:
            h, extra = _run_down(block, h, emb, encoder_hidden_states)
            res += extra
        if full:
            self.full_calls += 1
            if u.mid_block is not None:
                if getattr(u.mid_block, "has_cross_attention", False):
                    h = u.mid_block(h, emb, encoder_hidden_states=encoder_hidden_states)
                else:
                    h = u.mid_block(h, emb)
            for block in u.up_blocks[:-1]:
                n = len(block.resnets)
                h = _run_up(block, h, emb, res[-n:], encoder_hidden_states)
                res = res[:-n]
            self.deep = h
        last = u.up_blocks[-1]
        h = _run_up(last, self.deep, emb, res[: len(last.resnets)], encoder_hidden_states)
        if u.conv_norm_out is not None:
            h = u.conv_act(u.conv_norm_out(h))
        from .architectures import add_residual

        return (add_residual(u, u.conv_out(h), sample),)


def _run_down(block, h, emb, context):
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=h, temb=emb, encoder_hidden_states=context)
    return block(hidden_states=h, temb=emb)


def _run_up(block, h, emb, res, context):
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=h, temb=emb, res_hidden_states_tuple=res, encoder_hidden_states=context)
    return block(hidden_states=h, temb=emb, res_hidden_states_tuple=res)


# ------------------------------------------------------------------------------------------------
# Euler ancestral without a host-device round trip per step


def _euler_ancestral_base():
    from diffusers import EulerAncestralDiscreteScheduler

    return EulerAncestralDiscreteScheduler


class PredrawnEulerAncestral(_euler_ancestral_base()):
    """diffusers' Euler ancestral step with every step's noise drawn before the loop.

    The stock step draws each step's noise from the per-image CPU generators and copies it to the
    device: on CUDA a blocking copy from pageable memory, i.e. a host-device synchronisation per
    step. Here the first step draws all remaining steps' noise, per generator in the same order the
    stock step would (so the numbers are identical), and moves it in one pinned, non-blocking copy.
    The start index is fixed at 0 (our loop always starts at the first timestep), which also skips
    the ``nonzero().item()`` lookup. The update itself is the stock one (Karras et al. 2022,
    ancestral Euler: sigma_up, sigma_down split of the step to sigma_to).
    """

    _noise: torch.Tensor | None = None

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self._noise = None
        self.set_begin_index(0)

    def step(self, model_output, timestep, sample, generator=None, return_dict=True, **kwargs):
        if not isinstance(generator, list) or kwargs:
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict,
                                **kwargs)
        if self.step_index is None:
            self._init_step_index(timestep)
        i = self.step_index
        if self._noise is None:
            self._noise = self._predraw(model_output, generator, len(self.sigmas) - 1 - i, i)
        sigma_from, sigma_to = self.sigmas[i], self.sigmas[i + 1]
        sample = sample.to(torch.float32)
        if self.config.prediction_type == "epsilon":
            x0 = sample - sigma_from * model_output
        elif self.config.prediction_type == "v_prediction":
            x0 = model_output * (-sigma_from / (sigma_from**2 + 1) ** 0.5) + (sample / (sigma_from**2 + 1))
        else:
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)
        sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        prev = sample + (sample - x0) / sigma_from * (sigma_down - sigma_from)
        prev = (prev + self._noise[i - self._first] * sigma_up).to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return prev, x0
        from diffusers.schedulers.scheduling_euler_ancestral_discrete import (
            EulerAncestralDiscreteSchedulerOutput,
        )

        return EulerAncestralDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def _predraw(self, model_output, generators, count: int, first: int) -> torch.Tensor:
        self._first = first
        shape = (1, *model_output.shape[1:])
        per_image = [torch.cat([torch.randn(shape, generator=g, dtype=model_output.dtype) for _ in range(count)])
                     for g in generators]
        noise = torch.stack(per_image, dim=1)  # (steps, batch, C, h, w)
        if model_output.device.type == "cuda":
            return noise.pin_memory().to(model_output.device, non_blocking=True)
        return noise.to(model_output.device)
