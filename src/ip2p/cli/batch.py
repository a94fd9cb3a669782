"""``ip2p batch``: edit many images, resumably (the work is :mod:`ip2p.batch`)."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from ..batch import IMAGE_SUFFIXES, MANIFEST_NAME, Manifest, collect_items, plan, run_units
from ..errors import BadOptions
from ..options import BY_NAME
from .common import (
    add_c2pa_options,
    add_edit_options,
    add_mask_options,
    add_model_options,
    load_editor_for,
    options_from_args,
    signer_for,
)


def _parse_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise BadOptions(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise BadOptions("--seeds is empty")
    if len(set(seeds)) != len(seeds):
        raise BadOptions(f"--seeds repeats a seed: {text!r}")
    for seed in seeds:
        BY_NAME["seed"].parse(seed, "--seeds")
    return seeds


def run(args) -> int:
    from ..models import default_model, native_resolution_of, recommended_for

    if args.batch_size < 1:
        raise BadOptions(f"--batch-size must be at least 1, got {args.batch_size}")
    seeds = _parse_seeds(args.seeds)
    if seeds and (args.seed is not None or args.num_images is not None):
        raise BadOptions("give either --seeds or --seed/--num-images, not both")
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadOptions(f"output {args.output!r} exists and is not a folder")
    given = options_from_args(args)
    given.check()  # a bad flag fails here, once, not per image, named as it was typed
    signer = signer_for(args)  # so does a bad certificate
    ray = getattr(args, "ray", None)
    if ray is not None:
        from ..batch_ray import parse_runtime_env

        runtime_env = parse_runtime_env(args.ray_runtime_env)
        if args.ray_workers is not None and args.ray_workers < 1:
            raise BadOptions(f"--ray-workers must be at least 1, got {args.ray_workers}", param="--ray-workers")
    base = {k: v for k, v in given.to_dict().items() if getattr(args, k, None) is not None}
    items = collect_items(args.inputs, out_dir)
    if not items:
        raise BadOptions("no input images found (folders are searched for " + ", ".join(IMAGE_SUFFIXES) + ")")
    model = str(args.model) if args.model is not None else default_model()
    args.model = model
    mask_dir = Path(args.mask_dir) if args.mask_dir else None
    if mask_dir is not None and not mask_dir.is_dir():
        raise BadOptions(f"--mask-dir {args.mask_dir!r} is not a folder", param="--mask-dir")
    if mask_dir is not None and args.mask is not None:
        raise BadOptions("give either --mask or --mask-dir, not both", param="--mask-dir")
    if args.mask is not None:
        from ..masks import parse_mask

        if parse_mask(args.mask, "--mask").kind == "image" and not Path(args.mask).is_file():
            raise BadOptions(f"--mask {args.mask!r}: no such file (or give 'auto' or 'text:PHRASE')", param="--mask")
    units = plan(items, out_dir=out_dir, instruction=args.instruction, base=base, seeds=seeds, fmt=args.format,
                 model=model, recommended=recommended_for(model), native_resolution=native_resolution_of(model),
                 mask=args.mask, mask_dir=mask_dir, inspect=ray is None)
    if args.instruction is None and all(u.status == "failed" and "no instruction" in (u.error or "") for u in units):
        raise BadOptions("no instruction given (-i/--instruction, or an 'instruction' column in a CSV/JSONL list)")

    stop = threading.Event()
    interrupted: list[int] = []

    def on_signal(signum, frame):  # first signal: finish cleanly; second: default behaviour
        interrupted.append(signum)
        stop.set()
        signal.signal(signum, signal.SIG_DFL if signum != signal.SIGINT else signal.default_int_handler)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    manifest = Manifest(Path(args.manifest) if args.manifest else out_dir / MANIFEST_NAME)
    pending = sum(len(u.seeds) for u in units if u.status == "pending")
    bar = None
    if not args.quiet and sys.stderr.isatty() and pending:
        from tqdm import tqdm

        bar = tqdm(total=pending, unit="img", desc="batch", file=sys.stderr, dynamic_ncols=True)
    try:
        if ray is None:
            finished = run_units(units, lambda: load_editor_for(args), manifest, model=model,
                                 batch_size=args.batch_size, stop=stop, progress=bar.update if bar else None,
                                 segmenter=args.segmenter, signer=signer)
        else:
            from ..batch_ray import run_units_ray

            finished = run_units_ray(units, manifest, model=model, device=args.device, dtype=args.dtype,
                                     mode=getattr(args, "mode", "default"), threads=args.threads,
                                     batch_size=args.batch_size, segmenter=args.segmenter, signer=signer,
                                     address=ray or None, workers=args.ray_workers, runtime_env=runtime_env,
                                     stop=stop, progress=bar.update if bar else None,
                                     inspect_args=dict(model=model, mask=args.mask, mask_dir=mask_dir))
    finally:
        if bar is not None:
            bar.close()
        manifest.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    counts = manifest.counts
    if not args.quiet:
        print(f"batch: {counts['ok']} edited, {counts['skipped']} already done, {counts['failed']} failed; "
              f"manifest {manifest.path}", file=sys.stderr)
        for unit in units:
            if unit.status == "failed":
                print(f"  failed: {unit.error}", file=sys.stderr)
    if not finished or interrupted:
        if not args.quiet:
            print("batch: stopped; run the same command again to resume", file=sys.stderr)
        return 128 + (interrupted[0] if interrupted else signal.SIGINT)
    return 1 if counts["failed"] else 0


def register(sub) -> None:
    p = sub.add_parser(
        "batch", help="edit many images (folders, lists, CSV/JSONL); resumable",
        description="Edit every input image and write the results under OUT_DIR, mirroring the input tree. "
                    "Outputs that already exist with the same parameters are skipped, so rerunning an "
                    "interrupted job resumes it. Exit code: 0 all done, 1 some inputs failed (see the "
                    "manifest), 130 stopped by Ctrl-C, 2 a usage error.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image folder, image file, .txt list of paths, or .csv/.jsonl table "
                        "(columns image, instruction, and optional edit options per row)")
    p.add_argument("-i", "--instruction", "--prompt", dest="instruction",
                   help="instruction for every image (a table's instruction column overrides it)")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="output folder")
    p.add_argument("--format", default="png", choices=("png", "jpg", "webp"), help="output format (default png)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds, one output each (name_s{seed}.png)")
    p.add_argument("--manifest", default=None, help=f"JSONL outcome log (default OUT_DIR/{MANIFEST_NAME})")
    # seed 0, not a random one: rerunning the same command must find the same outputs done
    add_edit_options(p, helps={"seed": "first seed (default 0, so that a rerun resumes); output k uses seed+k"})
    add_mask_options(p)
    p.add_argument("--mask-dir", default=None, metavar="DIR",
                   help="one mask per input, named like it (same relative path, any image suffix)")
    add_model_options(p)
    add_c2pa_options(p)
    p.add_argument("--batch-size", type=int, default=4, help="images per UNet batch")
    r = p.add_argument_group("Ray cluster (docs/serving.md, 'On a Ray cluster')")
    r.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on a Ray cluster with Ray Data: one editor per GPU (CPU actors where there is none); "
                        "ADDRESS: auto, ray://HOST:10001, ...; none: $RAY_ADDRESS, else a new local Ray")
    r.add_argument("--ray-workers", type=int, default=None, metavar="N",
                   help="editor actors (default: one per GPU; on CPUs, cluster CPUs / --threads)")
    r.add_argument("--ray-runtime-env", default=None, metavar="JSON",
                   help="Ray runtime environment for the job's workers: a JSON object or a JSON file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or notes on stderr")
    p.set_defaults(func=run)
