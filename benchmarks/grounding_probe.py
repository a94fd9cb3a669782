"""Which object does the demo UNet think an instruction names? Its grounding head, read back.

A run trained with ``optim.grounding_weight`` has a 1x1 head on one UNet module
(``ip2p.train.model.FeatureHead``) that predicts which latent pixels the edit changes. The export
leaves it out, but every checkpoint's ``ema.safetensors`` holds it. This puts it back beside the
checkpoint's EMA weights and, for the object edits of the test split (the bench's own examples:
example i is test seed ``--seed + i``), runs the UNet once at the first sampling step (t = 999: pure
noise beside the image latent, the instruction). In a scene with more than one object, the named
object counts as *found* when the head's mean probability over its cells is above that over every
other object's (chance: one over the number of objects). Grouped by how the
instruction names the object (kind, colour, colour+kind, position), this separates "the features
know which object" from "the output follows": with ``--bench`` (a ``report.json`` of
``ip2p bench shapes`` on the same examples) each row also says whether the edit succeeded, and
``--figure`` draws the scenes: input | the head's probability | the true change. A run with kind
heads too (``optim.kind_weight``) gets ``kind_read`` per head: how often the head's class shares over
the named object pick its kind among the shape kinds (chance about one in eight).

    python benchmarks/grounding_probe.py --model MODEL --checkpoint RUN/checkpoints/step-N \
        --n 120 --seed 5000 --bench bench/report.json --out grounding.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from shape_probe import cell_weights  # benchmarks/ is on the path when a script runs

from ip2p.models import load_folder
from ip2p.shapes import KINDS, make_example, render
from ip2p.shapes.bench import example_grid
from ip2p.train.model import KIND_CLASSES, Denoiser, FeatureHead


def load(model: str, checkpoint: Path) -> tuple[Denoiser, object]:
    """The model folder's components with the checkpoint's EMA weights (its trained parts) and head."""
    if not (checkpoint / "ema.safetensors").is_file() or not (checkpoint / "state.json").is_file():
        raise SystemExit(f"{checkpoint} is not a checkpoint folder of ip2p train (no ema.safetensors and state.json)")
    components = load_folder(model)
    state = json.loads((checkpoint / "state.json").read_text())
    optim = state["config"]["optim"]
    kind_heads = [FeatureHead(components.unet, layer, KIND_CLASSES) for layer in optim.get("kind_layers", [])
                  if optim.get("kind_weight")]
    denoiser = Denoiser(components.unet.eval(), components.text_encoder.eval(), False,
                        FeatureHead(components.unet, optim["grounding_layer"]), kind_heads)
    ema = load_file(checkpoint / "ema.safetensors")
    if "grounding.proj.weight" not in ema:
        raise SystemExit(f"{checkpoint} has no grounding head (trained without optim.grounding_weight)")
    unexpected = denoiser.load_state_dict(ema, strict=False).unexpected_keys
    if unexpected:
        raise SystemExit(f"{checkpoint} does not fit {model}: {len(unexpected)} weights unknown, e.g. {unexpected[0]}")
    return denoiser, components


def run(model: str, checkpoint: Path, n: int, seed: int, kinds: list[str], bench: Path | None,
        figure: list | None = None) -> dict:
    """The report; with ``figure`` (a list), also each scene's (label, input, head map, true change)."""
    denoiser, c = load(model, checkpoint)
    size = c.vae.config.sample_size
    outcome = {}
    if bench is not None:
        outcome = {e["seed"]: e["success"] for e in json.loads(bench.read_text())["examples"]}
    generator = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        example = make_example(seed + i, size, kinds=[kinds[i % len(kinds)]], split="test")
        target_id = example.target.get("object_id")
        if target_id is None or example.scene is None:
            continue
        with torch.no_grad():
            image = torch.tensor(example.before).permute(2, 0, 1)[None].float() / 127.5 - 1
            latent = c.vae.encode(image).latent_dist.mode()
            ids = c.tokenizer([example.instruction], padding="max_length", truncation=True,
                              max_length=c.tokenizer.model_max_length, return_tensors="pt").input_ids
            noise = torch.randn(latent.shape, generator=generator)
            heads = denoiser(noise, latent, torch.tensor([999.0]), ids, c.tokenizer.pad_token_id)[1]
        p = torch.sigmoid(heads.where[0, 0]).numpy()
        visible = render(example.scene, size).visible
        means = {oid: float((p * (w := cell_weights(v, p.shape[-1]))).sum() / max(w.sum(), 1e-9))
                 for oid, v in visible.items() if v.sum() > 0}
        others = [m for oid, m in means.items() if oid != target_id]
        row = {"seed": example.seed, "kind": example.kind, "reference": example.reference,
               "instruction": example.instruction, "target_p": round(means[target_id], 4),
               "best_other_p": round(max(others), 4) if others else None,
               "objects": len(means), "found": means[target_id] > max(others) if others else None}
        if heads.kinds:  # what each kind head reads over the named object: its kind, among the shape kinds?
            shares = [torch.softmax(k[0], dim=0).numpy() for k in heads.kinds]
            w = [cell_weights(visible[target_id], k.shape[-1]) for k in shares]
            read = [int(np.argmax((k[1:] * wk).sum(axis=(1, 2)))) for k, wk in zip(shares, w, strict=True)]
            row["kind_read"] = [KINDS[i] == example.scene.get(target_id).kind for i in read]
        if example.seed in outcome:
            row["edit_success"] = outcome[example.seed]
        rows.append(row)
        if figure is not None and others:
            heat = np.repeat((p * 255).round().astype(np.uint8)[..., None], 3, axis=2)
            change = np.repeat(example.mask[..., None].astype(np.uint8) * 255, 3, axis=2)
            label = f"{'found' if row['found'] else 'MISSED'} ({example.reference}) {example.instruction}"
            figure.append((example.reference == "kind", label, example.before, heat, change))

    def summary(items: list[dict]) -> dict:
        """Found rates over the scenes with another object to point at; chance is 1 / objects there."""
        several = [r for r in items if r["found"] is not None]
        out = {"n": len(items), "n_several_objects": len(several),
               "found": round(float(np.mean([r["found"] for r in several])), 4) if several else None,
               "chance": round(float(np.mean([1 / r["objects"] for r in several])), 4) if several else None}
        if items and "kind_read" in items[0]:
            out["kind_read"] = [round(float(np.mean([r["kind_read"][h] for r in items])), 4)
                                for h in range(len(items[0]["kind_read"]))]
        judged = [r for r in items if "edit_success" in r]
        if judged:
            out["edit_success"] = round(float(np.mean([r["edit_success"] for r in judged])), 4)
            for found in (True, False):
                group = [r for r in judged if r["found"] is found]
                key = "edit_success_when_found" if found else "edit_success_when_missed"
                out[key] = round(float(np.mean([r["edit_success"] for r in group])), 4) if group else None
        return out

    groups = {"all": rows}
    for ref in sorted({r["reference"] for r in rows if r["reference"]}):
        groups[f"by {ref}"] = [r for r in rows if r["reference"] == ref]
    return {"summary": {name: summary(items) for name, items in groups.items()}, "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="the exported model folder of the run")
    p.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint folder of a run with a grounding head")
    p.add_argument("--n", type=int, default=120)
    p.add_argument("--seed", type=int, default=5000, help="first test seed (the bench's --seed)")
    p.add_argument("--kinds", default="recolor_object")
    p.add_argument("--bench", type=Path, help="report.json of `ip2p bench shapes` on the same examples")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--figure", type=Path, help="a PNG of scenes with several objects, bare kinds first: "
                                                "input | the head's probability (white: edit here) | the true change")
    p.add_argument("--figure-rows", type=int, default=12)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    figure = [] if args.figure else None
    report = run(args.model, args.checkpoint, args.n, args.seed, args.kinds.split(","), args.bench, figure)
    if figure:
        figure.sort(key=lambda entry: not entry[0])  # stable: bare kinds first, then in seed order
        tmp = args.figure.with_name(args.figure.name + ".tmp.png")
        example_grid([entry[1:] for entry in figure[:args.figure_rows]]).save(tmp)
        tmp.replace(args.figure)
    report = {"benchmark": "grounding_probe", "model": args.model, "checkpoint": str(args.checkpoint),
              "n": args.n, "seed": args.seed, "kinds": args.kinds, "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                         f"{args.threads} thread(s)",
              "seconds": round(time.perf_counter() - t0, 1), **report}
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(args.out)
    print(json.dumps(report["summary"], indent=1))


if __name__ == "__main__":
    main()
