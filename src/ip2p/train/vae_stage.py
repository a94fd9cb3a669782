"""Stage one of a from-scratch run: train the small autoencoder on the data set's images.

Both images of every pair are training images. Loss = |x - D(z)|_1 + l2_weight * |x - D(z)|^2
+ kl_weight * KL(q(z|x) || N(0, I)) with z ~ q(z|x) (Kingma & Welling 2014; Rombach et al. 2022
use a small KL weight so the latent space is nearly deterministic). Afterwards the latent scale
factor is set to 1 / std of the latents, as SD's 0.18215 was, so scaled latents have unit variance
like the diffusion noise.

The learning rate follows a half cosine from ``vae.lr`` down to ``vae.lr * vae.final_lr_ratio``:
on the shapes world a constant rate leaves the reconstruction at a noise floor that a lower rate
gets under (docs/demo-model.md). The stage is resumable: every ``run.checkpoint_every`` steps, and
on a stop, ``vae-stage.pt`` in the run folder holds the weights, the AdamW state, the step and each
process's position in the data stream; the noise of step ``t`` is drawn from a generator seeded by
``(seed, process, t)``, so a resumed stage computes what an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import BadData, Cancelled
from .checkpoint import check_processes, save_atomic
from .config import TrainConfig
from .data import EditPairDataset, StreamSampler, collate


def train_vae(vae, dataset: EditPairDataset, cfg: TrainConfig, accelerator, emit: Callable, size: int,
              state_path: Path, resume: bool = False) -> float:
    """Train ``vae`` in place for ``cfg.vae.steps`` steps; returns the final reconstruction loss.

    With ``resume`` and a ``state_path`` left by an earlier (stopped) stage, it carries on from there.
    """
    v = cfg.vae
    vae.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=v.lr, weight_decay=0.0)
    step, positions = 0, [0] * accelerator.num_processes
    if resume and state_path.is_file():
        step, positions = _restore(state_path, vae, optimizer, accelerator.num_processes)
    model, optimizer = accelerator.prepare(_Autoencode(vae), optimizer)
    rank = accelerator.process_index
    sampler = StreamSampler(size, max(1, v.batch_size // 2), cfg.run.seed + 7919, rank,
                            accelerator.num_processes, start=positions[rank])
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=cfg.data.num_workers)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    batches, position, saved, last = iter(loader), positions[rank], step, float("nan")
    emit("stage", stage="vae", step=step, total=v.steps, message="training the autoencoder")
    try:
        while step < v.steps:
            batch = next(batches)
            position += 1
            while "input" not in batch:  # every sample of this batch was bad
                batch, position = next(batches), position + 1
            for group in optimizer.param_groups:
                group["lr"] = _cosine_lr(v.lr, v.final_lr_ratio, step, v.steps)
            pixels = torch.cat([batch["input"], batch["edited"]]).to(accelerator.device)
            b, _, h, w = pixels.shape
            seed = np.random.SeedSequence([cfg.run.seed, 7919, rank, step]).generate_state(1)[0]
            generator = torch.Generator().manual_seed(int(seed))
            noise = torch.randn((b, vae.config.latent_channels, h // factor, w // factor), generator=generator)
            with accelerator.autocast():
                decoded, kl = model(pixels, noise.to(accelerator.device))
            recon = F.l1_loss(decoded.float(), pixels.float())
            loss = recon + v.kl_weight * kl.float().mean()
            if v.l2_weight:
                loss = loss + v.l2_weight * F.mse_loss(decoded.float(), pixels.float())
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            last = accelerator.reduce(recon.detach(), "mean").item()
            if cfg.run.checkpoint_every and step % cfg.run.checkpoint_every == 0 and step < v.steps:
                saved = _save(state_path, accelerator, model, optimizer, step, position)
                emit("checkpoint", step=step, total=v.steps, stage="vae", path=str(state_path))
            emit("step", step=step, total=v.steps, loss=last, lr=optimizer.param_groups[0]["lr"], stage="vae")
    except Cancelled:
        if step > saved:
            _save(state_path, accelerator, model, optimizer, step, position)
        raise
    vae = accelerator.unwrap_model(model).vae
    accelerator.free_memory()
    vae.requires_grad_(False).eval()
    set_scaling_factor(vae, dataset, size, accelerator.device)
    return last


def _cosine_lr(lr: float, final_ratio: float, step: int, total: int) -> float:
    """Half a cosine from ``lr`` at step 0 to ``lr * final_ratio`` at ``total``."""
    return lr * (final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * step / max(total, 1))))


def _save(path: Path, accelerator, model, optimizer, step: int, position: int) -> int:
    """Collective: gathers every process's stream position; the main process writes atomically."""
    positions = accelerator.gather(torch.tensor([position], device=accelerator.device)).tolist()
    if accelerator.is_main_process:
        vae = accelerator.unwrap_model(model).vae
        save_atomic({"step": step, "positions": positions, "vae": vae.state_dict(),
                     "optimizer": optimizer.state_dict()}, path)
    accelerator.wait_for_everyone()
    return step


def _restore(path: Path, vae, optimizer, world: int) -> tuple[int, list[int]]:
    try:
        state = torch.load(path, weights_only=False, map_location="cpu")
        vae.load_state_dict(state["vae"])
        optimizer.load_state_dict(state["optimizer"])
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise BadData(f"{path}: unreadable autoencoder-stage checkpoint ({exc}); delete it to start the stage "
                      "again") from None
    check_processes(path, len(state["positions"]), world)
    return int(state["step"]), [int(p) for p in state["positions"]]


class _Autoencode(torch.nn.Module):
    """Encode, sample z = mu + sigma * noise, decode: one forward for data-parallel wrapping."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, pixels: torch.Tensor, noise: torch.Tensor):
        posterior = self.vae.encode(pixels).latent_dist
        z = posterior.mean + posterior.std * noise.to(posterior.mean.dtype)
        return self.vae.decode(z).sample, posterior.kl()


@torch.no_grad()
def set_scaling_factor(vae, dataset: EditPairDataset, size: int, device, count: int = 64) -> float:
    """scaling_factor = 1 / std of posterior means over up to ``count`` deterministic samples."""
    latents = []
    for index in range(min(size, count)):
        item = dataset[(index, 0)]
        if "bad" not in item:
            pixels = torch.stack([item["input"], item["edited"]]).to(device)
            latents.append(vae.encode(pixels).latent_dist.mean.float().cpu())
    std = torch.cat(latents).std().item() if latents else 1.0
    factor = 1.0 / max(std, 1e-4)
    vae.register_to_config(scaling_factor=factor)
    return factor
