"""The denoising loop: InstructPix2Pix's dual classifier-free guidance over diffusers schedulers.

Brooks et al. (2023), eq. 3, combines three UNet evaluations per step::

    e = e(z, 0, 0) + s_I * (e(z, c_I, 0) - e(z, 0, 0)) + s_T * (e(z, c_I, c_T) - e(z, c_I, 0))

with c_I the input image's VAE latent (concatenated to the noisy latent on the channel axis) and
c_T the instruction's text embedding. "0" is the empty prompt for text and zeros for the image,
exactly the unconditional branches the model was trained with (5 % dropout each).

All branches go through the UNet as one batch per step. When s_I == 1 the formula needs only
(full, image-only), and when s_I == s_T == 1 only the full pass, so fewer rows are computed.
Conditioning tensors are concatenated once, before the loop. Random numbers come from one CPU
generator per output image, so an image gets the same noise whether it is made alone or in a
batch, on any device. (Its pixels then agree up to float rounding: CPU and GPU kernels choose
their algorithm by batch shape, which can move a pixel by 1/255.)

Two hooks keep the loop one function: a :class:`LatentBlend` pins the latent outside a mask to the
source (Blended Latent Diffusion), and ``preview`` receives the step's estimate of the clean latent
(what a live preview decodes).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .options import SCHEDULERS, normalise_scheduler

StepCallback = Callable[[int, int], None]
#: ``preview(step, total, x0)``: the current estimate of the final latents, after each step.
PreviewCallback = Callable[[int, int, torch.Tensor], None]


def _scheduler_factory(name: str):
    import diffusers as d

    table = {
        "euler_a": (d.EulerAncestralDiscreteScheduler, {}),
        "euler": (d.EulerDiscreteScheduler, {}),
        "dpm++2m": (d.DPMSolverMultistepScheduler,
                    {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
        "ddim": (d.DDIMScheduler, {}),
        "unipc": (d.UniPCMultistepScheduler, {}),
        "lms": (d.LMSDiscreteScheduler, {}),
        "pndm": (d.PNDMScheduler, {"skip_prk_steps": True}),
    }
    return table[normalise_scheduler(name)]


#: Schedulers diffusers cannot step for an x0 model (prediction_type "sample").
NO_SAMPLE_PREDICTION = ("euler_a", "pndm")


def check_scheduler(name: str, config: dict) -> None:
    """A one-line :class:`BadOptions` when scheduler ``name`` cannot step this model's prediction type."""
    from .errors import BadOptions

    if config.get("prediction_type") == "sample" and normalise_scheduler(name) in NO_SAMPLE_PREDICTION:
        usable = ", ".join(s for s in SCHEDULERS if s not in NO_SAMPLE_PREDICTION)
        raise BadOptions(f"scheduler {name!r} cannot run this model (it predicts x0, prediction_type "
                         f"sample); choose one of: {usable}")


def make_scheduler(name: str, config: dict):
    """A fresh scheduler of kind ``name`` built from a model's scheduler config."""
    check_scheduler(name, config)
    cls, overrides = _scheduler_factory(name)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    return cls.from_config({**config, **overrides})


@dataclass
class Runner:
    """What an edit calls: the UNet, the VAE decoder and the scheduler factory.

    This is the default mode: the model's own modules, eager. A speed mode (:mod:`ip2p.fast`) is a
    subclass that hands out other callables; the editor only ever talks to its runner, so the
    denoising loop stays one pure function and a new mode touches one module.
    """

    mode: str
    unet: Any
    decode: Any
    notes: list[str] = field(default_factory=list)

    @classmethod
    def default(cls, components) -> Runner:
        return cls(mode="default", unet=components.unet, decode=components.vae.decode)

    @property
    def approximate(self) -> bool:
        """True when outputs differ from the default mode's beyond float rounding."""
        return False

    def unet_for_edit(self):
        """The callable the denoising loop uses for one edit."""
        return self.unet

    def make_scheduler(self, name: str, config: dict):
        return make_scheduler(name, config)

    def after_edit(self, shape: tuple) -> None:
        """Called with the latent shape after every decode (a compiling mode saves its cache)."""

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "approximate": self.approximate, "notes": list(self.notes)}


def guidance_rows(text_scale: float, image_scale: float) -> int:
    """How many UNet rows per image a step needs for these scales (3, 2 or 1)."""
    if image_scale == 1.0:
        return 1 if text_scale == 1.0 else 2
    return 3


@dataclass
class Conditioning:
    """Everything constant across steps, computed once per batch.

    ``text`` / ``uncond`` are (1, seq, dim) embeddings of the instruction and the negative prompt;
    ``image`` is (B, C, h, w): the unscaled posterior mode of each input image.
    """

    text: torch.Tensor
    uncond: torch.Tensor
    image: torch.Tensor


@dataclass
class LatentBlend:
    """Keep the latent outside a mask on the source's path (Avrahami et al. 2023, Blended Latent
    Diffusion): after every step, where ``keep`` is 1 the latent becomes ``source`` noised to the
    level of the next step (with the run's own initial noise), and after the last step ``source``
    itself. Inside the mask the model edits freely and sees a context that matches the input.

    ``keep`` is (B, 1, h, w) in [0, 1]; ``source`` is (B, C, h, w), scaled as the loop's latents.
    """

    keep: torch.Tensor
    source: torch.Tensor

    def apply(self, scheduler, latents: torch.Tensor, noise: torch.Tensor, next_t) -> torch.Tensor:
        source = self.source.to(latents.device, latents.dtype)
        if next_t is not None:
            # Sigma schedulers read the level from their step index (already the next step's);
            # alpha schedulers read it from the timestep passed.
            times = next_t.reshape(1).expand(source.shape[0])
            source = scheduler.add_noise(source, noise, times)
        keep = self.keep.to(latents.device, latents.dtype)
        return latents * (1 - keep) + source * keep


def clean_estimate(scheduler, sample_in: torch.Tensor, out: torch.Tensor, t) -> torch.Tensor:
    """x0 from the guided model output: ``sample_in`` is the scaled model input (variance-preserving
    space, x_t = sqrt(a) x0 + sqrt(1 - a) eps), ``a`` the cumulative alpha of this step."""
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind == "sample":
        return out
    sigmas, index = getattr(scheduler, "sigmas", None), getattr(scheduler, "step_index", None)
    if sigmas is not None and index is not None:
        alpha = 1.0 / (1.0 + float(sigmas[index]) ** 2)
    else:
        alpha = float(scheduler.alphas_cumprod[int(t)])
    a, b = alpha ** 0.5, (1.0 - alpha) ** 0.5
    if kind == "v_prediction":
        return a * sample_in - b * out
    return (sample_in - b * out) / a


def initial_noise(shape, generators: list[torch.Generator], device, dtype) -> torch.Tensor:
    """Per-image CPU noise, moved to ``device``: identical on every device for the same seeds."""
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(shape, generator=generators, device=device, dtype=dtype)


def denoise(
    unet,
    scheduler,
    cond: Conditioning,
    *,
    steps: int,
    text_scale: float,
    image_scale: float,
    generators: list[torch.Generator],
    latent_channels: int = 4,
    callback: StepCallback | None = None,
    blend: LatentBlend | None = None,
    preview: PreviewCallback | None = None,
) -> torch.Tensor:
    """Run the reverse process and return the final latents (scaled, as the VAE expects x / sf).

    ``cond.image`` has one row per output image, and so may ``cond.text`` (one instruction per row:
    requests batched together); a single text row is shared. ``generators`` has one entry per row.
    """
    device, dtype = cond.image.device, unet.dtype
    batch = cond.image.shape[0]
    rows = guidance_rows(text_scale, image_scale)
    scheduler.set_timesteps(steps, device=device)
    timesteps = scheduler.timesteps

    shape = (batch, latent_channels, *cond.image.shape[-2:])
    noise = initial_noise(shape, generators, device, dtype)
    latents = noise * scheduler.init_noise_sigma

    # Conditioning for the fused batch, built once: rows are [full, image-only, uncond][:rows].
    text = cond.text.to(device=device, dtype=dtype).expand(batch, -1, -1)
    uncond = cond.uncond.to(device=device, dtype=dtype).expand(batch, -1, -1)
    image = cond.image.to(dtype)
    embeds = torch.cat([text, uncond, uncond][:rows])
    image_rows = torch.cat([image, image, torch.zeros_like(image)][:rows])

    step_kwargs = {}
    params = inspect.signature(scheduler.step).parameters
    if "generator" in params:
        step_kwargs["generator"] = generators
    if "eta" in params:
        step_kwargs["eta"] = 0.0

    total = len(timesteps)
    for i, t in enumerate(timesteps):
        sample_in = scheduler.scale_model_input(latents, t)
        model_in = torch.cat([torch.cat([sample_in] * rows), image_rows], dim=1)
        out = unet(model_in, t, encoder_hidden_states=embeds, return_dict=False)[0]
        if rows == 3:
            e_full, e_image, e_uncond = out.chunk(3)
            eps = e_uncond + text_scale * (e_full - e_image) + image_scale * (e_image - e_uncond)
        elif rows == 2:
            e_full, e_image = out.chunk(2)
            eps = e_image + text_scale * (e_full - e_image)
        else:
            eps = out
        if preview is not None:
            estimate = clean_estimate(scheduler, sample_in, eps, t)
            if blend is not None:
                estimate = blend.apply(scheduler, estimate, noise, None)
        latents = scheduler.step(eps, t, latents, **step_kwargs, return_dict=False)[0]
        if blend is not None:
            latents = blend.apply(scheduler, latents, noise, timesteps[i + 1] if i + 1 < total else None)
        if preview is not None:
            preview(i + 1, total, latents if i + 1 == total else estimate)
        if callback is not None:
            callback(i + 1, total)
    return latents
