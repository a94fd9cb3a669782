"""Every editing knob, declared once: :data:`OPTIONS`.

Each :class:`Option` holds a knob's name (the diffusers one), type, default, range, the other names
people use for it (aliases), its CLI flag, its label in the web UI, its help, its label in A1111's
``parameters`` text, and whether replay and batch resume carry it. Everything else is derived from
that declaration, the way ComfyUI derives every widget from ``INPUT_TYPES``: the
:class:`EditOptions` dataclass, the CLI flags (:mod:`ip2p.cli.common`), the server's request schema,
the UI's ranges, the metadata writer and reader, replay and batch resume.

Surfaces build an :class:`EditOptions` (often through :meth:`EditOptions.from_mapping`, which accepts
every alias and remembers how the user spelled each name), call :meth:`EditOptions.check` once, and
then trust it. An error names the option the way its user typed it (``--text-cfg`` on the command
line, ``text_cfg`` in a request, "Text guidance" in the UI). This module must stay light: no torch.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from collections.abc import Mapping
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

MAX_SEED = 2**63 - 1
#: Speed and memory modes (:mod:`ip2p.fast`); here so that the CLI lists them without importing torch.
MODES = ("default", "fast", "low-memory", "approx")


@dataclass(frozen=True)
class Option:
    """One editing knob. ``default`` None with ``recommended`` set means "the model's ip2p.json,
    else ``recommended``"; ``lo``/``hi`` bound numbers, ``choices`` bound the rest."""

    name: str
    kind: type  # int, float, str or bool
    default: Any
    help: str
    flag: str
    label: str  # the words the web UI shows
    aliases: tuple[str, ...] = ()  # other request/mapping keys: diffusers, A1111, OpenAI names
    flag_aliases: tuple[str, ...] = ()
    lo: float | None = None
    hi: float | None = None
    choices: tuple[Any, ...] | None = None
    recommended: Any = None  # the global default a model's ip2p.json may override
    metadata: str | None = None  # label in A1111's `parameters` settings line
    replayed: bool = True  # `ip2p edit --replay` and the output's parameters carry it
    matched: bool = True  # batch resume redoes an output whose recorded value differs
    nullable: bool = False  # None is a valid checked value (resolution: the model's native size)

    def parse(self, value: Any, spelled: str | None = None, limit: float | None = None) -> Any:
        """``value`` as this option's type, in range, or a one-line :class:`BadOptions`. ``limit``
        lowers the upper bound (a server's own limit), and the message says so."""
        name = spelled or self.name
        if value is None and self.nullable:
            return None
        if self.kind is bool:
            return parse_bool(name, value)
        if self.kind is str:
            if not isinstance(value, str):
                raise BadOptions(f"{name} must be a string, got {value!r}", param=name)
            if self.name == "scheduler":
                return normalise_scheduler(value, name)
            return value
        number = _number(name, value, self.kind)
        if self.choices is not None and number not in self.choices:
            raise BadOptions(f"{name} must be {' or '.join(map(str, self.choices))}, got {value!r}", param=name)
        hi = self.hi if limit is None or self.hi is None else min(self.hi, limit)
        if self.lo is not None and hi is not None and not self.lo <= number <= hi:
            where = " on this server" if hi != self.hi else ""
            raise BadOptions(f"{name} must be between {self.lo:g} and {hi:g}{where}, got {value!r}", param=name)
        return number

    def schema(self) -> dict[str, Any]:
        """This option as a JSON-Schema property (the server's OpenAPI request body)."""
        kinds = {int: "integer", float: "number", str: "string", bool: "boolean"}
        prop: dict[str, Any] = {"type": kinds[self.kind], "description": self.help}
        default = self.recommended if self.default is None else self.default
        if default is not None:
            prop["default"] = default
        if self.lo is not None:
            prop["minimum"], prop["maximum"] = self.lo, self.hi
        if self.choices is not None:
            prop["enum"] = list(self.choices)
        if self.aliases:
            prop["description"] += f" (also: {', '.join(self.aliases)})"
        return prop


def _model_default(value: Any) -> str:
    return f"default: the model's ip2p.json, else {value}"


#: The editing knobs, in the order every surface lists them (A1111's order for the first five).
#: Steps, scales and scheduler follow the paper's settings (Brooks et al. 2023, Sec. 4) unless a
#: model recommends its own.
OPTIONS: tuple[Option, ...] = (
    Option("steps", int, None, f"denoising steps ({_model_default(20)})", "--steps", "Steps",
           aliases=("num_inference_steps",), lo=1, hi=1000, recommended=20, metadata="Steps"),
    Option("scheduler", str, None, f"one of {', '.join(SCHEDULERS)} ({_model_default('euler_a')})",
           "--scheduler", "Sampler", aliases=("sampler",), choices=SCHEDULERS, recommended="euler_a",
           metadata="Sampler"),
    Option("guidance_scale", float, None,
           f"text guidance s_T: how much to change ({_model_default(7.5)})", "--text-cfg",
           "Text guidance (how much to change)", aliases=("text_cfg", "cfg_text"),
           flag_aliases=("--guidance-scale",), lo=0.0, hi=50.0, recommended=7.5, metadata="CFG scale"),
    Option("image_guidance_scale", float, None,
           f"image guidance s_I: how close to the input ({_model_default(1.5)})", "--image-cfg",
           "Image guidance (how close to the input)", aliases=("image_cfg", "cfg_image"),
           flag_aliases=("--image-guidance-scale",), lo=0.0, hi=50.0, recommended=1.5,
           metadata="Image CFG scale"),
    Option("seed", int, None, "random seed (default: a random one, recorded in the output)", "--seed", "Seed",
           lo=0, hi=MAX_SEED, metadata="Seed"),
    Option("negative_prompt", str, "", "what to steer away from (default: empty)", "--negative-prompt",
           "Negative prompt"),
    Option("num_images", int, 1, "variations per input (seeds seed, seed+1, ...)", "--num-images",
           "Variations", aliases=("n", "num_images_per_prompt"), lo=1, hi=64, replayed=False, matched=False),
    Option("resolution", int, None, "long side of the working size (default: the model's native size, "
           "512 for SD-1.5, 64 for the demo)", "--resolution", "Resolution (long side)", lo=16, hi=8192,
           nullable=True),
    Option("align", int, 8, "round the working sides to a multiple of this (8 or 64)", "--align",
           "Align sides to", choices=(8, 64)),
    Option("keep_working_size", bool, False, "return the working size instead of the input's own size",
           "--keep-working-size", "Keep the working size"),
    # On by default (ip2p.provenance): its flag turns it off; replay and resume carry the choice.
    Option("watermark", bool, True, "invisible watermark (DWT-DCT: an ip2p tag and this edit's id) on outputs of "
           "at least 256x256; --no-watermark leaves it out, and the parameters record that", "--no-watermark",
           "Invisible watermark"),
    # Mask knobs (ip2p.masks): recorded only for a masked edit; batch resume matches the mask digest.
    Option("mask_feather", int, 3, "with a mask: pixels outside it over which the edit fades into the input "
           "(beyond them the input's pixels are kept exactly)", "--mask-feather", "Mask feather (px)",
           lo=0, hi=256, matched=False),
    Option("mask_threshold", float, 12.0, "with --mask auto: the colour change (CIE76 delta E) a first pass "
           "must make for a pixel to count as edited", "--mask-threshold", "Auto mask: change threshold (ΔE)",
           lo=0.5, hi=100.0, matched=False),
    Option("mask_dilation", int, 3, "with --mask auto: grow the changed area by this many pixels",
           "--mask-dilation", "Auto mask: growth (px)", lo=0, hi=256, matched=False),
)

#: Options that only mean something for a masked edit.
MASK_OPTIONS = ("mask_feather", "mask_threshold", "mask_dilation")

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
#: Alias -> canonical name, so that every surface accepts the same words.
OPTION_ALIASES: dict[str, str] = {alias: o.name for o in OPTIONS for alias in o.aliases}
#: The knobs a model folder may recommend (its ip2p.json), with the value used when it does not.
GLOBAL_DEFAULTS: dict[str, Any] = {o.name: o.recommended for o in OPTIONS if o.recommended is not None}
RECOMMENDABLE = tuple(GLOBAL_DEFAULTS)
#: What an output's parameters record, replay re-runs, and batch resume compares.
REPLAYED = tuple(o.name for o in OPTIONS if o.replayed)
MATCHED = tuple(o.name for o in OPTIONS if o.matched)

MAX_STEPS = int(BY_NAME["steps"].hi)
MAX_SCALE = float(BY_NAME["guidance_scale"].hi)
MAX_IMAGES = int(BY_NAME["num_images"].hi)


def normalise_scheduler(name: str, spelled: str = "scheduler") -> str:
    """Return the canonical scheduler name or raise :class:`BadOptions` listing the known ones."""
    key = str(name).strip().lower()
    key = SCHEDULER_ALIASES.get(key, key)
    if key not in SCHEDULERS:
        where = "" if spelled == "scheduler" else f"{spelled}: "
        raise BadOptions(f"{where}unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}", param=spelled)
    return key


def parse_bool(name: str, value: Any) -> bool:
    """A form or JSON truth value (true/false, 1/0, yes/no, on/off) or a one-line error."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise BadOptions(f"{name} must be true or false, got {value!r}", param=name)


def _number(name: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool) or value is None:
        raise BadOptions(f"{name} must be a number, got {value!r}", param=name)
    what = "an integer" if kind is int else "a number"
    try:
        number = kind(float(value)) if isinstance(value, str) and kind is float else kind(value)
    except (TypeError, ValueError, OverflowError):
        raise BadOptions(f"{name} must be {what}, got {value!r}", param=name) from None
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise BadOptions(f"{name} must be an integer, got {value!r}", param=name)
    if isinstance(number, float) and not math.isfinite(number):
        raise BadOptions(f"{name} must be finite, got {value!r}", param=name)
    return number


def check_instruction(instruction: Any, spelled: str = "instruction") -> str:
    """The instruction, or a one-line error when it is missing, not text, or blank."""
    if not isinstance(instruction, str):
        raise BadOptions(f"{spelled} must be a string", param=spelled)
    if not instruction.strip():
        raise BadOptions(f"{spelled} is empty: say what to change, for example 'make it winter'", param=spelled)
    return instruction


class _Methods:
    """Behaviour of :class:`EditOptions`; its fields come from :data:`OPTIONS`."""

    def unset(self) -> list[str]:
        """The recommendable fields the user left out (None)."""
        return [name for name in RECOMMENDABLE if getattr(self, name) is None]

    def check(self, recommended: Mapping[str, Any] | None = None,
              limits: Mapping[str, float] | None = None) -> EditOptions:
        """Validate every field and return a normalised copy with a concrete seed.

        A recommendable field left None takes the model's ``recommended`` value (its ip2p.json),
        else :data:`GLOBAL_DEFAULTS`. A seed left None is drawn here, so the result records it.
        ``limits`` lowers some upper bounds (a server's ``num_images`` and ``resolution``).
        """
        values = {}
        for option in OPTIONS:
            value = getattr(self, option.name)
            if value is None and option.recommended is not None:
                value = (recommended or {}).get(option.name, option.recommended)
            if value is None and option.name == "seed":
                value = secrets.randbelow(2**32)
            limit = (limits or {}).get(option.name)
            values[option.name] = option.parse(value, self.spelled.get(option.name), limit)
        return dataclasses.replace(self, **values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], spelled: Mapping[str, str] | None = None) -> EditOptions:
        """Options from a mapping that may use any alias; unknown or repeated keys are an error.

        ``spelled`` maps a key to the way its user wrote it (a CLI flag), for error messages; keys
        themselves are remembered otherwise, so ``text_cfg=99`` is reported as ``text_cfg``.
        """
        kwargs: dict[str, Any] = {}
        names: dict[str, str] = {}
        for key, value in values.items():
            if value is None and key != "seed":
                continue
            canonical = OPTION_ALIASES.get(key, key)
            if canonical not in BY_NAME:
                raise BadOptions(f"unknown option {key!r}", param=key)
            if canonical in kwargs:
                raise BadOptions(f"option {canonical!r} given twice (as {key!r})", param=key)
            kwargs[canonical] = value
            names[canonical] = (spelled or {}).get(key, key)
        return cls(**kwargs, spelled=names)

    def to_dict(self) -> dict[str, Any]:
        """The option values by canonical name."""
        return {o.name: getattr(self, o.name) for o in OPTIONS}


EditOptions = dataclasses.make_dataclass(
    "EditOptions",
    [(o.name, o.kind | None if o.default is None else o.kind, field(default=o.default)) for o in OPTIONS]
    + [("spelled", dict, field(default_factory=dict, compare=False, repr=False))],
    bases=(_Methods,),
    frozen=True,
)
EditOptions.__module__ = __name__
EditOptions.__doc__ = (
    "How to edit: one field per :data:`OPTIONS` entry (diffusers names; CLI flags are listed there).\n\n"
    "``guidance_scale`` is the paper's text scale s_T, ``image_guidance_scale`` its image scale s_I "
    "(Brooks et al. 2023, eq. 3). None for steps, scales or scheduler means the model's ip2p.json, "
    "else the paper's settings; None for ``seed`` means a random one, drawn and recorded by "
    ":meth:`check`; None for ``resolution`` means the model's native size. ``spelled`` remembers how "
    "the user named each option, for error messages."
)
