"""Image input and output: decode what users hand us into RGB, size it for the model, and write results
that carry the parameters that made them.

Input: paths, bytes, binary file objects, PIL images and numpy arrays all go through
:func:`load_image`, which applies the EXIF orientation, flattens transparency onto white and scales
16-bit and float grayscale into 8 bits. Every refusal is a one-line :class:`~ip2p.errors.BadImage`
(or :class:`~ip2p.errors.ImageTooLarge`); the pixel limit is checked from the header, before decoding.

Output: :func:`save_image` writes PNG, JPEG or WebP atomically; :func:`encode_image` returns bytes.
Both embed the parameters twice: as exact JSON (``ip2p``) for replay, and in the AUTOMATIC1111
``parameters`` text layout that other Stable Diffusion tools read. :func:`read_params` reads either.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import operator
import os
import re
import struct
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from .errors import BadImage, BadOptions, ImageTooLarge
from .files import write_atomic
from .options import OPTIONS, normalise_scheduler

#: Default refusal threshold for input images, in pixels (checked from the header, before decoding).
DEFAULT_MAX_PIXELS = 64_000_000

#: Output file extension -> format name used by :func:`encode_image`.
OUTPUT_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}

#: ip2p scheduler name -> the sampler name AUTOMATIC1111 writes for the same sampler.
SAMPLER_NAMES = {
    "euler_a": "Euler a",
    "euler": "Euler",
    "dpm++2m": "DPM++ 2M Karras",
    "ddim": "DDIM",
    "unipc": "UniPC",
    "lms": "LMS",
    "pndm": "PLMS",
}

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | Image.Image | np.ndarray

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
_MAX_SIDE = {"png": 2**31 - 1, "jpeg": 65_500, "webp": 16_383}  # encoder limits, per side
_MAX_JPEG_EXIF = 65_000  # an APP1 segment holds at most 65533 bytes
_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError)


# ------------------------------------------------------------------------------------------------
# Reading images


def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``source`` into a new RGB image (never the caller's object).

    ``source``: a path, encoded bytes, a binary file object, a PIL image, or a numpy array
    (HxW, HxWx1, HxWx3 or HxWx4; uint8, or float in [0, 1]). Animated images give their first frame.
    Raises :class:`BadImage` naming the problem, :class:`ImageTooLarge` over ``max_pixels`` or for a
    decompression bomb.
    """
    max_pixels = _positive_int("max_pixels", max_pixels)
    if isinstance(source, np.ndarray):
        return _from_array(source, max_pixels)
    name = _describe(source)
    with _opened(source, name) as im, _pillow_errors(name):
        _check_pixels(im.size, name, max_pixels)  # header only: nothing decoded yet
        im.load()  # full decode, so a truncated file fails here and not later
        _check_pixels(im.size, name, max_pixels)  # some formats only know their size after loading
        return _to_rgb(ImageOps.exif_transpose(im), name)


def _describe(source: Any) -> str:
    """How error messages name the source."""
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    if isinstance(source, bytes | bytearray | memoryview):
        return "image data"
    if isinstance(source, Image.Image):
        return getattr(source, "filename", "") or "image"
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else "image stream"


@contextlib.contextmanager
def _opened(source: Any, name: str) -> Iterator[Image.Image]:
    """Open ``source`` lazily (header only) and close what we opened."""
    if isinstance(source, Image.Image):
        yield source
        return
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        try:
            if not path.exists():
                raise BadImage(f"{name}: no such file")
            if path.is_dir():
                raise BadImage(f"{name}: is a folder, not an image file")
            if path.stat().st_size == 0:
                raise BadImage(f"{name}: empty file")
            stream: Any = path.open("rb")
        except (OSError, ValueError) as exc:
            raise BadImage(f"{name}: cannot read the file ({_one_line(exc)})") from None
    elif isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise BadImage("empty image data")
        stream = io.BytesIO(source)
    elif hasattr(source, "read"):
        try:
            data = source.read()
        except (OSError, ValueError) as exc:
            raise BadImage(f"{name}: cannot read the stream ({_one_line(exc)})") from None
        if not isinstance(data, bytes | bytearray):
            raise BadImage(f"{name}: file object must be opened in binary mode (got {type(data).__name__})")
        if not data:
            raise BadImage(f"{name}: empty image data")
        stream = io.BytesIO(data)
    else:
        raise BadImage(
            f"cannot read an image from {type(source).__name__}; "
            "give a path, bytes, a binary file object, a PIL image or a numpy array"
        )
    with stream:
        with _pillow_errors(name):
            im = Image.open(stream)
        with im:
            yield im


@contextlib.contextmanager
def _pillow_errors(name: str) -> Iterator[None]:
    """Turn Pillow's failures, and its decompression-bomb warning, into one-line ip2p errors.

    Pillow warns above ``Image.MAX_IMAGE_PIXELS`` and raises above twice that; a warning that
    merely prints would let the bomb through, so it is raised here. (``catch_warnings`` touches
    process-wide state; Pillow offers no per-call switch.)
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageTooLarge(f"{name}: refusing a possible decompression bomb ({_one_line(exc)})") from None
        except UnidentifiedImageError:
            raise BadImage(f"{name}: not an image file (Pillow cannot identify its format)") from None
        except _DECODE_ERRORS as exc:
            raise BadImage(f"{name}: cannot decode the image, the file is truncated or corrupt "
                           f"({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _check_pixels(size: tuple[int, int], name: str, max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise BadImage(f"{name}: image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"{name}: image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}"
        )


def _to_rgb(im: Image.Image, name: str) -> Image.Image:
    """Any Pillow mode -> RGB. Transparency is composited over white, not dropped (which would
    expose whatever colour the transparent pixels happen to hold)."""
    if im.mode in _HIGH_DEPTH_MODES:
        return Image.fromarray(_gray_to_uint8(np.asarray(im), im.mode, name)).convert("RGB")
    if im.has_transparency_data:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode == "RGB":
        return im
    try:
        return im.convert("RGB")
    except ValueError:
        raise BadImage(f"{name}: unsupported colour mode {im.mode}") from None


def _gray_to_uint8(a: np.ndarray, mode: str, name: str) -> np.ndarray:
    """Scale 16-bit, 32-bit integer or float grayscale into 0..255 without clipping.

    16-bit samples divide by 257 (65535 -> 255 exactly). 32-bit integers within 0..65535 are 16-bit
    samples widened by the decoder and scale the same way. Floats in [0, 1] multiply by 255. Anything
    else (negative values, HDR floats) is stretched min..max onto 0..255.
    """
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise BadImage(f"{name}: float image contains NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        a = a / 257.0
    elif mode == "F" and lo >= 0 and hi <= 1:
        a = a * 255.0
    else:
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _from_array(array: np.ndarray, max_pixels: int) -> Image.Image:
    name = "numpy array"
    shape = array.shape
    if not (array.ndim == 2 or (array.ndim == 3 and shape[2] in (1, 3, 4))):
        raise BadImage(f"{name} of shape {shape} is not an image; expected HxW, HxWx1, HxWx3 or HxWx4")
    _check_pixels((shape[1], shape[0]), name, max_pixels)
    if array.dtype == np.uint8:
        data = array
    elif np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float32)
        if not np.isfinite(values).all():
            raise BadImage(f"{name} contains NaN or infinite values")
        lo, hi = float(values.min()), float(values.max())
        if lo < 0 or hi > 1:
            raise BadImage(f"float {name} must hold values in [0, 1], got {lo:g}..{hi:g}")
        data = np.rint(values * 255.0).astype(np.uint8)
    else:
        raise BadImage(f"{name} of dtype {array.dtype} is not supported; use uint8 (0-255) or float (0-1)")
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[:, :, 0]
    return _to_rgb(Image.fromarray(np.ascontiguousarray(data)), name)


# ------------------------------------------------------------------------------------------------
# Size policy


def _positive_int(name: str, value: Any) -> int:
    try:
        number = operator.index(value) if not isinstance(value, bool) else None
    except TypeError:
        number = None
    if number is None or number < 1:
        raise BadOptions(f"{name} must be a positive integer, got {value!r}")
    return number


def working_size(width: int, height: int, resolution: int = 512, align: int = 8) -> tuple[int, int]:
    """The size the model sees: the long side becomes ``resolution``, the aspect ratio is kept (no
    crop), and each side is rounded to a multiple of ``align`` (the VAE downsamples by 8; some UNets
    need 64), never below ``align``."""
    width, height = _positive_int("width", width), _positive_int("height", height)
    resolution, align = _positive_int("resolution", resolution), _positive_int("align", align)
    scale = resolution / max(width, height)

    def side(n: int) -> int:
        return max(align, math.floor(n * scale / align + 0.5) * align)

    return side(width), side(height)


def _resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    if image.size == size:
        return image
    shrinking = size[0] * size[1] < image.size[0] * image.size[1]
    return image.resize(size, Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC)


def to_working(image: Image.Image, resolution: int = 512, align: int = 8) -> Image.Image:
    """Resize ``image`` to :func:`working_size` (LANCZOS when shrinking, BICUBIC when enlarging);
    returns ``image`` itself when it already has that size."""
    return _resize(image, working_size(*image.size, resolution=resolution, align=align))


def restore_size(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize an edited image back to the input's own ``(width, height)``."""
    width, height = size
    return _resize(image, (_positive_int("width", width), _positive_int("height", height)))


# ------------------------------------------------------------------------------------------------
# AUTOMATIC1111 "parameters" text


# (params key, A1111 label, type) in the order A1111 writes them; "Size" goes after Seed.
#: (key, A1111 label, type) of the options the settings line names, from the option schema.
_KNOWN = tuple((o.name, o.metadata, o.kind) for o in OPTIONS if o.metadata)
_LABEL_KEYS = {label: key for key, label, _ in _KNOWN} | {"Model": "model"}
_RESERVED_LABELS = set(_LABEL_KEYS) | {"Size", "Negative prompt"}
_GENERIC_KEY = re.compile(r"[a-z][a-z0-9_]*")
_PAIR = r'\s*([A-Za-z][\w \-/+.()]*?):\s*("(?:\\.|[^\\"])*"|[^,]*)'
_SETTINGS_LINE = re.compile(rf"{_PAIR}(?:,{_PAIR})*\s*")
_PAIRS = re.compile(rf"{_PAIR}(?:,|$)")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*(e[+-]?\d+)?|\.\d+(e[+-]?\d+)?|inf|infinity|nan)", re.IGNORECASE)


def _guess(text: str) -> Any:
    """An unquoted value as A1111-style tools write it: bool, int, float or string."""
    if text in ("True", "False"):
        return text == "True"
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    if _NUMBER.fullmatch(text):
        return float(text)
    return text


def _format_value(value: Any) -> str:
    if isinstance(value, str):
        plain = value and value == value.strip() and not any(c in value for c in ',:"\\\n\r')
        return value if plain and _guess(value) == value else json.dumps(value, ensure_ascii=False)
    return repr(value) if isinstance(value, float) else str(value)


def _generic_label(key: str) -> str:
    label = key.replace("_", " ")
    return label[:1].upper() + label[1:]


def format_parameters(params: Mapping[str, Any]) -> str:
    """The AUTOMATIC1111 ``parameters`` text for ``params``: the instruction, an optional
    ``Negative prompt:`` line, then one ``Key: value, ...`` line. Only scalar values with
    snake_case keys go in the last line; the ``ip2p`` JSON next to it keeps everything exactly."""
    lines = [str(params.get("instruction", ""))]
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    fields: list[str] = []
    for key, label, _ in _KNOWN:
        value = params.get(key)
        if value is None:
            continue
        if key == "scheduler":
            value = SAMPLER_NAMES.get(str(value), str(value))
        fields.append(f"{label}: {_format_value(value)}")
    used = {key for key, _, _ in _KNOWN} | {"instruction", "negative_prompt", "model"}
    if isinstance(params.get("width"), int) and isinstance(params.get("height"), int):
        fields.append(f"Size: {params['width']}x{params['height']}")
        used |= {"width", "height"}
    if params.get("model") is not None:
        fields.append(f"Model: {_format_value(str(params['model']))}")
    for key, value in params.items():
        if key in used or value is None or not isinstance(value, str | int | float):
            continue
        if not isinstance(key, str) or not _GENERIC_KEY.fullmatch(key):
            continue
        if _generic_label(key) in _RESERVED_LABELS:
            continue
        fields.append(f"{_generic_label(key)}: {_format_value(value)}")
    if fields:
        lines.append(", ".join(fields))
    return "\n".join(lines)


def parse_parameters(text: str) -> dict[str, Any]:
    """Inverse of :func:`format_parameters`; also reads the text AUTOMATIC1111-style tools write.

    Sampler names map back to ip2p scheduler names where one matches; an unknown sampler is kept
    as ``scheduler`` so that replaying it fails with the list of known schedulers.
    """
    lines = text.replace("\r\n", "\n").rstrip("\n").split("\n")
    settings = ""
    if len(lines) >= 2 and _SETTINGS_LINE.fullmatch(lines[-1]):
        pairs = _PAIRS.findall(lines[-1])
        if len(pairs) >= 3 or pairs[0][0] in _LABEL_KEYS:
            settings = lines.pop()
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        if line.startswith("Negative prompt:") and not negative:
            negative.append(line[len("Negative prompt:"):].lstrip(" "))
        else:
            (negative if negative else prompt).append(line)
    params: dict[str, Any] = {"instruction": "\n".join(prompt)}
    if negative:
        params["negative_prompt"] = "\n".join(negative)
    types = {label: kind for _, label, kind in _KNOWN} | {"Model": str}
    for label, raw in _PAIRS.findall(settings):
        label, raw = label.strip(), raw.strip()
        quoted = raw.startswith('"') and raw.endswith('"') and len(raw) >= 2
        value: Any = json.loads(raw) if quoted else raw
        if label == "Size":
            match = re.fullmatch(r"(\d+)x(\d+)", raw)
            if match:
                params["width"], params["height"] = int(match[1]), int(match[2])
            continue
        if label == "Sampler":
            params["scheduler"] = _scheduler_from_sampler(str(value))
            continue
        key = _LABEL_KEYS.get(label) or label.lower().replace(" ", "_").replace("-", "_")
        kind = types.get(label)
        if kind is not None and not quoted:
            with contextlib.suppress(ValueError):
                value = kind(float(raw)) if kind is int and re.fullmatch(r"[+-]?\d+\.0*", raw) else kind(raw)
        elif not quoted:
            value = _guess(raw)
        params[key] = value
    return params


def _scheduler_from_sampler(name: str) -> str:
    reverse = {sampler: key for key, sampler in SAMPLER_NAMES.items()}
    if name in reverse:
        return reverse[name]
    try:
        return normalise_scheduler(name)
    except BadOptions:
        return name


# ------------------------------------------------------------------------------------------------
# Writing images


def _format_name(fmt: str) -> str:
    key = str(fmt).strip().lower().lstrip(".")
    key = "jpeg" if key == "jpg" else key
    if key not in _PIL_FORMATS:
        raise BadOptions(f"unknown image format {fmt!r}; choose png, jpeg or webp")
    return key


def _params_json(params: Mapping[str, Any]) -> str:
    if not isinstance(params, Mapping):
        raise BadOptions(f"params must be a mapping, got {type(params).__name__}")
    for key, value in params.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise BadOptions(f"parameter {key!r} is not JSON-serialisable: {value!r}") from None
    return json.dumps(dict(params), ensure_ascii=False, allow_nan=False)


def _user_comment(text: str) -> bytes:
    """EXIF UserComment: an 8-byte character-code header, then the text (EXIF 2.32, 4.6.5)."""
    try:
        return b"ASCII\0\0\0" + text.encode("ascii")
    except UnicodeEncodeError:
        return b"UNICODE\0" + text.encode("utf-16-be")


def _read_user_comment(raw: bytes | str) -> str:
    if isinstance(raw, str):
        return raw.rstrip("\0")
    head, body = raw[:8], raw[8:]
    if head == b"ASCII\0\0\0":
        text = body.decode("ascii", errors="replace")
    elif head == b"UNICODE\0":
        if body[:2] in (b"\xff\xfe", b"\xfe\xff"):
            text = body.decode("utf-16", errors="replace")
        else:  # no BOM: Latin text has its zero bytes first in big-endian order
            big = body[0::2].count(0) >= body[1::2].count(0)
            text = body[: len(body) // 2 * 2].decode("utf-16-be" if big else "utf-16-le", errors="replace")
    elif head == b"JIS\0\0\0\0\0":
        text = body.decode("shift_jis", errors="replace")
    else:  # undefined (eight zero bytes) or no header at all
        text = (body if head == b"\0" * 8 else raw).decode("utf-8", errors="replace")
    return text.rstrip("\0")


def encode_image(image: Image.Image, fmt: str, params: Mapping[str, Any] | None = None, *,
                 quality: int = 95) -> bytes:
    """Encode ``image`` as ``fmt`` (png, jpeg or webp) with ``params`` embedded as metadata.

    PNG: a ``parameters`` text chunk (A1111 layout) and an ``ip2p`` chunk with the params as JSON.
    JPEG/WebP: EXIF UserComment holding ``{"parameters": ..., "ip2p": ...}`` as ASCII JSON.
    """
    fmt = _format_name(fmt)
    if not isinstance(image, Image.Image):
        raise BadImage(f"can only encode a PIL image, got {type(image).__name__}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise BadOptions(f"quality must be an integer from 1 to 100, got {quality!r}")
    if max(image.size) > _MAX_SIDE[fmt]:
        raise ImageTooLarge(f"{image.width}x{image.height} is too large for {fmt.upper()} "
                            f"(at most {_MAX_SIDE[fmt]} pixels a side); save as PNG")
    keep = {"png": ("RGB", "RGBA", "L", "LA", "P", "1", "I;16"), "jpeg": ("RGB", "L"), "webp": ("RGB", "RGBA")}
    if image.mode not in keep[fmt]:
        image = image.convert("RGBA") if fmt != "jpeg" and image.has_transparency_data else _to_rgb(image, "image")
    options: dict[str, Any] = {}
    if fmt != "png":
        options["quality"] = quality
    if params is not None:
        data = _params_json(params)
        a1111 = format_parameters(params)
        if fmt == "png":
            info = PngInfo()
            info.add_text("parameters", a1111)  # tEXt, or iTXt when the text is not Latin-1
            info.add_text("ip2p", data)
            options["pnginfo"] = info
        else:
            exif = Image.Exif()
            payload = json.dumps({"parameters": a1111, "ip2p": json.loads(data)}, ensure_ascii=True)
            exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = _user_comment(payload)
            options["exif"] = exif.tobytes()
            if fmt == "jpeg" and len(options["exif"]) > _MAX_JPEG_EXIF:
                raise BadOptions(f"parameters are too long for JPEG metadata ({len(options['exif']):,} bytes, "
                                 f"limit {_MAX_JPEG_EXIF:,}); save as PNG or WebP")
    buffer = io.BytesIO()
    try:
        image.save(buffer, _PIL_FORMATS[fmt], **options)
    except (OSError, ValueError) as exc:
        raise BadImage(f"cannot encode the image as {fmt.upper()}: {_one_line(exc)}") from None
    return buffer.getvalue()


def save_image(image: Image.Image, path: str | os.PathLike, params: Mapping[str, Any] | None = None,
               quality: int = 95, sign: Callable[[bytes, str], bytes] | None = None) -> Path:
    """Write ``image`` to ``path`` (format from the extension) with ``params`` embedded.

    ``sign(data, fmt)``, when given, returns the encoded bytes with a C2PA manifest added
    (:meth:`ip2p.provenance.C2paSigner.sign`); it runs before anything is written.
    Atomic: the bytes go to a temporary file in the same folder, which then replaces ``path``; on
    any failure the temporary file is removed and an existing ``path`` is left as it was.
    """
    path = Path(path)
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise BadOptions(f"{path}: unsupported extension {path.suffix or '(none)'!r}; "
                         f"use {', '.join(OUTPUT_FORMATS)}")
    if path.is_dir():
        raise BadOptions(f"{path}: is a folder, give a file name")
    data = encode_image(image, fmt, params, quality=quality)
    if sign is not None:
        data = sign(data, fmt)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadOptions(f"cannot create folder {path.parent}: {exc.strerror or _one_line(exc)}") from None
    _atomic_write(path, data)
    return path


def _atomic_write(path: Path, data: bytes) -> None:
    try:
        write_atomic(path, data)
    except OSError as exc:
        raise BadOptions(f"cannot write {path}: {exc.strerror or _one_line(exc)}") from None


# ------------------------------------------------------------------------------------------------
# Reading parameters back


def read_params(source: str | os.PathLike | bytes | BinaryIO | Image.Image) -> dict[str, Any]:
    """The parameters embedded in an image: the exact ``ip2p`` JSON when present, else the parsed
    A1111 ``parameters`` text. Raises :class:`BadImage` when the image carries neither."""
    name = _describe(source)
    with _opened(source, name) as im, _pillow_errors(name):
        exact, text = _find_metadata(im)
        if exact is None and text is None and im.format == "PNG" and im.width * im.height <= DEFAULT_MAX_PIXELS:
            im.load()  # PNG text chunks after the image data are only seen once it is read
            exact, text = _find_metadata(im)
    if exact is not None:
        try:
            params = json.loads(exact)
        except ValueError:
            params = None
        if isinstance(params, dict):
            return params
        if text is None:
            raise BadImage(f"{name}: the ip2p metadata is not a valid JSON object")
    if text is None:
        raise BadImage(f"{name}: no ip2p or AUTOMATIC1111 'parameters' metadata in this image")
    return parse_parameters(text)


def _find_metadata(im: Image.Image) -> tuple[str | None, str | None]:
    """(ip2p JSON text, A1111 parameters text) from PNG text chunks or EXIF UserComment."""
    exact, text = im.info.get("ip2p"), im.info.get("parameters")
    if exact is not None or text is not None:
        return (None if exact is None else str(exact)), (None if text is None else str(text))
    raw = im.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    if not raw:
        return None, None
    comment = _read_user_comment(raw)
    try:
        wrapped = json.loads(comment)
    except ValueError:
        wrapped = None
    if isinstance(wrapped, dict) and ("ip2p" in wrapped or "parameters" in wrapped):
        exact = json.dumps(wrapped["ip2p"]) if "ip2p" in wrapped else None
        return exact, wrapped.get("parameters")
    return None, comment  # an A1111-style tool's plain parameters text
