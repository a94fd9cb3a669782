"""Reference cross-entropies for the kind heads (``optim.kind_weight``) on a shapes data set.

A kind head predicts, per cell of its feature map, the share of each class (background or one of
the shape kinds) in the cell's block of input pixels. Three predictors bound what its logged
cross-entropy (``log.csv`` column ``kind``) means:

* knows nothing: every cell gets the data set's mean class shares;
* knows where the objects are, not their kind: the cell's true background share, the rest split
  over the kinds in their overall proportions (what colour and edges alone can give);
* knows everything: the cell's own shares (the entropy of the target, the floor).

A head below the second line reads shape. numpy only, no model.

    python benchmarks/kind_map_reference.py --data runs/data/shapes-run17 --n 2000 --out ref.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = 9  # the background and the shapes world's eight kinds (ip2p.train.model.KIND_CLASSES)


def kind_maps(root: Path, n: int) -> np.ndarray:
    try:
        seeds = json.loads((root / "seeds.json").read_text())[:n]
        prompts = [(root / folder, json.loads((root / folder / "prompt.json").read_text())) for folder, _ in seeds]
    except (OSError, ValueError) as exc:
        raise SystemExit(f"kind_map_reference: {root} is not a shapes data set in the ip2p layout ({exc})") from None
    if not prompts or "kinds" not in prompts[0][1]:
        raise SystemExit(f"kind_map_reference: {root} has no kind maps (made before `ip2p shapes make` wrote them)")
    return np.stack([np.asarray(Image.open(folder / prompt["kinds"])) for folder, prompt in prompts])


def references(maps: np.ndarray, cells: int) -> dict[str, float]:
    block = maps.shape[-1] // cells
    onehot = np.eye(CLASSES)[maps]
    p = onehot.reshape(len(maps), cells, block, cells, block, CLASSES).mean(axis=(2, 4))
    kinds = p[..., 1:].sum(axis=(0, 1, 2))
    kinds /= kinds.sum()
    where = np.concatenate([p[..., :1], (1 - p[..., :1]) * kinds], axis=-1)
    mean = p.reshape(-1, CLASSES).mean(axis=0)

    def cross_entropy(q: np.ndarray) -> float:
        return round(float(-(p * np.log(np.clip(q, 1e-12, 1))).sum(-1).mean()), 4)

    return {"knows_nothing": cross_entropy(np.broadcast_to(mean, p.shape)),
            "knows_where_not_kind": cross_entropy(where), "knows_everything": cross_entropy(p)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="an `ip2p shapes make --format ip2p` folder")
    ap.add_argument("--n", type=int, default=2000, help="examples read (the first n)")
    ap.add_argument("--cells", default="16,8", help="head resolutions, comma-separated")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        cells = [int(c) for c in args.cells.split(",")]
    except ValueError:
        raise SystemExit(f"kind_map_reference: --cells must be integers, got {args.cells!r}") from None
    maps = kind_maps(args.data, args.n)
    if any(c < 1 or maps.shape[-1] % c for c in cells):
        raise SystemExit(f"kind_map_reference: every --cells value must divide the image side {maps.shape[-1]}")
    report = {"benchmark": "kind_map_reference", "data": str(args.data), "n": len(maps),
              "heads": {f"{c}x{c}": references(maps, c) for c in cells}}
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(args.out)
    print(json.dumps(report["heads"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
