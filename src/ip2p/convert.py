"""Original single-file checkpoints (CompVis LDM layout) to and from ip2p :class:`Components`.

InstructPix2Pix was trained in the CompVis latent-diffusion code base (Rombach et al. 2022), whose
checkpoints are one file holding every part of the model under fixed prefixes:

* ``model.diffusion_model.*`` the UNet (InstructPix2Pix: 8 input channels, the noisy latent and the
  input image latent concatenated, Brooks et al. 2023 sec. 3.2);
* ``first_stage_model.*`` the KL autoencoder; ``cond_stage_model.transformer.*`` the CLIP text model;
* optionally ``model_ema.*``: an exponential moving average of the UNet parameters, stored with the
  dots removed from each name (``model_ema.diffusion_modelinput_blocks00weight``).

A file carries no configuration, so the architecture is inferred from tensor shapes; the few numbers
that shapes cannot tell (attention heads, sample sizes, VAE scaling factor, prediction type) take the
SD-1.x values unless ``hints`` say otherwise. Weight renaming LDM -> diffusers uses the converters in
``diffusers.loaders.single_file_utils``; the reverse direction (:func:`save_single_file`) is our own.

Pickle checkpoints are read with ``torch.load(weights_only=True)``: a file that would need to run
code to load is refused, never executed.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from contextlib import contextmanager, nullcontext
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .components import Components
from .errors import BadModel, BadOptions, first_line
from .files import atomic_path

if TYPE_CHECKING:
    import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
EMA_PREFIX = "model_ema."
CLIP_VOCAB_SIZE = 49408
BPE_FILE = Path(__file__).parent / "data" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
META_KEY = "ip2p"  # safetensors metadata entry / top-level ckpt entry with hints and a custom tokenizer

#: Numbers a checkpoint's tensors do not determine, with their SD-1.x defaults.
DEFAULT_HINTS: dict[str, Any] = {
    "attention_head_dim": 8,  # UNet heads per attention layer (SD-1.x configs name it so)
    "text_heads": None,  # CLIP heads; None: hidden/64, or hidden/8 for toy widths
    "sample_size": 64,  # UNet latent size (512 px / 8)
    "vae_sample_size": 512,
    "scaling_factor": 0.18215,  # LDM latent scale (Rombach et al. 2022, sec. 3)
    "norm_num_groups": 32,
    "prediction_type": "epsilon",
    "ema": None,  # None: EMA UNet weights when the file has a complete set; True: require; False: ignore
}


# --------------------------------------------------------------------------------------------
# the CLIP tokenizer, from the BPE merge list shipped in ip2p/data/clip


@lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    lines = gzip.decompress(BPE_FILE.read_bytes()).decode("utf-8").split("\n")
    # CLIP keeps the first 49152 - 256 - 2 merges after the header line (Radford et al. 2021).
    merges = [tuple(line.split()) for line in lines[1 : 1 + 49152 - 256 - 2]]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def real_clip_tokenizer(max_length: int = 77):
    """The CLIP ViT-L/14 tokenizer SD-1.x and InstructPix2Pix use, built offline (49408 tokens)."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=max_length)


def _tokenizer_spec(tokenizer) -> dict | None:
    """vocab/merges of a non-standard tokenizer, to embed in a single file (None for real CLIP)."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE" or "merges" not in model:
        raise BadModel(f"a single file can carry only a CLIP (BPE) tokenizer, not {type(tokenizer).__name__} "
                       f"({model.get('type')}); save this model as a diffusers folder instead")
    if len(model["vocab"]) == CLIP_VOCAB_SIZE and model["vocab"] == _clip_vocab_and_merges()[0]:
        return None
    merges = [m.split(" ") if isinstance(m, str) else list(m) for m in model["merges"]]
    return {"vocab": model["vocab"], "merges": merges, "max_length": int(tokenizer.model_max_length)}


def _tokenizer_from_spec(spec: dict):
    from transformers import CLIPTokenizer

    merges = [tuple(m) for m in spec["merges"]]
    return CLIPTokenizer(vocab=dict(spec["vocab"]), merges=merges, model_max_length=int(spec["max_length"]))


# --------------------------------------------------------------------------------------------
# reading a file safely


def _lightning_stand_in():
    class TrainingState:
        """Inert stand-in for a training-bookkeeping class (holds state, runs nothing)."""

    return TrainingState


def _allowed_globals() -> list:
    """Globals beyond torch's weights-only set that real SD/IP2P checkpoints contain, all inert.

    PyTorch Lightning 1.x keys callback state by the callback class itself, and some files hold
    numpy scalars; the class becomes a plain stand-in and numpy only rebuilds numbers.
    """
    import numpy as np

    stand_in = _lightning_stand_in()
    allowed: list = [
        (stand_in, f"{pkg}.callbacks.model_checkpoint.ModelCheckpoint")
        for pkg in ("pytorch_lightning", "lightning.pytorch")
    ]
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    allowed += [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    allowed.append((np.dtype, "numpy.dtype"))
    allowed += [(getattr(np.dtypes, n), f"numpy.dtypes.{n}") for n in dir(np.dtypes) if n.endswith("DType")]
    return allowed


def _pickle_globals(path: Path) -> list[str] | None:
    """Globals a pickle file names, found without executing it; None if it is not a pickle at all."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                return None if name is None else _scan_pickles(io.BufferedReader(io.BytesIO(archive.read(name))))
        with open(path, "rb") as stream:
            return _scan_pickles(stream)
    except (OSError, zipfile.BadZipFile):
        return None


def _scan_pickles(stream: io.BufferedReader) -> list[str] | None:
    found: list[str] = []
    parsed = 0
    while stream.peek(1):
        strings: list[str] = []  # a legacy torch file is several pickles in a row, then raw bytes
        try:
            for op, arg, _ in pickletools.genops(stream):
                if isinstance(arg, str):
                    strings.append(arg)
                if op.name == "GLOBAL":
                    found.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
        except Exception:  # raw tensor bytes after the pickles, or not a pickle
            break
        parsed += 1
    return found if parsed else None


def _load_pickle(path: Path) -> Any:
    import torch

    try:
        allow = torch.serialization.safe_globals(_allowed_globals())
    except (AttributeError, TypeError):  # older torch: only its own weights-only set
        allow = nullcontext()
    try:
        with allow, warnings.catch_warnings():  # torch warns about pickle protocols it then refuses anyway
            warnings.simplefilter("ignore", UserWarning)
            # zip checkpoints are memory-mapped: an EMA+model file is not read twice over
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            raise BadModel(f"{path}: unreadable checkpoint, the file is corrupt or truncated") from None
        names = _pickle_globals(path)
        if names is None:
            raise BadModel(f"{path}: unreadable checkpoint, the file is corrupt or truncated") from None
        unsafe = sorted({n for n in names if not n.startswith(("torch.", "collections."))})
        what = f" (it references {', '.join(unsafe[:3])})" if unsafe else ""
        raise BadModel(
            f"{path}: refused to load: this pickle checkpoint could execute code when loaded{what}; "
            "convert it to .safetensors from a trusted source and load that instead"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError, IndexError, KeyError, TypeError, AttributeError):
        raise BadModel(f"{path}: unreadable checkpoint, the file is corrupt or truncated") from None


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise BadModel(f"{path}: unreadable .safetensors file ({first_line(exc, 120)})") from None
    return tensors, _parse_meta(metadata.get(META_KEY), path)


def _parse_meta(raw: Any, path: Path) -> dict:
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except (TypeError, ValueError):
        raise BadModel(f"{path}: the embedded '{META_KEY}' metadata is not valid JSON") from None
    return meta if isinstance(meta, dict) else {}


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of a single-file checkpoint (state_dict wrapper removed) and ip2p's metadata."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise BadModel(f"{path}: no such checkpoint file")
    if path.suffix.lower() == ".safetensors":
        return _load_safetensors(path)
    obj = _load_pickle(path)
    meta = {}
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        meta = _parse_meta(obj.get(META_KEY), path)
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise BadModel(f"{path}: the checkpoint holds a {type(obj).__name__}, not a dict of weights")
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}, meta


# --------------------------------------------------------------------------------------------
# what kind of checkpoint is it


def check_layout(sd: dict[str, torch.Tensor], where: str) -> None:
    """Refuse, naming what was found, anything that is not an SD-1.x InstructPix2Pix checkpoint."""
    keys = list(sd)
    if any(k.startswith("conditioner.embedders") for k in keys) or any(
        k.startswith(UNET_PREFIX + "label_emb") for k in keys
    ):
        raise BadModel(f"{where}: SDXL checkpoint, ip2p runs SD-1.x InstructPix2Pix models")
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        raise BadModel(
            f"{where}: SD-2.x checkpoint (OpenCLIP text encoder under cond_stage_model.model), "
            "ip2p runs SD-1.x InstructPix2Pix models with a CLIP ViT-L text encoder"
        )
    conv_in = sd.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None:
        sample = ", ".join(sorted(keys)[:3]) or "the file is empty"
        raise BadModel(f"{where}: no Stable Diffusion weights found (keys look like {sample})")
    for prefix, part in ((VAE_PREFIX, "VAE"), (CLIP_PREFIX, "CLIP text encoder")):
        if not any(k.startswith(prefix) for k in keys):
            raise BadModel(f"{where}: the checkpoint has a UNet but no {part} ({prefix}* keys)")
    channels = conv_in.shape[1]
    if channels == 4:
        raise BadModel(
            f"{where}: UNet has 4 input channels: a text-to-image Stable Diffusion checkpoint, not "
            "InstructPix2Pix; train one with `ip2p train`"
        )
    if channels == 9:
        raise BadModel(f"{where}: UNet has 9 input channels: an inpainting checkpoint, not InstructPix2Pix")
    if channels != 8:
        raise BadModel(f"{where}: UNet has {channels} input channels; InstructPix2Pix needs 8")


def _strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _indices(keys, pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := regex.match(k))})


def _ema_key(key: str) -> str:
    """LDM's EMA names a parameter by its path below ``model.`` with the dots removed."""
    return EMA_PREFIX + key[len("model.") :].replace(".", "")


def select_unet_weights(sd: dict, ema: bool | None, where: str) -> tuple[dict, str]:
    """The UNet tensors to use (EMA when wanted and complete) and which set they are."""
    unet_keys = [k for k in sd if k.startswith(UNET_PREFIX)]
    present = sum(_ema_key(k) in sd for k in unet_keys)
    complete = present == len(unet_keys)
    if ema is True and not complete:
        raise BadModel(f"{where}: EMA weights asked for, but the file has {present} of {len(unet_keys)}")
    if ema is False or not complete:
        which = "model" if present == 0 else f"model (EMA incomplete: {present} of {len(unet_keys)})"
        return {k: sd[k] for k in unet_keys}, which
    return {k: sd[_ema_key(k)] for k in unet_keys}, "ema"


# --------------------------------------------------------------------------------------------
# architecture from tensor shapes


def infer_unet_config(unet: dict[str, torch.Tensor], hints: dict, where: str) -> dict:
    """diffusers ``UNet2DConditionModel`` config for an LDM UNet (keys without the prefix)."""
    keys = list(unet)
    base = unet["input_blocks.0.0.weight"].shape[0]
    levels: list[dict] = [{"resnets": 0, "widths": set(), "depths": set()}]
    for index in _indices(keys, r"input_blocks\.(\d+)\.")[1:]:
        if f"input_blocks.{index}.0.op.weight" in unet:
            levels.append({"resnets": 0, "widths": set(), "depths": set()})
            continue
        level = levels[-1]
        level["resnets"] += 1
        level["widths"].add(unet[f"input_blocks.{index}.0.out_layers.3.weight"].shape[0])
        blocks = _indices(keys, rf"input_blocks\.{index}\.1\.transformer_blocks\.(\d+)\.")
        level["depths"].add(len(blocks))
    per_level = {lv["resnets"] for lv in levels}
    if len(per_level) != 1 or any(len(lv["widths"]) != 1 or len(lv["depths"]) != 1 for lv in levels):
        raise BadModel(f"{where}: UNet levels are irregular; not an SD-1.x UNet layout")
    layers = per_level.pop()
    widths = [lv["widths"].pop() for lv in levels]
    depths = [lv["depths"].pop() for lv in levels]
    attn2 = next((unet[k] for k in keys if k.endswith("attn2.to_k.weight")), None)
    if attn2 is None or "middle_block.1.proj_in.weight" not in unet:
        raise BadModel(f"{where}: UNet has no cross-attention; not a text-conditioned SD-1.x UNet")
    outputs = _indices(keys, r"output_blocks\.(\d+)\.")
    if len(outputs) != len(levels) * (layers + 1):
        raise BadModel(f"{where}: UNet has {len(outputs)} output blocks, expected {len(levels) * (layers + 1)}")
    up_attention = [f"output_blocks.{j * (layers + 1)}.1.proj_in.weight" in unet for j in range(len(levels))]
    heads = hints["attention_head_dim"]
    for width, depth in zip(widths, depths, strict=True):
        if depth and isinstance(heads, int) and width % heads:
            raise BadModel(
                f"{where}: attention width {width} is not divisible by {heads} heads; "
                "pass hints={'attention_head_dim': N}"
            )
    mid_depth = len(_indices(keys, r"middle_block\.1\.transformer_blocks\.(\d+)\."))
    depth_list = [d or 1 for d in depths]
    if mid_depth != depth_list[-1]:
        raise BadModel(f"{where}: middle block depth {mid_depth} differs from the last level's; not supported")
    time_dim = unet["time_embed.0.weight"].shape[0]
    config = {
        "sample_size": hints["sample_size"],
        "in_channels": unet["input_blocks.0.0.weight"].shape[1],
        "out_channels": unet["out.2.weight"].shape[0],
        "down_block_types": tuple("CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths),
        "up_block_types": tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attention),
        "block_out_channels": tuple(widths),
        "layers_per_block": layers,
        "cross_attention_dim": attn2.shape[1],
        "attention_head_dim": heads,
        "transformer_layers_per_block": depth_list[0] if len(set(depth_list)) == 1 else depth_list,
        "use_linear_projection": unet["middle_block.1.proj_in.weight"].ndim == 2,
        "norm_num_groups": hints["norm_num_groups"],
    }
    if widths[0] != base:
        raise BadModel(f"{where}: first UNet level is {widths[0]} wide but conv_in gives {base}")
    if time_dim != 4 * base:
        config["time_embedding_dim"] = time_dim
    return config


def infer_vae_config(vae: dict[str, torch.Tensor], hints: dict, where: str) -> dict:
    """diffusers ``AutoencoderKL`` config for an LDM KL autoencoder (keys without the prefix)."""
    keys = list(vae)
    levels = _indices(keys, r"encoder\.down\.(\d+)\.")
    if not levels or "decoder.conv_in.weight" not in vae:
        raise BadModel(f"{where}: the VAE weights are incomplete (no encoder levels or decoder)")
    layers = len(_indices(keys, r"encoder\.down\.0\.block\.(\d+)\."))
    widths = [vae[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] for i in levels]
    return {
        "in_channels": vae["encoder.conv_in.weight"].shape[1],
        "out_channels": vae["decoder.conv_out.weight"].shape[0],
        "down_block_types": ("DownEncoderBlock2D",) * len(levels),
        "up_block_types": ("UpDecoderBlock2D",) * len(levels),
        "block_out_channels": tuple(widths),
        "layers_per_block": layers,
        "latent_channels": vae["decoder.conv_in.weight"].shape[1],
        "norm_num_groups": hints["norm_num_groups"],
        "sample_size": hints["vae_sample_size"],
        "scaling_factor": hints["scaling_factor"],
        "use_quant_conv": "quant_conv.weight" in vae,
        "use_post_quant_conv": "post_quant_conv.weight" in vae,
        "mid_block_add_attention": "encoder.mid.attn_1.q.weight" in vae,
    }


def infer_text_config(clip: dict[str, torch.Tensor], hints: dict, where: str) -> dict:
    """``CLIPTextConfig`` fields for a CLIP text model (keys without any ``text_model.`` prefix)."""
    try:
        vocab, hidden = clip["embeddings.token_embedding.weight"].shape
        positions = clip["embeddings.position_embedding.weight"].shape[0]
        intermediate = clip["encoder.layers.0.mlp.fc1.weight"].shape[0]
    except KeyError as exc:
        raise BadModel(f"{where}: the CLIP text encoder weights are incomplete (no {exc.args[0]})") from None
    heads = hints["text_heads"] or (hidden // 64 if hidden % 64 == 0 else hidden // 8 if hidden % 8 == 0 else 1)
    if hidden % heads:
        raise BadModel(f"{where}: text width {hidden} is not divisible by {heads} heads; pass hints={{'text_heads': N}}")
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": len(_indices(list(clip), r"encoder\.layers\.(\d+)\.")),
        "num_attention_heads": heads,
        "max_position_embeddings": positions,
        "hidden_act": "quick_gelu",  # OpenAI CLIP's activation (Radford et al. 2021)
    }


# --------------------------------------------------------------------------------------------
# loading


def _check_hints(hints: dict | None, embedded: dict) -> dict:
    """Defaults, then what the file says about itself, then the caller's ``hints``."""
    if hints is not None and not isinstance(hints, dict):
        raise BadOptions("hints must be a dict")
    unknown = sorted(set(hints or {}) - set(DEFAULT_HINTS))
    if unknown:
        raise BadOptions(f"unknown checkpoint hint(s) {', '.join(unknown)}; known: {', '.join(DEFAULT_HINTS)}")
    merged = dict(DEFAULT_HINTS)
    merged.update({k: v for k, v in embedded.items() if k in DEFAULT_HINTS and k != "ema"})
    merged.update(hints or {})
    if merged["ema"] not in (None, True, False):
        raise BadOptions("hint 'ema' must be true, false or null (auto)")
    return merged


def _build(factory, state, where: str, part: str):
    """Instantiate without random init where accelerate allows, then load every tensor strictly.

    ``state`` is a dict, or a function of the new module's own key names returning one.
    """
    try:
        from accelerate import init_empty_weights
    except ImportError:  # accelerate is optional: a random init first is only slower
        init_empty_weights = nullcontext
    try:
        with init_empty_weights():
            module = factory()
        if callable(state):
            state = state(set(module.state_dict()))
        missing, unexpected = module.load_state_dict(_as_float32(state), strict=False, assign=True)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise BadModel(f"{where}: the {part} weights do not fit the inferred architecture ({first_line(exc, 200)})") from None
    if missing or unexpected:
        detail = f"missing {sorted(missing)[:2]}" if missing else f"unexpected {sorted(unexpected)[:2]}"
        raise BadModel(f"{where}: the {part} weights do not fit the inferred architecture ({detail})")
    return module.eval().requires_grad_(False)


@contextmanager
def _incomplete(where: str, part: str):
    """A tensor the layout needs but the file lacks becomes a one-line :class:`BadModel`."""
    try:
        yield
    except (KeyError, IndexError) as exc:
        missing = exc.args[0] if isinstance(exc, KeyError) and exc.args else "a tensor"
        raise BadModel(f"{where}: the {part} weights are incomplete (no {missing})") from None


def _as_float32(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def _text_state(sd: dict, module_keys: set[str]) -> dict:
    """CLIP tensors named as this transformers version's ``CLIPTextModel`` names them."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    clip = convert_ldm_clip_checkpoint(sd)
    clip = {k.removeprefix("text_model."): v for k, v in clip.items()}
    clip.pop("embeddings.position_ids", None)  # a buffer old transformers versions saved
    wrapped = any(k.startswith("text_model.") for k in module_keys)
    return {("text_model." + k if wrapped else k): v for k, v in clip.items()}


def _resolve_tokenizer(tokenizer, meta: dict, vocab: int, positions: int, where: str):
    from transformers import CLIPTokenizer

    if isinstance(tokenizer, str | os.PathLike):
        try:
            tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer))
        except (OSError, ValueError, TypeError) as exc:
            raise BadModel(f"{tokenizer}: not a CLIP tokenizer folder ({first_line(exc, 120)})") from None
    if tokenizer is None and meta.get("tokenizer"):
        try:
            tokenizer = _tokenizer_from_spec(meta["tokenizer"])
        except Exception:  # the tokenizers library raises its own exception types
            raise BadModel(f"{where}: the tokenizer embedded in the file is malformed") from None
    if tokenizer is None:
        if vocab != CLIP_VOCAB_SIZE:
            raise BadModel(
                f"{where}: the checkpoint's text encoder has a non-standard vocabulary ({vocab} tokens, "
                f"CLIP has {CLIP_VOCAB_SIZE}), so a tokenizer folder must be given"
            )
        tokenizer = real_clip_tokenizer(max_length=positions)
    if len(tokenizer) > vocab:
        raise BadModel(f"{where}: the tokenizer has {len(tokenizer)} tokens but the text encoder only {vocab}")
    return tokenizer


def load_single_file(path: str | Path, *, tokenizer=None, hints: dict | None = None) -> Components:
    """Load an original LDM-layout InstructPix2Pix checkpoint as float32 CPU :class:`Components`.

    ``tokenizer`` (a ``CLIPTokenizer`` or a folder) is needed only for text encoders without the
    standard CLIP vocabulary; ``hints`` override the numbers shapes cannot tell (:data:`DEFAULT_HINTS`).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    from .components import SD15_SCHEDULER_CONFIG

    path = Path(path)
    where = str(path)
    sd, meta = read_checkpoint(path)
    check_layout(sd, where)
    opts = _check_hints(hints, meta.get("hints") or {})

    unet_sd, weights = select_unet_weights(sd, opts["ema"], where)
    with _incomplete(where, "UNet"):
        unet_config = infer_unet_config(_strip(unet_sd, UNET_PREFIX), opts, where)
        unet_state = convert_ldm_unet_checkpoint(unet_sd, unet_config)
    unet = _build(lambda: UNet2DConditionModel(**unet_config), unet_state, where, "UNet")

    vae_sd = {k: v for k, v in sd.items() if k.startswith(VAE_PREFIX)}
    with _incomplete(where, "VAE"):
        vae_config = infer_vae_config(_strip(vae_sd, VAE_PREFIX), opts, where)
        vae_state = convert_ldm_vae_checkpoint(vae_sd, vae_config)
    vae = _build(lambda: AutoencoderKL(**vae_config), vae_state, where, "VAE")

    clip_raw = {k.removeprefix("text_model."): v for k, v in _strip(sd, CLIP_PREFIX).items()}
    text_fields = infer_text_config(clip_raw, opts, where)
    tok = _resolve_tokenizer(tokenizer, meta, text_fields["vocab_size"], text_fields["max_position_embeddings"], where)
    text_config = CLIPTextConfig(
        **text_fields, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    clip_sd = {k: v for k, v in sd.items() if k.startswith(CLIP_PREFIX)}
    text_encoder = _build(lambda: CLIPTextModel(text_config), lambda keys: _text_state(clip_sd, keys),
                          where, "text encoder")

    scheduler_config = dict(SD15_SCHEDULER_CONFIG, prediction_type=opts["prediction_type"])
    return Components(unet, vae, text_encoder, tok, scheduler_config, name=where, source=where,
                      extra={"format": "ldm-single-file", "weights": weights})


# --------------------------------------------------------------------------------------------
# saving: diffusers names -> LDM names


_RESNET_TO_LDM = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                  ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))
_UNET_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
               "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet_name(rest: str, table=_RESNET_TO_LDM) -> str:
    head, _, tail = rest.partition(".")
    return dict(table).get(head, head) + "." + tail


def _unet_to_ldm(key: str, layers: int, up_attention: list[bool]) -> str:
    head, _, tail = key.rpartition(".")
    if head in _UNET_FIXED:
        return f"{_UNET_FIXED[head]}.{tail}"
    step = layers + 1
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block = 1 + int(m[1]) * step + int(m[3])
        return f"input_blocks.{block}.0.{_resnet_name(m[4])}" if m[2] == "resnets" else f"input_blocks.{block}.1.{m[4]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * step}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.([01])\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet_name(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block = int(m[1]) * step + int(m[3])
        return f"output_blocks.{block}.0.{_resnet_name(m[4])}" if m[2] == "resnets" else f"output_blocks.{block}.1.{m[4]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        index = int(m[1])
        return f"output_blocks.{index * step + layers}.{2 if up_attention[index] else 1}.conv.{m[2]}"
    raise BadModel(f"UNet parameter {key} has no place in the SD-1.x LDM layout")


def _vae_to_ldm(key: str, levels: int) -> str:
    vae_resnet = (("conv_shortcut", "nin_shortcut"),)
    if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", key):
        return f"{m[1]}.norm_out.{m[2]}"
    if re.fullmatch(r"(encoder\.|decoder\.)?(conv_in|conv_out|quant_conv|post_quant_conv)\.\w+", key):
        return key
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{_resnet_name(m[3], vae_resnet)}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{_resnet_name(m[3], vae_resnet)}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_resnet_name(m[3], vae_resnet)}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)", key):
        return f"{m[1]}.mid.attn_1.{_VAE_ATTENTION[m[2]]}.{m[3]}"
    raise BadModel(f"VAE parameter {key} has no place in the LDM autoencoder layout")


def to_ldm_state_dict(components: Components) -> dict[str, torch.Tensor]:
    """Every weight of ``components`` under its original CompVis LDM name."""
    import torch

    unet_config = components.unet.config
    layers = unet_config.layers_per_block
    if not isinstance(layers, int):
        raise BadModel("UNet has per-level layers_per_block; the LDM layout needs one number")
    up_attention = [t.startswith("CrossAttn") for t in unet_config.up_block_types]
    out: dict[str, torch.Tensor] = {}
    for key, value in components.unet.state_dict().items():
        out[UNET_PREFIX + _unet_to_ldm(key, layers, up_attention)] = value
    levels = len(components.vae.config.block_out_channels)
    for key, value in components.vae.state_dict().items():
        name = _vae_to_ldm(key, levels)
        if ".mid.attn_1." in name and name.endswith("weight") and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)  # LDM computes attention with 1x1 convolutions
        out[VAE_PREFIX + name] = value
    for key, value in components.text_encoder.state_dict().items():
        out[CLIP_PREFIX + "text_model." + key.removeprefix("text_model.")] = value
    positions = components.text_encoder.config.max_position_embeddings
    out[CLIP_PREFIX + "text_model.embeddings.position_ids"] = torch.arange(positions).unsqueeze(0)
    return out


def _embedded_meta(components: Components, embed_tokenizer: bool) -> str:
    unet, vae, text = components.unet.config, components.vae.config, components.text_encoder.config
    heads = unet.num_attention_heads or unet.attention_head_dim
    hints = {
        "attention_head_dim": list(heads) if isinstance(heads, list | tuple) else heads,
        "text_heads": text.num_attention_heads,
        "sample_size": unet.sample_size,
        "vae_sample_size": vae.sample_size,
        "scaling_factor": vae.scaling_factor,
        "norm_num_groups": unet.norm_num_groups,
        "prediction_type": components.scheduler_config.get("prediction_type", "epsilon"),
    }
    meta: dict[str, Any] = {"hints": hints}
    spec = _tokenizer_spec(components.tokenizer) if embed_tokenizer else None
    if spec:
        meta["tokenizer"] = spec
    return json.dumps(meta)


def save_single_file(components: Components, path: str | Path, *, embed_tokenizer: bool = True) -> Path:
    """Write ``components`` as one original-layout checkpoint (``.safetensors`` or ``.ckpt``), atomically.

    The file also carries a small JSON entry (safetensors metadata / a top-level ckpt key) with the
    numbers shapes cannot tell and, when the tokenizer is not CLIP's own, its vocabulary; other
    LDM tools ignore it.
    """
    import torch

    from .architectures import PixelUnshuffleAutoencoder, ResidualUNet2DConditionModel

    if isinstance(components.vae, PixelUnshuffleAutoencoder) or isinstance(components.unet, ResidualUNet2DConditionModel):
        raise BadModel("this model uses ip2p's exact autoencoder or residual UNet, which the original single-file "
                       "layout cannot express; keep it as a diffusers folder")

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".ckpt", ".pt", ".pth"):
        raise BadOptions(f"{path}: a single-file checkpoint must end in .safetensors or .ckpt")
    state = {k: v.detach().cpu().contiguous() for k, v in to_ldm_state_dict(components).items()}
    meta = _embedded_meta(components, embed_tokenizer)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(tmp), metadata={"format": "pt", META_KEY: meta})
        else:
            torch.save({"state_dict": state, META_KEY: meta}, tmp)
    return path
