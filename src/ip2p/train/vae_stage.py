"""Stage one of a from-scratch run: train the small autoencoder on the data set's images.

Both images of every pair are training images. Loss = |x - D(z)|_1 + l2_weight * |x - D(z)|^2
+ kl_weight * KL(q(z|x) || N(0, I)) with z ~ q(z|x) (Kingma & Welling 2014; Rombach et al. 2022
use a small KL weight so the latent space is nearly deterministic). Afterwards the latent scale
factor is set to 1 / std of the latents, as SD's 0.18215 was, so scaled latents have unit variance
like the diffusion noise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .config import TrainConfig
from .data import EditPairDataset, StreamSampler, collate


def train_vae(vae, dataset: EditPairDataset, cfg: TrainConfig, accelerator, emit: Callable, size: int) -> float:
    """Train ``vae`` in place for ``cfg.vae.steps`` steps; returns the final reconstruction loss."""
    v = cfg.vae
    vae.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=v.lr, weight_decay=0.0)
    model, optimizer = accelerator.prepare(_Autoencode(vae), optimizer)
    pairs_per_batch = max(1, v.batch_size // 2)
    sampler = StreamSampler(size, pairs_per_batch, cfg.run.seed + 7919, accelerator.process_index,
                            accelerator.num_processes)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=cfg.data.num_workers)
    generator = torch.Generator().manual_seed(cfg.run.seed + 1 + accelerator.process_index)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    batches = iter(loader)
    last = float("nan")
    for step in range(1, v.steps + 1):
        batch = next(batches)
        while "input" not in batch:  # every sample of this batch was bad
            batch = next(batches)
        pixels = torch.cat([batch["input"], batch["edited"]]).to(accelerator.device)
        b, _, h, w = pixels.shape
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
        last = accelerator.reduce(recon.detach(), "mean").item()
        emit("step", step=step, total=v.steps, loss=last, stage="vae")
    vae = accelerator.unwrap_model(model).vae
    accelerator.free_memory()
    vae.requires_grad_(False).eval()
    set_scaling_factor(vae, dataset, size, accelerator.device)
    return last


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
