"""Can a network the size of the demo UNet's first layers learn shape at all? A kind-map probe.

Run 17 (docs/demo-model.md) put kind heads on the features that feed the demo UNet's first two
cross-attention layers, and after 2,000 steps they read the named object's kind at chance: either
those layers cannot compute shape, or the kind loss was too weak beside the denoising loss. This
trains, alone and from random initialisation, the path the 16x16 features take from the pixels in
the demo UNet (the image stem's 3x3 convolutions at 64, 32 and 16 px, conv_in, and two 3x3
convolutions standing in for the first ResNet block), at ``--width`` channels, against the same
kind-map targets as ``optim.kind_weight``, and reports on test-split scenes:

* the cross-entropy at 16x16 (compare ``benchmarks/kind_map_reference.py``: "knows where, not kind");
* ``kind_read``: how often the class shares over an object pick its kind among the eight.

    python benchmarks/kind_stem_probe.py --data runs/data/shapes-run17 --width 32 --steps 600 --out probe.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ip2p.shapes import KINDS, make_example, render
from ip2p.shapes.render import kind_map

CLASSES = 1 + len(KINDS)


def stem(width: int) -> nn.Sequential:
    """pixels (3, 64, 64) -> class logits (9, 16, 16), the demo UNet's layers up to its first block."""
    half = min(width, 16)
    return nn.Sequential(
        nn.Conv2d(3, half, 3, padding=1), nn.SiLU(),
        nn.Conv2d(half, width, 3, stride=2, padding=1), nn.SiLU(),
        nn.Conv2d(width, width, 3, stride=2, padding=1), nn.SiLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),  # conv_in
        nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),  # the first ResNet block's two convolutions
        nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
        nn.Conv2d(width, CLASSES, 1),
    )


def training_set(root: Path, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        seeds = json.loads((root / "seeds.json").read_text())[:n]
        prompts = [(root / f, json.loads((root / f / "prompt.json").read_text())) for f, _ in seeds]
    except (OSError, ValueError) as exc:
        raise SystemExit(f"kind_stem_probe: {root} is not a shapes data set in the ip2p layout ({exc})") from None
    if not prompts or "kinds" not in prompts[0][1]:
        raise SystemExit(f"kind_stem_probe: {root} has no kind maps (made before `ip2p shapes make` wrote them)")
    images = np.stack([np.asarray(Image.open(f / f"{p['seed']}_0.png")) for f, p in prompts])
    maps = np.stack([np.asarray(Image.open(f / p["kinds"])) for f, p in prompts])
    return to_pixels(images), torch.from_numpy(maps).long()


def to_pixels(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def targets(maps: torch.Tensor, cells: int) -> torch.Tensor:
    return F.adaptive_avg_pool2d(F.one_hot(maps, CLASSES).permute(0, 3, 1, 2).float(), cells)


def evaluate(net: nn.Module, n: int, seed: int) -> dict:
    """Cross-entropy and kind-read rate on ``n`` test-split scenes (one per example seed)."""
    scenes = [make_example(seed + i, 64, split="test").scene for i in range(n)]
    images = np.stack([render(s, 64).image for s in scenes])
    maps = torch.from_numpy(np.stack([kind_map(s, 64) for s in scenes])).long()
    with torch.no_grad():
        logits = net(to_pixels(images))
    ce = float(F.cross_entropy(logits, targets(maps, logits.shape[-1])))
    shares = torch.softmax(logits, dim=1).numpy()
    read = []
    for i, scene in enumerate(scenes):
        visible = render(scene, 64).visible
        for shape in scene.objects:
            w = visible[shape.id].reshape(16, 4, 16, 4).mean((1, 3))
            if w.sum() >= 2.5:  # >= 40 visible pixels, as shape_probe.py
                read.append(int(np.argmax((shares[i, 1:] * w).sum(axis=(1, 2)))) == KINDS.index(shape.kind))
    return {"cross_entropy": round(ce, 4), "kind_read": round(float(np.mean(read)), 4), "objects": len(read)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="an `ip2p shapes make --format ip2p` folder")
    ap.add_argument("--n", type=int, default=20000, help="training examples read (the first n)")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--test", type=int, default=500, help="test-split scenes scored")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--load", default="", help="what else ran on the machine (written into the report)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.width < 1 or args.steps < 1 or args.batch < 1:
        raise SystemExit("kind_stem_probe: --width, --steps and --batch must be positive")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    pixels, maps = training_set(args.data, args.n)
    net = stem(args.width)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    curve = []
    t_train = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(pixels), (args.batch,), generator=gen)
        logits = net(pixels[idx])
        loss = F.cross_entropy(logits, targets(maps[idx], logits.shape[-1]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % max(1, args.steps // 10) == 0 or step == args.steps:
            curve.append([step, round(loss.item(), 4)])
    train_s = time.perf_counter() - t_train
    report = {"benchmark": "kind_stem_probe", "data": str(args.data), "n": len(pixels), "width": args.width,
              "params": sum(p.numel() for p in net.parameters()), "steps": args.steps, "batch": args.batch,
              "lr": args.lr, "train_seconds": round(train_s, 1), "curve": curve,
              "test": evaluate(net.eval(), args.test, 5000), "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                         f"{args.threads} thread(s)", "load": args.load,
              "seconds": round(time.perf_counter() - t0, 1)}
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(args.out)
    print(json.dumps({k: report[k] for k in ("width", "params", "train_seconds", "test")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
