"""``ip2p eval``: models and baselines on a test set, as a comparison table (see :mod:`ip2p.eval`)."""

from __future__ import annotations

import sys

from .common import ProgressBar, add_edit_options, add_model_options, load_editor_for, options_from_args

#: The edit options an evaluation takes; the rest are fixed.
EVAL_OPTIONS = ("steps", "guidance_scale", "image_guidance_scale", "scheduler", "resolution", "seed")
METHOD_OPTIONS = ("steps", "guidance_scale", "image_guidance_scale", "scheduler", "resolution")


def register(subparsers) -> None:
    from ..eval.data import FORMATS

    p = subparsers.add_parser("eval", help="CLIP, L1/L2, CLIP-I, DINO and FID of models and baselines on a "
                                           "test set; sweeps; resumable")
    p.add_argument("--data", required=True, help="test set: a MagicBrush test folder (edit_sessions.json), the "
                                                 "original layout, a JSONL file or folder, or a Hugging Face data set")
    p.add_argument("--format", default="auto", choices=FORMATS, help="test-set format (default: detected)")
    p.add_argument("--split", default="test", help="split of a Hugging Face data set (default test)")
    p.add_argument("--limit", type=int, help="first N sessions (pairs) only")
    p.add_argument("--out", required=True, help="folder for report.md/json, rows.jsonl and images (rerun to resume)")
    p.add_argument("--compare", action="append", default=[], metavar="MODEL",
                   help="another InstructPix2Pix model in the same run (repeatable)")
    p.add_argument("--sdedit", metavar="MODEL", help="add SDEdit: img2img of this text-to-image model with the "
                                                     "output caption")
    p.add_argument("--sdedit-strength", default="0.75", help="SDEdit strength(s), comma-separated (default 0.75)")
    p.add_argument("--no-identity", dest="identity", action="store_false",
                   help="leave out the identity baseline (the input returned unchanged)")
    p.add_argument("--no-model", action="store_true", help="evaluate only --compare models and the baselines")
    p.add_argument("--metrics", default="clip_text,clip_direction,clip_image,l1,l2,clip_i,dino,clip_t",
                   help="comma-separated: clip_text, clip_direction, clip_image, l1, l2, clip_i, dino, clip_t, fid")
    p.add_argument("--clip-model", default=None, help="CLIP for the paper's metrics (default openai/clip-vit-large-patch14)")
    p.add_argument("--clip-i-model", default=None,
                   help="CLIP for MagicBrush's CLIP-I and CLIP-T (default openai/clip-vit-base-patch32)")
    p.add_argument("--dino-model", default=None, help="DINO ViT for the dino metric (default facebook/dino-vits16)")
    p.add_argument("--fid-features", default="inception", choices=("inception", "clip", "dino"),
                   help="FID features: inception (needs torch-fidelity and its weights), clip or dino")
    p.add_argument("--fid-reference", help="folder of reference images for FID (default: the targets)")
    p.add_argument("--turns", default="all,final", help="multi-turn sets: all (each turn from the ground truth) "
                                                        "and/or final (each turn from the previous output)")
    p.add_argument("--sweep", help="e.g. image_guidance_scale=1.0:2.2:0.2 or guidance_scale=5,7.5,10: a row and "
                                   "a plot point per value, for the InstructPix2Pix models")
    add_edit_options(p, only=EVAL_OPTIONS, helps={"seed": "seed of the first session; session i uses seed + i "
                                                          "(default 0)"})
    add_model_options(p)
    p.set_defaults(func=run)


def _strengths(text: str) -> list[float]:
    from ..errors import BadOptions

    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values:
        raise BadOptions(f"--sdedit-strength must be numbers like 0.5,0.75, got {text!r}", param="--sdedit-strength")
    return values


def run(args) -> int:
    from ..editor import Editor
    from ..errors import BadOptions
    from ..eval import metrics as m
    from ..eval.baselines import IdentityMethod, Ip2pMethod, SdeditMethod
    from ..eval.data import open_eval_set
    from ..eval.report import markdown
    from ..eval.run import EvalOptions, evaluate
    from ..eval.sweep import parse_sweep

    options_from_args(args).check()  # a bad flag fails here, before any model loads
    strengths = _strengths(args.sdedit_strength)
    options = EvalOptions(
        out=args.out, metrics=tuple(args.metrics.split(",")), seed=args.seed or 0,
        chains=tuple(c.strip() for c in args.turns.split(",") if c.strip()),
        sweep=parse_sweep(args.sweep) if args.sweep else None, fid_features=args.fid_features,
        fid_reference=args.fid_reference,
    ).check()
    if args.no_model and not (args.compare or args.sdedit or args.identity):
        raise BadOptions("--no-model leaves nothing to evaluate: add --compare, --sdedit or the identity baseline")
    eval_set = open_eval_set(args.data, args.format, args.split, args.limit)
    scorer = m.Scorer.load(options.metrics, clip=args.clip_model or m.DEFAULT_CLIP,
                           clip_i=args.clip_i_model or m.DEFAULT_CLIP_I, dino=args.dino_model or m.DEFAULT_DINO,
                           device=args.device)
    fixed = {name: getattr(args, name) for name in METHOD_OPTIONS}
    methods = []
    if not args.no_model:
        methods.append(Ip2pMethod(load_editor_for(args), fixed))
    for ref in args.compare:
        methods.append(Ip2pMethod(Editor.load(ref, device=args.device, dtype=args.dtype, mode=args.mode), fixed))
    if args.sdedit:
        first = SdeditMethod.load(args.sdedit, device=args.device, dtype=args.dtype, strength=strengths[0],
                                  steps=args.steps or 50, guidance_scale=args.guidance_scale or 7.5,
                                  **({"resolution": args.resolution} if args.resolution else {}))
        methods.append(first)
        methods += [SdeditMethod(first.pipeline, first.model_name, s, first.steps, first.guidance_scale,
                                 first.resolution) for s in strengths[1:]]
    if args.identity:
        methods.append(IdentityMethod())
    options.title = f"ip2p eval on {args.data}"
    bar = ProgressBar(True, desc="eval", unit="edit")
    try:
        report = evaluate(eval_set, methods, scorer, options, callback=bar)
    finally:
        bar.close()
    sys.stdout.write(markdown(report["tables"], options.metrics, options.title, eval_set.multi_turn))
    return 0
