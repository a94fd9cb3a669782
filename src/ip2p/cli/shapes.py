"""``ip2p shapes make|show|video`` and ``ip2p bench shapes|video``: thin front ends over the shapes library
(the video ones live in :mod:`ip2p.cli.video`)."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import BadOptions
from .common import add_edit_options, add_model_options, load_editor_for, options_from_args
from .video import register_bench_video, register_shapes_video

#: The edit options the benchmark takes (the rest are fixed by the benchmark itself).
BENCH_OPTIONS = ("steps", "guidance_scale", "image_guidance_scale", "scheduler")


def register(subparsers) -> None:
    shapes = subparsers.add_parser("shapes", help="synthetic shapes world: write data sets, show examples")
    sub = shapes.add_subparsers(dest="shapes_command", metavar="SUBCOMMAND", parser_class=type(shapes))
    shapes.set_defaults(func=lambda args: _missing(shapes))

    make = sub.add_parser("make", help="write a sharded, resumable data set of exact edit triplets")
    make.add_argument("--n", type=int, default=1000, help="number of examples (default 1000)")
    make.add_argument("--size", type=int, default=64, help="image side in pixels, 64-512 (default 64)")
    make.add_argument("--out", required=True, help="output folder (rerun with the same options to resume)")
    make.add_argument("--format", default="ip2p", help="ip2p | jsonl | hf (default ip2p)")
    make.add_argument("--split", default="train", help="train | test (default train)")
    make.add_argument("--start", type=int, default=0, help="first example seed (default 0)")
    make.add_argument("--kinds", default=None, help="comma-separated edit kinds (default all)")
    make.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    make.add_argument("--shard-size", type=int, default=500, help="examples per shard (default 500)")
    make.add_argument("--references", default="phrase",
                      help="how an object edit's phrase is drawn: phrase (every phrase alike, the default) | "
                           "type (kind, colour, colour+kind and position forms alike) | "
                           "kind (the bare kind, \"the circle\", 70 %% of the time it can; else as type)")
    make.add_argument("--phrasings", default="stock",
                      help="training instructions: stock (the default) | target-first (adds templates that "
                           "name the colour first, \"blue for the circle\") | target-first-objects (the same for "
                           "object recolours only); --split train only")
    make.set_defaults(func=run_make)

    show = sub.add_parser("show", help="render one example as an input | edited | mask strip")
    show.add_argument("--seed", type=int, default=0)
    show.add_argument("--size", type=int, default=256)
    show.add_argument("--split", default="train")
    show.add_argument("--kind", default=None, help="edit kind (default: drawn from the seed)")
    show.add_argument("--out", required=True, help="PNG file to write")
    show.set_defaults(func=run_show)
    register_shapes_video(sub)

    bench = subparsers.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK", parser_class=type(bench))
    bench.set_defaults(func=lambda args: _missing(bench))
    b = bench_sub.add_parser("shapes", help="exact per-kind scores on held-out shapes scenes")
    b.add_argument("--n", type=int, default=500)
    b.add_argument("--size", type=int, default=64)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--kinds", default=None, help="comma-separated edit kinds (default all)")
    b.add_argument("--suite", default="default", choices=("default", "failure-modes"),
                   help="failure-modes: counting, spatial, viewpoint and identity edits, reported per category")
    b.add_argument("--out", required=True, help="folder for report.md, report.json and grid.png")
    add_edit_options(b, only=BENCH_OPTIONS)
    add_model_options(b)
    b.set_defaults(func=run_bench)
    register_bench_video(bench_sub)


def _missing(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _kinds(text: str | None):
    return None if not text else tuple(k.strip() for k in text.split(",") if k.strip())


def _progress(total: int, unit: str):
    from tqdm import tqdm

    bar = tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def update(done: int, _total: int) -> None:
        bar.update(done - bar.n)

    return bar, update


def run_make(args) -> int:
    from ..shapes.dataset import MakeOptions, make_dataset

    opts = MakeOptions(
        out=args.out, n=args.n, size=args.size, format=args.format, split=args.split, start=args.start,
        kinds=_kinds(args.kinds), workers=args.workers, shard_size=args.shard_size,
        references=args.references, phrasings=args.phrasings,
    ).check()
    bar, update = _progress(opts.n, "ex")
    try:
        summary = make_dataset(opts, callback=update)
    finally:
        bar.close()
    print(json.dumps(summary))
    return 0


def run_show(args) -> int:
    import numpy as np
    from PIL import Image

    from ..shapes.dataset import png_bytes, write_atomic
    from ..shapes.edits import make_example

    if not args.out.lower().endswith(".png"):
        raise BadOptions(f"--out must be a .png file, got {args.out!r}")
    ex = make_example(args.seed, args.size, kinds=None if args.kind is None else [args.kind], split=args.split)
    before, after, mask = (np.asarray(im.convert("RGB")) for im in ex.images())
    strip = Image.fromarray(np.concatenate([before, after, mask], axis=1))
    from pathlib import Path

    try:
        write_atomic(Path(args.out), png_bytes(strip))
    except OSError as exc:
        raise BadOptions(f"cannot write {args.out}: {exc.strerror}") from exc
    print(json.dumps({"out": args.out, **{k: v for k, v in ex.record().items() if k != "target"}}))
    return 0


def run_bench(args) -> int:
    from ..shapes.bench import failure_mode_table, markdown_table, run_benchmark

    options_from_args(args).check()  # a bad flag fails here, before the model loads
    editor = load_editor_for(args)
    options = {name: getattr(args, name) for name in BENCH_OPTIONS}
    bar, update = _progress(args.n, "edit")
    try:
        report = run_benchmark(
            editor, n=args.n, size=args.size, seed=args.seed, out_dir=args.out, kinds=_kinds(args.kinds),
            edit_options=options, callback=update, suite=args.suite,
        )
    finally:
        bar.close()
    if args.suite == "failure-modes":
        sys.stdout.write(failure_mode_table(report["rows"], f"Shapes failure modes ({args.n} examples)"))
    else:
        sys.stdout.write(markdown_table(report["rows"], f"Shapes benchmark ({args.n} examples)"))
    return 0
