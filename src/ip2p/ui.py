"""``ip2p ui``: a Gradio web app over one :class:`~ip2p.editor.Editor`.

Upload or paste a picture (or click an example), write what to change, and compare before/after.
The two guidance scales of InstructPix2Pix (Brooks et al. 2023, eq. 3) carry the option schema's UI
labels: "Text guidance (how much to change)" is s_T, "Image guidance (how close to the input)" s_I.
Every control takes its range from :data:`ip2p.options.OPTIONS`, so the UI accepts what the API
accepts, and errors name the control by its label. Results can be edited again (with history and an
undo that restores the whole previous state), stopped mid-edit, downloaded as PNGs that carry their
parameters (or a zip of a gallery), come as a gallery for several inputs or variations, or as a
labelled s_T x s_I grid like the paper's figure. A PNG made by ip2p or AUTOMATIC1111 can fill every
control ("Load parameters").

Handlers are plain functions (``edit_one``, ``edit_many``, ``guidance_grid``, ``again``, ``undo``,
``settings_from_params``, ...) so they can be called and tested without a browser; ``build_ui``
only lays out panels and wires them to these functions.
"""

import contextlib
import dataclasses
import os
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import BadImage, BadOptions, Cancelled, Ip2pError
from .files import write_atomic
from .options import BY_NAME, MASK_OPTIONS, OPTIONS, SCHEDULERS, EditOptions

DEFAULT_PORT = 7860
#: How errors name each option: the label its control shows.
SPELLED = {o.name: o.label for o in OPTIONS}
TEXT_LABEL = SPELLED["guidance_scale"]
IMAGE_LABEL = SPELLED["image_guidance_scale"]
EXAMPLE_INSTRUCTIONS = (
    "make it winter",
    "turn it into a watercolor painting",
    "make it night",
    "turn the cat into a tiger",
    "add fireworks in the sky",
)
#: Example pictures (in the repository's ``examples/``) with instructions the bundled demo model
#: (shapes world, 64x64) was trained on; see examples/make_shapes_example.py.
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
PICTURE_EXAMPLES = (
    ("shapes.png", "make the circle blue"),
    ("shapes.png", "make it night"),
    ("shapes.png", "make it brighter"),
    ("shapes.png", "invert the colors"),
)
MAX_HISTORY = 32  # undo steps kept per browser session
EDITOR_QUEUE = "editor"  # the events that run the model queue together: one edit at a time

Progress = Callable[[int, int], None]


def starting_values(editor, defaults: EditOptions | None = None) -> EditOptions:
    """The controls' starting (and "Reset") values: ``defaults``, gaps filled from the model's
    recommendation, else the global defaults; the seed stays None (randomise) unless given."""
    d = defaults or EditOptions(resolution=editor.native_resolution)
    if d.unset():  # controls need numbers
        d = dataclasses.replace(d.check(editor.recommended), seed=d.seed)
    if d.resolution is None:
        d = dataclasses.replace(d, resolution=editor.native_resolution)
    return d


def make_options(text_cfg, image_cfg, steps, seed, randomize, scheduler, resolution, num_images=1,
                 negative_prompt="", limits: Mapping[str, float] | None = None, watermark: bool = True,
                 **mask_knobs) -> EditOptions:
    """Checked options from the controls' values (a random seed when asked, recorded in the result).
    Errors name the control by its label ("Steps must be between 1 and 1000, got 5000").
    ``mask_knobs`` are the ``mask_*`` options (feather, threshold, dilation); ``watermark`` is the
    UI's starting value (``ip2p ui --no-watermark``)."""
    seed_value = None if randomize or seed in (None, "") else seed
    if isinstance(seed_value, float) and seed_value.is_integer():
        seed_value = int(seed_value)
    values = {"guidance_scale": text_cfg, "image_guidance_scale": image_cfg, "steps": steps, "seed": seed_value,
              "scheduler": scheduler, "resolution": resolution, "num_images": num_images,
              "negative_prompt": negative_prompt or "", "watermark": watermark}
    for name, value in mask_knobs.items():
        if name not in MASK_OPTIONS:
            raise TypeError(f"make_options() got an unexpected keyword argument {name!r}")
        values[name] = int(value) if BY_NAME[name].kind is int and isinstance(value, float) and value.is_integer() \
            else value
    return EditOptions.from_mapping(values, spelled=SPELLED).check(limits=limits)


def control_range(name: str, limits: Mapping[str, float] | None = None) -> tuple[float, float]:
    """(lo, hi) of option ``name`` as the schema gives it, the upper bound lowered by ``limits``."""
    option = BY_NAME[name]
    hi = option.hi if (limits or {}).get(name) is None else min(option.hi, limits[name])
    return option.lo, hi


class Scratch:
    """A private folder for files offered as downloads; files older than ``max_age`` are pruned."""

    def __init__(self, max_age: float = 3600.0, signer: Any = None):
        self._dir = tempfile.TemporaryDirectory(prefix="ip2p-ui-")
        self.signer = signer  # an ip2p.provenance.C2paSigner: downloads carry content credentials
        self.path = Path(self._dir.name)
        self.max_age = max_age
        self._count = 0
        self._lock = threading.Lock()

    def _name(self, stem: str, suffix: str) -> Path:
        now = time.time()
        with self._lock:
            for old in self.path.iterdir():
                if now - old.stat().st_mtime > self.max_age:
                    old.unlink(missing_ok=True)
            self._count += 1
            return self.path / f"{stem}-{self._count:04d}{suffix}"

    def save(self, image: Image.Image, params: dict[str, Any], stem: str = "edit",
             ingredient: bytes | None = None) -> str:
        """``image`` as a PNG carrying ``params``; signed with ``ingredient`` (the input file's bytes)
        as its parent when the UI has a C2PA signer and an ingredient is given."""
        from .images import save_image
        from .provenance import sign_hook

        seed = params.get("seed")
        path = self._name(stem, (f"-s{seed}" if seed is not None else "") + ".png")
        signer = self.signer if ingredient is not None else None
        return str(save_image(image, path, params, sign=sign_hook(signer, params, ingredient, path.name)))

    def zip(self, paths: Sequence[str], stem: str = "gallery") -> str:
        """One zip of ``paths`` (stored flat, by file name): a gallery's download."""
        path = self._name(stem, ".zip")
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            for item in paths:
                archive.write(item, Path(item).name)
        return str(path)


# ------------------------------------------------------------------------------------------------
# Handlers (no Gradio in here)


def _check_instruction(instruction: str) -> str:
    if not instruction or not instruction.strip():
        raise BadOptions("write an instruction first, e.g. 'make it winter'", param="What to change")
    return instruction.strip()


def edit_one(editor, image, instruction: str, options: EditOptions, progress: Progress | None = None,
             mask: Any = None, preview: Callable[[list[Image.Image]], None] | None = None):
    """Edit one picture; returns the EditResult. Errors are Ip2pError one-liners. ``mask`` limits
    the edit (see :func:`choose_mask`); ``preview`` receives live estimates (:func:`preview_every`)."""
    if image is None:
        raise BadOptions("upload or paste an image first")
    on_preview = None if preview is None else (lambda step, total, images: preview(images))
    return editor.edit_with([image], _check_instruction(instruction), options, callback=progress, mask=mask,
                            preview=on_preview, preview_every=preview_every(options.steps))


def previews_by_default(editor) -> bool:
    """Live previews start on where a decode is cheap: on an accelerator, or for a small model (the
    demo's exact autoencoder at 64 px); on a CPU with a full-size VAE each one costs about a step."""
    return editor.device.type != "cpu" or editor.native_resolution <= 128


def preview_every(steps: int) -> int:
    """Decode a live preview about five times an edit: each costs a VAE decode."""
    return max(1, steps // 5)


#: The mask panel's choices: where an edit may change the picture.
MASK_MODES = ("Everywhere", "Painted area", "Where a first pass changed it", "Described area")


def mask_from_brush(value: Any) -> Any:
    """The painted strokes of a ``gr.ImageEditor`` value (any layer's opaque pixels), or None."""
    import numpy as np

    layers = (value or {}).get("layers") or [] if isinstance(value, dict) else []
    painted = None
    for layer in layers:
        if layer is None:
            continue
        alpha = np.asarray(layer.convert("RGBA"))[..., 3] > 0
        painted = alpha if painted is None else painted | alpha
    return painted if painted is not None and painted.any() else None


def choose_mask(mode: str, brush: Any, phrase: str) -> Any:
    """What :meth:`Editor.edit` gets as ``mask`` for the mask panel's state, or a one-line error."""
    if mode in (None, "", MASK_MODES[0]):
        return None
    if mode == MASK_MODES[1]:
        painted = mask_from_brush(brush)
        if painted is None:
            raise BadOptions("paint the area to edit on the picture first (or choose Everywhere)", param="Mask")
        return painted
    if mode == MASK_MODES[2]:
        return "auto"
    if mode == MASK_MODES[3]:
        if not (phrase or "").strip():
            raise BadOptions("describe the area to edit, e.g. 'the sky'", param="Area to edit")
        return f"text:{phrase.strip()}"
    raise BadOptions(f"unknown mask choice {mode!r}", param="Mask")


def load_named(path: str | os.PathLike, name: str | None = None) -> Image.Image:
    """:func:`ip2p.images.load_image` whose errors name the file as its user knows it (``name``, by
    default the file name), never the temporary upload path."""
    from .images import load_image

    name = name or Path(path).name
    try:
        return load_image(path)
    except BadImage as exc:
        message = str(exc).replace(os.fspath(path), name)
        raise type(exc)(message if message.startswith(name) else f"{name}: {message}") from None


def edit_many(editor, files: Sequence[str], instruction: str, options: EditOptions,
              progress: Progress | None = None):
    """One instruction over several files: returns (EditResult, names, problems). A bad file is
    reported by its name, not fatal."""
    if not files:
        raise BadOptions("choose one or more image files first")
    instruction = _check_instruction(instruction)
    images, names, problems = [], [], []
    for path in files:
        try:
            images.append(load_named(path))
            names.append(Path(path).name)
        except Ip2pError as exc:
            problems.append(str(exc))
    if not images:
        raise BadOptions("none of the files could be read: " + "; ".join(problems))
    result = editor.edit_with(images, instruction, options, callback=progress, input_names=names)
    return result, names, problems


def parse_scales(text: str, name: str, option: str = "guidance_scale") -> list[float]:
    """'1, 1.5, 2' -> [1.0, 1.5, 2.0]; each value checked like ``option``, errors naming ``name``."""
    parts = [p for p in str(text).replace(";", ",").replace(" ", ",").split(",") if p]
    if not parts:
        raise BadOptions(f"{name}: give one or more numbers, e.g. 1, 1.5, 2", param=name)
    if len(parts) > 8:
        raise BadOptions(f"{name}: at most 8 values, got {len(parts)}", param=name)
    values = []
    for part in parts:
        try:
            values.append(float(part))
        except ValueError:
            raise BadOptions(f"{name}: {part!r} is not a number", param=name) from None
    return [BY_NAME[option].parse(value, name) for value in values]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def guidance_grid(editor, image, instruction: str, options: EditOptions, text_scales: Sequence[float],
                  image_scales: Sequence[float], progress: Progress | None = None) -> tuple[Image.Image, dict]:
    """Edit ``image`` at every (s_I, s_T) pair with one seed and lay the results out as a labelled
    grid: columns are text scales s_T, rows image scales s_I (the layout of the paper's guidance
    figure). Returns the grid and the parameters it was made with."""
    if image is None:
        raise BadOptions("upload or paste an image first")
    instruction = _check_instruction(instruction)
    cells = len(text_scales) * len(image_scales)
    base = dataclasses.replace(options, num_images=1)
    done = 0
    rows: list[list[Image.Image]] = []
    for s_image in image_scales:
        row = []
        for s_text in text_scales:
            def step(i: int, total: int, _done=done) -> None:
                if progress:
                    progress(_done * total + i, cells * total)

            opts = dataclasses.replace(base, guidance_scale=s_text, image_guidance_scale=s_image)
            row.append(editor.edit_with([image], instruction, opts, callback=step).images[0])
            done += 1
        rows.append(row)
    width, height = rows[0][0].size
    label = max(18, min(width, height) // 8)
    font = _font(max(10, label * 2 // 3))
    left, top, gap = label * 4, label * 2, 4
    grid = Image.new("RGB", (left + len(text_scales) * (width + gap), top + len(image_scales) * (height + gap)),
                     "white")
    draw = ImageDraw.Draw(grid)
    for c, s_text in enumerate(text_scales):
        draw.text((left + c * (width + gap) + width // 2, top // 2), f"s_T = {s_text:g}", fill="black", font=font,
                  anchor="mm")
    for r, s_image in enumerate(image_scales):
        draw.text((left // 2, top + r * (height + gap) + height // 2), f"s_I = {s_image:g}", fill="black",
                  font=font, anchor="mm")
        for c, cell in enumerate(rows[r]):
            grid.paste(cell, (left + c * (width + gap), top + r * (height + gap)))
    params = {"instruction": instruction, "steps": base.steps, "seed": base.seed, "scheduler": base.scheduler,
              "resolution": base.resolution, "model": editor.model_name, "grid_text_scales": list(text_scales),
              "grid_image_scales": list(image_scales), "negative_prompt": base.negative_prompt}
    return grid, params


# --- Stop -----------------------------------------------------------------------------------------


class StopFlags:
    """One stop flag per browser session: Stop sets it, the running edit's step callback sees it at
    its next denoising step and raises :class:`~ip2p.errors.Cancelled` (A1111's Interrupt)."""

    def __init__(self):
        self._flags: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def begin(self, key: str) -> threading.Event:
        flag = threading.Event()
        with self._lock:
            self._flags[key] = flag
        return flag

    def stop(self, key: str) -> bool:
        """Ask the session's running edit to stop; False when none is running."""
        with self._lock:
            flag = self._flags.get(key)
        if flag is None:
            return False
        flag.set()
        return True

    def end(self, key: str, flag: threading.Event) -> None:
        with self._lock:
            if self._flags.get(key) is flag:
                del self._flags[key]


def stoppable(flag: threading.Event, progress: Progress | None = None) -> Progress:
    """A step callback that reports progress and raises Cancelled once ``flag`` is set."""
    def step(i: int, total: int) -> None:
        if flag.is_set():
            raise Cancelled(f"stopped at step {i} of {total}; the previous result is kept")
        if progress is not None:
            progress(i, total)

    return step


# --- The Result tab's state, history and undo ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What the Result tab shows: the picture an edit started from, each of its outputs as
    (picture, params, PNG path), the chosen output, and the zip of all outputs when there are several."""

    before: Any = None
    outputs: tuple[tuple[Image.Image, dict[str, Any], str], ...] = ()
    index: int = 0
    zip_path: str | None = None
    masks: tuple[Any, ...] = ()  # per output, the mask it was limited to (white = edited), or None

    @property
    def mask(self) -> Image.Image | None:
        """The chosen output's mask as a picture, for the Result tab."""
        from .masks import mask_image

        area = self.masks[self.index] if self.index < len(self.masks) else None
        return None if area is None else mask_image(area)

    @property
    def chosen(self) -> tuple[Image.Image, dict[str, Any], str] | None:
        return self.outputs[self.index] if self.outputs else None


def ingredient_of(image, previous: Outcome | None) -> bytes:
    """What a signed output names as its parent: the previous output's own signed file when
    ``image`` is that output (an "edit again", so the chain goes on), else ``image`` as a PNG."""
    from .images import encode_image

    chosen = previous.chosen if previous is not None else None
    if chosen is not None and np.array_equal(np.asarray(chosen[0].convert("RGB")), np.asarray(image.convert("RGB"))):
        with contextlib.suppress(OSError):
            return Path(chosen[2]).read_bytes()
    return encode_image(image.convert("RGB"), "png")


def outcome_of(result, image, scratch: Scratch, previous: Outcome | None = None) -> Outcome:
    """The Outcome of an EditResult: every output saved as a PNG carrying its parameters (and, with
    a signer, content credentials whose parent is ``image``, see :func:`ingredient_of`)."""
    ingredient = ingredient_of(image, previous) if scratch.signer is not None else None
    files = [scratch.save(p, params, ingredient=ingredient) for p, params in zip(result.images, result.params,
                                                                                 strict=True)]
    outputs = tuple(zip(result.images, result.params, files, strict=True))
    return Outcome(image, outputs, 0, scratch.zip(files, "variations") if len(files) > 1 else None,
                   tuple(result.masks))


def result_view(outcome: Outcome) -> tuple[Any, Any, Any, list, Any]:
    """(before/after pair, parameters, PNG path, variations gallery, zip path) for ``outcome``."""
    chosen = outcome.chosen
    if chosen is None:
        return None, None, None, [], None
    picture, params, path = chosen
    gallery = [(p, f"seed {q.get('seed')}") for p, q, _ in outcome.outputs] if len(outcome.outputs) > 1 else []
    return (outcome.before, picture), params, path, gallery, outcome.zip_path


def again(image, outcome: Outcome, history: Sequence) -> tuple[Image.Image, list]:
    """"Edit the result again": the chosen result becomes the input; the input and what the Result
    tab showed go on the history. Returns (new input, history)."""
    if outcome.chosen is None:
        raise BadOptions("edit the picture first, then edit the result again")
    return outcome.chosen[0], [*history, (image, outcome)][-MAX_HISTORY:]


def undo(history: Sequence) -> tuple[Any, Outcome, list]:
    """Step back: (the input, the Result tab's state, the shorter history) before the last "again"."""
    if not history:
        raise BadOptions("nothing to undo")
    image, outcome = history[-1]
    return image, outcome, list(history[:-1])


def history_view(history: Sequence) -> list:
    """The History gallery: each earlier input, captioned with the instruction that edited it."""
    view = []
    for i, (image, outcome) in enumerate(history):
        params = outcome.chosen[1] if outcome.chosen else {}
        view.append((image, f"{i}: {params.get('instruction', '')}"))
    return view


def reuse_seed(outcome: Outcome) -> int:
    """The seed of the chosen result (A1111's recycle button)."""
    if outcome.chosen is None:
        raise BadOptions("no result yet: edit once, then reuse its seed")
    return int(outcome.chosen[1]["seed"])


# --- Load parameters -------------------------------------------------------------------------------

#: Controls "Load parameters" fills, by option name, in the order they are listed.
LOADED = ("guidance_scale", "image_guidance_scale", "steps", "seed", "scheduler", "negative_prompt", "resolution")


def settings_from_params(params: Mapping[str, Any], limits: Mapping[str, float] | None = None
                         ) -> tuple[dict[str, Any], list[str]]:
    """Control values from an image's parameters (ip2p's or AUTOMATIC1111's): ({name: value}, notes).

    ``instruction`` is included when present; A1111's ``Size`` stands in for a missing resolution
    (its long side). A value the UI cannot take is left out and explained in ``notes``."""
    values: dict[str, Any] = {}
    notes: list[str] = []
    instruction = params.get("instruction")
    if isinstance(instruction, str) and instruction.strip():
        values["instruction"] = instruction
    given = {name: params.get(name) for name in LOADED}
    if given["resolution"] is None and isinstance(params.get("width"), int) and isinstance(params.get("height"), int):
        given["resolution"] = max(params["width"], params["height"])
    for name in LOADED:
        raw = given[name]
        if raw is None:
            continue
        try:
            values[name] = BY_NAME[name].parse(raw, SPELLED[name], (limits or {}).get(name))
        except Ip2pError as exc:
            notes.append(f"{exc}; kept the current value")
    if isinstance(values.get("resolution"), int) and values["resolution"] % 8:
        values["resolution"] = max(16, round(values["resolution"] / 8) * 8)  # the control's step
    return values, notes


def example_pictures() -> list[list[str]]:
    """[[picture path, instruction], ...] for the example pictures present on this machine."""
    return [[str(EXAMPLES_DIR / name), text] for name, text in PICTURE_EXAMPLES if (EXAMPLES_DIR / name).is_file()]


# ------------------------------------------------------------------------------------------------
# Gradio wiring


# (No ``from __future__ import annotations`` here: Gradio reads handler annotations such as
# ``gr.SelectData`` and ``gr.Request`` at run time.)
def require_gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError:
        raise BadOptions("the web UI needs Gradio: pip install 'ip2p[ui]'") from None
    return gr


def user_error(gr, exc: Ip2pError):
    """A user's mistake as Gradio shows it: the one-line message, and no traceback on the terminal."""
    return gr.Error(str(exc), print_exception=False)


def _image_input(gr, **kwargs):
    """A ``gr.Image`` input (type "pil") whose upload is decoded by :func:`ip2p.images.load_image`:
    a broken file is a one-line ip2p message naming the file, not Pillow's error on a temp path.

    (The check replaces the instance's ``preprocess``: a ``gr.Image`` subclass would make Gradio
    write a ``.pyi`` stub next to this module.)"""
    component = gr.Image(type="pil", **kwargs)
    stock = component.preprocess

    def preprocess(payload):
        path = getattr(payload, "path", None)
        if path is None or str(getattr(payload, "url", "") or "").startswith("data:"):
            try:
                return stock(payload)
            except gr.Error:
                raise
            except Exception:
                raise gr.Error("could not read the picture; upload a PNG, JPEG or WebP file",
                               print_exception=False) from None
        try:
            return load_named(path, getattr(payload, "orig_name", None))
        except Ip2pError as exc:
            raise user_error(gr, exc) from None

    component.preprocess = preprocess
    return component


def _slider(gr, name: str, value, step, limits, info: str, **kwargs):
    """A slider over option ``name``'s whole range (the API's), which its info line states."""
    lo, hi = control_range(name, limits)
    return gr.Slider(lo, hi, value=value, step=step, label=SPELLED[name], info=f"{info} ({lo:g}-{hi:g})", **kwargs)


def _settings_panel(gr, d: EditOptions, limits, live: bool = False):
    """The Settings accordion: one control per edit option, plus randomise / reuse seed and reset."""
    c = SimpleNamespace()
    with gr.Accordion("Settings", open=True):
        c.text_cfg = _slider(gr, "guidance_scale", d.guidance_scale, 0.1, limits,
                             "s_T: higher follows the instruction more strongly", elem_id="text-cfg")
        c.image_cfg = _slider(gr, "image_guidance_scale", d.image_guidance_scale, 0.05, limits,
                              "s_I: higher keeps more of your picture", elem_id="image-cfg")
        c.steps = _slider(gr, "steps", d.steps, 1, limits, "denoising steps", elem_id="steps")
        with gr.Row(equal_height=True):
            # No minimum/maximum here: ip2p checks the seed and names the control when it is out of range.
            c.seed = gr.Number(value=d.seed if d.seed is not None else 0, precision=0, label=SPELLED["seed"],
                               scale=3, elem_id="seed")
            c.randomize = gr.Checkbox(value=d.seed is None, label="Randomise seed", scale=2, elem_id="randomize")
            c.reuse = gr.Button("♻️ Reuse", scale=1, min_width=60, size="sm", elem_id="reuse-seed")
        c.scheduler = gr.Dropdown(list(SCHEDULERS), value=d.scheduler, label=SPELLED["scheduler"],
                                  elem_id="scheduler")
        c.resolution = _slider(gr, "resolution", d.resolution, 8, limits, "working size of the long side",
                               elem_id="resolution")
        c.num_images = _slider(gr, "num_images", d.num_images, 1, limits, "outputs per edit, seeds seed, seed+1, ...",
                               elem_id="num-images")
        c.live = gr.Checkbox(value=live, label="Live preview", info="show the picture forming every few steps "
                             "(each preview costs a decode)", elem_id="live-preview")
        c.reset = gr.Button("Reset settings to defaults", size="sm", elem_id="reset-button")
    return c


def _input_panel(gr, d: EditOptions, limits, live: bool = False):
    """The left column: picture, instruction, negative prompt, examples, settings, Edit and Stop."""
    p = SimpleNamespace()
    p.source = _image_input(gr, label="Your picture", sources=["upload", "clipboard"], format="png", height=320,
                            elem_id="source-image")
    p.instruction = gr.Textbox(label="What to change", placeholder="make it winter", lines=1, elem_id="instruction")
    p.negative = gr.Textbox(label=SPELLED["negative_prompt"], value=d.negative_prompt, lines=1,
                            placeholder="what to steer away from (optional)", elem_id="negative-prompt")
    pictures = example_pictures()
    if pictures:
        gr.Examples(pictures, inputs=[p.source, p.instruction], label="Example pictures (the demo model's shapes)",
                    cache_examples=False, examples_per_page=8)
    gr.Examples([[text] for text in EXAMPLE_INSTRUCTIONS], inputs=[p.instruction], label="Example instructions",
                cache_examples=False)
    p.settings = _settings_panel(gr, d, limits, live)
    p.mask = _mask_panel(gr, d, limits)
    with gr.Row():
        p.run = gr.Button("Edit", variant="primary", elem_id="edit-button", scale=3)
        p.stop = gr.Button("Stop", variant="stop", elem_id="stop-button", scale=1)
    p.status = gr.Markdown(elem_id="status")
    return p


def _mask_panel(gr, d: EditOptions, limits):
    """The Mask accordion: where the edit may act, and outside it the picture stays exactly as it is."""
    m = SimpleNamespace()
    with gr.Accordion("Mask: limit where it edits", open=False):
        m.mode = gr.Radio(list(MASK_MODES), value=MASK_MODES[0], label="Where to edit", elem_id="mask-mode",
                          info="outside the area, your picture's pixels are kept exactly")
        m.brush = gr.ImageEditor(type="pil", label="Paint the area to edit", sources=(), transforms=(), layers=False,
                                 brush=gr.Brush(colors=["#ff3366"], color_mode="fixed", default_size=6),
                                 format="png", height=320, elem_id="mask-brush")
        m.phrase = gr.Textbox(label="Area to edit", placeholder="the sky (needs a CLIPSeg model)", lines=1,
                              elem_id="mask-phrase")
        m.feather = _slider(gr, "mask_feather", d.mask_feather, 1, limits, "fade band outside the area, pixels",
                            elem_id="mask-feather")
        m.threshold = _slider(gr, "mask_threshold", d.mask_threshold, 0.5, limits,
                              "automatic mask: colour change that counts", elem_id="mask-threshold")
        m.dilation = _slider(gr, "mask_dilation", d.mask_dilation, 1, limits, "automatic mask: grow by, pixels",
                             elem_id="mask-dilation")
    return m


def _result_tab(gr):
    r = SimpleNamespace()
    with gr.Tab("Result"):
        r.compare = gr.ImageSlider(label="Before / after (a live preview while it edits)", type="pil",
                                   format="png", elem_id="result-slider")
        r.mask = gr.Image(label="Mask used (white = edited)", type="pil", format="png", interactive=False,
                          visible=False, height=160, elem_id="mask-used")
        r.variations = gr.Gallery(label="Variations (click to choose)", columns=4, visible=False, format="png",
                                  elem_id="variations")
        with gr.Row():
            r.again = gr.Button("Edit the result again", elem_id="again-button")
            r.undo = gr.Button("Undo", interactive=False, elem_id="undo-button")
        r.download = gr.File(label="Download PNG (carries its parameters)", elem_id="download")
        r.zip = gr.File(label="Download all variations (zip)", visible=False, elem_id="variations-zip")
        r.params = gr.JSON(label="Parameters", elem_id="params")
        r.past = gr.Gallery(label="History", columns=6, format="png", elem_id="history")
    return r


def _many_tab(gr):
    m = SimpleNamespace()
    with gr.Tab("Several images"):
        m.files = gr.File(label="Images", file_count="multiple", file_types=["image"], elem_id="many-files")
        m.run = gr.Button("Edit all with the same instruction", variant="primary", elem_id="many-button")
        m.note = gr.Markdown(elem_id="many-note")
        m.gallery = gr.Gallery(label="Results", columns=4, format="png", elem_id="many-gallery")
        m.zip = gr.File(label="Download all (zip)", elem_id="many-zip")
        m.download = gr.File(label="Downloads", file_count="multiple", elem_id="many-download")
    return m


def _grid_tab(gr):
    g = SimpleNamespace()
    with gr.Tab("Guidance grid"):
        gr.Markdown(f"Edits your picture at every pair of scales with one seed: columns are "
                    f"*{TEXT_LABEL}* (s_T), rows *{IMAGE_LABEL}* (s_I).")
        g.text_list = gr.Textbox(value="3, 7.5, 12", label=f"{TEXT_LABEL}: s_T values")
        g.image_list = gr.Textbox(value="1.0, 1.5, 2.0", label=f"{IMAGE_LABEL}: s_I values")
        g.run = gr.Button("Make grid", variant="primary", elem_id="grid-button")
        g.image = gr.Image(label="Grid", type="pil", format="png", interactive=False, elem_id="grid-image")
        g.download = gr.File(label="Download grid")
        g.params = gr.JSON(label="Grid parameters")
    return g


def _load_tab(gr):
    t = SimpleNamespace()
    with gr.Tab("Load parameters"):
        gr.Markdown("Drop a PNG made by ip2p or AUTOMATIC1111: its instruction and settings fill the controls "
                    "(the picture itself is not used).")
        t.file = gr.File(label="Image with parameters", file_types=["image"], elem_id="params-file")
        t.params = gr.JSON(label="Parameters found", elem_id="loaded-params")
    return t


class _Handlers:
    """What the events share: the editor, the starting values, limits, downloads and stop flags."""

    def __init__(self, gr, editor, defaults: EditOptions, limits, signer: Any = None):
        self.gr, self.editor, self.defaults, self.limits = gr, editor, defaults, limits
        self.scratch = Scratch(signer=signer)
        self.stops = StopFlags()

    def options(self, text_cfg, image_cfg, steps, seed, randomize, scheduler, resolution, negative, num_images=1,
                **mask_knobs):
        return make_options(text_cfg, image_cfg, steps, seed, randomize, scheduler, resolution, num_images, negative,
                            self.limits, self.defaults.watermark, **mask_knobs)

    def stream(self, request, progress, work, skipped: int, slot: int, restore: Any = None):
        """:meth:`run` with live previews: ``work(feed, show)`` runs in a thread, and every
        ``show(update)`` is yielded at output ``slot`` (the others skipped) until the result comes.
        A stopped or failed run puts ``restore`` (what the slot showed before) back."""
        import queue

        shown: queue.Queue = queue.Queue()
        outcome: dict[str, Any] = {}

        def target():
            try:
                outcome["value"] = self.run(request, progress, lambda feed: work(feed, shown.put), skipped)
            except BaseException as exc:  # re-raised in the generator, where Gradio sees it
                outcome["error"] = exc
            finally:
                shown.put(None)

        threading.Thread(target=target, daemon=True, name="ip2p-ui-edit").start()
        previewed = False
        while (update := shown.get()) is not None:
            previewed = True
            yield tuple(update if i == slot else self.gr.skip() for i in range(skipped + 1))
        if "error" in outcome:
            if previewed:
                yield tuple(restore if i == slot else self.gr.skip() for i in range(skipped + 1))
            raise outcome["error"]
        value = outcome["value"]
        if previewed and value[slot] == self.gr.skip():  # stopped: no half-done picture stays
            value = (*value[:slot], restore, *value[slot + 1:])
        yield value

    def run(self, request, progress, work, skipped: int):
        """``work(step_callback)`` for one browser session, stoppable: a user error becomes a
        gr.Error (no traceback), a stop leaves ``skipped`` outputs as they were and puts the
        message in the last one."""
        key = getattr(request, "session_hash", None) or "local"
        flag = self.stops.begin(key)
        feed = stoppable(flag, lambda step, total: progress((step, total), desc="Editing", unit="steps"))
        try:
            return work(feed)
        except Cancelled as exc:
            message = str(exc)
            return (*[self.gr.skip()] * skipped, message[:1].upper() + message[1:] + ".")
        except Ip2pError as exc:
            raise user_error(self.gr, exc) from None
        finally:
            self.stops.end(key, flag)

    def stop(self, request) -> str:
        stopping = self.stops.stop(getattr(request, "session_hash", None) or "local")
        return "Stopping at the next step..." if stopping else "Nothing to stop."

    def result_updates(self, outcome: Outcome) -> tuple:
        """The Result tab's (slider, parameters, download, variations, zip, mask) for ``outcome``."""
        pair, params, path, gallery, zip_path = result_view(outcome)
        mask = outcome.mask
        return (pair, params, path, self.gr.update(value=gallery, visible=bool(gallery)),
                self.gr.update(value=zip_path, visible=zip_path is not None),
                self.gr.update(value=mask, visible=mask is not None))


def _wire_edit(gr, h: _Handlers, ui):
    """Edit (button or Enter), Stop, and choosing a variation. Progress shows once, on the result."""
    p, s, r, m = ui.input, ui.input.settings, ui.result, ui.input.mask
    inputs = [p.source, p.instruction, s.text_cfg, s.image_cfg, s.steps, s.seed, s.randomize, s.scheduler,
              s.resolution, p.negative, s.num_images, m.mode, m.brush, m.phrase, m.feather, m.threshold, m.dilation,
              s.live, ui.outcome]
    outputs = [r.compare, r.params, r.download, r.variations, r.zip, r.mask, s.seed, ui.outcome, p.status]

    def on_edit(image, instruction, text_cfg, image_cfg, steps, seed, randomize, scheduler, resolution, negative,
                num_images, mask_mode, brush, phrase, feather, threshold, dilation, live, previous: Outcome,
                request: gr.Request, progress=gr.Progress()):
        def work(feed, show):
            options = h.options(text_cfg, image_cfg, steps, seed, randomize, scheduler, resolution, negative,
                                num_images, mask_feather=feather, mask_threshold=threshold, mask_dilation=dilation)
            mask = choose_mask(mask_mode, brush, phrase)
            started = time.monotonic()
            result = edit_one(h.editor, image, instruction, options, feed, mask=mask,
                              preview=(lambda pictures: show((image, pictures[0]))) if live else None)
            outcome = outcome_of(result, image, h.scratch, previous)
            seed_used = outcome.chosen[1]["seed"]
            note = f"Edited in {time.monotonic() - started:.1f} s (seed {seed_used})."
            return (*h.result_updates(outcome), seed_used, outcome, note)

        yield from h.stream(request, progress, work, len(outputs) - 1, 0, restore=result_view(previous)[0])

    def on_stop(request: gr.Request):
        return h.stop(request)

    def on_select(outcome: Outcome, event: gr.SelectData):
        if not outcome.outputs:
            return gr.skip()
        chosen = dataclasses.replace(outcome, index=event.index)
        updates = h.result_updates(chosen)
        return (*updates[:3], updates[5], chosen.chosen[1]["seed"], chosen)

    for trigger in (p.run.click, p.instruction.submit):
        trigger(on_edit, inputs, outputs, show_progress_on=[r.compare], concurrency_id=EDITOR_QUEUE)
    p.stop.click(on_stop, None, [p.status], concurrency_limit=None, show_progress="hidden")
    r.variations.select(on_select, [ui.outcome], [r.compare, r.params, r.download, r.mask, s.seed, ui.outcome],
                        show_progress="hidden")
    # The brush paints over the current picture.
    p.source.change(lambda image: image, [p.source], [m.brush], show_progress="hidden")


def _wire_history(gr, h: _Handlers, ui):
    """Edit the result again, and Undo, which restores the input and the whole Result tab."""
    p, r = ui.input, ui.result

    def on_again(image, outcome, history):
        try:
            picture, history = again(image, outcome, history)
        except Ip2pError as exc:
            raise user_error(gr, exc) from None
        return picture, history, history_view(history), gr.update(interactive=True)

    def on_undo(history):
        try:
            image, outcome, history = undo(history)
        except Ip2pError as exc:
            raise user_error(gr, exc) from None
        return (image, *h.result_updates(outcome), outcome, history, history_view(history),
                gr.update(interactive=bool(history)))

    r.again.click(on_again, [p.source, ui.outcome, ui.history], [p.source, ui.history, r.past, r.undo],
                  show_progress="hidden")
    r.undo.click(on_undo, [ui.history], [p.source, r.compare, r.params, r.download, r.variations, r.zip, r.mask,
                                         ui.outcome, ui.history, r.past, r.undo], show_progress="hidden")


def _wire_settings(gr, h: _Handlers, ui):
    """Reuse seed, reset to defaults, and "Load parameters" from an image."""
    p, s, d = ui.input, ui.input.settings, h.defaults
    filled = {"instruction": p.instruction, "negative_prompt": p.negative, "guidance_scale": s.text_cfg,
              "image_guidance_scale": s.image_cfg, "steps": s.steps, "seed": s.seed, "scheduler": s.scheduler,
              "resolution": s.resolution}

    def on_reuse(outcome):
        try:
            return reuse_seed(outcome), False
        except Ip2pError as exc:
            raise user_error(gr, exc) from None

    def on_reset():
        return (d.guidance_scale, d.image_guidance_scale, d.steps, d.seed if d.seed is not None else 0,
                d.seed is None, d.scheduler, d.resolution, d.num_images, d.negative_prompt,
                "Settings reset to the defaults.")

    def on_load(path):
        if not path:
            return gr.skip()
        from .images import read_params

        name = Path(path).name
        try:
            params = read_params(path)
        except Ip2pError as exc:
            raise user_error(gr, BadImage(str(exc).replace(os.fspath(path), name))) from None
        values, notes = settings_from_params(params, h.limits)
        updates = [values.get(key, gr.skip()) for key in filled]
        randomize = False if "seed" in values else gr.skip()
        status = f"Loaded {len(values)} settings from {name}." + "".join(f" {note}." for note in notes)
        return (*updates, randomize, params, status)

    s.reuse.click(on_reuse, [ui.outcome], [s.seed, s.randomize], show_progress="hidden")
    s.reset.click(on_reset, None, [s.text_cfg, s.image_cfg, s.steps, s.seed, s.randomize, s.scheduler, s.resolution,
                                   s.num_images, p.negative, p.status], show_progress="hidden")
    ui.load.file.upload(on_load, [ui.load.file], [*filled.values(), s.randomize, ui.load.params, p.status],
                        show_progress="hidden")


def _wire_many(gr, h: _Handlers, ui):
    """Several images: one instruction over many files, a gallery named by file name, a zip."""
    p, s, m = ui.input, ui.input.settings, ui.many

    def on_many(files, instruction, text_cfg, image_cfg, steps, seed, randomize, scheduler, resolution, negative,
                request: gr.Request, progress=gr.Progress()):
        def work(feed):
            options = h.options(text_cfg, image_cfg, steps, seed, randomize, scheduler, resolution, negative)
            paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in files or []]
            result, names, problems = edit_many(h.editor, paths, instruction, options, feed)
            saved = [h.scratch.save(pic, params, Path(name).stem)
                     for pic, params, name in zip(result.images, result.params, names, strict=True)]
            note = f"Edited {len(names)} images." + (" Could not read: " + "; ".join(problems) if problems else "")
            return list(zip(result.images, names, strict=True)), h.scratch.zip(saved, "edits"), saved, note

        return h.run(request, progress, work, 3)

    m.run.click(on_many, [m.files, p.instruction, s.text_cfg, s.image_cfg, s.steps, s.seed, s.randomize, s.scheduler,
                          s.resolution, p.negative], [m.gallery, m.zip, m.download, m.note],
                show_progress_on=[m.gallery], concurrency_id=EDITOR_QUEUE)


def _wire_grid(gr, h: _Handlers, ui):
    """Guidance grid over s_T x s_I with one seed."""
    p, s, g = ui.input, ui.input.settings, ui.grid

    def on_grid(image, instruction, text_list, image_list, steps, seed, randomize, scheduler, resolution, negative,
                request: gr.Request, progress=gr.Progress()):
        def work(feed):
            options = h.options(1.0, 1.0, steps, seed, randomize, scheduler, resolution, negative)
            text_scales = parse_scales(text_list, f"{TEXT_LABEL}: s_T values")
            image_scales = parse_scales(image_list, f"{IMAGE_LABEL}: s_I values", "image_guidance_scale")
            grid, params = guidance_grid(h.editor, image, instruction, options, text_scales, image_scales, feed)
            return grid, h.scratch.save(grid, params, "grid"), params, "Grid done."

        return h.run(request, progress, work, 3)

    g.run.click(on_grid, [p.source, p.instruction, g.text_list, g.image_list, s.steps, s.seed, s.randomize,
                          s.scheduler, s.resolution, p.negative], [g.image, g.download, g.params, p.status],
                show_progress_on=[g.image], concurrency_id=EDITOR_QUEUE)


def cache_shown_images_atomically() -> None:
    """Gradio caches each picture it shows as ``<cache>/<hash of its bytes>/image.<format>`` and
    rewrites that file in place whenever the same picture is shown again ("again", "undo", the
    history show the same pictures twice): a browser fetching it meanwhile gets fewer bytes than the
    Content-Length it was promised (a broken image, and h11's ``LocalProtocolError`` traceback on the
    terminal). The path names its content, so a file already there is right and is kept (touched, for
    ``delete_cache``); a new one is written under a temporary name and renamed into place."""
    from gradio import processing_utils as cache

    if getattr(cache.save_pil_to_cache, "ip2p_atomic", False):
        return

    def save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
        data = cache.encode_pil_to_bytes(img, format)
        path = (Path(cache_dir) / cache.hash_bytes(data) / f"{name}.{format}").resolve()
        if path.exists():
            with contextlib.suppress(OSError):
                os.utime(path)
        else:
            write_atomic(path, data, parents=True)
        return str(path)

    save_pil_to_cache.ip2p_atomic = True
    cache.save_pil_to_cache = save_pil_to_cache


def build_ui(editor, defaults: EditOptions | None = None, limits: Mapping[str, float] | None = None,
             signer: Any = None):
    """The Gradio Blocks app for ``editor``. ``defaults`` sets the controls' starting (and Reset)
    values; ``limits`` lowers upper bounds (``{"num_images": 4, "resolution": 1024}``, as a server's)."""
    from .ui_video import video_tab, wire_video

    gr = require_gradio()
    cache_shown_images_atomically()
    h = _Handlers(gr, editor, starting_values(editor, defaults), limits, signer)
    with gr.Blocks(title="ip2p: edit images with instructions", analytics_enabled=False,
                   delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"## ip2p — edit a picture by saying what to change\nModel: `{editor.model_name}`")
        ui = SimpleNamespace(outcome=gr.State(Outcome()), history=gr.State([]))
        with gr.Row():
            with gr.Column(scale=1):
                ui.input = _input_panel(gr, h.defaults, limits, previews_by_default(editor))
            with gr.Column(scale=1), gr.Tabs():
                ui.result, ui.many, ui.grid, ui.load = _result_tab(gr), _many_tab(gr), _grid_tab(gr), _load_tab(gr)
                ui.video = video_tab(gr)
        for wire in (_wire_edit, _wire_history, _wire_settings, _wire_many, _wire_grid):
            wire(gr, h, ui)
        wire_video(gr, h, ui, EDITOR_QUEUE)
    demo.queue(default_concurrency_limit=1)
    return demo


def theme():
    """Gradio's default look with system fonts only: the page loads nothing from other hosts."""
    gr = require_gradio()
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def mount_ui(app, editor, path: str = "/", defaults: EditOptions | None = None,
             limits: Mapping[str, float] | None = None):
    """Mount the UI on a FastAPI ``app`` (``ip2p serve`` does this at ``/``). ``limits`` default to
    the server's own (``app.state.settings``: max_images, max_resolution), so the UI allows no more
    than the API beside it."""
    gr = require_gradio()
    settings = getattr(getattr(app, "state", None), "settings", None)
    if limits is None and settings is not None:
        limits = {"num_images": settings.max_images, "resolution": settings.max_resolution,
                  "video_frames": settings.max_video_frames, "video_pixels": settings.max_video_pixels}
    signer = None
    if settings is not None and getattr(settings, "c2pa_cert", None):
        from .provenance import signer_from

        signer = signer_from(settings.c2pa_cert, settings.c2pa_key, env={}, flags=("c2pa_cert", "c2pa_key"))
    return gr.mount_gradio_app(app, build_ui(editor, defaults, limits, signer), path=path, theme=theme(),
                               footer_links=[])
