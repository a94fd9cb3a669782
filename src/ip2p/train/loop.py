"""The training loop: InstructPix2Pix's objective, data-parallel through accelerate, exactly resumable.

Objective (Brooks et al. 2023, Eq. 2): with z = s * E(x_edited) (a posterior sample, ``s`` the
VAE's scaling_factor), z_t = sqrt(a_t) z + sqrt(1 - a_t) eps and c_I = E(x_input) (the posterior
mode, unscaled, exactly what the sampler concatenates at inference), minimise
|| target - e(z_t, t, c_I, c_T) ||^2 where target is eps, v = sqrt(a_t) eps - sqrt(1 - a_t) z, or
z itself (x0 prediction, optionally weighted by min(1, gamma / SNR_t), Hang et al. 2023).
Classifier-free guidance needs the unconditional branches, so c_T is replaced by the embedding of
"" and c_I by zeros for a configurable share of samples (5 % each, 5 % both; Sec. 3.2.1).

Every random draw of the loop (timesteps, noise, posterior samples, dropout) comes from one
generator per process whose state is checkpointed with the data-stream position, so a run that is
stopped and resumed computes the same losses and weights as one that never stopped.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..components import Components
from ..errors import BadData, BadOptions, Cancelled, first_line
from ..files import atomic_folder, atomic_path
from . import checkpoint as ckpt
from .config import TrainConfig
from .data import EditPairDataset, StreamSampler, collate, keep_word_set, open_source, with_unknown_words
from .model import EMA, load_start, prepare_trainable, pretrain_kind_branch, trainable_state

log = logging.getLogger("ip2p.train")


@dataclass
class TrainEvent:
    """What a progress callback receives. ``kind``: stage, step, checkpoint, validation, warning, done."""

    kind: str
    step: int = 0
    total: int = 0
    loss: float | None = None
    lr: float | None = None
    stage: str = "unet"
    message: str = ""
    path: str | None = None


@dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path | None
    steps: int
    losses: list[float] = field(default_factory=list)  # one per optimizer step of this session
    bad_samples: int = 0
    samples_per_second: float = 0.0


Callback = Callable[[TrainEvent], None]


def train(config: TrainConfig, *, resume: bool = False, callback: Callback | None = None,
          export: bool = True) -> TrainResult:
    """Train per ``config`` (checked here); ``callback`` may raise :class:`Cancelled` to stop.

    A stop through the callback writes a checkpoint of the last finished step first, so
    ``train(config, resume=True)`` carries on exactly.
    """
    return _Trainer(config.check(), resume, callback).run(export)


@dataclass
class TrainState:
    """Everything the loop works on, built in one place (:meth:`_Trainer._setup`), fresh or resumed.

    ``step`` (optimizer steps done), ``position`` (batches this process drew from its stream) and
    ``saved_step`` (the last checkpointed step) advance as the loop runs; the rest is fixed.
    """

    components: Components  # the model: trained UNet (and text encoder), frozen VAE, tokenizer
    denoiser: torch.nn.Module  # the trained module, unwrapped (its weights are what is saved)
    model: torch.nn.Module  # the same, as accelerate prepared it (what the loss calls)
    params: list[torch.nn.Parameter]  # the trainable parameters (gradient clipping)
    optimizer: Any  # AdamW, as accelerate prepared it
    schedule: torch.optim.lr_scheduler.LambdaLR
    ema: EMA
    noise_scheduler: Any  # diffusers' DDPMScheduler: the forward process and its targets
    prediction_type: str
    empty_ids: torch.Tensor  # token ids of "", for the dropped text condition
    weight_dtype: torch.dtype  # of the frozen modules
    generator: torch.Generator  # every random draw of the loop
    data: torch.utils.data.Dataset  # what the loader reads: cached latents or the pair data set
    size: int  # samples in one epoch
    validation: list[dict]  # the fixed samples of the validation grids
    step: int = 0
    position: int = 0
    saved_step: int = 0


class _Trainer:
    """One run: :meth:`_setup` builds the :class:`TrainState`, :meth:`_loop` advances it."""

    def __init__(self, cfg: TrainConfig, resume: bool, callback: Callback | None):
        self.cfg, self.resume, self.callback = cfg, resume, callback
        self.out = Path(cfg.run.output_dir).expanduser()
        self.vae_stage_file = self.out / "vae-stage.pt"  # a stopped autoencoder stage (see vae_stage.py)
        self.accelerator = _make_accelerator(cfg)
        self.warned: set[int] = set()  # bad samples already warned about (once each)
        self.bad_count = 0
        self.state: TrainState | None = None  # set by run()
        self.keep_words = keep_word_set(cfg.data.keep_words) if cfg.data.unknown_words else set()

    # ---------------------------------------------------------------------------------------
    def emit(self, kind: str, **fields: Any) -> None:
        if not self.accelerator.is_main_process:
            return
        if self.callback is not None:
            self.callback(TrainEvent(kind, **fields))
        elif kind == "warning":
            log.warning(fields.get("message", ""))

    def run(self, export: bool) -> TrainResult:
        self.state = self._setup()
        return self._loop(export)

    def _setup(self) -> TrainState:
        """The run's state at its first step: built fresh, or read back from the latest checkpoint.

        The order (data, step-0 model, trainable weights, EMA, optimizer, frozen modules, noise
        schedule, latents, generator) is fixed: a resume must draw the same randomness.
        """
        cfg, acc = self.cfg, self.accelerator
        latest = ckpt.latest_checkpoint(self.out)
        base_dir = self.out / "base"
        if not self.resume and (latest or base_dir.exists() or self.vae_stage_file.exists()):
            raise BadOptions(f"{self.out} already holds a run; pass --resume to continue it or choose another "
                             "--output")
        self.out.mkdir(parents=True, exist_ok=True)
        source = open_source(cfg.data)
        size = min(len(source), cfg.data.max_samples or len(source))
        if source.bad_at_index:
            self.bad_count += len(source.bad_at_index)
            self.emit("warning", message=f"{len(source.bad_at_index)} bad rows skipped while indexing the data set "
                                         f"(first: {source.bad_at_index[0]})")
        kind_maps = bool(cfg.optim.kind_weight or cfg.model.kind_stem)
        if kind_maps and source.record(0).kind_map is None:
            option = "optim.kind_weight" if cfg.optim.kind_weight else "model.kind_stem"
            raise BadOptions(f"{option} trains against kind maps, and data set {cfg.data.path!r} has none "
                             "(`ip2p shapes make` writes them)")
        dataset = EditPairDataset(source, cfg.data, kind_maps=kind_maps)
        validation = self._validation_samples(source, size)

        components = self._base_model(base_dir, source, dataset, size)
        from ..architectures import PixelUnshuffleAutoencoder

        for key in ("edit_weight", "grounding_weight"):
            if getattr(cfg.optim, key) and not isinstance(components.vae, PixelUnshuffleAutoencoder):
                raise BadOptions(f"optim.{key} finds the edit as latent pixels that differ: {cfg.model.base} "
                                 "has a learned autoencoder, not an exact one (pixel_unshuffle)")
        denoiser = prepare_trainable(components, cfg)
        rank_state = None
        if latest is not None:
            rank_state = ckpt.load_rank_state(latest, acc.process_index, acc.num_processes)
            _load_into(denoiser, ckpt.load_weights(latest, "trainable"))
        ema = EMA(trainable_state(denoiser), cfg.optim.ema_decay)
        if latest is not None:
            ema.load_state_dict(ckpt.load_weights(latest, "ema"))

        o = cfg.optim
        params = [p for p in denoiser.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, o, cfg.run.max_steps))
        if latest is not None:
            saved = torch.load(latest / "optimizer.pt", weights_only=False)
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
        model, optimizer = acc.prepare(denoiser, optimizer)
        if latest is not None and acc.scaler is not None and saved.get("scaler"):
            acc.scaler.load_state_dict(saved["scaler"])
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.run.mixed_precision, torch.float32)
        frozen = [components.vae] + ([] if cfg.trains_text_encoder else [components.text_encoder])
        for module in frozen:
            _place(module, acc.device, weight_dtype)

        from diffusers import DDPMScheduler

        sched_cfg = {k: v for k, v in components.scheduler_config.items() if not k.startswith("_")}
        noise_scheduler = DDPMScheduler.from_config(sched_cfg)
        tok = components.tokenizer
        empty_ids = tok([""], padding="max_length", max_length=tok.model_max_length, truncation=True,
                        return_tensors="pt").input_ids

        data = self._cached_dataset(dataset, size, components.vae, weight_dtype) if self._caches() else dataset
        generator = torch.Generator().manual_seed(cfg.run.seed * 7 + 1000 + acc.process_index)
        step, position = 0, 0
        if latest is not None:
            ckpt.restore_rng(rank_state["rng"], generator)
            step, position = ckpt.read_state(latest)["step"], rank_state["position"]
        return TrainState(components=components, denoiser=denoiser, model=model, params=params, optimizer=optimizer,
                          schedule=schedule, ema=ema, noise_scheduler=noise_scheduler,
                          prediction_type=components.scheduler_config["prediction_type"], empty_ids=empty_ids,
                          weight_dtype=weight_dtype, generator=generator, data=data, size=size,
                          validation=validation, step=step, position=position, saved_step=step)

    # ---------------------------------------------------------------------------------------
    def _base_model(self, base_dir: Path, source, dataset, size: int) -> Components:
        """The step-0 model: read back from ``base/`` on resume, else built (and the VAE stage run)."""
        from ..models import load_folder

        cfg, acc = self.cfg, self.accelerator
        if self.resume and (base_dir / "model_index.json").is_file():
            components = load_folder(base_dir, name=cfg.model.base or "scratch")
            return components
        components = load_start(cfg, source.instructions())
        if cfg.model.kind_stem:
            m = cfg.model
            loss = pretrain_kind_branch(components.unet, dataset, m.kind_stem_steps, m.kind_stem_examples,
                                        cfg.run.seed, self.emit)
            if loss is not None:
                self.emit("stage", stage="kind-stem-done", message=f"kind branch trained: cross-entropy {loss:.4f}")
        if cfg.model.start == "scratch" and cfg.model.autoencoder == "kl" and cfg.vae.steps:
            from .vae_stage import train_vae

            loss = train_vae(components.vae, dataset, cfg, acc, self.emit, size, self.vae_stage_file, self.resume)
            components.vae.to("cpu")
            self.emit("stage", stage="vae-done", message=f"autoencoder trained: L1 {loss:.4f}, scaling factor "
                                                         f"{components.vae.config.scaling_factor:.4f}")
        if acc.is_main_process:
            from ..components import save_diffusers

            with atomic_folder(base_dir) as tmp:
                save_diffusers(components, tmp)
            self.vae_stage_file.unlink(missing_ok=True)  # base/ holds the finished stage now
        acc.wait_for_everyone()
        return components

    def _validation_samples(self, source, size: int) -> list[dict]:
        """The first ``validation_count`` valid samples, center-cropped; none valid at all is BadData."""
        import dataclasses

        plain = EditPairDataset(source, dataclasses.replace(self.cfg.data, random_crop=False, flip=False,
                                                            resize_max=None))
        wanted, found, first_error = max(1, self.cfg.data.validation_count), [], None
        for index in range(size):
            item = plain[(index, 0)]
            if "bad" in item:
                first_error = first_error or item["bad"]
                continue
            found.append(item)
            if len(found) >= wanted:
                break
        if not found:
            raise BadData(f"data set {self.cfg.data.path!r} has no valid sample (first problem: {first_error})")
        return found[: self.cfg.data.validation_count]

    def _caches(self) -> bool:
        mode = self.cfg.data.cache_latents
        return mode == "true" or (mode == "auto" and not self.cfg.augments)

    @torch.no_grad()
    def _cached_dataset(self, dataset: EditPairDataset, size: int, vae, weight_dtype: torch.dtype,
                        chunk: int = 128) -> _Cached:
        """VAE latents of every sample (valid only without augmentation), encoded in chunks.

        The frozen VAE never changes during a run, so the latents are written once to
        ``latents.pt`` in the run folder and read back on ``--resume`` instead of encoded again.
        """
        path = self.out / "latents.pt"
        if self.resume and path.is_file():
            saved = torch.load(path, weights_only=True)
            if (saved.get("size"), saved.get("data"), saved.get("kind_maps", False)) == (
                    size, str(self.cfg.data.path), dataset.kind_maps):
                return _Cached(saved["items"])
        acc = self.accelerator
        items: list[dict] = []
        for start in range(0, size, chunk):
            good = []  # (slot in items, sample)
            for index in range(start, min(size, start + chunk)):
                item = dataset[(index, 0)]
                if "bad" not in item:
                    good.append((len(items), item))
                items.append(item)
            if not good:
                continue
            pixels = torch.cat([torch.stack([g["input"] for _, g in good]), torch.stack([g["edited"] for _, g in good])])
            dist = vae.encode(pixels.to(acc.device, weight_dtype)).latent_dist
            n = len(good)
            exact = not dist.std.any()  # an exact autoencoder: the posterior is a point, no logvar to keep
            modes, means, logvars = (t.float().cpu() for t in (dist.mode()[:n], dist.mean[n:], dist.logvar[n:]))
            for k, (slot, item) in enumerate(good):
                items[slot] = {"index": item["index"], "text": item["text"], "input_latent": modes[k].clone(),
                               "edited_mean": means[k].clone()}
                if not exact:
                    items[slot]["edited_logvar"] = logvars[k].clone()
                if "kind_map" in item:
                    items[slot]["kind_map"] = item["kind_map"]
        if acc.is_main_process:
            ckpt.save_atomic({"size": size, "data": str(self.cfg.data.path), "kind_maps": dataset.kind_maps,
                              "items": items}, path)
        return _Cached(items)

    # ---------------------------------------------------------------------------------------
    def _loop(self, export: bool) -> TrainResult:
        cfg, acc, r, s = self.cfg, self.accelerator, self.cfg.run, self.state
        o = cfg.optim
        sampler = StreamSampler(s.size, o.batch_size, r.seed, acc.process_index, acc.num_processes, start=s.position)
        loader = torch.utils.data.DataLoader(s.data, batch_sampler=sampler, collate_fn=collate,
                                             num_workers=cfg.data.num_workers,
                                             persistent_workers=cfg.data.num_workers > 0)
        batches = iter(loader)
        heads = tuple(name for name in ("grounding", "kind") if getattr(o, f"{name}_weight"))
        logger = _Logger(self.out, s.step, acc.is_main_process, r.tensorboard, self.emit, heads)
        losses: list[float] = []
        start_step, t0, samples = s.step, time.perf_counter(), 0
        self.emit("stage", stage="unet", step=s.step, total=r.max_steps, message="training the denoiser")
        try:
            while s.step < r.max_steps:
                total = torch.zeros((), device=acc.device)
                head_totals = {name: torch.zeros((), device=acc.device) for name in heads}  # unweighted head losses
                for micro in range(o.grad_accum):
                    batch = self._next_batch(batches)
                    samples += len(batch["index"]) * acc.num_processes
                    sync = contextlib.nullcontext() if micro == o.grad_accum - 1 else acc.no_sync(s.model)
                    with sync:
                        with acc.autocast():
                            loss, head_losses = self._loss(batch)
                        acc.backward(loss / o.grad_accum)
                    total += loss.detach() / o.grad_accum
                    for name, value in head_losses.items():
                        head_totals[name] += value.detach() / o.grad_accum
                if o.max_grad_norm:
                    acc.clip_grad_norm_(s.params, o.max_grad_norm)
                s.optimizer.step()
                s.schedule.step()
                s.optimizer.zero_grad(set_to_none=True)
                s.step += 1
                s.ema.update(trainable_state(s.denoiser), s.step)
                value = acc.reduce(total, "mean").item()
                losses.append(value)
                head_means = {name: acc.reduce(t, "mean").item() for name, t in head_totals.items()}
                lr = s.schedule.get_last_lr()[0]
                elapsed = time.perf_counter() - t0
                logger.add(s.step, value, lr, samples / max(elapsed, 1e-9), sampler.epoch_of(s.position), r.log_every,
                           head_means)
                self.emit("step", step=s.step, total=r.max_steps, loss=value, lr=lr)
                if r.checkpoint_every and s.step % r.checkpoint_every == 0:
                    self._checkpoint()
                if r.validation_every and s.step % r.validation_every == 0:
                    self._validate()
        except Cancelled:
            # a stop raised by the step event comes before that step's periodic checkpoint
            if s.step > start_step and s.saved_step != s.step:
                self._checkpoint()
            logger.close()
            raise
        logger.close()
        if r.checkpoint_every and s.step % r.checkpoint_every and s.step > start_step:
            self._checkpoint()
        model_dir = None
        if export:
            if not r.validation_every or s.step % r.validation_every:
                self._validate()
            model_dir = self._export()
        rate = samples / max(time.perf_counter() - t0, 1e-9)
        self.emit("done", step=s.step, total=r.max_steps, path=str(model_dir) if model_dir else None)
        return TrainResult(self.out, model_dir, s.step, losses, self.bad_count, rate)

    def _next_batch(self, batches) -> dict:
        """The next batch with at least one good sample; bad samples are counted and warned once."""
        while True:
            batch = next(batches)
            self.state.position += 1
            for index, reason in batch["bad"]:
                self.bad_count += 1
                if index not in self.warned:
                    self.warned.add(index)
                    self.emit("warning", message=f"skipping bad sample {index}: {reason}")
            if batch["index"]:
                return batch

    def _loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted training loss, and each auxiliary head's own (unweighted) loss by name."""
        s, o = self.state, self.cfg.optim
        gen, vae, scheduler = s.generator, s.components.vae, s.noise_scheduler
        device = self.accelerator.device
        with torch.no_grad():
            if "input_latent" in batch:
                image_latents = batch["input_latent"].to(device)
                noise = torch.randn(batch["edited_mean"].shape, generator=gen)
                edited = batch["edited_mean"]
                if "edited_logvar" in batch:
                    edited = edited + torch.exp(0.5 * batch["edited_logvar"]) * noise
                latents = edited.to(device) * vae.config.scaling_factor
            else:
                n = batch["input"].shape[0]
                pixels = torch.cat([batch["input"], batch["edited"]]).to(device, s.weight_dtype)
                dist = vae.encode(pixels).latent_dist
                image_latents = dist.mode()[:n].float()
                noise = torch.randn(dist.mean[n:].shape, generator=gen).to(device)
                latents = (dist.mean[n:].float() + dist.std[n:].float() * noise) * vae.config.scaling_factor
            # Where the edit is: latent pixels whose exact latent changes (all channels share it).
            changed = None
            if o.edit_weight or o.grounding_weight:
                changed = (latents - image_latents).abs().amax(dim=1, keepdim=True) > 1e-3
            b = latents.shape[0]
            noise = torch.randn(latents.shape, generator=gen).to(device)
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=gen).to(device)
            noisy = scheduler.add_noise(latents, noise, timesteps)
            weight = None
            if s.prediction_type == "v_prediction":
                target = scheduler.get_velocity(latents, noise, timesteps)
            elif s.prediction_type == "sample":
                target = latents
                if o.snr_gamma is not None:
                    alphas = scheduler.alphas_cumprod.to(device)[timesteps]
                    weight = torch.clamp(o.snr_gamma * (1 - alphas) / alphas, max=1.0)
            elif s.prediction_type == "epsilon":
                target = noise
            else:
                raise BadOptions(f"cannot train prediction_type {s.prediction_type!r}; use epsilon, "
                                 "v_prediction or sample")
            # One uniform draw per sample picks its dropout case: [text | both | image | none].
            u = torch.rand(b, generator=gen)
            drop_text = u < o.drop_text + o.drop_both
            drop_image = (u >= o.drop_text) & (u < o.drop_text + o.drop_both + o.drop_image)
            texts = batch["text"]
            if self.cfg.data.unknown_words:
                d = self.cfg.data
                texts = with_unknown_words(texts, d.unknown_words, self.keep_words, gen, d.unknown_word_count)
            tok = s.components.tokenizer
            ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids
            ids = torch.where(drop_text[:, None], s.empty_ids.expand_as(ids), ids).to(device)
            image_latents = image_latents * (~drop_image).to(device, image_latents.dtype)[:, None, None, None]
        pred = s.model(noisy, image_latents, timesteps, ids, tok.pad_token_id)
        head_losses: dict[str, torch.Tensor] = {}
        if isinstance(pred, tuple):
            pred, logits = pred
            if o.grounding_weight:
                head_losses["grounding"] = self._grounding_loss(logits.where, changed, ~(drop_text | drop_image))
            if o.kind_weight:
                head_losses["kind"] = self._kind_loss(logits.kinds, batch["kind_map"], ~drop_image)
        if weight is None and not o.edit_weight:
            loss = F.mse_loss(pred.float(), target.float())
        else:
            error = F.mse_loss(pred.float(), target.float(), reduction="none")
            if o.edit_weight:
                error = error * (1 + o.edit_weight * changed.float())
            per_sample = error.mean(dim=(1, 2, 3))
            loss = (per_sample if weight is None else weight * per_sample).mean()
        for name, value in head_losses.items():
            loss = loss + getattr(o, f"{name}_weight") * value
        return loss, head_losses

    @staticmethod
    def _grounding_loss(logits: torch.Tensor, changed: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy of the head's logits against the changed latent pixels.

        Only the samples that keep both text and image count: without either, where the edit goes is
        not determined. A head on a coarser level than the latent predicts "any pixel of the cell".
        """
        target = F.adaptive_max_pool2d(changed.float(), logits.shape[-2:])
        per_sample = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none").mean(dim=(1, 2, 3))
        keep = keep.to(per_sample.device, per_sample.dtype)
        return (per_sample * keep).sum() / keep.sum().clamp(min=1)

    @staticmethod
    def _kind_loss(logits: list[torch.Tensor], kind_map: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of each kind head against the share of each class in its cells, averaged.

        ``kind_map`` is (B, H, W) class indices at image resolution; a head's cell covers a block of
        pixels, so its target is that block's class histogram. Samples without the image don't count.
        """
        onehot = F.one_hot(kind_map.long(), logits[0].shape[1]).permute(0, 3, 1, 2).float()
        keep = keep.to(logits[0].device, torch.float32)
        total = torch.zeros((), device=logits[0].device)
        for head in logits:
            target = F.adaptive_avg_pool2d(onehot, head.shape[-2:]).to(head.device)
            per_sample = F.cross_entropy(head.float(), target, reduction="none").mean(dim=(1, 2))
            total = total + (per_sample * keep).sum() / keep.sum().clamp(min=1)
        return total / len(logits)

    # ---------------------------------------------------------------------------------------
    def _checkpoint(self) -> None:
        """Save the state at its current step (collective: every process calls it)."""
        acc, s = self.accelerator, self.state
        optimizer_state = {"optimizer": s.optimizer.state_dict(), "schedule": s.schedule.state_dict(),
                           "scaler": acc.scaler.state_dict() if acc.scaler is not None else None}
        rank_state = {"rng": ckpt.capture_rng(s.generator), "position": s.position}
        path = ckpt.save_checkpoint(acc, self.out, s.step, trainable=trainable_state(s.denoiser),
                                    ema=s.ema.state_dict(), optimizer_state=optimizer_state,
                                    config=self.cfg.to_dict(), rank_state=rank_state,
                                    keep=self.cfg.run.keep_checkpoints)
        s.saved_step = s.step
        self.emit("checkpoint", step=s.step, total=self.cfg.run.max_steps, path=str(path))

    @contextlib.contextmanager
    def _ema_weights(self):
        """Temporarily put the EMA weights into the live model (for validation and export)."""
        denoiser = self.state.denoiser
        backup = {n: p.detach().clone() for n, p in trainable_state(denoiser).items()}
        self.state.ema.copy_to(denoiser)
        try:
            yield
        finally:
            params = dict(denoiser.named_parameters())
            with torch.no_grad():
                for name, value in backup.items():
                    params[name].copy_(value)

    def _validate(self) -> None:
        """Edit the fixed validation samples with the EMA model; save input | target | edit rows."""
        acc, r, s = self.accelerator, self.cfg.run, self.state
        if not s.validation or not acc.is_main_process:
            acc.wait_for_everyone()
            return
        from ..editor import Editor
        from .export import grid, recommended_settings

        c = s.components
        modules = (c.unet, c.vae, c.text_encoder)
        dtypes = [_dtype_of(m) for m in modules]
        with self._ema_weights():
            for module in modules:
                _place(module, None, torch.float32).eval()
            editor = Editor(c)
            rows = []
            for item in s.validation:
                source, target = _to_image(item["input"]), _to_image(item["edited"])
                result = editor.edit(source, item["text"], steps=r.validation_steps, seed=r.seed,
                                     guidance_scale=r.validation_text_scale,
                                     image_guidance_scale=r.validation_image_scale,
                                     scheduler=recommended_settings(self.cfg, c.scheduler_config)["scheduler"],
                                     resolution=max(64, *source.size), keep_working_size=True)
                rows.append((source, target, result.images[0], item["text"]))
        for module, dtype in zip(modules, dtypes, strict=True):
            _place(module, None, dtype)
        c.unet.train()
        if self.cfg.trains_text_encoder:
            c.text_encoder.train()
        path = self.out / "validation" / f"step-{s.step:07d}.png"
        grid(rows, path)
        self.emit("validation", step=s.step, total=r.max_steps, path=str(path))
        acc.wait_for_everyone()

    def _export(self) -> Path | None:
        """Write the EMA model as a diffusers folder ``model/`` (main process), atomically."""
        acc = self.accelerator
        target = self.out / "model"
        if acc.is_main_process:
            from .export import export_components

            with self._ema_weights():
                export_components(self.state.components, self.cfg, target)
        acc.wait_for_everyone()
        return target


class _Cached(torch.utils.data.Dataset):
    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        return self.items[item[0]]


def _lr_factor(step: int, o, max_steps: int) -> float:
    """Linear warm-up, then constant or a cosine decay to ``o.final_lr_ratio`` at ``max_steps``."""
    if o.warmup_steps and step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.final_lr_ratio == 1.0:
        return 1.0
    progress = min(1.0, (step - o.warmup_steps) / max(1, max_steps - o.warmup_steps))
    return o.final_lr_ratio + (1 - o.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _load_into(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(module.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    if missing:
        raise BadData(f"checkpoint lacks {len(missing)} trained weights (e.g. {missing[0]}); it belongs to "
                      "another model config")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def _place(module: torch.nn.Module, device, dtype: torch.dtype) -> torch.nn.Module:
    """Move and cast only when needed (diffusers warns on every cast, even a no-op one)."""
    if device is not None:
        module.to(device)
    if _dtype_of(module) not in (None, dtype):
        module.to(dtype)
    return module


def _dtype_of(module: torch.nn.Module) -> torch.dtype | None:
    first = next(itertools.chain(module.parameters(), module.buffers()), None)
    return None if first is None else first.dtype


def _to_image(tensor: torch.Tensor):
    from PIL import Image

    array = ((tensor.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array)


def _make_accelerator(cfg: TrainConfig):
    try:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs
    except ImportError:
        raise BadOptions("training needs the `accelerate` package (pip install 'ip2p[train]')") from None
    device = cfg.run.device
    if device == "cuda" and not torch.cuda.is_available():
        raise BadOptions("run.device is cuda but CUDA is not available on this machine")
    if cfg.run.mixed_precision == "fp16" and (device == "cpu" or not torch.cuda.is_available()):
        raise BadOptions("run.mixed_precision fp16 needs a CUDA device; use bf16 or no on the CPU")
    try:
        return Accelerator(mixed_precision=cfg.run.mixed_precision, cpu=device == "cpu",
                           kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])
    except (ValueError, RuntimeError) as exc:
        raise BadOptions(f"cannot set up training on this machine: {first_line(exc)}") from None


class _Logger:
    """Loss and LR to ``log.csv`` (always) and TensorBoard (when installed), main process only.

    Each auxiliary head (``grounding``, ``kind``) adds a column of its own, unweighted loss (``loss``
    holds it weighted).
    """

    FIELDS = ("step", "loss", "lr", "samples_per_s", "epoch")

    def __init__(self, out: Path, step: int, enabled: bool, tensorboard: bool, emit: Callable,
                 heads: tuple[str, ...] = ()):
        self.enabled, self.writer, self.pending = enabled, None, []
        self.heads, self.pending_heads = heads, {name: [] for name in heads}
        self.fields = self.FIELDS + heads
        if not enabled:
            return
        self.path = out / "log.csv"
        rows = []
        if self.path.is_file():  # a resumed run drops rows past its checkpoint
            with self.path.open(newline="") as handle:
                rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= step]
        with atomic_path(self.path) as tmp, tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, self.fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=step + 1)
            except ImportError:
                emit("warning", message="tensorboard is not installed: logging to log.csv only")

    def add(self, step: int, loss: float, lr: float, rate: float, epoch: float, every: int,
            heads: dict[str, float] | None = None) -> None:
        if not self.enabled:
            return
        self.pending.append(loss)
        for name, value in (heads or {}).items():
            self.pending_heads[name].append(value)
        if every and step % every:
            return
        mean = sum(self.pending) / len(self.pending)
        row = [step, f"{mean:.6g}", f"{lr:.6g}", f"{rate:.4g}", f"{epoch:.4f}"]
        head_means = {name: sum(v) / max(len(v), 1) for name, v in self.pending_heads.items()}
        row += [f"{head_means[name]:.6g}" for name in self.heads]
        self.pending, self.pending_heads = [], {name: [] for name in self.heads}
        with self.path.open("a", newline="") as handle:
            csv.writer(handle).writerow(row)
        if self.writer is not None:
            self.writer.add_scalar("train/loss", mean, step)
            self.writer.add_scalar("train/lr", lr, step)
            for name, value in head_means.items():
                self.writer.add_scalar(f"train/{name}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
