"""The demo model's VAE round trip on the shapes benchmark's own images: the floor for preservation.

An edit can keep the pixels outside its mask no closer to the input than the autoencoder
reproduces them, so docs/demo-model.md compares the bench's preservation column with this one.
The "editor" here returns D(E(x)) (posterior mode) for every example, through the real benchmark.

    python scripts/demo_vae_floor.py --model demo --n 240 --out runs/demo-vae-floor
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import torch

from ip2p import load_editor
from ip2p.shapes.bench import markdown_table, run_benchmark


class RoundTrip:
    """Answers every instruction with the VAE's reconstruction of the input."""

    def __init__(self, editor):
        self.editor = editor
        self.model_name = f"{editor.model_name} (VAE round trip)"

    def edit(self, images, instruction, **_options):
        scale = self.editor.components.vae.config.scaling_factor
        with torch.inference_mode():
            latents = self.editor.encode_images([im.convert("RGB") for im in images])
            return SimpleNamespace(images=self.editor.decode_latents(latents * scale))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--n", type=int, default=240)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    editor = load_editor(args.model, device="cpu", dtype="fp32")
    report = run_benchmark(RoundTrip(editor), n=args.n, size=args.size, out_dir=args.out)
    print(markdown_table(report["rows"], f"VAE round trip on the shapes bench images ({args.n} examples)"))


if __name__ == "__main__":
    main()
