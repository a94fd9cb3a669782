"""Checkpoints: everything an exact resume needs, written atomically.

A run folder holds ``base/`` (the model at step 0 as a diffusers folder, written once) and
``checkpoints/step-NNNNNNN/`` with

* ``trainable.safetensors`` / ``ema.safetensors``: the trained weights and their EMA, by name;
* ``optimizer.pt``: AdamW moments, LR-schedule and loss-scaler state;
* ``state.json``: step, the config, the number of processes;
* ``rank-R.pt``: each process's RNG states and its position in the data stream.

A checkpoint is assembled in a hidden temporary folder and renamed into place, so a crash while
saving leaves the previous checkpoint intact and never a half-written one.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BadData, BadModel
from ..files import atomic_folder, atomic_path, temp_folder

PREFIX = "step-"


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    folder = output_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(output_dir: Path) -> Path | None:
    dirs = checkpoint_dirs(output_dir)
    return dirs[-1] if dirs else None


def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    state = {"generator": generator.get_state(), "torch": torch.get_rng_state(),
             "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(accelerator, output_dir: Path, step: int, *, trainable: dict, ema: dict, optimizer_state: dict,
                    config: dict, rank_state: dict, keep: int) -> Path:
    """Collective: every process calls it. The main process writes the shared files and renames."""
    from safetensors.torch import save_file

    final = output_dir / "checkpoints" / f"{PREFIX}{step:07d}"
    # The main process owns the temporary folder (creates it, renames it); the others write into it.
    main = accelerator.is_main_process
    with atomic_folder(final) if main else contextlib.nullcontext(temp_folder(final)) as tmp:
        if main:
            save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()},
                      str(tmp / "trainable.safetensors"))
            save_file({k: v.contiguous().cpu() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
            torch.save(optimizer_state, tmp / "optimizer.pt")
            state = {"step": step, "num_processes": accelerator.num_processes, "config": config}
            (tmp / "state.json").write_text(json.dumps(state, indent=2))
        accelerator.wait_for_everyone()
        torch.save(rank_state, tmp / f"rank-{accelerator.process_index}.pt")
        accelerator.wait_for_everyone()
    if main:
        for old in checkpoint_dirs(output_dir)[:-keep] if keep else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def read_state(checkpoint: Path) -> dict[str, Any]:
    try:
        return json.loads((checkpoint / "state.json").read_text())
    except (OSError, ValueError) as exc:
        raise BadData(f"{checkpoint}: not a training checkpoint (state.json unreadable: {exc})") from None


def load_weights(checkpoint: Path, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = checkpoint / f"{name}.safetensors"
    try:
        return load_file(str(path))
    except (OSError, ValueError, RuntimeError) as exc:
        raise BadModel(f"{path}: unreadable ({exc})") from None


def check_processes(path: Path, written_by, world: int) -> None:
    """A resume is exact only with as many processes as wrote ``path`` (each has its own stream slice)."""
    if written_by != world:
        raise BadData(f"{path} was written by {written_by} processes; resume it with the same number "
                      f"(this run has {world})")


def load_rank_state(checkpoint: Path, rank: int, world: int) -> dict[str, Any]:
    check_processes(checkpoint, read_state(checkpoint).get("num_processes"), world)
    return torch.load(checkpoint / f"rank-{rank}.pt", weights_only=False)


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file renamed into place: a crash never leaves half a file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
