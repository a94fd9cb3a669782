"""The Ray Data backend of the image stage, on a local Ray cluster with CPU workers."""

from __future__ import annotations

import json

import pytest
import torch

from ip2p.components import save_diffusers
from ip2p.datagen.clipfilter import FilterOptions
from ip2p.datagen.images import ImageOptions
from ip2p.datagen.store import PairStore
from ip2p.datagen.tiny import build_tiny_clip, save_tiny_clip
from ip2p.tiny import build_tiny_components

ray = pytest.importorskip("ray")
torch.set_num_threads(1)


@pytest.mark.slow
def test_ray_spreads_prompts_and_resumes(tmp_path):
    from ip2p.datagen.distributed import run_images_ray

    save_diffusers(build_tiny_components(in_channels=4), tmp_path / "sd")
    save_tiny_clip(*build_tiny_clip(), tmp_path / "clip")
    prompts = tmp_path / "prompts.jsonl"
    captions = ["a red circle", "a blue square", "a green star", "a cat"]
    prompts.write_text("".join(json.dumps({"caption": c, "edit": "make it night", "output": c + " at night"}) + "\n"
                               for c in captions))
    options = ImageOptions(samples=2, steps=2, resolution=32, batch_size=2)
    accept = FilterOptions(-1, -1, -1, keep=1)
    out = tmp_path / "data"
    # a first run does half the prompts, as a killed run would have
    first = run_images_ray(prompts, out, tmp_path / "sd", tmp_path / "clip", [0, 2], options, accept,
                           workers=2, device="cpu", num_cpus=2, threads=1)
    assert first.prompts == 2 and first.pairs_generated == 4
    summary = run_images_ray(prompts, out, tmp_path / "sd", tmp_path / "clip", [0, 1, 2, 3], options, accept,
                             workers=2, device="cpu", num_cpus=2, threads=1)
    assert summary.skipped == 2 and summary.prompts == 2 and summary.pairs_generated == 4
    seeds = json.loads((out / "seeds.json").read_text())
    assert [name for name, _ in seeds] == ["0000000", "0000001", "0000002", "0000003"]
    assert all(len(s) == 1 for _, s in seeds)
    assert len(list(PairStore(out).pairs())) == 4
    assert all((out / n / f"{s[0]}_1.jpg").is_file() for n, s in seeds)
