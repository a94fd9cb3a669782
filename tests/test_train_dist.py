"""Data-parallel training: two CPU processes (gloo, accelerate in the loop) end with identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import torch
from PIL import Image

WORKER = textwrap.dedent('''
    import os, sys, torch
    from safetensors.torch import save_file
    torch.set_num_threads(1)
    from ip2p.train import TrainConfig
    from ip2p.train.loop import _Trainer
    from ip2p.train.model import trainable_state

    cfg = TrainConfig.from_yaml(sys.argv[1]).check()
    trainer = _Trainer(cfg, False, None)
    result = trainer.run(export=False)
    acc = trainer.accelerator
    assert acc.num_processes == 2, acc.num_processes
    weights = {k: v.contiguous() for k, v in trainable_state(trainer.state.denoiser).items()}
    save_file(weights, f"{cfg.run.output_dir}/rank-{acc.process_index}.safetensors")
    # One line per rank, written whole (print() from two processes may interleave).
    os.write(1, f"rank {acc.process_index} steps {result.steps} loss {result.losses[-1]}\\n".encode())
''')


def test_two_processes_hold_identical_weights(tmp_path):
    import yaml
    from safetensors.torch import load_file

    from ip2p.components import save_diffusers
    from ip2p.tiny import build_tiny_components

    base = save_diffusers(build_tiny_components(seed=2, in_channels=4), tmp_path / "base")
    (tmp_path / "data").mkdir()
    rows = []
    rng = np.random.default_rng(0)
    for i in range(6):
        a = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(a).save(tmp_path / "data" / f"{i}a.png")
        Image.fromarray(255 - a).save(tmp_path / "data" / f"{i}b.png")
        rows.append({"input_image": f"{i}a.png", "edit_prompt": "invert it", "edited_image": f"{i}b.png"})
    (tmp_path / "data" / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    config = {
        "model": {"start": "text2image", "base": str(base)},
        "data": {"path": str(tmp_path / "data"), "resolution": 16, "validation_count": 0},
        "optim": {"batch_size": 2, "lr": 1e-3, "grad_accum": 2},
        "run": {"output_dir": str(run), "max_steps": 3, "checkpoint_every": 3, "device": "cpu",
                "tensorboard": False},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "worker.py").write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    # torchrun is what `accelerate launch --multi_gpu` runs underneath; on CPUs it gives gloo.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(tmp_path / "worker.py"), str(tmp_path / "c.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "rank 0 steps 3" in proc.stdout and "rank 1 steps 3" in proc.stdout
    a, b = load_file(str(run / "rank-0.safetensors")), load_file(str(run / "rank-1.safetensors"))
    assert a.keys() == b.keys() and len(a) > 10
    assert all(torch.equal(a[k], b[k]) for k in a)
    start = load_file(str(run / "base" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert not torch.equal(a["unet.conv_in.weight"], start["conv_in.weight"])  # it did train
    state = json.loads((run / "checkpoints" / "step-0000003" / "state.json").read_text())
    assert state["num_processes"] == 2
    assert {p.name for p in (run / "checkpoints" / "step-0000003").glob("rank-*.pt")} == {"rank-0.pt", "rank-1.pt"}
