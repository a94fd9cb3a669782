"""Training configuration: a typed tree loaded from YAML and checked once.

``TrainConfig`` has five sections (``model``, ``vae``, ``data``, ``optim``, ``run``). Loading is
strict: an unknown key anywhere is a :class:`BadOptions` naming it and its section, so a typo never
silently trains with a default. This module imports no torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadOptions, first_line

START_KINDS = ("text2image", "ip2p", "scratch")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
AUTOENCODERS = ("kl", "pixel_unshuffle")
PRECISIONS = ("no", "fp16", "bf16")
DATA_FORMATS = ("auto", "ip2p", "hf", "jsonl")


@dataclass
class ModelConfig:
    """Where training starts and what is trained.

    ``start``: ``text2image`` widens an SD-1.x model's UNet to 8 input channels (paper Sec. 3.2),
    ``ip2p`` fine-tunes an InstructPix2Pix model, ``scratch`` builds a small model (VAE and text
    encoder too) sized by the ``unet_*``/``text_*``/``vae_*`` keys.
    """

    start: str = "text2image"
    base: str | None = None  # hub id, diffusers folder or single file (not for scratch)
    prediction_type: str | None = None  # None keeps the base model's
    train_text_encoder: bool | None = None  # default: only when starting from scratch
    gradient_checkpointing: bool = False
    lora_rank: int = 0  # > 0 trains LoRA adapters (peft) instead of the full UNet
    lora_alpha: float | None = None  # default: the rank (scale 1)
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    # from-scratch architecture
    unet_widths: list[int] = field(default_factory=lambda: [64, 128, 256])
    unet_layers_per_block: int = 1
    # diffusers reads UNet2DConditionModel's attention_head_dim as the number of heads: 8 heads at every
    # level, so 4 channels a head at a width of 32. unet_head_channels > 0 sets channels a head instead.
    unet_attention_head_dim: int = 8
    unet_head_channels: int = 0
    # transformer layers (self- plus cross-attention) a block, one number per level, the last also the
    # middle block's (diffusers' transformer_layers_per_block). With start ip2p, more layers than the
    # base has grow it: the new layers start as the identity (zero output projections).
    unet_transformer_layers: list[int] | None = None
    text_hidden_size: int = 128
    # text encoder layers (scratch: 2 when unset). With start ip2p, more layers than the base's text
    # encoder grow it: the new layers go last and start as the identity (zero output projections).
    text_layers: int | None = None
    text_heads: int = 4
    text_max_length: int = 32
    vae_widths: list[int] = field(default_factory=lambda: [32, 64, 64])
    vae_latent_channels: int = 4
    vae_layers_per_block: int = 1
    # GroupNorm groups of the scratch UNet / VAE. One channel a group (32 groups at width 32) is an
    # instance norm that erases flat colours, which this world is made of: keep several a group.
    unet_norm_groups: int = 32
    vae_norm_groups: int = 32
    vae_mid_attention: bool = True  # self-attention in the VAE's middle blocks (SD's VAE has it)
    # kl: a learned AutoencoderKL (the vae_* keys, trained in the vae stage); pixel_unshuffle: the
    # exact space-to-depth autoencoder (ip2p.architectures), factor 2 ** (len(vae_widths) - 1)
    autoencoder: str = "kl"
    # the UNet's output is a change to the input-image latent (ResidualUNet2DConditionModel);
    # meant for prediction_type sample over an autoencoder with scaling factor 1
    residual: bool = False
    # a convolution stack on the input image's pixels added to conv_in (ImageStemUNet2DConditionModel):
    # residual models over the exact autoencoder only. With start ip2p it grows the base, starting at zero.
    image_stem: bool = False
    # the image stem plus a branch that says what shape each latent pixel shows (KindStemUNet2DConditionModel):
    # before the UNet trains, the branch learns the data set's kind maps alone for kind_stem_steps steps on
    # its first kind_stem_examples samples, then stays frozen; its output enters conv_in through a 1x1
    # projection that starts at zero. Needs kind maps (the shapes world writes them) and what image_stem needs.
    kind_stem: bool = False
    kind_stem_steps: int = 3000
    kind_stem_examples: int = 20000


@dataclass
class VaeConfig:
    """The first stage of a from-scratch run: the autoencoder, trained alone and then frozen.

    Loss = L1 reconstruction + ``kl_weight`` * KL(q(z|x) || N(0, I)); a small KL weight keeps the
    latent space smooth without blurring (Rombach et al. 2022, Sec. 3).
    """

    steps: int = 2000
    lr: float = 2e-4
    batch_size: int = 16
    kl_weight: float = 1e-6
    l2_weight: float = 0.0
    final_lr_ratio: float = 1.0  # cosine decay from lr to lr * this over the steps; 1 = constant


@dataclass
class DataConfig:
    """The edit-pair data set and how samples become tensors."""

    path: str = ""
    format: str = "auto"
    split: str = "train"
    input_column: str = "input_image"
    instruction_column: str = "edit_prompt"
    edited_column: str = "edited_image"
    resolution: int = 256
    resize_max: int | None = None  # resize the short side to U[resolution, resize_max], then crop
    random_crop: bool = True
    flip: bool = True
    max_samples: int | None = None
    num_workers: int = 0
    cache_latents: str = "auto"  # auto: when the VAE is frozen and augmentation is off
    validation_count: int = 4  # the first N valid samples are the fixed validation edits
    # Share of instructions that get one made-up word, replacing a word outside keep_words or
    # inserted: a model trained on a few templates then reads an edit from its content words and
    # copes with verbs it never saw. 0 = off.
    unknown_words: float = 0.0
    # Up to this many made-up words in each such instruction (the number drawn uniformly from 1..N):
    # held-out wordings may bring two unseen words ("kindly recolour").
    unknown_word_count: int = 1
    # Words never replaced, separated by spaces, or "shapes" for the shapes world's content words
    # (ip2p.shapes.phrasing.content_words).
    keep_words: str = ""


@dataclass
class OptimConfig:
    """AdamW, constant LR after linear warm-up, clipping, accumulation, EMA, conditioning dropout."""

    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-2
    eps: float = 1e-8
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    batch_size: int = 4  # per process, per micro-step
    grad_accum: int = 1
    ema_decay: float = 0.9999
    drop_text: float = 0.05  # paper Sec. 3.2.1: 5 % text only, 5 % image only, 5 % both
    drop_image: float = 0.05
    drop_both: float = 0.05
    final_lr_ratio: float = 1.0  # cosine decay after warm-up to lr * this at run.max_steps; 1 = constant
    # x0 loss weight min(1, gamma / SNR_t) (Min-SNR-gamma, Hang et al. 2023); None = unweighted.
    # Only with prediction_type sample.
    snr_gamma: float | None = None
    # Extra loss weight on the latent pixels the edit changes (edited != input): the loss on a pixel
    # is (1 + edit_weight) times as heavy there. Object edits touch ~5 % of a shapes image, so their
    # error is otherwise diluted by the 95 % a residual model keeps for free. 0 = off.
    edit_weight: float = 0.0
    # An auxiliary loss that makes the UNet say where the edit goes: a 1x1 convolution on the output of
    # the module `grounding_layer` predicts the changed latent pixels (the edit_weight mask), with binary
    # cross-entropy on the samples that keep both text and image, weighted by grounding_weight. The head
    # trains with the UNet and is left out of the exported model. 0 = off.
    grounding_weight: float = 0.0
    grounding_layer: str = "up_blocks.1"
    # An auxiliary loss that makes the features say what shape each pixel shows: a 1x1 convolution on
    # each module of `kind_layers` predicts the data set's kind map (the shapes world writes one: 0 the
    # background, 1 + the kind's index a shape), with cross-entropy against the map's share of each
    # class in a cell, on the samples that keep the image, weighted by kind_weight. The default layers
    # feed the first cross-attention of the 16x16 and the 8x8 level, whose queries must carry the shape
    # for "the circle" to find the circle. Left out of the exported model. 0 = off.
    kind_weight: float = 0.0
    kind_layers: list[str] = field(default_factory=lambda: ["down_blocks.0.resnets.0", "down_blocks.1.resnets.0"])


@dataclass
class RunConfig:
    output_dir: str = "runs/ip2p"
    max_steps: int = 1000  # optimizer steps
    seed: int = 0
    mixed_precision: str = "no"
    device: str = "auto"  # auto, cpu or cuda (accelerate picks the GPU of each process)
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    validation_every: int = 0  # 0 = only at the end
    validation_steps: int = 20
    validation_text_scale: float = 7.5
    validation_image_scale: float = 1.5
    tensorboard: bool = True


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    vae: VaeConfig = field(default_factory=VaeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    # ------------------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, mapping: dict[str, Any] | None) -> TrainConfig:
        """Build from nested dicts; unknown sections or keys raise :class:`BadOptions`."""
        mapping = dict(mapping or {})
        sections = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - set(sections))
        if unknown:
            raise BadOptions(f"unknown config section {unknown[0]!r}; known: {', '.join(sections)}")
        built = {}
        for name, f in sections.items():
            value = mapping.get(name) or {}
            if not isinstance(value, dict):
                raise BadOptions(f"config section {name!r} must be a mapping, got {type(value).__name__}")
            built[name] = _build_section(f.default_factory, name, value)
        return cls(**built)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        import yaml

        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise BadOptions(f"cannot read config {path}: {exc.strerror or exc}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise BadOptions(f"{path}: not valid YAML ({first_line(exc)})") from None
        if data is not None and not isinstance(data, dict):
            raise BadOptions(f"{path}: a config is a mapping of sections (model, vae, data, optim, run)")
        return cls.from_mapping(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def trains_text_encoder(self) -> bool:
        if self.model.train_text_encoder is None:
            return self.model.start == "scratch"
        return self.model.train_text_encoder

    @property
    def augments(self) -> bool:
        d = self.data
        return d.flip or d.random_crop or (d.resize_max is not None and d.resize_max > d.resolution)

    def check(self) -> TrainConfig:
        """Validate every value once; returns ``self`` so calls chain."""
        m, v, d, o, r = self.model, self.vae, self.data, self.optim, self.run
        _choice("model.start", m.start, START_KINDS)
        if m.start != "scratch" and not m.base:
            raise BadOptions(f"model.base is required when model.start is {m.start!r} (a hub id, folder or file)")
        if m.prediction_type is not None:
            _choice("model.prediction_type", m.prediction_type, PREDICTION_TYPES)
        _choice("model.autoencoder", m.autoencoder, AUTOENCODERS)
        if m.start != "scratch" and (m.autoencoder != "kl" or m.residual):
            raise BadOptions("model.autoencoder and model.residual shape a new model: they need model.start scratch")
        if m.residual and m.autoencoder != "pixel_unshuffle":
            raise BadOptions("model.residual adds the unscaled image latent: it needs model.autoencoder "
                             "pixel_unshuffle (scaling factor 1)")
        if o.snr_gamma is not None:
            _positive("optim.snr_gamma", o.snr_gamma)
            if m.prediction_type != "sample":
                raise BadOptions("optim.snr_gamma weights the x0 loss: it needs model.prediction_type sample")
        if not 0 < o.final_lr_ratio <= 1:
            raise BadOptions(f"optim.final_lr_ratio must be in (0, 1], got {o.final_lr_ratio}")
        _positive("optim.kind_weight", o.kind_weight, zero_ok=True)
        if o.kind_weight and (not o.kind_layers or not all(isinstance(n, str) and n for n in o.kind_layers)):
            raise BadOptions(f"optim.kind_layers must list UNet modules, e.g. [down_blocks.0.resnets.0]; got {o.kind_layers}")
        for key in ("edit_weight", "grounding_weight"):  # a base's autoencoder is checked at load
            _positive(f"optim.{key}", getattr(o, key), zero_ok=True)
            if getattr(o, key) and m.start == "scratch" and m.autoencoder != "pixel_unshuffle":
                raise BadOptions(f"optim.{key} finds the edit as latent pixels that differ: it needs model.autoencoder "
                                 "pixel_unshuffle (an exact latent)")
        if o.grounding_weight and not o.grounding_layer:
            raise BadOptions("optim.grounding_layer must name a UNet module, e.g. up_blocks.1")
        _positive("model.lora_rank", m.lora_rank, zero_ok=True)
        if m.lora_rank and m.start == "scratch":
            raise BadOptions("model.lora_rank: LoRA adapts a pretrained UNet; a scratch model trains fully")
        if m.unet_transformer_layers is not None:
            layers = m.unet_transformer_layers
            if not isinstance(layers, list) or not layers or any(not isinstance(n, int) or n < 1 for n in layers):
                raise BadOptions(f"model.unet_transformer_layers must be a list of positive integers, one a level, "
                                 f"got {layers}")
            if m.start == "text2image":
                raise BadOptions("model.unet_transformer_layers applies to start scratch or ip2p, not text2image")
            if m.start == "scratch" and len(layers) != len(m.unet_widths):
                raise BadOptions(f"model.unet_transformer_layers needs one number a level "
                                 f"({len(m.unet_widths)}), got {layers}")
        if not isinstance(m.image_stem, bool):
            raise BadOptions(f"model.image_stem must be true or false, got {m.image_stem!r}")
        if m.image_stem and m.start == "text2image":
            raise BadOptions("model.image_stem applies to start scratch or ip2p, not text2image")
        if m.image_stem and m.start == "scratch" and not m.residual:
            raise BadOptions("model.image_stem is a residual UNet's: it needs model.residual true")
        if not isinstance(m.kind_stem, bool):
            raise BadOptions(f"model.kind_stem must be true or false, got {m.kind_stem!r}")
        if m.kind_stem:
            if m.start == "text2image" or (m.start == "scratch" and not m.residual):
                raise BadOptions("model.kind_stem grows a residual UNet over the exact autoencoder: start ip2p, "
                                 "or scratch with model.residual true")
            _positive("model.kind_stem_steps", m.kind_stem_steps)
            _positive("model.kind_stem_examples", m.kind_stem_examples)
        if m.text_layers is not None:
            if not isinstance(m.text_layers, int) or isinstance(m.text_layers, bool) or m.text_layers < 1:
                raise BadOptions(f"model.text_layers must be a positive integer, got {m.text_layers}")
            if m.start == "text2image":
                raise BadOptions("model.text_layers applies to start scratch or ip2p, not text2image")
        if m.start == "scratch":
            for part in ("unet", "vae"):
                g, widths = getattr(m, f"{part}_norm_groups"), getattr(m, f"{part}_widths")
                _positive(f"model.{part}_norm_groups", g)
                if not widths or any(not isinstance(w, int) or w < g or w % g for w in widths):
                    raise BadOptions(f"model.{part}_widths must be a list of multiples of model.{part}_norm_groups "
                                     f"({g}), got {widths}")
            if len(m.unet_widths) < 2:
                raise BadOptions("model.unet_widths needs at least two levels")
            _positive("model.unet_head_channels", m.unet_head_channels, zero_ok=True)
            if m.unet_head_channels and any(w % m.unet_head_channels for w in m.unet_widths):
                raise BadOptions(f"model.unet_widths must be multiples of model.unet_head_channels "
                                 f"({m.unet_head_channels}), got {m.unet_widths}")
            if m.text_hidden_size % m.text_heads:
                raise BadOptions("model.text_hidden_size must be a multiple of model.text_heads")
            for key in ("unet_layers_per_block", "unet_attention_head_dim", "text_max_length",
                        "vae_latent_channels", "vae_layers_per_block"):
                _positive(f"model.{key}", getattr(m, key))
            _positive("vae.steps", v.steps, zero_ok=True)
            _positive("vae.batch_size", v.batch_size)
            _positive("vae.lr", v.lr)
            if not 0 < v.final_lr_ratio <= 1:
                raise BadOptions(f"vae.final_lr_ratio must be in (0, 1], got {v.final_lr_ratio}")
        if not d.path:
            raise BadOptions("data.path is required (a seeds.json folder, a metadata.jsonl, or a datasets path)")
        _choice("data.format", d.format, DATA_FORMATS)
        _positive("data.resolution", d.resolution)
        if d.resolution % 8:
            raise BadOptions(f"data.resolution must be a multiple of 8, got {d.resolution}")
        if isinstance(d.resize_max, int) and d.resize_max < d.resolution:
            raise BadOptions("data.resize_max must be at least data.resolution")
        _choice("data.cache_latents", str(d.cache_latents).lower(), ("auto", "true", "false"))
        d.cache_latents = str(d.cache_latents).lower()
        if d.cache_latents == "true" and self.augments:
            raise BadOptions("data.cache_latents: latents can only be cached with augmentation off (random_crop, "
                             "flip, resize_max): a flipped or re-cropped image has a different latent")
        _positive("data.num_workers", d.num_workers, zero_ok=True)
        if not 0 <= d.unknown_words <= 1:
            raise BadOptions(f"data.unknown_words must be a probability in [0, 1], got {d.unknown_words}")
        count = d.unknown_word_count
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise BadOptions(f"data.unknown_word_count must be a positive integer, got {count!r}")
        _positive("data.validation_count", d.validation_count, zero_ok=True)
        for key in ("max_samples", "resize_max"):
            if getattr(d, key) is not None:
                _positive(f"data.{key}", getattr(d, key))
        for key in ("lr", "batch_size", "grad_accum", "eps"):
            _positive(f"optim.{key}", getattr(o, key))
        _positive("optim.warmup_steps", o.warmup_steps, zero_ok=True)
        _positive("optim.weight_decay", o.weight_decay, zero_ok=True)
        _positive("optim.max_grad_norm", o.max_grad_norm, zero_ok=True)
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            raise BadOptions(f"optim.betas must be two numbers in [0, 1), got {o.betas}")
        if not 0 <= o.ema_decay < 1:
            raise BadOptions(f"optim.ema_decay must be in [0, 1), got {o.ema_decay}")
        for key in ("drop_text", "drop_image", "drop_both"):
            if not 0 <= getattr(o, key) <= 1:
                raise BadOptions(f"optim.{key} must be a probability in [0, 1]")
        if o.drop_text + o.drop_image + o.drop_both > 1:
            raise BadOptions("optim.drop_text + drop_image + drop_both must not exceed 1")
        _positive("run.max_steps", r.max_steps)
        _choice("run.mixed_precision", r.mixed_precision, PRECISIONS)
        for key in ("checkpoint_every", "log_every", "validation_every", "keep_checkpoints"):
            _positive(f"run.{key}", getattr(r, key), zero_ok=True)
        _positive("run.validation_steps", r.validation_steps)
        if not r.output_dir:
            raise BadOptions("run.output_dir is required")
        return self


def _build_section(factory, section: str, values: dict[str, Any]):
    default = factory()
    fields = {f.name: f for f in dataclasses.fields(default)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise BadOptions(f"unknown key {section}.{unknown[0]!r}; known keys: {', '.join(fields)}")
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(f"{section}.{name}", getattr(default, name), value)
    return dataclasses.replace(default, **kwargs)


def _coerce(name: str, default: Any, value: Any) -> Any:
    """Type-check a YAML value against the field's default (None-able fields accept anything sane)."""
    if value is None:
        return None
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise BadOptions(f"{name} must be true or false, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadOptions(f"{name} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadOptions(f"{name} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, list):
        if not isinstance(value, list):
            raise BadOptions(f"{name} must be a list, got {value!r}")
        return value
    if isinstance(default, str):
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise BadOptions(f"{name} must be a string, got {value!r}")
        return str(value)
    return value


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise BadOptions(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _positive(name: str, value: Any, zero_ok: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadOptions(f"{name} must be a number, got {value!r}")
    if value < 0 or (value == 0 and not zero_ok):
        raise BadOptions(f"{name} must be {'>= 0' if zero_ok else '> 0'}, got {value}")
