"""Turning training state into a model others can load, and validation grids into pictures.

The exported folder is a stock diffusers ``StableDiffusionInstructPix2PixPipeline`` (via
:func:`ip2p.models.save_diffusers`) holding the EMA weights with any LoRA merged in, and a
scheduler config that carries the trained ``prediction_type``, so stock diffusers samples it right.
"""

from __future__ import annotations

import copy
from pathlib import Path

from PIL import Image, ImageDraw

from ..components import Components
from ..errors import BadData
from ..files import atomic_folder
from .config import TrainConfig
from .model import merge_lora


def export_components(components: Components, cfg: TrainConfig, target: Path) -> Path:
    """Save ``components`` (weights as they are now) to ``target`` atomically, LoRA merged."""
    from ..components import save_diffusers

    target = Path(target)
    unet = components.unet
    if getattr(unet, "_hf_peft_config_loaded", False):
        unet = copy.deepcopy(unet)
        merge_lora(unet)
    scheduler_config = dict(components.scheduler_config)
    extra = dict(components.extra)
    if cfg.model.start == "scratch":
        extra["recommended"] = recommended_settings(cfg, scheduler_config)
    plain = Components(unet, components.vae, components.text_encoder, components.tokenizer, scheduler_config,
                       name=components.name, source=components.source, extra=extra)
    with atomic_folder(target) as tmp:
        save_diffusers(plain, tmp)
    return target


def recommended_settings(cfg: TrainConfig, scheduler_config: dict) -> dict:
    """What a model trained from scratch recommends for editing (its ip2p.json): the validation
    settings it was trained to be judged at, with a scheduler that can step its prediction type."""
    x0 = scheduler_config.get("prediction_type") == "sample"
    return {"scheduler": "euler" if x0 else "euler_a", "steps": cfg.run.validation_steps,
            "guidance_scale": cfg.run.validation_text_scale,
            "image_guidance_scale": cfg.run.validation_image_scale}


def export_checkpoint(checkpoint: str | Path, target: str | Path) -> Path:
    """Export a checkpoint folder (``<run>/checkpoints/step-N``) as a diffusers model, EMA weights."""
    import torch

    from ..models import load_folder
    from . import checkpoint as ckpt
    from .model import EMA, prepare_trainable, trainable_state

    checkpoint = Path(checkpoint)
    if not (checkpoint / "state.json").is_file():
        raise BadData(f"{checkpoint}: not a training checkpoint (no state.json)")
    state = ckpt.read_state(checkpoint)
    cfg = TrainConfig.from_mapping(state["config"])
    base = checkpoint.parent.parent / "base"
    if not (base / "model_index.json").is_file():
        raise BadData(f"{checkpoint}: the run's base model {base} is missing")
    components = load_folder(base, name=cfg.model.base or "scratch")
    denoiser = prepare_trainable(components, cfg)
    ema = EMA(trainable_state(denoiser), cfg.optim.ema_decay)
    ema.load_state_dict(ckpt.load_weights(checkpoint, "ema"))
    with torch.no_grad():
        ema.copy_to(denoiser)
    for module in (components.unet, components.vae, components.text_encoder):
        module.eval().requires_grad_(False)
    return export_components(components, cfg, Path(target))


def grid(rows: list[tuple[Image.Image, Image.Image, Image.Image, str]], path: Path) -> Path:
    """One row per validation sample: input | training target | model's edit, instruction below."""
    from ..images import save_image

    cell = max(max(im.size) for row in rows for im in row[:3])
    caption = 12
    sheet = Image.new("RGB", (3 * cell, len(rows) * (cell + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (source, target, edit, text) in enumerate(rows):
        top = r * (cell + caption)
        for c, im in enumerate((source, target, edit)):
            sheet.paste(im.resize((cell, cell), Image.Resampling.NEAREST), (c * cell, top))
        draw.text((2, top + cell), text[: 3 * cell // 6], fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(sheet, path)
    return path
