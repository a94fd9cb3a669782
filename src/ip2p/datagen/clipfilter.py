"""CLIP filtering of generated pairs (Brooks et al. 2023, sec. 3.1.2).

With unit-normalised CLIP embeddings ``I0, I1`` of the two images and ``T0, T1`` of the two
captions, a pair is kept when

* ``cos(I0, T0) >= clip_threshold`` and ``cos(I1, T1) >= clip_threshold`` (each image shows its
  caption; 0.2),
* ``cos(I1 - I0, T1 - T0) >= dir_threshold`` (the image changed the way the text changed, the
  directional similarity of Gal et al. 2022; 0.2),
* ``cos(I0, I1) >= image_threshold`` (the edit kept the rest of the image; 0.7),

and of the pairs that pass, the ``keep`` with the highest directional similarity are kept (4).

Images are preprocessed like CLIP's own image processor (bicubic resize of the short side, centre
crop, mean/std normalisation), in torch, so no torchvision is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import BadModel, BadOptions, ModelNotFound, first_line

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_CLIP = "openai/clip-vit-large-patch14"
SCORE_KEYS = ("clip_sim_0", "clip_sim_1", "clip_sim_dir", "clip_sim_image")


@dataclass
class FilterOptions:
    clip_threshold: float = 0.2
    dir_threshold: float = 0.2
    image_threshold: float = 0.7
    keep: int = 4

    def check(self) -> FilterOptions:
        for name in ("clip_threshold", "dir_threshold", "image_threshold"):
            value = getattr(self, name)
            if not -1.0 <= value <= 1.0:
                raise BadOptions(f"{name} must be a cosine in [-1, 1], got {value}")
        if self.keep < 1:
            raise BadOptions(f"keep must be at least 1, got {self.keep}")
        return self


def passes(scores: dict, options: FilterOptions) -> bool:
    """True when one pair's scores clear every threshold."""
    return (
        scores["clip_sim_0"] >= options.clip_threshold
        and scores["clip_sim_1"] >= options.clip_threshold
        and scores["clip_sim_dir"] >= options.dir_threshold
        and scores["clip_sim_image"] >= options.image_threshold
    )


def select(candidates: Sequence[dict], options: FilterOptions) -> list[dict]:
    """The passing candidates with the best directional similarity, best first (ties: lower seed)."""
    ok = [c for c in candidates if passes(c, options)]
    ok.sort(key=lambda c: (-c["clip_sim_dir"], c["seed"]))
    return ok[:options.keep]


def to_tensor(images) -> torch.Tensor:
    """PIL images or a (B, 3, H, W) tensor in [0, 1] -> float tensor in [0, 1]."""
    if isinstance(images, torch.Tensor):
        return images.float()
    import numpy as np

    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def preprocess(images: torch.Tensor, size: int) -> torch.Tensor:
    """CLIP's preprocessing: bicubic resize of the short side to ``size``, centre crop, normalise."""
    _, _, h, w = images.shape
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(images, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[:, :, top:top + size, left:left + size].clamp(0, 1)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _features(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipScorer:
    """The four similarities of the filter, from a ``transformers`` ``CLIPModel``."""

    def __init__(self, model, tokenizer):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.size = int(model.config.vision_config.image_size)

    @classmethod
    def load(cls, ref: str = DEFAULT_CLIP, device: str = "auto") -> ClipScorer:
        """Load a CLIP model and tokenizer from a folder or a hub id in the local cache."""
        from transformers import AutoTokenizer, CLIPModel

        from ..models import resolve_device

        try:
            model = CLIPModel.from_pretrained(ref)
            tokenizer = AutoTokenizer.from_pretrained(ref)
        except OSError as exc:
            raise ModelNotFound(f"CLIP model {ref!r} not found locally: {first_line(exc, 200)}") from None
        except (ValueError, KeyError) as exc:
            raise BadModel(f"{ref}: not a CLIP model ({first_line(exc, 200)})") from None
        return cls(model.to(resolve_device(device)), tokenizer)

    @property
    def device(self):
        return next(self.model.parameters()).device

    @torch.no_grad()
    def image_features(self, images) -> torch.Tensor:
        pixels = preprocess(to_tensor(images).to(self.device), self.size)
        dtype = next(self.model.parameters()).dtype
        return F.normalize(_features(self.model.get_image_features(pixel_values=pixels.to(dtype))).float(), dim=-1)

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        max_len = min(int(self.model.config.text_config.max_position_embeddings), 77)
        tokens = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_len,
                                return_tensors="pt").to(self.device)
        out = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return F.normalize(_features(out).float(), dim=-1)

    def score(self, images_0, images_1, caption_0: str, caption_1: str) -> list[dict]:
        """Scores for B pairs that share one caption pair (the usual case: samples of one prompt)."""
        i0, i1 = self.image_features(images_0), self.image_features(images_1)
        t0, t1 = self.text_features([caption_0, caption_1])
        sim_0 = i0 @ t0
        sim_1 = i1 @ t1
        sim_dir = F.normalize(i1 - i0, dim=-1) @ F.normalize(t1 - t0, dim=0)
        sim_image = (i0 * i1).sum(-1)
        return [
            dict(zip(SCORE_KEYS, map(float, values), strict=True))
            for values in zip(sim_0, sim_1, sim_dir, sim_image, strict=True)
        ]
