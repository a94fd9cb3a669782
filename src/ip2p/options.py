"""Every editing knob in one typed place: defaults, valid ranges, aliases.

Surfaces build an :class:`EditOptions` (often through :meth:`EditOptions.from_mapping`, which
accepts the alias names every surface speaks), call :meth:`EditOptions.check` once, and then trust
it. This module must stay light: no torch import.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from dataclasses import dataclass, field
from typing import Any

from .errors import BadOptions

#: Scheduler names the sampler knows, in the order the CLI lists them.
SCHEDULERS = ("euler_a", "euler", "dpm++2m", "ddim", "unipc", "lms", "pndm")

#: Other names a user may type for a scheduler.
SCHEDULER_ALIASES = {
    "euler_ancestral": "euler_a",
    "euler-a": "euler_a",
    "k_euler_ancestral": "euler_a",
    "k_euler": "euler",
    "dpmpp_2m": "dpm++2m",
    "dpm++_2m": "dpm++2m",
    "dpm++2m_karras": "dpm++2m",
    "dpmpp_2m_karras": "dpm++2m",
    "dpm++ 2m karras": "dpm++2m",
    "dpm++ 2m": "dpm++2m",
    "k_lms": "lms",
    "plms": "pndm",
}

#: Alias -> canonical field name, so that every surface accepts the same words.
OPTION_ALIASES = {
    "num_inference_steps": "steps",
    "text_cfg": "guidance_scale",
    "cfg_text": "guidance_scale",
    "image_cfg": "image_guidance_scale",
    "cfg_image": "image_guidance_scale",
    "n": "num_images",
    "num_images_per_prompt": "num_images",
}

#: What an edit uses for a field the user left out and the model recommends nothing for (the
#: paper's settings, Brooks et al. 2023, Sec. 4). A model folder may recommend its own (ip2p.json).
GLOBAL_DEFAULTS = {"steps": 20, "guidance_scale": 7.5, "image_guidance_scale": 1.5, "scheduler": "euler_a"}
RECOMMENDABLE = tuple(GLOBAL_DEFAULTS)
#: How every surface's help text states those defaults.
DEFAULT_HELP = {name: f"default: the model's ip2p.json, else {value}" for name, value in GLOBAL_DEFAULTS.items()}

MAX_SEED = 2**63 - 1
MAX_STEPS = 1000
MAX_SCALE = 50.0
MAX_IMAGES = 64
MIN_RESOLUTION = 16
MAX_RESOLUTION = 8192


def normalise_scheduler(name: str) -> str:
    """Return the canonical scheduler name or raise :class:`BadOptions` listing the known ones."""
    key = str(name).strip().lower()
    key = SCHEDULER_ALIASES.get(key, key)
    if key not in SCHEDULERS:
        raise BadOptions(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
    return key


def _number(name: str, value: Any, kind: type, lo: float, hi: float) -> Any:
    if isinstance(value, bool) or value is None:
        raise BadOptions(f"{name} must be a number, got {value!r}")
    try:
        number = kind(value) if not isinstance(value, str) else kind(float(value) if kind is float else value)
    except (TypeError, ValueError):
        raise BadOptions(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise BadOptions(f"{name} must be an integer, got {value!r}")
    if isinstance(number, float) and not math.isfinite(number):
        raise BadOptions(f"{name} must be finite, got {value!r}")
    if not lo <= number <= hi:
        raise BadOptions(f"{name} must be between {lo:g} and {hi:g}, got {value!r}")
    return number


@dataclass(frozen=True)
class EditOptions:
    """How to edit. Names follow diffusers; CLI flags are their kebab-case forms.

    ``resolution`` is the long side of the working size; None means the model's native size
    (512 for SD-1.5, 64 for the demo model). ``guidance_scale`` is the paper's text scale s_T, ``image_guidance_scale`` its image scale s_I
    (Brooks et al. 2023, eq. 3). ``seed`` None means "pick one"; :meth:`check` picks it so the
    result records the exact seed that was used.
    """

    steps: int | None = None  # None: the model's recommendation, else GLOBAL_DEFAULTS
    guidance_scale: float | None = None
    image_guidance_scale: float | None = None
    seed: int | None = None
    scheduler: str | None = None
    negative_prompt: str = ""
    num_images: int = 1
    resolution: int | None = None
    align: int = 8
    keep_working_size: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def unset(self) -> list[str]:
        """The recommendable fields the user left out (None)."""
        return [name for name in RECOMMENDABLE if getattr(self, name) is None]

    def check(self, recommended: dict[str, Any] | None = None) -> EditOptions:
        """Validate every field and return a normalised copy with a concrete seed.

        A recommendable field left None takes the model's ``recommended`` value (its ip2p.json),
        else :data:`GLOBAL_DEFAULTS`.
        """
        filled = {name: (recommended or {}).get(name, GLOBAL_DEFAULTS[name]) for name in self.unset()}
        self = dataclasses.replace(self, **filled)
        steps = _number("steps", self.steps, int, 1, MAX_STEPS)
        text = _number("guidance_scale", self.guidance_scale, float, 0.0, MAX_SCALE)
        image = _number("image_guidance_scale", self.image_guidance_scale, float, 0.0, MAX_SCALE)
        seed = self.seed
        if seed is None:
            seed = secrets.randbelow(2**32)
        seed = _number("seed", seed, int, 0, MAX_SEED)
        num_images = _number("num_images", self.num_images, int, 1, MAX_IMAGES)
        resolution = self.resolution
        if resolution is not None:
            resolution = _number("resolution", resolution, int, MIN_RESOLUTION, MAX_RESOLUTION)
        align = _number("align", self.align, int, 8, 64)
        if align not in (8, 64):
            raise BadOptions(f"align must be 8 or 64, got {self.align!r}")
        if not isinstance(self.negative_prompt, str):
            raise BadOptions("negative_prompt must be a string")
        return dataclasses.replace(
            self,
            steps=steps,
            guidance_scale=text,
            image_guidance_scale=image,
            seed=seed,
            scheduler=normalise_scheduler(self.scheduler),
            num_images=num_images,
            resolution=resolution,
            align=align,
            keep_working_size=bool(self.keep_working_size),
        )

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> EditOptions:
        """Build options from a dict that may use alias names; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if value is None and key != "seed":
                continue
            canonical = OPTION_ALIASES.get(key, key)
            if canonical not in names:
                raise BadOptions(f"unknown option {key!r}")
            if canonical in kwargs:
                raise BadOptions(f"option {canonical!r} given twice (as {key!r})")
            kwargs[canonical] = value
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("extra")
        return data
