"""Core sub-commands: ``edit``, ``show-params``, ``info``, ``download``.

Parsing and printing only; the work is :class:`ip2p.editor.Editor` and :mod:`ip2p.images`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import BadImage, BadOptions
from .options import DEFAULT_HELP, SCHEDULERS, EditOptions


def add_edit_options(p: argparse.ArgumentParser) -> None:
    """Flags shared by every command that edits (edit, batch, bench): kebab-case EditOptions."""
    d = DEFAULT_HELP
    g = p.add_argument_group("edit options")
    g.add_argument("--steps", type=int, default=None, help=f"denoising steps ({d['steps']})")
    g.add_argument("--text-cfg", "--guidance-scale", dest="guidance_scale", type=float, default=None,
                   help=f"text guidance s_T: how much to change ({d['guidance_scale']})")
    g.add_argument("--image-cfg", "--image-guidance-scale", dest="image_guidance_scale", type=float,
                   default=None, help=f"image guidance s_I: how close to the input ({d['image_guidance_scale']})")
    g.add_argument("--seed", type=int, default=None, help="random seed (default: a random one, recorded)")
    g.add_argument("--scheduler", default=None, help=f"one of {', '.join(SCHEDULERS)} ({d['scheduler']})")
    g.add_argument("--negative-prompt", default=None, help="what to steer away from (default empty)")
    g.add_argument("--num-images", type=int, default=None, help="variations per input (seeds seed, seed+1, ...)")
    g.add_argument("--resolution", type=int, default=None, help="long side of the working size (default: the model's native size, 512 for SD-1.5)")
    g.add_argument("--align", type=int, default=None, choices=(8, 64), help="round sides to a multiple of this")
    g.add_argument("--keep-working-size", action="store_true", default=None,
                   help="return the working size instead of the input's own size")
    m = p.add_argument_group("model")
    m.add_argument("--model", default=None, help="bundled name, diffusers folder, single file or hub id")
    m.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    m.add_argument("--dtype", default="auto", help="auto, fp32, fp16 or bf16")
    m.add_argument("--mode", default="default", choices=("default", "fast", "low-memory", "approx"),
                   help="fast: compiled, exact (first use per size compiles); low-memory: VAE tiling and "
                        "offload; approx: DeepCache feature reuse, faster but changes pixels")
    m.add_argument("--low-memory", dest="mode", action="store_const", const="low-memory",
                   help="same as --mode low-memory")
    p.add_argument("--batch-size", type=int, default=4, help="images per UNet batch")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or notes on stderr")


def options_from_args(args, base: dict | None = None) -> EditOptions:
    """EditOptions from parsed flags; flags the user gave override ``base`` (e.g. a replay)."""
    values = dict(base or {})
    for name in ("steps", "guidance_scale", "image_guidance_scale", "seed", "scheduler", "negative_prompt",
                 "num_images", "resolution", "align", "keep_working_size"):
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    return EditOptions.from_mapping(values)


def load_editor_for(args):
    """Load the model the flags name, saying on stderr which one when it was not named."""
    from .editor import Editor
    from .models import default_model, describe_default

    model = args.model
    if model is None:
        model = default_model()
        if not args.quiet:
            print(describe_default(model), file=sys.stderr)
    return Editor.load(model, device=args.device, dtype=args.dtype, mode=getattr(args, "mode", "default"))


class ProgressBar:
    """A tqdm bar on stderr fed by the editor's step callback; silent when not wanted."""

    def __init__(self, enabled: bool, desc: str = "editing"):
        self.bar = None
        self.enabled = enabled and sys.stderr.isatty()
        self.desc = desc

    def __call__(self, step: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit="step", file=sys.stderr, leave=False)
        self.bar.total = total
        self.bar.n = step
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------------------------
# ip2p edit

_REPLAYED = ("instruction", "negative_prompt", "steps", "guidance_scale", "image_guidance_scale", "seed",
             "scheduler", "resolution", "align", "keep_working_size")


def _output_paths(output: str, count: int) -> list[str]:
    if count == 1 or output == "-":
        return [output]
    path = Path(output)
    return [str(path.with_name(f"{path.stem}-{i}{path.suffix}")) for i in range(count)]


def run_edit(args) -> int:
    from .editor import pixel_digest
    from .images import encode_image, load_image, read_params, save_image

    base: dict = {}
    instruction = args.instruction
    source = args.input
    if args.replay:
        recorded = read_params(args.replay)
        base = {k: recorded[k] for k in _REPLAYED if k in recorded and k != "instruction"}
        instruction = instruction if instruction is not None else recorded.get("instruction")
        if source is None:
            source = recorded.get("input")
            if not source or not Path(source).is_file():
                raise BadOptions(f"{args.replay} records no readable input image; give INPUT explicitly")
        if args.model is None and recorded.get("model"):
            args.model = recorded["model"]
    if source is None:
        raise BadOptions("no input image given (INPUT, or - for stdin)")
    if instruction is None:
        raise BadOptions("no instruction given (-i/--instruction)")
    if args.output is None:
        raise BadOptions("no output given (-o/--output, or - for stdout)")
    options = options_from_args(args, base)  # the editor fills what is left out from the model's ip2p.json
    if args.output == "-" and options.check().num_images > 1:
        raise BadOptions("--num-images > 1 needs a file name for -o, not stdout")
    if args.output != "-":
        suffix = Path(args.output).suffix.lower()
        if suffix not in (".png", ".jpg", ".jpeg", ".webp"):
            raise BadOptions(f"output {args.output!r} must end in .png, .jpg, .jpeg or .webp")

    image = load_image(sys.stdin.buffer.read() if source == "-" else source)
    if args.replay and base and "input_sha256" in recorded and recorded["input_sha256"] != pixel_digest(image):
        raise BadImage(f"{source} is not the input {args.replay} was made from (its pixels differ)")

    editor = load_editor_for(args)
    bar = ProgressBar(not args.quiet)
    try:
        result = editor.edit_with([image], instruction, options, callback=bar, batch_size=args.batch_size,
                                  input_names=[str(source) if source != "-" else ""])
    finally:
        bar.close()
    for path, picture, params in zip(_output_paths(args.output, len(result.images)), result.images,
                                     result.params, strict=True):
        if path == "-":
            sys.stdout.buffer.write(encode_image(picture, args.format, params))
            sys.stdout.buffer.flush()
        else:
            save_image(picture, path, params)
            if not args.quiet:
                print(f"wrote {path} (seed {params['seed']})", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------------
# ip2p show-params / info / download


def run_show_params(args) -> int:
    from .images import format_parameters, read_params

    params = read_params(args.file)
    print(json.dumps(params, indent=2, sort_keys=True) if args.json else format_parameters(params))
    return 0


def run_info(args) -> int:
    import platform

    import diffusers
    import torch
    import transformers

    from . import __version__
    from .models import _hf_cache_dir, bundled_models, cached_hub_models, resolve_device

    device = resolve_device("auto")
    info = {
        "ip2p": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "hf_cache": _hf_cache_dir(),
        "bundled_models": sorted(bundled_models()),
        "cached_models": cached_hub_models(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            if isinstance(value, list):
                value = ", ".join(value) or "none"
            print(f"{key:15} {value}")
    return 0


def run_download(args) -> int:
    from .models import download

    path = download(args.model)
    print(path)
    return 0


def register(sub) -> None:
    from .models import DEFAULT_HUB_MODEL

    p = sub.add_parser("edit", help="edit an image with an instruction",
                       description="Edit INPUT following an instruction and write OUTPUT.")
    p.add_argument("input", nargs="?", metavar="INPUT", help="image file, or - for stdin")
    p.add_argument("-i", "--instruction", "--prompt", dest="instruction", help="what to change, e.g. 'make it winter'")
    p.add_argument("-o", "--output", help="output .png/.jpg/.webp, or - for stdout")
    p.add_argument("--format", default="png", choices=("png", "jpeg", "webp"), help="format when writing to stdout")
    p.add_argument("--replay", metavar="FILE", help="re-run the edit recorded in FILE's metadata")
    add_edit_options(p)
    p.set_defaults(func=run_edit)

    p = sub.add_parser("show-params", help="print the edit parameters stored in an output image")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print the ip2p JSON record")
    p.set_defaults(func=run_show_params)

    p = sub.add_parser("info", help="versions, device and the models found locally")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_info)

    p = sub.add_parser("download", help="fetch a model into the Hugging Face cache")
    p.add_argument("model", nargs="?", default=DEFAULT_HUB_MODEL, help=f"hub id (default {DEFAULT_HUB_MODEL})")
    p.set_defaults(func=run_download)

    register_tiny(sub)


def run_make_tiny(args) -> int:
    from .editor import _quiet_libraries
    from .models import save_diffusers
    from .tiny import build_tiny_components

    _quiet_libraries()
    folder = save_diffusers(build_tiny_components(seed=args.seed), args.out)
    print(folder)
    return 0


def register_tiny(sub) -> None:
    p = sub.add_parser("make-tiny-model", help="write a tiny random-weight model folder (for trying the pipeline)",
                       description="Write a tiny InstructPix2Pix model with RANDOM weights: it runs every code path "
                                   "in seconds, but its edits are noise. For real edits use the demo or full model.")
    p.add_argument("out", metavar="DIR")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_make_tiny)
