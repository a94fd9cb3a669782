"""Does the demo UNet *see* shapes? Linear probes of object kind and colour on its features.

An instruction that names only the shape ("make the circle blue") is grounded in cross-attention,
whose queries are the UNet's features at 16x16 and 8x8: if the features over the circle do not say
"circle", no text encoder can point at it. This renders random shapes-world scenes (numpy seed
``--seed``), runs the UNet once per image at the first sampling step (t = 999, noise plus the image
latent, the empty instruction), reads the features at several levels, and fits a multinomial
logistic regression (a linear read-out) on three quarters of the objects, scored on the rest:

* kind, from the features of the 3x3 cells around the object's centre (1x1 below 16x16);
* colour, from the features averaged over the object's cells (weighted by coverage).

Two baselines: the input image latent itself (what a linear read-out gets with no network at all),
and the same architecture at random initialisation (features a UNet has not learnt). Chance is the
most common kind's share among the held-out objects.

    python benchmarks/shape_probe.py --model checkpoints/demo-carried --out probe.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ip2p.models import load_folder
from ip2p.shapes import KINDS, random_scene, render

#: the levels read: (name, module path inside the UNet)
LEVELS = (
    ("conv_in (16x16)", "conv_in"),
    ("before cross-attention 16x16", "down_blocks.0.resnets.0"),
    ("after cross-attention 16x16", "down_blocks.0.attentions.0"),
    ("before cross-attention 8x8", "down_blocks.1.resnets.0"),
    ("middle (4x4)", "mid_block"),
    ("last up level (16x16)", "up_blocks.2.resnets.0"),
)


def scenes(n_objects: int, size: int, seed: int):
    """Images and, per visible object (>= 40 px), (image index, kind index, colour, coverage)."""
    rng = np.random.default_rng(seed)
    images, objects = [], []
    while len(objects) < n_objects:
        scene = random_scene(rng)
        rendering = render(scene, size)
        for shape in scene.objects:
            visible = rendering.visible[shape.id]
            if visible.sum() >= 40:
                objects.append((len(images), KINDS.index(shape.kind), shape.color, visible))
        images.append(rendering.image)
    return np.stack(images), objects


def image_latents(vae, images: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return vae.encode(torch.tensor(images).permute(0, 3, 1, 2).float() / 127.5 - 1).latent_dist.mode()


def features(unet, latents: torch.Tensor, text, seed: int) -> dict[str, torch.Tensor]:
    """Each level's output for every image, at t = 999 (pure noise beside the image latent)."""
    found: dict[str, list[torch.Tensor]] = {name: [] for name, _ in LEVELS}
    hooks = [unet.get_submodule(path).register_forward_hook(
        lambda m, i, out, name=name: found[name].append((out[0] if isinstance(out, tuple) else out).detach()))
        for name, path in LEVELS]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for start in range(0, len(latents), 64):
            batch = latents[start:start + 64]
            noise = torch.randn(batch.shape, generator=generator)
            unet(torch.cat([noise, batch], 1), 999, text.expand(len(batch), -1, -1))
    for hook in hooks:
        hook.remove()
    return {name: torch.cat(parts) for name, parts in found.items()}


def cell_weights(visible: np.ndarray, cells: int) -> np.ndarray:
    side = visible.shape[0] // cells
    return visible.reshape(cells, side, cells, side).mean((1, 3))


def centre_window(level: torch.Tensor, objects, k: int) -> np.ndarray:
    """The k x k cells around each object's coverage-weighted centre, flattened."""
    cells = level.shape[-1]
    padded = torch.nn.functional.pad(level, (k, k, k, k)).numpy()
    rows = []
    for image, _, _, visible in objects:
        w = cell_weights(visible, cells)
        cy = int(round((w.sum(1) * np.arange(cells)).sum() / w.sum()))
        cx = int(round((w.sum(0) * np.arange(cells)).sum() / w.sum()))
        rows.append(padded[image, :, cy + k - k // 2:cy + k + k // 2 + 1, cx + k - k // 2:cx + k + k // 2 + 1].ravel())
    return np.stack(rows)


def pooled(level: torch.Tensor, objects) -> np.ndarray:
    values = level.numpy()
    rows = []
    for image, _, _, visible in objects:
        w = cell_weights(visible, level.shape[-1])
        rows.append((values[image] * w).sum((1, 2)) / w.sum())
    return np.stack(rows)


def probe(x: np.ndarray, y: np.ndarray, n_train: int, seed: int) -> float:
    """Held-out accuracy of an L2-regularised softmax regression on standardised features."""
    torch.manual_seed(seed)
    x = torch.tensor(x, dtype=torch.float32)
    labels = torch.tensor(y)
    mean, std = x[:n_train].mean(0), x[:n_train].std(0) + 1e-6
    x = (x - mean) / std
    classes = int(y.max()) + 1
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.Adam([w, b], lr=0.01)
    for _ in range(600):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x[:n_train] @ w + b, labels[:n_train]) + 1e-3 * (w ** 2).sum()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float(((x[n_train:] @ w + b).argmax(1) == labels[n_train:]).float().mean())


def run(model: str, n_objects: int, seed: int) -> dict:
    components = load_folder(model)
    unet, vae = components.unet.eval(), components.vae
    ids = components.tokenizer([""], padding="max_length", max_length=components.tokenizer.model_max_length,
                               truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        text = components.text_encoder(ids)[0]
    size = vae.config.sample_size
    images, objects = scenes(n_objects, size, seed)
    kinds = np.array([kind for _, kind, _, _ in objects])
    colour_names = sorted({colour for _, _, colour, _ in objects})
    colours = np.array([colour_names.index(colour) for _, _, colour, _ in objects])
    n_train = int(0.75 * len(objects))
    torch.manual_seed(seed)
    untrained = type(unet).from_config(unet.config).eval()
    latent = image_latents(vae, images)  # a baseline too: the exact autoencoder's latent is the pixels
    rows = [{"weights": "none", "level": "input image latent (16x16)", "shape": list(latent.shape[1:]),
             "kind_centre_3x3": round(probe(centre_window(latent, objects, 3), kinds, n_train, seed), 3),
             "colour_pooled": round(probe(pooled(latent, objects), colours, n_train, seed), 3)}]
    for weights, network in (("trained", unet), ("random init", untrained)):
        for name, level in features(network, latent, text, seed).items():
            k = 3 if level.shape[-1] >= 16 else 1
            rows.append({"weights": weights, "level": name, "shape": list(level.shape[1:]),
                         f"kind_centre_{k}x{k}": round(probe(centre_window(level, objects, k), kinds, n_train, seed), 3),
                         "colour_pooled": round(probe(pooled(level, objects), colours, n_train, seed), 3)})
    return {"benchmark": "shape_probe", "model": model, "objects": len(objects), "images": len(images),
            "seed": seed, "kind_chance": round(float(np.bincount(kinds[n_train:]).max() / (len(kinds) - n_train)), 3),
            "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="checkpoints/demo-carried")
    parser.add_argument("--objects", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    report = run(args.model, args.objects, args.seed)
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["machine"] = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    for row in report["rows"]:
        print(f"{row['weights']:12s} {row['level']:30s} " + "  ".join(
            f"{k} {v}" for k, v in row.items() if k.startswith(("kind", "colour"))))
    print(f"kind chance {report['kind_chance']}, {report['objects']} objects")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=1) + "\n")
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
