"""Finding, loading and placing InstructPix2Pix models.

A model reference is one of:

* a bundled model name (``demo``), shipped inside the package;
* a local diffusers folder (``model_index.json`` plus component folders);
* an original single-file checkpoint (``.ckpt`` / ``.safetensors`` in the LDM layout), converted on
  load by :mod:`ip2p.convert`;
* a Hugging Face hub id (``timbrooks/instruct-pix2pix``), read from the local HF cache (which
  honours ``HF_HOME`` and ``HF_HUB_OFFLINE``); :func:`download` fetches one.

Everything ends up as :class:`Components` on one device and dtype. The sampler never reads files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .components import (
    COMPONENT_NAMES,
    RECOMMENDED_FILE,
    SD15_SCHEDULER_CONFIG,
    Components,
    quiet_transformers_bars,
    save_diffusers,
)
from .errors import BadModel, BadOptions, ModelNotFound, first_line

DEFAULT_HUB_MODEL = "timbrooks/instruct-pix2pix"
BUNDLED_DIR = Path(__file__).parent / "data" / "models"
KNOWN_HUB_MODELS = {
    "timbrooks/instruct-pix2pix": "the original InstructPix2Pix (Brooks et al. 2023)",
    "vinesmsuic/magicbrush-jul7": "MagicBrush fine-tune (Zhang et al. 2023), diffusers layout",
}
SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth", ".bin")


# --------------------------------------------------------------------------------------------
# device and dtype


def resolve_device(device: str | None = "auto"):
    """``auto`` picks cuda, then mps, then cpu; an explicit device must exist."""
    import torch

    name = (device or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise BadOptions(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadOptions(f"device {device!r} asked for, but CUDA is not available on this machine")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise BadOptions(f"device {device!r} asked for, but MPS is not available on this machine")
    return dev


_DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
           "half": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16"}


def resolve_dtype(dtype: str | None, device) -> Any:
    """``auto`` is fp16 on CUDA and fp32 elsewhere; fp16, bf16 and fp32 can be asked for."""
    import torch

    if dtype is None or isinstance(dtype, str) and dtype.lower() == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPES.get(str(dtype).lower())
    if name is None:
        raise BadOptions(f"unknown dtype {dtype!r}; use auto, fp32, fp16 or bf16")
    return getattr(torch, name)


# --------------------------------------------------------------------------------------------
# resolving a reference


def bundled_models() -> dict[str, Path]:
    """Names of the models shipped inside the package."""
    if not BUNDLED_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(BUNDLED_DIR.iterdir()) if (p / "model_index.json").is_file()}


def cached_hub_models() -> list[str]:
    """Hub ids of diffusers models present in the local HF cache (no network)."""
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir()
    except Exception:  # no cache yet, or unreadable: nothing cached
        return []
    found = []
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        if any(f.file_name == "model_index.json" for rev in repo.revisions for f in rev.files):
            found.append(repo.repo_id)
    return sorted(found)


def is_in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "model_index.json")
    except Exception:
        return False
    return isinstance(hit, str)


def default_model() -> str:
    """The model used when none is named: the full model if cached, else the bundled demo."""
    if is_in_hf_cache(DEFAULT_HUB_MODEL):
        return DEFAULT_HUB_MODEL
    if "demo" in bundled_models():
        return "demo"
    raise ModelNotFound(
        f"no model given, {DEFAULT_HUB_MODEL} is not in the local cache and no bundled demo model is "
        f"installed; run `ip2p download` or pass --model PATH"
    )


def describe_default(name: str) -> str:
    """The one line a surface prints about the model it uses by default."""
    if name == "demo":
        return (
            "ip2p: using the bundled demo model (shapes world, 64x64); for real photos run "
            f"`ip2p download` to get {DEFAULT_HUB_MODEL}"
        )
    return f"ip2p: using {name}"


def _looks_like_hub_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith((".", "/", "~")) and not Path(ref).exists()


def resolve_folder(ref: str) -> Path:
    """Turn a bundled name, folder or hub id into a local diffusers folder (no network)."""
    bundled = bundled_models()
    if ref in bundled:
        return bundled[ref]
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file() and not (path / "unet").is_dir():
            raise BadModel(f"{ref}: folder has no model_index.json; it is not a diffusers model folder")
        return path
    if path.exists():
        raise BadModel(f"{ref}: not a diffusers folder or a single-file checkpoint")
    if not _looks_like_hub_id(ref):
        known = ", ".join(sorted(bundled)) or "none installed"
        raise ModelNotFound(f"model {ref!r} not found: not a file, a folder, a hub id or a bundled model ({known})")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref, local_files_only=True, allow_patterns=_hub_patterns()))
    except Exception:
        raise ModelNotFound(
            f"model {ref!r} is not in the local Hugging Face cache ({hf_cache_dir()}); "
            f"get it with `ip2p download {ref}`"
        ) from None


def hf_cache_dir() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except Exception:
        return os.path.expanduser("~/.cache/huggingface/hub")


def _hub_patterns() -> list[str]:
    """What a model needs from the hub: configs, weights and every tokenizer file (tokenizer.json,
    vocab/merges, sentencepiece ``*.model``, tiktoken), whichever kind its tokenizer is."""
    return [
        "model_index.json",
        *(f"{c}/*.json" for c in COMPONENT_NAMES),
        "tokenizer/*.txt",
        "tokenizer/*.model",
        "tokenizer/*.tiktoken",
        *(f"{c}/*.safetensors" for c in ("unet", "vae", "text_encoder")),
    ]


def download(ref: str = DEFAULT_HUB_MODEL, progress: bool = True) -> Path:
    """Fetch a hub model into the HF cache; a one-line :class:`ModelNotFound` when offline."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(ref, allow_patterns=_hub_patterns()))
    except Exception as exc:
        raise ModelNotFound(f"could not download {ref!r} (offline or no such model?): {first_line(exc, 200)}") from None


# --------------------------------------------------------------------------------------------
# loading


def _check_architecture(unet_config: dict, text_config: dict | None, where: str, latent_channels: int = 4) -> None:
    in_channels = unet_config.get("in_channels")
    wanted = 2 * latent_channels
    if unet_config.get("addition_embed_type") == "text_time" or unet_config.get("projection_class_embeddings_input_dim"):
        raise BadModel(f"{where}: this is an SDXL-style UNet; ip2p runs SD-1.x InstructPix2Pix models")
    if in_channels == latent_channels:
        raise BadModel(
            f"{where}: UNet has {in_channels} input channels, a text-to-image model; InstructPix2Pix needs "
            f"{wanted} (train one from it with `ip2p train`)"
        )
    if in_channels != wanted:
        raise BadModel(f"{where}: UNet has {in_channels} input channels; InstructPix2Pix needs {wanted} "
                       f"(twice the VAE's {latent_channels} latent channels)")


def load_folder(folder: str | Path, name: str | None = None, *, instruct: bool = True) -> Components:
    """Load a diffusers folder on the CPU in float32; ``instruct`` demands an 8-channel UNet."""
    import torch

    folder = Path(folder)
    for part in ("unet", "vae", "text_encoder", "tokenizer"):
        if not (folder / part).is_dir():
            raise BadModel(f"{folder}: missing the {part}/ folder of a diffusers InstructPix2Pix model")
    try:
        unet_config = json.loads((folder / "unet" / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise BadModel(f"{folder}: unreadable unet/config.json ({exc})") from None
    unet_class, vae_class, vae_config = _component_classes(folder, unet_config)
    if instruct:
        _check_architecture(unet_config, None, str(folder), int(vae_config.get("latent_channels", 4)))
    text_class, tokenizer_class = _transformers_classes(folder)
    try:
        unet = unet_class.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32)
        vae = vae_class.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise BadModel(f"{folder}: could not load the model: {first_line(exc)}") from None
    try:
        with quiet_transformers_bars():
            text_encoder = text_class.from_pretrained(folder, subfolder="text_encoder", torch_dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError, ImportError) as exc:
        raise BadModel(f"{folder}: could not load text_encoder/ as {text_class.__name__}: {first_line(exc)}") from None
    try:
        tokenizer = tokenizer_class.from_pretrained(folder, subfolder="tokenizer")
    except Exception as exc:  # the tokenizers library raises its own exception types
        raise BadModel(f"{folder}: could not load tokenizer/ as {tokenizer_class.__name__}: {first_line(exc)}") from None
    scheduler_config = _read_scheduler_config(folder)
    recommended = read_recommended(folder)
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
    return Components(unet, vae, text_encoder, tokenizer, scheduler_config, name=name or folder.name,
                      source=str(folder), extra={"recommended": recommended} if recommended else {})


def _transformers_classes(folder: Path):
    """The text encoder and tokenizer classes the folder's model_index.json names, looked up on
    ``transformers``; ``CLIPTextModel`` / ``AutoTokenizer`` when it has no index or names no class
    of the right kind (``AutoTokenizer`` then reads the tokenizer's own tokenizer_config.json)."""
    import transformers

    index: dict = {}
    path = folder / "model_index.json"
    if path.is_file():
        try:
            index = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise BadModel(f"{path}: not valid JSON ({exc})") from None

    def named(part: str, kind: type, default: type) -> type:
        entry = index.get(part) if isinstance(index, dict) else None
        if isinstance(entry, list | tuple) and len(entry) == 2 and entry[0] == "transformers" \
                and isinstance(entry[1], str) and not entry[1].startswith("_"):
            cls = getattr(transformers, entry[1], None)
            if isinstance(cls, type) and issubclass(cls, kind):
                return cls
        return default

    return (named("text_encoder", transformers.PreTrainedModel, transformers.CLIPTextModel),
            named("tokenizer", transformers.PreTrainedTokenizerBase, transformers.AutoTokenizer))


def recommended_for(ref: str) -> dict:
    """The recommended edit settings of model ``ref`` without loading it ({} for single files)."""
    if Path(ref).expanduser().is_file():
        return {}
    return read_recommended(resolve_folder(ref))


def native_resolution_of(ref: str) -> int:
    """The image size model ``ref`` was trained at, from its configs without loading it (512 for
    single files, SD-1.x's)."""
    if Path(ref).expanduser().is_file():
        return 512
    folder = resolve_folder(ref)
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
        return native_resolution(unet, vae)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadModel(f"{folder}: unreadable unet/vae config ({exc})") from None


def native_resolution(unet_config, vae_config) -> int:
    """UNet sample size times the VAE factor 2 ** (levels - 1), as diffusers derives it."""
    return int(unet_config["sample_size"]) * 2 ** (len(vae_config["block_out_channels"]) - 1)


def read_recommended(folder: Path) -> dict:
    """A model folder's recommended edit settings (``ip2p.json``), checked; {} when it has none.

    Example: ``{"scheduler": "euler", "steps": 20, "guidance_scale": 3.0, "image_guidance_scale": 1.2}``.
    The editor uses them for the fields a user leaves out.
    """
    from .options import RECOMMENDABLE, EditOptions

    path = folder / RECOMMENDED_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadModel(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or set(data) - set(RECOMMENDABLE):
        raise BadModel(f"{path}: expected an object with some of {', '.join(RECOMMENDABLE)}")
    try:
        checked = EditOptions(**data).check()
    except BadOptions as exc:
        raise BadModel(f"{path}: {exc}") from None
    return {name: getattr(checked, name) for name in data}


def _component_classes(folder: Path, unet_config: dict):
    """The UNet and VAE classes a folder's configs name (diffusers' own or ip2p's, architectures.py),
    and the VAE's config."""
    from .architectures import UNET_CLASSES, VAE_CLASSES

    try:
        vae_config = json.loads((folder / "vae" / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise BadModel(f"{folder}: unreadable vae/config.json ({exc})") from None
    vae_name = vae_config.get("_class_name", "AutoencoderKL")
    unet_name = unet_config.get("_class_name", "UNet2DConditionModel")
    if unet_name not in UNET_CLASSES:
        raise BadModel(f"{folder}: unknown UNet class {unet_name!r}; ip2p reads {', '.join(UNET_CLASSES)}")
    if vae_name not in VAE_CLASSES:
        raise BadModel(f"{folder}: unknown VAE class {vae_name!r}; ip2p reads {', '.join(VAE_CLASSES)}")
    return UNET_CLASSES[unet_name], VAE_CLASSES[vae_name], vae_config


def _read_scheduler_config(folder: Path) -> dict:
    path = folder / "scheduler" / "scheduler_config.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError:
            raise BadModel(f"{folder}: scheduler/scheduler_config.json is not valid JSON") from None
    return dict(SD15_SCHEDULER_CONFIG)


def read_model(ref: str, *, instruct: bool = True) -> Components:
    """Resolve ``ref`` (see module docstring) and load it on the CPU in float32.

    ``instruct=False`` also accepts a text-to-image folder (the trainer widens those itself).
    """
    path = Path(ref).expanduser()
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise BadModel(f"{ref}: not a model file (expected .ckpt or .safetensors)")
        from .convert import load_single_file

        components = load_single_file(path)
    else:
        components = load_folder(resolve_folder(ref), name=ref, instruct=instruct)
    components.name = ref
    return components


def load_components(model: str | Path | None = None, device="auto", dtype="auto") -> Components:
    """Resolve ``model`` (see module docstring), load it and place it on ``device``/``dtype``."""
    ref = str(model) if model is not None else default_model()
    dev = resolve_device(device) if not hasattr(device, "type") else device
    dt = resolve_dtype(dtype, dev)
    return read_model(ref).to(dev, dt)


def convert_model(source: str | Path, target: str | Path, *, tokenizer=None, hints: dict | None = None) -> Path:
    """Re-write a model: a single file or any model reference, to a single file or a diffusers folder.

    ``target`` ending in .safetensors/.ckpt is written as one LDM-layout file, anything else as a
    stock diffusers folder. Weights are copied exactly (float32).
    """
    from .convert import load_single_file, save_single_file

    source_path, target = Path(source).expanduser(), Path(target).expanduser()
    if source_path.is_file() and source_path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        components = load_single_file(source_path, tokenizer=tokenizer, hints=hints)
    elif tokenizer is not None or hints:
        raise BadOptions("--tokenizer and --hint apply only when converting from a single file")
    else:
        components = load_components(str(source), device="cpu", dtype="fp32")
    if target.suffix.lower() in (".safetensors", ".ckpt", ".pt", ".pth"):
        return save_single_file(components, target)
    occupied = any(target.iterdir()) if target.is_dir() else target.exists()
    if occupied:
        raise BadOptions(f"{target}: already exists and is not an empty folder")
    return save_diffusers(components, target)
