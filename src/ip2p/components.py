"""The parts of an InstructPix2Pix model (:class:`Components`), the SD-1.5 scheduler defaults, and
writing them as a stock diffusers folder.

Every other model module builds on this one: :mod:`ip2p.models` loads references into
``Components``, :mod:`ip2p.convert` reads and writes single files, :mod:`ip2p.tiny` and the trainer
build them from scratch. This module loads nothing by reference.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COMPONENT_NAMES = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
#: A model folder's recommended edit settings (steps, scales, scheduler), beside model_index.json.
RECOMMENDED_FILE = "ip2p.json"

#: Stable Diffusion 1.5's noise schedule (its scheduler_config.json), for models built here.
SD15_SCHEDULER_CONFIG = {
    "_class_name": "EulerAncestralDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
}


@dataclass
class Components:
    """The parts of an InstructPix2Pix model, ready to run.

    ``scheduler_config`` is a plain dict: the sampler builds a fresh scheduler from it for every
    edit, so concurrent edits never share scheduler state.
    """

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict
    name: str = "custom"
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def device(self):
        return self.unet.device

    @property
    def dtype(self):
        return self.unet.dtype

    def to(self, device=None, dtype=None) -> Components:
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(device=device, dtype=dtype)
        return self


def library_of(module) -> list[str]:
    """A model_index.json entry: diffusers' and transformers' classes under their library, ip2p's
    under their module."""
    cls = type(module)
    library = next((lib for lib in ("diffusers", "transformers") if cls.__module__.split(".")[0] == lib),
                   cls.__module__)
    return [library, cls.__name__]


@contextlib.contextmanager
def quiet_transformers_bars():
    """transformers 5 draws "Loading weights" / "Writing model shards" bars even for one small file;
    ip2p's commands draw their own progress, so these are switched off around the call."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def save_diffusers(components: Components, folder: str | Path) -> Path:
    """Write a standard diffusers ``StableDiffusionInstructPix2PixPipeline`` folder (safetensors)."""
    from .text import save_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    components.unet.save_pretrained(folder / "unet", safe_serialization=True)
    components.vae.save_pretrained(folder / "vae", safe_serialization=True)
    with quiet_transformers_bars():
        components.text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    save_tokenizer(components.tokenizer, folder / "tokenizer")
    (folder / "scheduler").mkdir(exist_ok=True)
    scheduler_config = dict(components.scheduler_config)
    scheduler_config.setdefault("_class_name", "EulerAncestralDiscreteScheduler")
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config, indent=2))
    import diffusers

    index = {
        "_class_name": "StableDiffusionInstructPix2PixPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", scheduler_config["_class_name"]],
        "text_encoder": library_of(components.text_encoder),
        "tokenizer": library_of(components.tokenizer),
        "unet": library_of(components.unet),
        "vae": library_of(components.vae),
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    if components.extra.get("recommended"):
        (folder / RECOMMENDED_FILE).write_text(json.dumps(components.extra["recommended"], indent=2) + "\n")
    return folder
