"""``ip2p edit``, ``show-params``, ``info``, ``download`` and ``make-tiny-model``.

Parsing and printing only; the work is :class:`ip2p.editor.Editor` and :mod:`ip2p.images`.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

from ..errors import BadImage, BadOptions
from ..options import REPLAYED, check_instruction
from .common import (
    ProgressBar,
    add_c2pa_options,
    add_edit_options,
    add_mask_options,
    add_model_options,
    load_editor_for,
    options_from_args,
    signer_for,
)

# ------------------------------------------------------------------------------------------------
# ip2p edit


def _output_paths(output: str, seeds: list[int]) -> list[str]:
    """``out.png`` for one output; for variations ``out_s{seed}.png``, the names ``ip2p batch`` uses."""
    if len(seeds) == 1 or output == "-":
        return [output]
    path = Path(output)
    return [str(path.with_name(f"{path.stem}_s{seed}{path.suffix}")) for seed in seeds]


def run_edit(args) -> int:
    from ..editor import pixel_digest
    from ..images import encode_image, load_image, read_params, save_image
    from ..provenance import sign_hook

    base: dict = {}
    instruction = args.instruction
    source = args.input
    if args.replay:
        recorded = read_params(args.replay)
        base = {k: recorded[k] for k in REPLAYED if k in recorded}
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
        raise BadOptions("no instruction given (-i/--instruction)", param="--instruction")
    check_instruction(instruction, "--instruction")
    if args.output is None:
        raise BadOptions("no output given (-o/--output, or - for stdout)")
    options = options_from_args(args, base)  # the editor fills what is left out from the model's ip2p.json
    if args.output == "-" and options.check().num_images > 1:
        raise BadOptions("--num-images > 1 needs a file name for -o, not stdout")
    if args.output != "-":
        suffix = Path(args.output).suffix.lower()
        if suffix not in (".png", ".jpg", ".jpeg", ".webp"):
            raise BadOptions(f"output {args.output!r} must end in .png, .jpg, .jpeg or .webp")

    raw = sys.stdin.buffer.read() if source == "-" else None
    image = load_image(raw if raw is not None else source)
    signer = signer_for(args)  # a bad certificate fails here, before any model work
    if args.replay and base and "input_sha256" in recorded and recorded["input_sha256"] != pixel_digest(image):
        raise BadImage(f"{source} is not the input {args.replay} was made from (its pixels differ)")
    mask = args.mask
    if args.replay:
        mask = _replayed_mask(args, recorded, image.size)
    if args.save_mask and mask is None:
        raise BadOptions("--save-mask needs --mask", param="--save-mask")

    editor = load_editor_for(args)
    if args.replay:
        _replay_threads(args, recorded, editor)
    bar = ProgressBar(not args.quiet)
    try:
        result = editor.edit_with([image], instruction, options, callback=bar, batch_size=args.batch_size,
                                  input_names=[str(source) if source != "-" else ""], mask=mask,
                                  segmenter=args.segmenter)
    finally:
        bar.close()
    if args.replay and recorded.get("mask_sha256") not in (None, result.params[0].get("mask_sha256")):
        raise BadImage(f"the replayed mask differs from the one {args.replay} was made with (digest "
                       f"{result.params[0].get('mask_sha256')} instead of {recorded['mask_sha256']})")
    notes = {p["mask_note"] for p in result.params if "mask_note" in p}
    for note in sorted(notes):
        if not args.quiet:
            print(f"note: {note}", file=sys.stderr)
    if args.save_mask:
        _save_mask(args.save_mask, result.masks[0])
    ingredient = None if signer is None else raw if raw is not None else Path(source).read_bytes()
    named = "stdin" if source == "-" else Path(source).name
    for path, picture, params in zip(_output_paths(args.output, [p["seed"] for p in result.params]), result.images,
                                     result.params, strict=True):
        sign = sign_hook(signer, params, ingredient, "stdout" if path == "-" else Path(path).name, named)
        if path == "-":
            data = encode_image(picture, args.format, params)
            sys.stdout.buffer.write(data if sign is None else sign(data, args.format))
            sys.stdout.buffer.flush()
        else:
            save_image(picture, path, params, sign=sign)
            if not args.quiet:
                print(f"wrote {path} (seed {params['seed']})", file=sys.stderr)
    return 0


def _replay_threads(args, recorded: dict, editor) -> None:
    """A CPU replay runs at the edit's recorded thread count unless --threads (already applied)
    says otherwise (:func:`ip2p.provenance.replay_threads`)."""
    import torch

    from ..provenance import replay_threads

    threads = replay_threads(recorded, editor.device, getattr(args, "threads", None))
    if threads and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
        if not args.quiet:
            print(f"note: replaying at {threads} CPU thread{'s' if threads > 1 else ''}, as recorded", file=sys.stderr)


def _replayed_mask(args, recorded: dict, size: tuple[int, int]):
    """The mask a replay uses: the recorded kind (auto, text:...) or, for a mask image, ``--mask``
    checked against the recorded digest."""
    from ..masks import load_mask, mask_digest

    kind = recorded.get("mask")
    if kind is None:
        return args.mask
    if kind != "image":
        if args.segmenter is None and recorded.get("segmenter"):
            args.segmenter = recorded["segmenter"]
        return args.mask or kind
    if args.mask is None:
        raise BadOptions(f"{args.replay} was made with a mask image: give it again with --mask", param="--mask")
    mask, _ = load_mask(args.mask, size, "--mask")
    if mask_digest(mask) != recorded.get("mask_sha256"):
        raise BadImage(f"{args.mask} is not the mask {args.replay} was made with (its pixels differ)")
    return args.mask


def _save_mask(path: str, area) -> None:
    """Write the mask an edit used (for ``auto`` and ``text:``, the one it computed) as a PNG."""
    from .. import masks as M
    from ..files import write_atomic

    data = io.BytesIO()
    M.mask_image(area).save(data, format="PNG")
    write_atomic(Path(path), data.getvalue())


# ------------------------------------------------------------------------------------------------
# ip2p show-params / info / download


def run_show_params(args) -> int:
    from ..images import format_parameters, read_params

    params = read_params(args.file)
    print(json.dumps(params, indent=2, sort_keys=True) if args.json else format_parameters(params))
    return 0


def run_info(args) -> int:
    import platform

    import diffusers
    import torch
    import transformers

    from ..models import bundled_models, cached_hub_models, hf_cache_dir, resolve_device
    from ..version import __version__

    device = resolve_device("auto")
    info = {
        "ip2p": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "hf_cache": hf_cache_dir(),
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
    from ..models import download

    path = download(args.model)
    print(path)
    return 0


def register(sub) -> None:
    from ..models import DEFAULT_HUB_MODEL

    p = sub.add_parser("edit", help="edit an image with an instruction",
                       description="Edit INPUT following an instruction and write OUTPUT.")
    p.add_argument("input", nargs="?", metavar="INPUT", help="image file, or - for stdin")
    p.add_argument("-i", "--instruction", "--prompt", dest="instruction", help="what to change, e.g. 'make it winter'")
    p.add_argument("-o", "--output", help="output .png/.jpg/.webp, or - for stdout")
    p.add_argument("--format", default="png", choices=("png", "jpeg", "webp"), help="format when writing to stdout")
    p.add_argument("--replay", metavar="FILE", help="re-run the edit recorded in FILE's metadata")
    add_mask_options(p)
    p.add_argument("--save-mask", metavar="PNG", help="also write the mask the edit used (white = edited)")
    add_edit_options(p)
    add_model_options(p)
    add_c2pa_options(p)
    p.add_argument("--batch-size", type=int, default=4, help="images per UNet batch")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or notes on stderr")
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
    from ..components import save_diffusers
    from ..editor import quiet_libraries
    from ..tiny import build_tiny_components

    quiet_libraries()
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
