"""How well can any editor do on the bench's add_object rule? Oracle outputs, scored as the bench does.

"add a pink diamond at the bottom" names a colour, a kind and a region (shapes.phrasing.PLACES), while
the target puts the new shape at a uniformly drawn point of that region and at one of three sizes
drawn uniformly, neither of which the instruction says. The add_object rule asks for IoU >= 0.5 with
that exact target shape. This scores, on the same test examples as ``ip2p bench shapes`` (example
``i`` is the test seed ``seed + i`` with kind ``kinds[i % len(kinds)]``), editors that are right about
everything the instruction does say:

* ``target``: the exact target image (the rule's own ceiling, 100 %);
* ``true_size_region_centre``: the right kind, colour and size, at the centre of the part of the named
  region where a shape of that size fits (the best single guess for a uniform position);
* ``<size>_region_centre``: the same at one fixed size for every example (what an editor that cannot
  know the size does best).

Each ``..._as_asked`` figure scores the same output by the add rule's ``as_asked`` form
(ip2p.shapes.score: colour, kind and region, as the instruction says), and ``input_as_asked`` the
unchanged input, which must fail it.

    python benchmarks/add_object_ceiling.py --n 240 --out benchmarks/results/add-object-ceiling.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ip2p.files import atomic_path
from ip2p.shapes.edits import make_example
from ip2p.shapes.phrasing import PLACES
from ip2p.shapes.render import render
from ip2p.shapes.scene import EXTENT, SIZES
from ip2p.shapes.score import score_edit

BENCH_KINDS = ("recolor_object", "recolor_background", "remove_object", "add_object",
               "grayscale", "invert", "darken", "brighten")


def region_centre(place: str, size: str) -> tuple[float, float]:
    """The centre of the part of ``place``'s region where a shape of ``size`` fits (scene.free_spot's bounds)."""
    x0, y0, x1, y1 = PLACES[place]
    margin = SIZES[size] * EXTENT + 0.01
    return (max(x0, margin) + min(x1, 1 - margin)) / 2, (max(y0, margin) + min(y1, 1 - margin)) / 2


def oracles(example) -> dict[str, bool]:
    added = example.edited_scene.get(example.target["object_id"])
    place, size = example.target["place"], example.size
    score = score_edit(example, example.after)
    scores = {"target": score["success"], "target_as_asked": score["as_asked"]}
    for name, shape_size in [("true_size", added.size)] + [(s, s) for s in SIZES]:
        x, y = region_centre(place, shape_size)
        scene = example.edited_scene.swap(added.replace(x=round(x, 4), y=round(y, 4), size=shape_size))
        score = score_edit(example, render(scene, size).image)
        scores[f"{name}_region_centre"] = score["success"]
        scores[f"{name}_region_centre_as_asked"] = score["as_asked"]
    scores["input_as_asked"] = score_edit(example, example.before)["as_asked"]
    return scores


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=240, help="bench examples (every len(kinds)-th is an add_object)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--kinds", default=",".join(BENCH_KINDS), help="the bench's --kinds (the order matters)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    kinds = args.kinds.split(",")
    if "add_object" not in kinds or args.n < 1:
        raise SystemExit("add_object_ceiling: --kinds must include add_object and --n must be positive")
    t0 = time.perf_counter()
    rows = [oracles(make_example(args.seed + i, args.size, kinds=[kinds[i % len(kinds)]], split="test"))
            for i in range(args.n) if kinds[i % len(kinds)] == "add_object"]
    report = {"benchmark": "add_object_ceiling", "n_bench": args.n, "seed": args.seed, "size": args.size,
              "kinds": kinds, "examples": len(rows),
              "success": {name: round(sum(r[name] for r in rows) / len(rows), 4) for name in rows[0]},
              "date": time.strftime("%Y-%m-%d"), "seconds": round(time.perf_counter() - t0, 1)}
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["success"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
