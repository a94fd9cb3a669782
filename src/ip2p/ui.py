"""``ip2p ui``: a Gradio web app over one :class:`~ip2p.editor.Editor`.

Upload or paste a picture, write what to change, and compare before/after. The two guidance scales
of InstructPix2Pix (Brooks et al. 2023, eq. 3) appear under names people understand: "How much to
change" is the text scale s_T, "How close to the original" the image scale s_I. Results can be
edited again (with history and undo), download as PNGs that carry their parameters, come as a
gallery for several inputs or variations, or as a labelled s_T x s_I grid like the paper's figure.

Handlers are plain functions of the editor (``edit_one``, ``edit_many``, ``guidance_grid``) so they
can be called and tested without a browser; ``build_ui`` only wires them to components.
"""

import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from .errors import BadOptions, Ip2pError
from .options import SCHEDULERS, EditOptions

DEFAULT_PORT = 7860
TEXT_LABEL = "How much to change"
IMAGE_LABEL = "How close to the original"
EXAMPLE_INSTRUCTIONS = (
    "make it winter",
    "turn it into a watercolor painting",
    "make it night",
    "turn the cat into a tiger",
    "make the circle blue",
    "add fireworks in the sky",
)

Progress = Callable[[int, int], None]


def natural_resolution(editor) -> int:
    """The working resolution the model was trained at (SD-1.5: 64 latents x 8 = 512), at least 64."""
    sample = getattr(editor.components.unet.config, "sample_size", 64)
    sample = sample[0] if isinstance(sample, list | tuple) else sample
    return max(64, int(sample) * editor.vae_scale_factor)


def make_options(text_cfg, image_cfg, steps, seed, randomize, scheduler, resolution, num_images=1) -> EditOptions:
    """Checked options from the widgets' values (a random seed when asked, recorded in the result)."""
    seed_value = None if randomize or seed in (None, "") else seed
    if isinstance(seed_value, float) and seed_value.is_integer():
        seed_value = int(seed_value)
    return EditOptions(steps=steps, guidance_scale=text_cfg, image_guidance_scale=image_cfg, seed=seed_value,
                       scheduler=scheduler, resolution=resolution, num_images=num_images).check()


class Scratch:
    """A private folder for files offered as downloads; files older than ``max_age`` are pruned."""

    def __init__(self, max_age: float = 3600.0):
        self._dir = tempfile.TemporaryDirectory(prefix="ip2p-ui-")
        self.path = Path(self._dir.name)
        self.max_age = max_age
        self._count = 0

    def save(self, image: Image.Image, params: dict[str, Any], stem: str = "edit") -> str:
        from .images import save_image

        now = time.time()
        for old in self.path.iterdir():
            if now - old.stat().st_mtime > self.max_age:
                old.unlink(missing_ok=True)
        self._count += 1
        seed = params.get("seed")
        name = f"{stem}-{self._count:04d}" + (f"-s{seed}" if seed is not None else "") + ".png"
        return str(save_image(image, self.path / name, params))


# ------------------------------------------------------------------------------------------------
# Handlers (no Gradio in here)


def edit_one(editor, image, instruction: str, options: EditOptions, progress: Progress | None = None):
    """Edit one picture; returns the EditResult. Errors are Ip2pError one-liners."""
    if image is None:
        raise BadOptions("upload or paste an image first")
    if not instruction or not instruction.strip():
        raise BadOptions("write an instruction first, e.g. 'make it winter'")
    return editor.edit_with([image], instruction.strip(), options, callback=progress)


def edit_many(editor, files: Sequence[str], instruction: str, options: EditOptions,
              progress: Progress | None = None):
    """One instruction over several files: returns (EditResult, names, problems). A bad file is
    reported, not fatal."""
    from .images import load_image

    if not files:
        raise BadOptions("choose one or more image files first")
    if not instruction or not instruction.strip():
        raise BadOptions("write an instruction first, e.g. 'make it winter'")
    images, names, problems = [], [], []
    for path in files:
        try:
            images.append(load_image(path))
            names.append(Path(path).name)
        except Ip2pError as exc:
            problems.append(f"{Path(path).name}: {exc}")
    if not images:
        raise BadOptions("none of the files could be read: " + "; ".join(problems))
    result = editor.edit_with(images, instruction.strip(), options, callback=progress, input_names=names)
    return result, names, problems


def parse_scales(text: str, name: str) -> list[float]:
    """'1, 1.5, 2' -> [1.0, 1.5, 2.0]; each value checked like the option it stands for."""
    parts = [p for p in str(text).replace(";", ",").replace(" ", ",").split(",") if p]
    if not parts:
        raise BadOptions(f"{name}: give one or more numbers, e.g. 1, 1.5, 2")
    if len(parts) > 8:
        raise BadOptions(f"{name}: at most 8 values, got {len(parts)}")
    values = []
    for part in parts:
        try:
            values.append(float(part))
        except ValueError:
            raise BadOptions(f"{name}: {part!r} is not a number") from None
    for value in values:
        EditOptions(guidance_scale=value, image_guidance_scale=value).check()
    return values


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
    if not instruction or not instruction.strip():
        raise BadOptions("write an instruction first")
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
            row.append(editor.edit_with([image], instruction.strip(), opts, callback=step).images[0])
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
    params = {"instruction": instruction.strip(), "steps": base.steps, "seed": base.seed, "scheduler": base.scheduler,
              "resolution": base.resolution, "model": editor.model_name, "grid_text_scales": list(text_scales),
              "grid_image_scales": list(image_scales), "negative_prompt": base.negative_prompt}
    return grid, params


# ------------------------------------------------------------------------------------------------
# Gradio wiring


# (No ``from __future__ import annotations`` here: Gradio reads handler annotations such as
# ``gr.SelectData`` at run time.)
def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError:
        raise BadOptions("the web UI needs Gradio: pip install 'ip2p[ui]'") from None
    return gr


def build_ui(editor, defaults: EditOptions | None = None):
    """The Gradio Blocks app for ``editor``; ``defaults`` sets the widgets' starting values."""
    gr = _gradio()
    d = defaults or EditOptions(resolution=natural_resolution(editor))
    if d.unset():  # widgets need numbers: the model's recommendation, else the global defaults
        d = dataclasses.replace(d.check(editor.recommended), seed=d.seed)
    scratch = Scratch()

    def fail(exc: Ip2pError):
        return gr.Error(str(exc))

    def feed(progress) -> Progress:
        return lambda step, total: progress((step, total), desc="Editing", unit="steps")

    def on_edit(image, instruction, text_cfg, image_cfg, steps, seed, randomize, scheduler, resolution,
                num_images, progress=gr.Progress()):
        try:
            options = make_options(text_cfg, image_cfg, steps, seed, randomize, scheduler, resolution, num_images)
            result = edit_one(editor, image, instruction, options, feed(progress))
        except Ip2pError as exc:
            raise fail(exc) from None
        files = [scratch.save(p, params) for p, params in zip(result.images, result.params, strict=True)]
        gallery = [(p, f"seed {params['seed']}") for p, params in zip(result.images, result.params, strict=True)]
        results = list(zip(result.images, result.params, files, strict=True))
        before_after, first, path = show(image, results, 0)
        return (before_after, first, path, gr.update(value=gallery, visible=len(gallery) > 1), first["seed"],
                results, 0)

    def show(image, results, index):
        picture, params, path = results[index]
        return (image, picture), params, path

    def on_select(image, results, event: gr.SelectData):
        if not results:
            return gr.update(), gr.update(), gr.update(), gr.update()
        (before_after, params, path) = show(image, results, event.index)
        return before_after, params, path, event.index

    def on_again(image, results, index, history):
        if not results:
            raise gr.Error("edit the picture first, then edit the result again")
        history = [*history, (image, results[index or 0][1])]
        return results[index or 0][0], history, _history_view(history), gr.update(interactive=True)

    def on_undo(history):
        if not history:
            raise gr.Error("nothing to undo")
        previous, _ = history[-1]
        history = history[:-1]
        return previous, history, _history_view(history), gr.update(interactive=bool(history))

    def _history_view(history):
        return [(im, f"{i}: {params.get('instruction', '')}") for i, (im, params) in enumerate(history)]

    def on_many(files, instruction, text_cfg, image_cfg, steps, seed, randomize, scheduler, resolution,
                progress=gr.Progress()):
        try:
            options = make_options(text_cfg, image_cfg, steps, seed, randomize, scheduler, resolution)
            paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in files or []]
            result, names, problems = edit_many(editor, paths, instruction, options, feed(progress))
        except Ip2pError as exc:
            raise fail(exc) from None
        saved = [scratch.save(p, params, Path(name).stem)
                 for p, params, name in zip(result.images, result.params, names, strict=True)]
        gallery = [(p, name) for p, name in zip(result.images, names, strict=True)]
        note = ("Could not read: " + "; ".join(problems)) if problems else f"Edited {len(names)} images."
        return gallery, saved, note

    def on_grid(image, instruction, text_list, image_list, steps, seed, randomize, scheduler, resolution,
                progress=gr.Progress()):
        try:
            options = make_options(7.5, 1.5, steps, seed, randomize, scheduler, resolution)
            grid, params = guidance_grid(editor, image, instruction, options, parse_scales(text_list, TEXT_LABEL),
                                         parse_scales(image_list, IMAGE_LABEL), feed(progress))
        except Ip2pError as exc:
            raise fail(exc) from None
        return grid, scratch.save(grid, params, "grid"), params

    with gr.Blocks(title="ip2p: edit images with instructions", analytics_enabled=False,
                   delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"## ip2p — edit a picture by saying what to change\nModel: `{editor.model_name}`")
        results = gr.State([])
        current = gr.State(0)
        history = gr.State([])
        with gr.Row():
            with gr.Column(scale=1):
                source = gr.Image(label="Your picture", type="pil", sources=["upload", "clipboard"],
                                  format="png", height=320, elem_id="source-image")
                instruction = gr.Textbox(label="What to change", placeholder="make it winter", lines=1,
                                         elem_id="instruction")
                gr.Examples([[text] for text in EXAMPLE_INSTRUCTIONS], inputs=[instruction], label="Examples")
                with gr.Accordion("Settings", open=True):
                    text_cfg = gr.Slider(1.0, 15.0, value=d.guidance_scale, step=0.5, label=TEXT_LABEL,
                                         info="text guidance s_T: higher follows the instruction more strongly")
                    image_cfg = gr.Slider(0.5, 5.0, value=d.image_guidance_scale, step=0.1, label=IMAGE_LABEL,
                                          info="image guidance s_I: higher keeps more of your picture")
                    steps = gr.Slider(1, 100, value=d.steps, step=1, label="Steps")
                    with gr.Row():
                        seed = gr.Number(value=d.seed if d.seed is not None else 0, precision=0, label="Seed",
                                         minimum=0)
                        randomize = gr.Checkbox(value=d.seed is None, label="Randomise seed")
                    scheduler = gr.Dropdown(list(SCHEDULERS), value=d.scheduler, label="Scheduler")
                    resolution = gr.Slider(64, 1024, value=d.resolution, step=64, label="Resolution (long side)")
                    num_images = gr.Slider(1, 4, value=1, step=1, label="Variations")
                run_button = gr.Button("Edit", variant="primary", elem_id="edit-button")
            with gr.Column(scale=1), gr.Tabs():
                with gr.Tab("Result"):
                    compare = gr.ImageSlider(label="Before / after", type="pil", format="png",
                                             elem_id="result-slider")
                    variations = gr.Gallery(label="Variations (click to choose)", columns=4, visible=False,
                                            format="png")
                    with gr.Row():
                        again = gr.Button("Edit the result again", elem_id="again-button")
                        undo = gr.Button("Undo", interactive=False, elem_id="undo-button")
                    download = gr.File(label="Download PNG (carries its parameters)", elem_id="download")
                    params = gr.JSON(label="Parameters", elem_id="params")
                    past = gr.Gallery(label="History", columns=6, format="png", elem_id="history")
                with gr.Tab("Several images"):
                    many_files = gr.File(label="Images", file_count="multiple", file_types=["image"])
                    many_button = gr.Button("Edit all with the same instruction", variant="primary")
                    many_note = gr.Markdown()
                    many_gallery = gr.Gallery(label="Results", columns=4, format="png")
                    many_download = gr.File(label="Downloads", file_count="multiple")
                with gr.Tab("Guidance grid"):
                    gr.Markdown(f"Edits your picture at every pair of scales with one seed: columns are "
                                f"*{TEXT_LABEL}* (s_T), rows *{IMAGE_LABEL}* (s_I).")
                    text_list = gr.Textbox(value="3, 7.5, 12", label=f"{TEXT_LABEL} (s_T values)")
                    image_list = gr.Textbox(value="1.0, 1.5, 2.0", label=f"{IMAGE_LABEL} (s_I values)")
                    grid_button = gr.Button("Make grid", variant="primary")
                    grid_image = gr.Image(label="Grid", type="pil", format="png", interactive=False)
                    grid_download = gr.File(label="Download grid")
                    grid_params = gr.JSON(label="Grid parameters")

        settings = [text_cfg, image_cfg, steps, seed, randomize, scheduler, resolution]
        edit_inputs = [source, instruction, *settings, num_images]
        edit_outputs = [compare, params, download, variations, seed, results, current]
        run_button.click(on_edit, edit_inputs, edit_outputs)
        instruction.submit(on_edit, edit_inputs, edit_outputs)
        variations.select(on_select, [source, results], [compare, params, download, current])
        again.click(on_again, [source, results, current, history], [source, history, past, undo])
        undo.click(on_undo, [history], [source, history, past, undo])
        many_button.click(on_many, [many_files, instruction, *settings], [many_gallery, many_download, many_note])
        grid_button.click(on_grid, [source, instruction, text_list, image_list, steps, seed, randomize, scheduler,
                                    resolution], [grid_image, grid_download, grid_params])
    demo.queue(default_concurrency_limit=1)
    return demo


def theme():
    """Gradio's default look with system fonts only: the page loads nothing from other hosts."""
    gr = _gradio()
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def mount_ui(app, editor, path: str = "/", defaults: EditOptions | None = None):
    """Mount the UI on a FastAPI ``app`` (``ip2p serve`` does this at ``/``)."""
    gr = _gradio()
    return gr.mount_gradio_app(app, build_ui(editor, defaults), path=path, theme=theme(), footer_links=[])


def run(args) -> int:
    from .commands import load_editor_for

    _gradio()  # a missing Gradio is reported before the model loads
    args.quiet = False
    editor = load_editor_for(args)
    defaults = EditOptions(resolution=args.resolution or natural_resolution(editor), steps=args.steps).check(
        editor.recommended)
    defaults = dataclasses.replace(defaults, seed=None)
    demo = build_ui(editor, defaults)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"ip2p: warning: the UI listens on {args.host}; anyone who can reach it can use it", file=sys.stderr)
    print(f"ip2p: UI for {editor.model_name} on http://{args.host}:{args.port}", file=sys.stderr)
    demo.launch(server_name=args.host, server_port=args.port, share=False, theme=theme(), footer_links=[],
                show_error=True, quiet=True)
    return 0


def register(sub) -> None:
    p = sub.add_parser("ui", help="web UI in the browser (Gradio)",
                       description="Start the web UI: upload a picture, write what to change, compare before/after.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--model", default=None, help="bundled name, diffusers folder, single file or hub id")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto", help="auto, fp32, fp16 or bf16")
    p.add_argument("--resolution", type=int, default=None, help="starting resolution (default: the model's own)")
    p.add_argument("--steps", type=int, default=None, help="starting number of steps (default 20)")
    p.set_defaults(func=run)
