"""The methods an evaluation compares: InstructPix2Pix models, SDEdit and the identity floor.

Every method has ``edit(image, turn, seed, setting) -> PIL image`` and a ``describe()`` dict a resumed
run must agree on. None of them samples on its own:

* :class:`Ip2pMethod` calls :meth:`ip2p.editor.Editor.edit` (any model ip2p loads);
* :class:`SdeditMethod` is SDEdit (Meng et al. 2021) as InstructPix2Pix compares with it (Brooks et al.
  2023): image-to-image of a text-to-image model with the *output caption* as the prompt, noising the
  input to ``strength`` of the schedule and denoising it, through diffusers'
  ``StableDiffusionImg2ImgPipeline``;
* :class:`IdentityMethod` returns the input unchanged: the floor every metric is read against
  (perfect image similarity, no edit).
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from ..errors import BadData, BadModel, BadOptions

#: Edit options an evaluation passes to an InstructPix2Pix model (and that a sweep may vary).
EDIT_SETTINGS = ("steps", "guidance_scale", "image_guidance_scale", "scheduler", "resolution")


class IdentityMethod:
    name = "identity"
    family = "identity"
    sweepable = False

    def edit(self, image: Image.Image, turn, seed: int, setting: dict[str, Any]) -> Image.Image:
        return image.copy()

    def describe(self) -> dict[str, Any]:
        return {"kind": "identity"}


class Ip2pMethod:
    """An InstructPix2Pix model through the :class:`~ip2p.editor.Editor`; ``options`` are fixed edit
    options, a sweep's ``setting`` overrides them per run."""

    sweepable = True

    def __init__(self, editor, options: dict[str, Any] | None = None, name: str | None = None):
        self.editor = editor
        self.options = {k: v for k, v in (options or {}).items() if v is not None}
        unknown = set(self.options) - set(EDIT_SETTINGS)
        if unknown:
            raise BadOptions(f"unknown edit option {sorted(unknown)[0]!r} for an evaluation")
        self.name = name or f"InstructPix2Pix ({editor.model_name})"
        self.family = f"ip2p:{editor.model_name}"

    def edit(self, image: Image.Image, turn, seed: int, setting: dict[str, Any]) -> Image.Image:
        result = self.editor.edit([image], turn.instruction, seed=seed, **{**self.options, **setting})
        return result.images[0]

    def describe(self) -> dict[str, Any]:
        return {"kind": "ip2p", "model": self.editor.model_name, "options": self.options}


class SdeditMethod:
    """SDEdit through ``StableDiffusionImg2ImgPipeline`` on a text-to-image model's components."""

    sweepable = False

    def __init__(self, pipeline, model_name: str, strength: float = 0.75, steps: int = 50,
                 guidance_scale: float = 7.5, resolution: int = 512):
        if not 0.0 < strength <= 1.0:
            raise BadOptions(f"SDEdit strength must be in (0, 1], got {strength}", param="--sdedit-strength")
        self.pipeline, self.model_name = pipeline, model_name
        self.strength, self.steps, self.guidance_scale, self.resolution = strength, steps, guidance_scale, resolution
        self.name = f"SDEdit ({model_name}, strength {strength:g})"
        self.family = f"sdedit:{model_name}"

    @classmethod
    def load(cls, ref: str, device="auto", dtype="auto", scheduler: str = "ddim", **kwargs) -> SdeditMethod:
        """Build the pipeline from a text-to-image model reference (folder, single file or cached hub id)."""
        from diffusers import StableDiffusionImg2ImgPipeline

        from ..editor import quiet_libraries
        from ..models import native_resolution, read_model, resolve_device, resolve_dtype
        from ..sampler import make_scheduler

        quiet_libraries()
        components = read_model(str(ref), instruct=False)
        latent = int(components.vae.config.latent_channels)
        if components.unet.config.in_channels != latent:
            raise BadModel(f"{ref}: SDEdit needs a text-to-image model ({latent}-channel UNet), this UNet takes "
                           f"{components.unet.config.in_channels} channels")
        dev = resolve_device(device)
        components.to(dev, resolve_dtype(dtype, dev))
        pipeline = StableDiffusionImg2ImgPipeline(
            vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
            unet=components.unet, scheduler=make_scheduler(scheduler, components.scheduler_config),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipeline.set_progress_bar_config(disable=True)
        kwargs.setdefault("resolution", native_resolution(components.unet.config, components.vae.config))
        return cls(pipeline, str(ref), **kwargs)

    def edit(self, image: Image.Image, turn, seed: int, setting: dict[str, Any]) -> Image.Image:
        import torch

        from ..images import restore_size, to_working

        if not turn.output_caption:
            raise BadData(f"SDEdit needs an output caption, and edit {turn.key} has none")
        align = self.pipeline.vae_scale_factor
        working = to_working(image, self.resolution, align)
        result = self.pipeline(
            prompt=turn.output_caption, image=working, strength=self.strength, num_inference_steps=self.steps,
            guidance_scale=self.guidance_scale, generator=torch.Generator("cpu").manual_seed(seed),
        ).images[0]
        return result if result.size == image.size else restore_size(result, image.size)

    def describe(self) -> dict[str, Any]:
        return {"kind": "sdedit", "model": self.model_name, "strength": self.strength, "steps": self.steps,
                "guidance_scale": self.guidance_scale, "resolution": self.resolution,
                "scheduler": type(self.pipeline.scheduler).__name__}
