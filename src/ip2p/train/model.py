"""The model being trained: starting points, the 8-channel widening, growing, LoRA and EMA.

InstructPix2Pix conditions the UNet on the input image by concatenating its latent to the noisy
latent along channels (Brooks et al. 2023, Sec. 3.2), so a text-to-image UNet's first convolution
grows from 4 to 8 input channels. The new channels start at zero and the old kernel and bias are
kept, so at step 0 the widened model is exactly the text-to-image model.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ..components import Components
from ..errors import BadModel, BadOptions
from ..shapes.scene import KINDS
from .config import TrainConfig

#: Classes of a kind map: the background and every shape kind of the shapes world (render.kind_map).
KIND_CLASSES = 1 + len(KINDS)

# --------------------------------------------------------------------------------------------
# widening


def widen_conv_in(unet, in_channels: int = 8):
    """Give ``unet`` ``in_channels`` inputs; extra kernel slices are zero, old weights and bias kept."""
    old = unet.conv_in
    if old.in_channels == in_channels:
        return unet
    if old.in_channels > in_channels:
        raise BadModel(f"UNet already has {old.in_channels} input channels; cannot widen to {in_channels}")
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    bias=old.bias is not None, dtype=old.weight.dtype, device=old.weight.device)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        if old.bias is not None:
            new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


def grow_transformer_layers(unet, layers: list[int]):
    """``unet`` with ``layers`` transformer layers a level; the added ones start as the identity.

    A transformer layer adds its self-attention, cross-attention and feed-forward outputs to its
    input, so with those three output projections at zero a new layer passes its input through and
    the grown UNet computes what the trained one did (net2net-style growth, Chen et al. 2016).
    """
    from diffusers.models.attention import BasicTransformerBlock

    config = dict(unet.config)
    old = config["transformer_layers_per_block"]
    old = [old] * len(config["down_block_types"]) if isinstance(old, int) else list(old)
    if config.get("reverse_transformer_layers_per_block") is not None or any(isinstance(n, list) for n in old):
        raise BadModel("model.unet_transformer_layers: the base UNet sets its layers block by block; "
                       "only one number a level can be grown")
    if len(layers) != len(old):
        raise BadModel(f"model.unet_transformer_layers needs one number a level ({len(old)}), got {layers}")
    if any(n < o for n, o in zip(layers, old, strict=True)):
        raise BadModel(f"model.unet_transformer_layers {layers} has fewer layers than the base UNet's {old}")
    if layers == old:
        return unet
    grown = type(unet).from_config({**config, "transformer_layers_per_block": list(layers)})
    missing, unexpected = grown.load_state_dict(unet.state_dict(), strict=False)
    new = [name for name, m in grown.named_modules()
           if isinstance(m, BasicTransformerBlock) and f"{name}.attn1.to_q.weight" in missing]
    if unexpected or any(not any(key.startswith(name + ".") for name in new) for key in missing):
        raise BadModel("model.unet_transformer_layers: the grown UNet does not hold the base's weights")
    with torch.no_grad():
        for name in new:
            block = grown.get_submodule(name)
            for out in (block.attn1.to_out[0], block.attn2.to_out[0], block.ff.net[-1]):
                out.weight.zero_()
                out.bias.zero_()
    if (grown.dtype, grown.device) != (unet.dtype, unet.device):
        grown.to(dtype=unet.dtype, device=unet.device)
    return grown


def add_image_stem(unet):
    """``unet`` (a residual UNet over the exact autoencoder) as an ImageStemUNet2DConditionModel with
    the same weights; the stem's output projection starts at zero, so the result is unchanged."""
    from ..architectures import ImageStemUNet2DConditionModel

    return _grow_stem(unet, ImageStemUNet2DConditionModel, "model.image_stem", ("conv_in.stem.",))


def add_kind_stem(unet):
    """``unet`` as a KindStemUNet2DConditionModel with the same weights (an image stem too, grown at
    zero if it had none); the kind branch's projection starts at zero, so the result is unchanged.
    The branch itself is untrained: :func:`pretrain_kind_branch` trains it."""
    from ..architectures import KindStemUNet2DConditionModel

    new = ("conv_in.stem.", "conv_in.kinds.", "conv_in.kind_proj.", "conv_in.kind_steps")
    return _grow_stem(unet, KindStemUNet2DConditionModel, "model.kind_stem", new)


def _grow_stem(unet, cls, option: str, new: tuple[str, ...]):
    from ..architectures import ResidualUNet2DConditionModel

    if isinstance(unet, cls):
        return unet
    if not isinstance(unet, ResidualUNet2DConditionModel):
        raise BadModel(f"{option} needs a residual UNet over the exact autoencoder; the base's is "
                       f"{type(unet).__name__}")
    try:
        grown = cls.from_config(unet.config)
    except ValueError as e:
        raise BadModel(f"{option}: {e}") from None
    missing, unexpected = grown.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or any(not key.startswith(new) for key in missing):
        raise BadModel(f"{option}: the grown UNet does not hold the base's weights")
    return grown.to(dtype=unet.dtype, device=unet.device)


def pretrain_kind_branch(unet, dataset, steps: int, examples: int, seed: int, emit) -> float | None:
    """Train the kind branch of ``unet.conv_in`` alone on the data set's kind maps; returns the last
    100 steps' mean cross-entropy, or None when the base's branch was trained already.

    Each latent pixel's target is its f x f block's share of each class (as ``optim.kind_weight``).
    AdamW at 2e-3, batch 64, on the first ``examples`` samples' input images: the recipe with which
    ``benchmarks/kind_stem_probe.py`` read 96.7 % of test objects' kinds. The branch is re-initialised
    from ``seed`` first, so every data-parallel process trains the same weights.
    """
    import torch.nn.functional as F

    stem = unet.conv_in
    if int(stem.kind_steps):
        return None
    n = min(examples, len(dataset))
    rows = [dataset.load(i, 0) for i in range(n)]
    pixels = torch.stack([r["input"] for r in rows]).float()
    maps = torch.stack([r["kind_map"] for r in rows]).long()
    classes = stem.kinds.classify.out_channels
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for module in stem.kinds.modules():
            if isinstance(module, nn.Conv2d):
                module.reset_parameters()
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(stem.kinds.parameters(), lr=2e-3)
    stem.kinds.train()
    losses = []
    emit("stage", stage="kind-stem", step=0, total=steps, message="training the kind branch")
    with torch.enable_grad():
        for step in range(1, steps + 1):
            idx = torch.randint(0, n, (64,), generator=generator)
            _, logits = stem.kinds(pixels[idx])
            onehot = F.one_hot(maps[idx], classes).permute(0, 3, 1, 2).float()
            loss = F.cross_entropy(logits, F.adaptive_avg_pool2d(onehot, logits.shape[-2:]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if step % 10 == 0 or step == steps:
                emit("step", stage="kind-stem", step=step, total=steps, loss=sum(losses[-10:]) / len(losses[-10:]))
    stem.kind_steps.fill_(steps)
    stem.kinds.requires_grad_(False)
    return sum(losses[-100:]) / len(losses[-100:])


def grow_text_layers(text_encoder, layers: int):
    """``text_encoder`` (a CLIP text model) with ``layers`` encoder layers; the added ones go last and
    start as the identity.

    A CLIP encoder layer is pre-norm: it adds its self-attention's and its MLP's outputs to its input,
    so with ``out_proj`` and ``fc2`` at zero a new layer passes its input through, and the grown
    encoder gives the trained one's embeddings (the text side of net2net growth, as above).
    """
    old = text_encoder.config.num_hidden_layers
    if layers < old:
        raise BadModel(f"model.text_layers {layers} is fewer than the base text encoder's {old}")
    if layers == old:
        return text_encoder
    config = type(text_encoder.config).from_dict({**text_encoder.config.to_dict(), "num_hidden_layers": layers})
    grown = type(text_encoder)(config)
    missing, unexpected = grown.load_state_dict(text_encoder.state_dict(), strict=False)
    # "encoder.layers.N" (transformers 5) or "text_model.encoder.layers.N" (4.x)
    stack = next(name for name, _ in grown.named_modules() if name.endswith("encoder.layers"))
    new = [f"{stack}.{i}." for i in range(old, layers)]
    if unexpected or any(not any(key.startswith(prefix) for prefix in new) for key in missing):
        raise BadModel("model.text_layers: the grown text encoder does not hold the base's weights")
    with torch.no_grad():
        for layer in grown.get_submodule(stack)[old:]:
            for out in (layer.self_attn.out_proj, layer.mlp.fc2):
                out.weight.zero_()
                out.bias.zero_()
    return grown.to(dtype=text_encoder.dtype, device=text_encoder.device)


# --------------------------------------------------------------------------------------------
# starting points


def load_start(cfg: TrainConfig, instructions: list[str]) -> Components:
    """The model at step 0, on the CPU in float32, with the configured prediction type."""
    m = cfg.model
    if m.start == "scratch":
        components = build_scratch(cfg, instructions)
    elif m.start == "ip2p":
        from ..models import load_components

        components = load_components(m.base, device="cpu", dtype="fp32")
        if m.unet_transformer_layers:
            components.unet = grow_transformer_layers(components.unet, m.unet_transformer_layers)
        if m.text_layers:
            components.text_encoder = grow_text_layers(components.text_encoder, m.text_layers)
        if m.image_stem:
            components.unet = add_image_stem(components.unet)
        if m.kind_stem:
            components.unet = add_kind_stem(components.unet)
    else:
        components = load_text2image(m.base)
        widen_conv_in(components.unet, 2 * components.vae.config.latent_channels)
    if m.prediction_type:
        components.scheduler_config = dict(components.scheduler_config, prediction_type=m.prediction_type)
    components.scheduler_config.setdefault("prediction_type", "epsilon")
    if components.scheduler_config["prediction_type"] == "sample":
        # Euler ancestral cannot step an x0 model: record a scheduler stock diffusers can run it with
        components.scheduler_config["_class_name"] = "EulerDiscreteScheduler"
    return components


def load_text2image(ref: str) -> Components:
    """An SD-1.x text-to-image model (folder, cached hub id or single file) with a 4-channel UNet."""
    from ..models import read_model

    components = read_model(str(ref), instruct=False)
    if components.unet.config.in_channels != components.vae.config.latent_channels:
        raise BadModel(f"{ref}: UNet has {components.unet.config.in_channels} input channels; model.start "
                       "text2image expects a text-to-image model (use start: ip2p for an InstructPix2Pix model)")
    return components


def build_scratch(cfg: TrainConfig, instructions: list[str]) -> Components:
    """A small random model whose tokenizer knows every word of the data set's instructions."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..components import SD15_SCHEDULER_CONFIG
    from ..text import build_clip_tokenizer

    m = cfg.model
    torch.manual_seed(cfg.run.seed)
    tokenizer = build_clip_tokenizer(instructions, max_length=m.text_max_length)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=m.text_hidden_size, intermediate_size=4 * m.text_hidden_size,
        num_hidden_layers=m.text_layers or 2, num_attention_heads=m.text_heads,
        max_position_embeddings=m.text_max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    levels = len(m.vae_widths)
    if m.autoencoder == "pixel_unshuffle":
        from ..architectures import PixelUnshuffleAutoencoder

        vae = PixelUnshuffleAutoencoder(factor=2 ** (levels - 1), sample_size=cfg.data.resolution)
    else:
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=m.vae_latent_channels,
            down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
            block_out_channels=tuple(m.vae_widths), layers_per_block=m.vae_layers_per_block,
            norm_num_groups=m.vae_norm_groups, mid_block_add_attention=m.vae_mid_attention,
            sample_size=cfg.data.resolution,
        )
    channels = vae.config.latent_channels
    unet_class = UNet2DConditionModel
    if m.residual:
        from ..architectures import (
            ImageStemUNet2DConditionModel,
            KindStemUNet2DConditionModel,
            ResidualUNet2DConditionModel,
        )

        unet_class = (KindStemUNet2DConditionModel if m.kind_stem else
                      ImageStemUNet2DConditionModel if m.image_stem else ResidualUNet2DConditionModel)
    n = len(m.unet_widths)
    # diffusers' attention_head_dim is the number of heads (one for all levels, or one per level)
    heads = tuple(w // m.unet_head_channels for w in m.unet_widths) if m.unet_head_channels else m.unet_attention_head_dim
    unet = unet_class(
        sample_size=cfg.data.resolution // 2 ** (levels - 1),
        in_channels=2 * channels, out_channels=channels,
        block_out_channels=tuple(m.unet_widths), layers_per_block=m.unet_layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=m.text_hidden_size, attention_head_dim=heads,
        norm_num_groups=m.unet_norm_groups, transformer_layers_per_block=m.unet_transformer_layers or 1,
    )
    if m.residual:  # the change starts at zero: the step-0 model returns the input image
        torch.nn.init.zeros_(unet.conv_out.weight)
        torch.nn.init.zeros_(unet.conv_out.bias)
    return Components(unet, vae, text_encoder, tokenizer, dict(SD15_SCHEDULER_CONFIG),
                      name="scratch", source="ip2p train")


# --------------------------------------------------------------------------------------------
# the trained module


class FeatureHead(nn.Module):
    """A 1x1 convolution read off one UNet module's output, for an auxiliary loss on the features.

    Two uses (docs/training.md): where the edit goes (``optim.grounding_weight``: one logit a pixel,
    against the latent pixels the edit changes) and what each pixel shows (``optim.kind_weight``: one
    logit a class, against the data set's kind map). Each asks the features in the middle of the UNet
    for something the denoising loss asks only through the few pixels an object edit touches. Zero at
    the start, so the first logits are uniform; not part of the exported model.
    """

    def __init__(self, unet, layer: str, channels: int = 1, option: str = "optim.grounding_layer"):
        super().__init__()
        try:
            module = unet.get_submodule(layer)
        except AttributeError:
            known = ", ".join(name for name, _ in unet.named_children())
            raise BadOptions(f"{option} {layer!r} is not a module of the UNet (top level: {known})") from None
        object.__setattr__(self, "layer", module)  # a reference, not a submodule: the UNet owns its weights
        cfg = unet.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        probe = torch.zeros(1, cfg.in_channels, size, size, device=unet.device, dtype=unet.dtype)
        text = torch.zeros(1, 1, cfg.cross_attention_dim, device=unet.device, dtype=unet.dtype)
        with torch.no_grad(), self.capture() as found:
            unet(probe, torch.zeros(1, device=unet.device), text)
        if found[0].dim() != 4:
            raise BadOptions(f"{option} {layer!r} gives no feature map (shape {tuple(found[0].shape)})")
        self.proj = nn.Conv2d(found[0].shape[1], channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    @contextlib.contextmanager
    def capture(self):
        """While open, the module's latest output feature map is ``found[0]``."""
        found: list[torch.Tensor] = []

        def keep(_module, _args, output):
            output = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
            found[:] = [output]

        hook = self.layer.register_forward_hook(keep)
        try:
            yield found
        finally:
            hook.remove()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features.to(self.proj.weight.dtype))


@dataclass
class HeadLogits:
    """What the auxiliary heads read off one UNet call: ``where`` (B, 1, h, w) or None, ``kinds`` one
    (B, classes, h, w) map per ``optim.kind_layers`` entry."""

    where: torch.Tensor | None
    kinds: list[torch.Tensor]


class Denoiser(nn.Module):
    """UNet plus text encoder as one module, so data-parallel wrapping covers whatever trains.

    ``forward`` is the paper's conditional denoiser: e(z_t, t, E(c_I), c_T) with the image latent
    concatenated to the noisy latent along channels. With auxiliary heads it also returns their
    :class:`HeadLogits`.
    """

    def __init__(self, unet, text_encoder, train_text_encoder: bool, grounding: FeatureHead | None = None,
                 kind_heads: list[FeatureHead] | None = None):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder
        self.train_text_encoder = train_text_encoder
        self.grounding = grounding
        self.kind_heads = nn.ModuleList(kind_heads or [])

    def encode_text(self, input_ids: torch.Tensor, pad_id: int | None = None) -> torch.Tensor:
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False) and pad_id is not None:
            mask = (input_ids != pad_id).long()
        with torch.set_grad_enabled(self.train_text_encoder and torch.is_grad_enabled()):
            return self.text_encoder(input_ids, attention_mask=mask)[0]

    def forward(self, noisy: torch.Tensor, image_latents: torch.Tensor, timesteps: torch.Tensor,
                input_ids: torch.Tensor, pad_id: int | None = None):
        text = self.encode_text(input_ids, pad_id).to(noisy.dtype)
        x = torch.cat([noisy, image_latents], dim=1)
        heads = ([self.grounding] if self.grounding is not None else []) + list(self.kind_heads)
        if not heads:
            return self.unet(x, timesteps, text).sample
        with contextlib.ExitStack() as stack:
            found = [stack.enter_context(head.capture()) for head in heads]
            sample = self.unet(x, timesteps, text).sample
        logits = [head(f[0]) for head, f in zip(heads, found, strict=True)]
        if self.grounding is None:
            return sample, HeadLogits(None, logits)
        return sample, HeadLogits(logits[0], logits[1:])


def prepare_trainable(components: Components, cfg: TrainConfig) -> Denoiser:
    """Freeze what stays fixed, add LoRA if asked, switch on gradient checkpointing."""
    m = cfg.model
    unet, text_encoder = components.unet, components.text_encoder
    components.vae.requires_grad_(False).eval()
    text_encoder.requires_grad_(cfg.trains_text_encoder)
    text_encoder.train(cfg.trains_text_encoder)
    if m.lora_rank:
        add_lora(unet, cfg)
    else:
        unet.requires_grad_(True)
    branch = getattr(unet.conv_in, "kinds", None)
    if branch is not None:  # the kind branch learnt its maps before the UNet; it stays as it is
        branch.requires_grad_(False)
    unet.train()
    if m.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if cfg.trains_text_encoder:
            text_encoder.gradient_checkpointing_enable()
    o = cfg.optim
    grounding = FeatureHead(unet, o.grounding_layer) if o.grounding_weight else None
    kinds = [FeatureHead(unet, layer, KIND_CLASSES, "optim.kind_layers") for layer in o.kind_layers] if o.kind_weight else []
    return Denoiser(unet, text_encoder, cfg.trains_text_encoder, grounding, kinds)


def add_lora(unet, cfg: TrainConfig) -> None:
    """LoRA adapters (Hu et al. 2021) on the attention projections; a widened conv_in trains fully."""
    try:
        from peft import LoraConfig
    except ImportError:
        raise BadModel("model.lora_rank needs the `peft` package (pip install 'ip2p[train]')") from None
    m = cfg.model
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=m.lora_rank, lora_alpha=m.lora_alpha or m.lora_rank,
                                target_modules=list(m.lora_targets), init_lora_weights="gaussian"))
    for name, param in unet.named_parameters():
        if "lora_" in name or (m.start == "text2image" and name.startswith("conv_in.")):
            param.requires_grad_(True)


def merge_lora(unet) -> None:
    """Fold LoRA weights into the base layers and remove the adapters (a plain UNet again)."""
    if getattr(unet, "_hf_peft_config_loaded", False):
        unet.fuse_lora()
        unet.unload_lora()


def trainable_state(denoiser: Denoiser) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in denoiser.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------------------------
# EMA


class EMA:
    """Exponential moving average of the trainable weights, kept in float32.

    ``decay_t = min(decay, (1 + t) / (10 + t))``: the warm-up keeps early averages from being
    dominated by the random initialisation of a short run.
    """

    def __init__(self, params: dict[str, torch.Tensor], decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in params.items()}

    @torch.no_grad()
    def update(self, params: dict[str, torch.Tensor], step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for name, param in params.items():
            self.shadow[name].lerp_(param.detach().float(), 1 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise BadModel(f"checkpoint EMA lacks {len(missing)} weights (e.g. {sorted(missing)[0]}); "
                           "was it written with another model config?")
        for name in self.shadow:
            self.shadow[name].copy_(state[name])

    @torch.no_grad()
    def copy_to(self, denoiser: nn.Module) -> None:
        params = dict(denoiser.named_parameters())
        for name, value in self.shadow.items():
            params[name].copy_(value.to(params[name].dtype))
