"""Training throughput and peak memory of `ip2p train`, with random weights (nothing downloaded).

    python benchmarks/train_speed.py --preset small --device cpu --steps 20
    python benchmarks/train_speed.py --preset sd15 --device cuda --batch-size 16 --mixed-precision bf16
    python benchmarks/train_speed.py --preset sd15 --device cuda --batch-size 16 --diffusers-recipe

``small`` is configs/demo-shapes.yaml's architecture at 64x64; ``sd15`` is the full SD-1.5 UNet,
VAE and CLIP ViT-L text encoder at 256x256. The default mode times the real trainer
(:func:`ip2p.train.train`) on a synthetic data set, steps after ``--warmup`` only. ``--diffusers-recipe``
times instead the step of diffusers' examples/instruct_pix2pix/train_instruct_pix2pix.py: fp32
master UNet, VAE and text encoder in fp16, fp16 autocast with a GradScaler, both images VAE-encoded
and the text encoded every step, EMA update. Prints one JSON line: samples/s, peak RSS and, on
CUDA, torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SD15_UNET = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
                 attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD15_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77)


def sd15_components(tokenizer_words: list[str]):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ip2p.models import Components
    from ip2p.text import build_clip_tokenizer
    from ip2p.tiny import SD15_SCHEDULER_CONFIG

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=32, in_channels=4, out_channels=4, **SD15_UNET)
    vae = AutoencoderKL(in_channels=3, out_channels=3, sample_size=256, **SD15_VAE)
    tokenizer = build_clip_tokenizer(tokenizer_words, max_length=77)
    text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT, bos_token_id=tokenizer.bos_token_id,
                                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    return Components(unet, vae, text, tokenizer, dict(SD15_SCHEDULER_CONFIG), name="sd15-random")


def write_data(folder: Path, size: int, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        a = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(a).save(folder / f"{i}a.png")
        Image.fromarray(255 - a).save(folder / f"{i}b.png")
        rows.append({"input_image": f"{i}a.png", "edit_prompt": "turn it into a negative", "edited_image": f"{i}b.png"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_ip2p(args, work: Path) -> dict:
    """Time the real trainer: steps after the warm-up, from the callback's timestamps."""
    import yaml

    from ip2p.train import TrainConfig, train

    size = 64 if args.preset == "small" else 256
    data = write_data(work / "data", size, max(8, args.batch_size * 2))
    if args.preset == "small":
        cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "demo-shapes.yaml").read_text())
        cfg["vae"]["steps"] = 0
        model = cfg["model"]
    else:
        from ip2p.components import save_diffusers

        save_diffusers(sd15_components(["turn", "it", "into", "a", "negative"]), work / "sd15")
        model = {"start": "text2image", "base": str(work / "sd15"), "gradient_checkpointing": args.gradient_checkpointing}
        cfg = {"model": model}
    cfg["data"] = {"path": str(data), "resolution": size, "random_crop": True, "flip": True, "num_workers": args.workers,
                   "validation_count": 0}
    cfg["optim"] = {"batch_size": args.batch_size, "lr": 1e-4}
    cfg["run"] = {"output_dir": str(work / "run"), "max_steps": args.warmup + args.steps, "checkpoint_every": 0,
                  "log_every": 0, "device": args.device, "mixed_precision": args.mixed_precision, "tensorboard": False}
    stamps: dict[int, float] = {}

    def on_event(event):
        if event.kind == "step" and event.stage == "unet":
            stamps[event.step] = time.perf_counter()

    train(TrainConfig.from_mapping(cfg), callback=on_event, export=False)
    elapsed = stamps[args.warmup + args.steps] - stamps[args.warmup]
    return {"samples_per_s": args.steps * args.batch_size / elapsed, "s_per_step": elapsed / args.steps}


def run_diffusers_recipe(args) -> dict:
    """The stock example's training step, reproduced on random SD-1.5-shaped weights."""
    import copy

    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from ip2p.train.model import widen_conv_in

    device = torch.device(args.device)
    c = sd15_components(["turn", "it", "into", "a", "negative"])
    unet = widen_conv_in(c.unet).to(device).train()
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    half = torch.float16 if device.type == "cuda" else torch.bfloat16
    vae, text = c.vae.to(device, half).requires_grad_(False), c.text_encoder.to(device, half).requires_grad_(False)
    ema = copy.deepcopy(unet).requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    noise_scheduler = DDPMScheduler.from_config(c.scheduler_config)
    ids = c.tokenizer(["turn it into a negative"] * args.batch_size, padding="max_length", max_length=77,
                      return_tensors="pt").input_ids.to(device)
    pixels = torch.rand(2, args.batch_size, 3, 256, 256, device=device) * 2 - 1

    def step():
        with torch.autocast(device.type, dtype=half):
            latents = vae.encode(pixels[1].to(half)).latent_dist.sample() * vae.config.scaling_factor
            noise = torch.randn_like(latents)
            t = torch.randint(0, 1000, (args.batch_size,), device=device)
            noisy = noise_scheduler.add_noise(latents, noise, t)
            states = text(ids)[0]
            image = vae.encode(pixels[0].to(half)).latent_dist.mode()
            pred = unet(torch.cat([noisy, image], 1), t, states).sample
            loss = F.mse_loss(pred.float(), noise.float())
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters(), strict=True):
                e.lerp_(p, 1 - 0.9999)

    for _ in range(args.warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    elapsed = time.perf_counter() - start
    return {"samples_per_s": args.steps * args.batch_size / elapsed, "s_per_step": elapsed / args.steps}


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=("small", "sd15"), default="small")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--workers", type=int, default=0, help="data-loader workers (ip2p mode)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--diffusers-recipe", action="store_true", help="time the stock diffusers example's step (sd15)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        if args.diffusers_recipe:
            if args.preset != "sd15":
                p.error("--diffusers-recipe times the SD-1.5 step; use --preset sd15")
            result = run_diffusers_recipe(args)
        else:
            result = run_ip2p(args, Path(tmp))
    result.update(preset=args.preset, mode="diffusers-recipe" if args.diffusers_recipe else "ip2p",
                  device=args.device, batch_size=args.batch_size, mixed_precision=args.mixed_precision,
                  gradient_checkpointing=args.gradient_checkpointing, threads=torch.get_num_threads(),
                  peak_rss_mib=round(peak_rss_mib(), 1))
    if args.device.startswith("cuda"):
        result["cuda_max_memory_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    result["samples_per_s"] = round(result["samples_per_s"], 3)
    result["s_per_step"] = round(result["s_per_step"], 4)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
