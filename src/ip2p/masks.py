"""Masks: where an edit may change the picture, and the guarantee that nothing else does.

A mask is a boolean array at the input image's own size, True (white) where the edit may act. It
comes from the user (an image file; in the OpenAI convention, the transparent pixels of an RGBA
PNG), from the edit itself (``auto``: where a first, unmasked pass changed the picture), or from a
phrase given to a segmenter (``text:the circle``, CLIPSeg when installed).

Two mechanisms use it. During sampling the latent outside the mask follows the input's own latent
(:class:`ip2p.sampler.LatentBlend`, Blended Latent Diffusion), so the edit sees a matching context.
After decoding, :func:`paste_back` copies the input's pixels back outside a feathered band around
the mask: there, output pixels equal input pixels exactly, whatever the scheduler or speed mode.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from .errors import BadImage, BadOptions
from .shapes.color import delta_e

AUTO = "auto"
TEXT_PREFIX = "text:"
#: The CLIPSeg checkpoint ``text:`` masks load when the user names none (their own download).
DEFAULT_SEGMENTER = "CIDAS/clipseg-rd64-refined"
#: A mask whose side ratio differs from the image's by more than this is refused, not stretched.
ASPECT_TOLERANCE = 0.02


@dataclass(frozen=True)
class MaskRequest:
    """What the user asked for: ``kind`` is ``image``, ``auto`` or ``text``.

    ``source`` is the mask image (a path, bytes, PIL image or array) for ``image``, the phrase for
    ``text``. ``name`` is how messages and parameters refer to it.
    """

    kind: str
    source: Any = None
    name: str = "mask"

    @property
    def label(self) -> str:
        """What an output's parameters record as its ``mask``."""
        if self.kind == "text":
            return f"{TEXT_PREFIX}{self.source}"
        return self.kind


def parse_mask(value: Any, name: str = "mask") -> MaskRequest | None:
    """A :class:`MaskRequest` from what a surface received: None, ``"auto"``, ``"text:PHRASE"``, a
    path, encoded bytes, a PIL image or an array (white = editable)."""
    if value is None or isinstance(value, MaskRequest):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == AUTO:
            return MaskRequest(AUTO, name=name)
        if text.lower().startswith(TEXT_PREFIX):
            phrase = text[len(TEXT_PREFIX):].strip()
            if not phrase:
                raise BadOptions(f"{name}: 'text:' needs a phrase, for example 'text:the circle'", param=name)
            return MaskRequest("text", phrase, name=name)
        if not text:
            raise BadOptions(f"{name} is empty: give a mask image, 'auto' or 'text:PHRASE'", param=name)
    return MaskRequest("image", value, name=getattr(value, "filename", None) or _name_of(value, name))


def _name_of(value: Any, default: str) -> str:
    import os

    return os.fspath(value) if isinstance(value, str | os.PathLike) else default


# ------------------------------------------------------------------------------------------------
# Reading masks


def load_mask(source: Any, size: tuple[int, int], name: str = "mask") -> tuple[np.ndarray, str | None]:
    """The editable area at ``size`` (width, height) from a mask image, and a note when it was scaled.

    Grey levels above half are editable (white). A mask of the image's shape but another size is
    scaled (nearest neighbour) and the note says so; another shape, or no white pixel, is an error.
    """
    from .images import load_image

    if isinstance(source, np.ndarray) and source.dtype == bool:
        gray = source.astype(np.uint8) * 255
    else:
        try:
            gray = np.asarray(load_image(source).convert("L"))
        except BadImage as exc:
            raise BadImage(f"{name}: {exc}".replace(f"{name}: {name}: ", f"{name}: ")) from None
    mask, note = _fit(gray > 127, size, name)
    check_not_empty(mask, name)
    return mask, note


def mask_from_alpha(data: bytes, size: tuple[int, int], name: str = "mask") -> tuple[np.ndarray, str | None]:
    """OpenAI's convention for ``/v1/images/edits``: the fully transparent pixels of a PNG with an
    alpha channel are the area to edit."""
    from .images import load_image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if "A" not in im.getbands() and "transparency" not in im.info:
                raise BadImage(f"{name}: must be a PNG with an alpha channel (its transparent pixels are the "
                               "area to edit)")
            alpha = np.asarray(im.convert("RGBA"))[..., 3]
    except BadImage:
        raise
    except Exception:
        load_image(data)  # the one-line reason a decoder gives
        raise BadImage(f"{name}: cannot read the mask image") from None
    mask, note = _fit(alpha == 0, size, name)
    check_not_empty(mask, name, what="fully transparent")
    return mask, note


def _fit(mask: np.ndarray, size: tuple[int, int], name: str) -> tuple[np.ndarray, str | None]:
    height, width = mask.shape
    if (width, height) == tuple(size):
        return mask, None
    if abs(width / height - size[0] / size[1]) > ASPECT_TOLERANCE * size[0] / size[1]:
        raise BadImage(f"{name} is {width}x{height} but the image is {size[0]}x{size[1]}: give a mask of the "
                       "image's size (or at least its shape)")
    scaled = Image.fromarray(mask.astype(np.uint8) * 255).resize(tuple(size), Image.Resampling.NEAREST)
    return np.asarray(scaled) > 127, f"{name} scaled from {width}x{height} to {size[0]}x{size[1]}"


def check_not_empty(mask: np.ndarray, name: str = "mask", what: str = "white (editable)") -> None:
    if not mask.any():
        raise BadImage(f"{name} has no {what} pixels: nothing could change")


def mask_digest(mask: np.ndarray) -> str:
    """A short hash of a mask's editable pixels and size: lets a replay check it has the same mask."""
    bits = np.packbits(mask.astype(bool))
    return hashlib.sha256(bits.tobytes() + str(mask.shape).encode()).hexdigest()[:16]


def mask_image(mask: np.ndarray) -> Image.Image:
    """A mask as a black-and-white picture (white = editable), to show or save."""
    return Image.fromarray(mask.astype(np.uint8) * 255, mode="L")


# ------------------------------------------------------------------------------------------------
# Using masks


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``mask`` at ``size``: a pixel is editable if any part of it was (never shrinks the area)."""
    if mask.shape[::-1] == tuple(size):
        return mask
    area = Image.fromarray(mask.astype(np.float32)).resize(tuple(size), Image.Resampling.BOX)
    return np.asarray(area) > 0


def latent_keep(mask: np.ndarray, factor: int) -> np.ndarray:
    """(h, w) float32 for a working-size mask: 1 where a latent cell has no editable pixel (it is kept
    on the input's path), 0 where any pixel of its factor x factor cell may change."""
    h, w = mask.shape[0] // factor, mask.shape[1] // factor
    cells = mask[: h * factor, : w * factor].reshape(h, factor, w, factor).any(axis=(1, 3))
    return (~cells).astype(np.float32)


def feather(mask: np.ndarray, width: int) -> np.ndarray:
    """Blend weights: 1 on the mask, falling linearly to 0 over ``width`` pixels outside it, and exactly
    0 beyond that band (so those pixels are the input's own)."""
    if width <= 0:
        return mask.astype(np.float32)
    distance = ndimage.distance_transform_edt(~mask)
    return np.clip(1.0 - distance / (width + 1), 0.0, 1.0).astype(np.float32)


def paste_back(source: Image.Image, edited: Image.Image, mask: np.ndarray, width: int) -> Image.Image:
    """``edited`` inside the feathered mask, ``source``'s exact pixels outside it (same sizes)."""
    a = np.asarray(source.convert("RGB"), dtype=np.float32)
    b = np.asarray(edited.convert("RGB"), dtype=np.float32)
    alpha = feather(mask, width)[..., None]
    out = np.where(alpha > 0, np.rint(a + (b - a) * alpha), a)
    return Image.fromarray(out.astype(np.uint8))


def change_mask(before: Image.Image, after: Image.Image, threshold: float, dilation: int) -> np.ndarray:
    """Where ``after`` differs from ``before`` by more than ``threshold`` CIE76 ΔE, cleaned of specks
    (a 3x3 opening) and grown by ``dilation`` pixels: what ``--mask auto`` keeps of a first pass."""
    changed = delta_e(np.asarray(before.convert("RGB")), np.asarray(after.convert("RGB"))) > threshold
    changed = ndimage.binary_opening(changed, structure=np.ones((3, 3), bool))
    if dilation > 0:
        disk = _disk(dilation)
        changed = ndimage.binary_dilation(changed, structure=disk)
    return changed


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius: radius + 1, -radius: radius + 1]
    return x * x + y * y <= radius * radius


# ------------------------------------------------------------------------------------------------
# Masks from a phrase


class TextSegmenter:
    """A phrase -> mask model: CLIPSeg (Lüddecke & Ecker 2022) through transformers.

    ``model`` is a hub id, a local folder, or an already loaded (model, processor) pair. Its
    sigmoid map above ``threshold`` is the mask, upsampled to the image.
    """

    def __init__(self, model: Any = DEFAULT_SEGMENTER, threshold: float = 0.4):
        if isinstance(model, tuple):
            self.model, self.processor = model
        else:
            try:
                from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor
            except ImportError:  # pragma: no cover - transformers is a core dependency
                raise BadOptions("text masks need transformers' CLIPSeg") from None
            try:
                self.processor = CLIPSegProcessor.from_pretrained(model)
                self.model = CLIPSegForImageSegmentation.from_pretrained(model).eval()
            except (OSError, ValueError):  # not a folder, not cached, not a valid hub id
                raise BadOptions(f"text masks need a CLIPSeg model: {model!r} is not a local folder or a cached "
                                 "hub id (download it once with `huggingface-cli download "
                                 f"{DEFAULT_SEGMENTER}`)") from None
        self.name = model if isinstance(model, str) else getattr(self.model, "name_or_path", "clipseg")
        self.threshold = threshold

    def __call__(self, image: Image.Image, phrase: str) -> np.ndarray:
        import torch

        inputs = self.processor(text=[phrase], images=[image.convert("RGB")], padding=True, return_tensors="pt")
        with torch.inference_mode():
            logits = self.model(**inputs).logits
        heat = torch.sigmoid(logits.reshape(1, 1, *logits.shape[-2:]).float())
        heat = torch.nn.functional.interpolate(heat, size=image.size[::-1], mode="bilinear", align_corners=False)
        return heat[0, 0].numpy() > self.threshold
