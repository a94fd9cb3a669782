"""The metrics of ``ip2p eval``, each as its source defines it.

With unit-normalised CLIP embeddings ``E_I`` (image) and ``E_T`` (text), input image ``x``, output
``y``, target ``t``, input caption ``c_x`` and output caption ``c_y``:

* ``clip_text`` = cos(E_I(y), E_T(c_y)): the output shows its caption (CLIP score, Hessel et al. 2021).
* ``clip_direction`` = cos(E_I(y) - E_I(x), E_T(c_y) - E_T(c_x)): the image changed the way the
  caption changed (the directional similarity of Gal et al. 2022, StyleGAN-NADA), InstructPix2Pix's
  measure of edit consistency in its comparison with SDEdit (Brooks et al. 2023).
* ``clip_image`` = cos(E_I(x), E_I(y)): the output stays close to the input (the paper's other axis).
* ``l1`` / ``l2``: mean absolute / squared difference of output and target in [0, 1] RGB, the output
  resized to the target's size first (MagicBrush, Zhang et al. 2023, ``image_eval.py``).
* ``clip_i`` = cos(E'_I(y), E'_I(t)) and ``clip_t`` = cos(E'_I(y), E'_T(local caption, else c_y)),
  with MagicBrush's CLIP (ViT-B/32 there), and ``dino`` = cos(D(y), D(t)) with DINO ViT-S/16's class
  token (Caron et al. 2021), resized to 256/224 of its input size and centre-cropped, as MagicBrush does.
* ``fid``: the Fréchet distance between Gaussian fits of two sets' features (Heusel et al. 2017), by
  torchmetrics; Inception features need torch-fidelity and its weights, or CLIP/DINO features
  from the models above, or any feature network.

CLIP and DINO load through ``transformers`` (``CLIPModel``, ``ViTModel``) from a hub id in the local
cache or a folder. CLIP's preprocessing (:func:`ip2p.datagen.clipfilter.preprocess`) is the one the
data generator's CLIP filter uses.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..datagen.clipfilter import ClipScorer, to_tensor
from ..errors import BadModel, BadOptions, ModelNotFound, first_line

#: Per-edit metrics, in report order; ``fid`` is per set.
EDIT_METRICS = ("clip_text", "clip_direction", "clip_image", "l1", "l2", "clip_i", "dino", "clip_t")
METRICS = (*EDIT_METRICS, "fid")
#: Which loaded model each metric needs.
NEEDS = {"clip_text": "clip", "clip_direction": "clip", "clip_image": "clip", "clip_i": "clip_i",
         "clip_t": "clip_i", "dino": "dino"}
#: Higher is better for these; lower for the rest (l1, l2, fid).
HIGHER_IS_BETTER = ("clip_text", "clip_direction", "clip_image", "clip_i", "dino", "clip_t")
DEFAULT_CLIP = "openai/clip-vit-large-patch14"  # the paper's metrics
DEFAULT_CLIP_I = "openai/clip-vit-base-patch32"  # MagicBrush's CLIP-I / CLIP-T (clip.load("ViT-B/32"))
DEFAULT_DINO = "facebook/dino-vits16"  # MagicBrush's DINO (dino_vits16)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FID_FEATURES = ("inception", "clip", "dino")


def check_metrics(names: Iterable[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip().lower().replace("-", "_") for n in names if n.strip()))
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise BadOptions(f"unknown metric {unknown[0] if unknown else '(none)'!r}; known: {', '.join(METRICS)}",
                         param="--metrics")
    return names


def rgb(image) -> Image.Image:
    return image if isinstance(image, Image.Image) and image.mode == "RGB" else image.convert("RGB")


def pixel_distances(output: Image.Image, target: Image.Image) -> tuple[float, float]:
    """(L1, L2) of ``output`` against ``target`` in [0, 1] RGB, output resized (bicubic) to the target."""
    output, target = rgb(output), rgb(target)
    if output.size != target.size:
        output = output.resize(target.size, Image.Resampling.BICUBIC)
    diff = np.asarray(output, dtype=np.float64) / 255.0 - np.asarray(target, dtype=np.float64) / 255.0
    return float(np.abs(diff).mean()), float((diff**2).mean())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0))


#: A change of unit embeddings shorter than this is rounding noise (the same picture encoded twice can
#: differ in the last bits), whose direction means nothing: it counts as no change.
MIN_DELTA = 1e-4


def directional(i0: torch.Tensor, i1: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor) -> float:
    """cos(i1 - i0, t1 - t0); 0 when the image (or the caption) did not change."""
    di, dt = (i1 - i0).flatten().float(), (t1 - t0).flatten().float()
    if float(di.norm()) < MIN_DELTA or float(dt.norm()) < MIN_DELTA:
        return 0.0
    return cosine(di, dt)


class DinoScorer:
    """Unit-normalised class-token features of a ``transformers`` ``ViTModel`` (DINO's ViT-S/16)."""

    def __init__(self, model):
        self.model = model.eval().requires_grad_(False)
        self.size = int(model.config.image_size)

    @classmethod
    def load(cls, ref: str = DEFAULT_DINO, device: str = "auto") -> DinoScorer:
        from transformers import ViTModel

        from ..models import resolve_device

        try:
            model = ViTModel.from_pretrained(ref, add_pooling_layer=False)
        except OSError as exc:
            raise ModelNotFound(f"DINO model {ref!r} not found locally: {first_line(exc, 200)}") from None
        except (ValueError, KeyError) as exc:
            raise BadModel(f"{ref}: not a ViT (DINO) model ({first_line(exc, 200)})") from None
        return cls(model.to(resolve_device(device)))

    @property
    def device(self):
        return next(self.model.parameters()).device

    def preprocess(self, images) -> torch.Tensor:
        """MagicBrush's DINO transform: bicubic resize of the short side to size * 256 / 224, centre
        crop to size, ImageNet normalisation."""
        x = to_tensor(images).to(self.device)
        _, _, h, w = x.shape
        short = round(self.size * 256 / 224)
        scale = short / min(h, w)
        nh, nw = max(short, round(h * scale)), max(short, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
        top, left = (nh - self.size) // 2, (nw - self.size) // 2
        x = x[:, :, top:top + self.size, left:left + self.size].clamp(0, 1)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def image_features(self, images) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        out = self.model(pixel_values=self.preprocess(images).to(dtype))
        return F.normalize(out.last_hidden_state[:, 0].float(), dim=-1)


def load_clip(ref: str, device: str = "auto") -> ClipScorer:
    return ClipScorer.load(ref, device=device)


class Scorer:
    """The per-edit metrics, with the models they need loaded once and caption embeddings cached."""

    def __init__(self, metrics: Sequence[str], clip: ClipScorer | None = None, clip_i: ClipScorer | None = None,
                 dino: DinoScorer | None = None):
        self.metrics = tuple(m for m in metrics if m in EDIT_METRICS)
        self.models = {"clip": clip, "clip_i": clip_i, "dino": dino}
        missing = [m for m in self.metrics if m in NEEDS and self.models[NEEDS[m]] is None]
        if missing:
            raise BadOptions(f"metric {missing[0]} needs a {NEEDS[missing[0]].replace('_', '-')} model")
        self._text: dict[tuple[str, str], torch.Tensor] = {}

    @classmethod
    def load(cls, metrics: Sequence[str], clip: str = DEFAULT_CLIP, clip_i: str = DEFAULT_CLIP_I,
             dino: str = DEFAULT_DINO, device: str = "auto") -> Scorer:
        """Load only the models the chosen metrics need (one CLIP when both names agree)."""
        from ..editor import quiet_libraries

        quiet_libraries()  # ip2p draws its own progress bar
        wanted = {NEEDS[m] for m in metrics if m in NEEDS}
        clip_model = load_clip(clip, device) if "clip" in wanted else None
        clip_i_model = None
        if "clip_i" in wanted:
            clip_i_model = clip_model if clip_model is not None and clip_i == clip else load_clip(clip_i, device)
        dino_model = DinoScorer.load(dino, device) if "dino" in wanted else None
        return cls(metrics, clip_model, clip_i_model, dino_model)

    def _caption(self, which: str, text: str) -> torch.Tensor:
        key = (which, text)
        if key not in self._text:
            self._text[key] = self.models[which].text_features([text])[0]
        return self._text[key]

    def score(self, source: Image.Image, output: Image.Image, turn, target: Image.Image | None) -> dict[str, Any]:
        """The chosen metrics for one edit; a metric whose inputs the turn lacks (a target, a caption)
        is None."""
        want = set(self.metrics)
        out: dict[str, Any] = {m: None for m in self.metrics}
        if want & {"clip_text", "clip_direction", "clip_image"}:
            clip = self.models["clip"]
            feats = clip.image_features([rgb(source), rgb(output)])
            i0, i1 = feats[0], feats[1]
            if "clip_image" in want:
                out["clip_image"] = cosine(i0, i1)
            if turn.output_caption and "clip_text" in want:
                out["clip_text"] = cosine(i1, self._caption("clip", turn.output_caption))
            if turn.output_caption and turn.input_caption and "clip_direction" in want:
                out["clip_direction"] = directional(i0, i1, self._caption("clip", turn.input_caption),
                                                    self._caption("clip", turn.output_caption))
        caption = turn.local_caption or turn.output_caption
        if want & {"clip_i", "clip_t"} and (target is not None or caption):
            model = self.models["clip_i"]
            images = [rgb(output)] + ([rgb(target)] if target is not None else [])
            feats = model.image_features(images)
            if target is not None and "clip_i" in want:
                out["clip_i"] = cosine(feats[0], feats[1])
            if caption and "clip_t" in want:
                out["clip_t"] = cosine(feats[0], self._caption("clip_i", caption))
        if target is not None:
            if "l1" in want or "l2" in want:
                l1, l2 = pixel_distances(output, target)
                out.update({k: v for k, v in (("l1", l1), ("l2", l2)) if k in want})
            if "dino" in want:
                feats = self.models["dino"].image_features([rgb(output), rgb(target)])
                out["dino"] = cosine(feats[0], feats[1])
        return {k: None if v is None else round(v, 6) for k, v in out.items()}


# --------------------------------------------------------------------------------------------
# FID


class FeatureNet(torch.nn.Module):
    """A scorer's image features as a torch module on uint8 (N, 3, H, W) batches, for torchmetrics."""

    def __init__(self, scorer):
        super().__init__()
        self.scorer = scorer
        self.num_features = int(scorer.image_features([Image.new("RGB", (8, 8))]).shape[-1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.scorer.image_features(images.float() / 255.0)


def frechet_distance(real: Sequence[Image.Image], fake: Sequence[Image.Image], features="inception",
                     device: str = "cpu") -> float:
    """FID of ``fake`` against ``real``; ``features`` is ``inception`` (torchmetrics with
    torch-fidelity's InceptionV3 and its cached weights) or a torch module taking uint8 (N, 3, H, W)."""
    if len(real) < 2 or len(fake) < 2:
        raise BadOptions(f"FID needs at least 2 images on each side, got {len(real)} and {len(fake)}")
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError:
        raise BadOptions("FID needs torchmetrics (pip install 'ip2p[eval]')") from None
    try:
        metric = FrechetInceptionDistance(feature=2048 if features == "inception" else features)
    except ModuleNotFoundError:
        raise BadOptions("FID with Inception features needs torch-fidelity (pip install torch-fidelity, with the "
                         "torchvision that matches your torch) and its InceptionV3 weights in the torch cache; "
                         "or use --fid-features clip or dino") from None
    except Exception as exc:  # torch-fidelity fetching weights offline, or a bad feature module
        raise BadOptions(f"cannot set up FID features ({first_line(exc, 200)})") from None
    metric = metric.to(device)
    for images, real_side in ((real, True), (fake, False)):
        for image in images:
            array = np.array(rgb(image), dtype=np.uint8)  # a writable copy for torch
            metric.update(torch.from_numpy(array).permute(2, 0, 1)[None].to(device), real=real_side)
    return float(metric.compute())
