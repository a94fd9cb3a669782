"""Provenance of an output: an invisible watermark, C2PA content credentials, and checking both.

Metadata (the ``parameters`` and ``ip2p`` records of :mod:`ip2p.images`) is lost at the first
re-save, so every output of at least 256x256 also carries an invisible watermark: 48 bits, a fixed
24-bit tag that says "made by ip2p" and a 24-bit id of the edit (a hash of its parameters). It is
embedded with ``invisible-watermark``'s DWT-DCT family (diffusers uses its ``dwtDct`` for SDXL): the
Haar-wavelet approximation band of one YUV channel is cut into 4x4 blocks, each block is
DCT-transformed, and one number of it is quantised onto one of two lattices a step apart (quantisation
index modulation), one per bit value, the 48 bits repeating over the blocks. ip2p uses the
``dwtDctSvd`` variant (the number is the DCT block's largest singular value) on the luma channel with
step 24, not diffusers' ``dwtDct`` (the block's largest coefficient) on the chroma channels: measured
on made test pictures (``benchmarks/watermark_robustness.py``, docs/provenance.md) diffusers' choice
loses the mark on flat and smooth content and after JPEG quality 80, at a lower PSNR.

With a certificate, outputs also get a C2PA manifest (``c2pa-python``): a ``c2pa.edited`` action
with the IPTC digital source type for trained-model composites, ip2p as software agent, the
instruction, and the input as parent ingredient with its own manifest, so chained edits keep the
chain. :func:`verify` reads back all three: watermark, manifest and parameters.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import BadImage, BadOptions, Ip2pError, first_line
from .version import __version__

#: The 24 bits every ip2p watermark starts with.
WATERMARK_TAG = bytes.fromhex("b25d3a")
WATERMARK_BITS = 48
#: Outputs smaller than this on either side are not marked (at 256x256 each bit has 21 blocks).
MIN_SIDE = 256
#: Tag bits that may be wrong for a watermark to count as found, and id bits for its edit id to
#: match a file's parameters (docs/provenance.md: measured; 24 random bits pass with p < 2e-4).
TAG_TOLERANCE = 2
ID_TOLERANCE = 3
#: The embedding (see the module docstring): method and quantisation step per YUV channel.
METHOD, SCALES = "dwtDctSvd", (24, 0, 0)
#: Parameters that do not change the pixels and so do not enter the edit id (a path, a version).
_NOT_IN_ID = ("input", "ip2p_version", "model", "model_defaults", "watermark_id", "watermark_note")

DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
#: Output formats a manifest can be signed into, by ip2p's format name.
SIGNABLE = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
CERT_ENV, KEY_ENV = "IP2P_C2PA_CERT", "IP2P_C2PA_KEY"


class SigningError(Ip2pError):
    """A certificate or key that cannot sign C2PA manifests (expired, self-signed, mismatched)."""

    http_status = 422


def _need(module: str, hint: str = ""):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise BadOptions(f"provenance needs {module} (pip install 'ip2p[provenance]'){hint}") from None


_NO_MARK = "; or edit without the watermark: --no-watermark (watermark=false)"


# ------------------------------------------------------------------------------------------------
# Watermark


def edit_id(params: Mapping[str, Any]) -> str:
    """24 bits (6 hex digits) of SHA-256 over the parameters that decide the pixels."""
    kept = {k: v for k, v in params.items() if k not in _NOT_IN_ID}
    blob = json.dumps(kept, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:6]


def bit_errors(a: str, b: str) -> int:
    """How many bits two hex strings of one length differ in."""
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def _bgr(image: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.float32)[:, :, ::-1])


def embed_watermark(image: Image.Image, payload: bytes) -> Image.Image:
    """``image`` with the 48-bit ``payload`` embedded (float arithmetic, rounded once at the end).

    The blocks are marked by the library's own ``dwtDctSvd`` step (``encode_frame``); the wavelet
    round trip is done here, because the library's ``encode`` puts the horizontal and vertical
    detail bands back swapped, which transposes pixels along sharp diagonal edges (measured: up to
    237 levels on the shapes world) while the mark itself lives in the approximation band only."""
    if len(payload) * 8 != WATERMARK_BITS:
        raise BadOptions(f"a watermark payload is {WATERMARK_BITS // 8} bytes, got {len(payload)}")
    if min(image.size) < MIN_SIDE:
        raise BadImage(f"{image.width}x{image.height} is too small to watermark (at least {MIN_SIDE}x{MIN_SIDE})")
    _need("imwatermark", _NO_MARK)
    import cv2
    import pywt
    from imwatermark.dwtDctSvd import EmbedDwtDctSvd

    bits = [int(b) for b in np.unpackbits(np.frombuffer(payload, np.uint8))]
    embed = EmbedDwtDctSvd(bits, wmLen=WATERMARK_BITS, scales=list(SCALES))
    yuv = cv2.cvtColor(_bgr(image), cv2.COLOR_BGR2YUV)
    rows, cols = image.height // 4 * 4, image.width // 4 * 4
    for channel, scale in enumerate(SCALES):
        if scale > 0:
            approx, details = pywt.dwt2(yuv[:rows, :cols, channel], "haar")
            embed.encode_frame(approx, scale)
            yuv[:rows, :cols, channel] = pywt.idwt2((approx, details), "haar")
    marked = cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR)
    return Image.fromarray(np.clip(np.rint(marked[:, :, ::-1]), 0, 255).astype(np.uint8))


@dataclass(frozen=True)
class Watermark:
    """What :func:`read_watermark` found: ``payload`` is the 48 decoded bits (hex) either way."""

    found: bool
    payload: str | None = None
    edit_id: str | None = None  # the last 24 bits, when found
    tag_errors: int | None = None  # tag bits that differ from WATERMARK_TAG
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def read_watermark(image: Image.Image, *, method: str = METHOD, scales: tuple[int, ...] = SCALES) -> Watermark:
    """Decode the 48 bits; found when at most :data:`TAG_TOLERANCE` of the tag's 24 differ."""
    if min(image.size) < MIN_SIDE:
        return Watermark(False, note=f"{image.width}x{image.height} is under {MIN_SIDE}x{MIN_SIDE}: ip2p marks none")
    decoder = _need("imwatermark", _NO_MARK).WatermarkDecoder("bits", WATERMARK_BITS)
    bits = np.asarray(decoder.decode(_bgr(image), method, scales=list(scales)), dtype=np.uint8)
    payload = np.packbits(bits).tobytes()
    tag_bits = np.unpackbits(np.frombuffer(WATERMARK_TAG, np.uint8))
    errors = int((bits[: tag_bits.size] != tag_bits).sum())
    found = errors <= TAG_TOLERANCE
    return Watermark(found, payload.hex(), payload[3:].hex() if found else None, errors)


def mark_output(image: Image.Image, params: Mapping[str, Any]) -> tuple[Image.Image, dict[str, str]]:
    """What the editor does with every output when ``watermark`` is on: the marked picture and the
    fields it adds to the parameters (``watermark_id``, or ``watermark_note`` when too small)."""
    if min(image.size) < MIN_SIDE:
        return image, {"watermark_note": f"not marked: {image.width}x{image.height} is under {MIN_SIDE}x{MIN_SIDE}"}
    ident = edit_id(params)
    return embed_watermark(image, WATERMARK_TAG + bytes.fromhex(ident)), {"watermark_id": ident}


# ------------------------------------------------------------------------------------------------
# C2PA: signing


def _pem_certificates(data: bytes, where: str) -> list:
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise SigningError(f"{where}: not a PEM certificate file (-----BEGIN CERTIFICATE-----)")
    return certs


def _algorithm(key, where: str) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, ec.EllipticCurvePrivateKey):
        names = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if key.curve.name in names:
            return names[key.curve.name]
        raise SigningError(f"{where}: EC curve {key.curve.name} cannot sign C2PA; use P-256, P-384 or P-521")
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    raise SigningError(f"{where}: a {type(key).__name__} cannot sign C2PA; use an EC (P-256), Ed25519 or RSA key")


@dataclass(frozen=True)
class C2paSigner:
    """A checked certificate chain and key. ``load`` refuses, each in one line, what c2pa would
    refuse later or sign uselessly: an expired or not-yet-valid certificate, a self-signed one (C2PA
    signers need a CA-issued certificate), a key that is not the certificate's."""

    cert_pem: bytes
    key_pem: bytes
    alg: str
    signer: str  # the certificate's subject, as verify reports it

    @classmethod
    def load(cls, cert: str | Path, key: str | Path, now: dt.datetime | None = None) -> C2paSigner:
        from cryptography.hazmat.primitives import serialization

        _need("c2pa")
        cert_pem, key_pem = _read(cert, "--c2pa-cert"), _read(key, "--c2pa-key")
        certs = _pem_certificates(cert_pem, str(cert))
        try:
            private = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise SigningError(f"{key}: not an unencrypted PEM private key ({first_line(exc)})") from None
        alg = _algorithm(private, str(key))
        leaf = certs[0]
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        if (private.public_key().public_bytes(serialization.Encoding.DER, public)
                != leaf.public_key().public_bytes(serialization.Encoding.DER, public)):
            raise SigningError(f"{key}: wrong key: it is not the private key of the certificate in {cert}")
        now = now or dt.datetime.now(dt.UTC)
        for c in certs:
            subject = c.subject.rfc4514_string()
            if c.not_valid_after_utc < now:
                raise SigningError(f"{cert}: certificate {subject!r} expired on {c.not_valid_after_utc:%Y-%m-%d}")
            if c.not_valid_before_utc > now:
                raise SigningError(f"{cert}: certificate {subject!r} is not valid before "
                                   f"{c.not_valid_before_utc:%Y-%m-%d}")
        if leaf.issuer == leaf.subject:
            raise SigningError(f"{cert}: the certificate is self-signed; C2PA needs one issued by a CA: put the "
                               "signing certificate and then its intermediate CA certificate(s) in one PEM file")
        pkcs8 = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())  # the form c2pa reads, whatever was given
        return cls(cert_pem, pkcs8, alg, leaf.subject.rfc4514_string())

    def sign(self, data: bytes, fmt: str, params: Mapping[str, Any], ingredient: bytes | None = None,
             title: str = "output", ingredient_title: str = "input") -> bytes:
        """``data`` (an encoded ``fmt`` image) with a signed manifest added; ``ingredient`` is the
        input file's bytes, kept with its own manifest. Raises :class:`SigningError` or, for a
        corrupt ingredient manifest, :class:`BadImage`; nothing is returned half-signed."""
        c2pa = _need("c2pa")
        mime = SIGNABLE.get(fmt)
        if mime is None:
            raise BadOptions(f"C2PA signing supports {', '.join(SIGNABLE)} outputs, not {fmt}")
        context = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})
        try:
            signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(self.alg.encode(), self.cert_pem, self.key_pem, None))
            builder = c2pa.Builder(_manifest(params, title, mime), context=context)
            if ingredient is not None:
                builder.set_intent(c2pa.C2paBuilderIntent.EDIT)
                source, kind = _ingredient_stream(ingredient)
                try:
                    with c2pa.Reader.try_create(kind, io.BytesIO(source.getvalue())) or contextlib.nullcontext():
                        pass  # a manifest the reader cannot parse is corrupt, even where add_ingredient skips it
                    builder.add_ingredient({"title": ingredient_title, "relationship": "parentOf"}, kind, source)
                except c2pa.C2paError as exc:
                    raise BadImage(f"{ingredient_title}: its C2PA manifest is corrupt ({first_line(exc)}); "
                                   "nothing was signed") from None
            out = io.BytesIO()
            builder.sign(signer, mime, io.BytesIO(data), out)
        except c2pa.C2paError as exc:
            raise SigningError(f"C2PA signing failed: {first_line(exc)}") from None
        return out.getvalue()


def _read(path: str | Path, flag: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise SigningError(f"{flag} {path}: cannot read it ({exc.strerror or first_line(exc)})") from None


def _manifest(params: Mapping[str, Any], title: str, mime: str) -> dict[str, Any]:
    """The manifest definition: one ``c2pa.edited`` action saying who (ip2p), how (a trained model
    composited into a real picture) and what (the instruction and the settings)."""
    settings = {k: params[k] for k in ("instruction", "model", "seed", "steps", "guidance_scale",
                                        "image_guidance_scale", "scheduler", "watermark_id") if k in params}
    agent = {"name": "ip2p", "version": __version__}
    action = {"action": "c2pa.edited", "softwareAgent": agent, "digitalSourceType": DIGITAL_SOURCE_TYPE,
              "description": f"InstructPix2Pix edit: {params.get('instruction', '')}", "parameters": settings}
    return {"claim_generator_info": [agent], "title": title, "format": mime,
            "assertions": [{"label": "c2pa.actions", "data": {"actions": [action]}}]}


def _ingredient_stream(data: bytes) -> tuple[io.BytesIO, str]:
    """The input as c2pa reads it; a format c2pa does not know (BMP) goes in as a PNG of its pixels."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            kind = (im.format or "").lower()
            if kind in ("png", "jpeg", "webp", "gif", "tiff"):
                return io.BytesIO(data), f"image/{kind}"
            buffer = io.BytesIO()
            im.convert("RGB").save(buffer, "PNG")
            return io.BytesIO(buffer.getvalue()), "image/png"
    except (OSError, ValueError) as exc:
        raise BadImage(f"the input cannot be read as an ingredient ({first_line(exc)})") from None


def signer_from(cert: str | None, key: str | None, *, env: Mapping[str, str] | None = None,
                flags: tuple[str, str] = ("--c2pa-cert", "--c2pa-key")) -> C2paSigner | None:
    """The signer ``cert`` and ``key`` name (else ``IP2P_C2PA_CERT`` / ``IP2P_C2PA_KEY``), or None
    when neither is set; one without the other is an error."""
    import os

    env = os.environ if env is None else env
    cert = cert or env.get(CERT_ENV) or None
    key = key or env.get(KEY_ENV) or None
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        missing = flags[0] if cert is None else flags[1]
        raise SigningError(f"C2PA signing needs both a certificate and a key: {missing} is missing")
    return C2paSigner.load(cert, key)


# ------------------------------------------------------------------------------------------------
# C2PA: reading


def read_manifest(data: bytes, trust_anchors: bytes | None = None) -> dict[str, Any]:
    """The active manifest in summary: valid or not (and why), signer, actions, ingredients, and
    how many manifests the chain holds. ``trust_anchors`` (PEM) lets a signer count as trusted."""
    c2pa = _need("c2pa")
    settings: dict[str, Any] = {}
    if trust_anchors:
        settings["trust"] = {"trust_anchors": trust_anchors.decode("ascii", errors="replace")}
    try:
        reader = c2pa.Reader.try_create(_mime(data), io.BytesIO(data), context=c2pa.Context.from_dict(settings))
    except c2pa.C2paError as exc:
        return {"present": True, "valid": False, "errors": [f"corrupt manifest: {first_line(exc)}"]}
    if reader is None:
        return {"present": False}
    with reader:
        store = json.loads(reader.json())
    active = store.get("manifests", {}).get(store.get("active_manifest"), {})
    state = store.get("validation_state")
    failures = store.get("validation_results", {}).get("activeManifest", {}).get("failure", [])
    errors = [f"{f.get('code')}: {f.get('explanation', '')}" for f in failures
              if f.get("code") != "signingCredential.untrusted"]
    signature = active.get("signature_info", {})
    actions = [a for assertion in active.get("assertions", []) if assertion.get("label", "").startswith("c2pa.actions")
               for a in assertion.get("data", {}).get("actions", [])]
    return {
        "present": True,
        "valid": state in ("Valid", "Trusted") and not errors,
        "trusted": state == "Trusted",
        "state": state,
        "signer": {k: signature[k] for k in ("common_name", "issuer", "alg", "time") if k in signature},
        "actions": actions,
        "ingredients": [{"title": i.get("title"), "relationship": i.get("relationship"),
                         "has_manifest": "active_manifest" in i} for i in active.get("ingredients", [])],
        "chain": len(store.get("manifests", {})),
        "errors": errors,
    }


def _mime(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return f"image/{(im.format or 'png').lower()}"
    except (OSError, ValueError):
        return "application/octet-stream"


# ------------------------------------------------------------------------------------------------
# Verifying a file


def verify(data: bytes, name: str = "image", *, trust_anchors: bytes | None = None, editor: Any = None,
           source: Any = None, threads: int | None = None) -> dict[str, Any]:
    """Everything a file says about where it came from: the watermark (and whether its edit id
    matches the parameters), the C2PA manifest, and the ip2p parameters. With ``editor`` (a loaded
    :class:`~ip2p.editor.Editor`) the edit is replayed from ``source`` (else the recorded input
    path) and the pixels compared, at ``threads`` CPU threads (default: the recorded count).
    Raises :class:`BadImage` only when ``data`` is not an image."""
    from .images import load_image, read_params

    image = load_image(data)
    try:
        params: dict[str, Any] | None = read_params(data)
    except BadImage:
        params = None
    mark = read_watermark(image)
    watermark = mark.to_dict()
    if mark.found and mark.edit_id and params is not None and params.get("watermark", True) is not False:
        watermark["id_errors"] = bit_errors(mark.edit_id, edit_id(params))
        watermark["matches_params"] = watermark["id_errors"] <= ID_TOLERANCE
    report: dict[str, Any] = {"file": name, "width": image.width, "height": image.height,
                              "watermark": watermark, "c2pa": read_manifest(data, trust_anchors)}
    report["params"] = {"present": params is not None}
    if params is not None:
        report["params"].update({k: params[k] for k in ("instruction", "seed", "model", "watermark") if k in params})
        if editor is not None:
            report["params"]["replay"] = replay(editor, params, data, source, threads)
    return report


def replay_threads(params: Mapping[str, Any], device: Any, requested: int | None = None) -> int | None:
    """The torch thread count a replay runs at: ``requested`` when given, else on a CPU the edit's
    recorded ``cpu_threads`` (another count sums in another order and can move a pixel by one
    level), else None (leave torch's)."""
    if requested:
        return requested
    threads = params.get("cpu_threads")
    if getattr(device, "type", None) == "cpu" and isinstance(threads, int) and threads >= 1:
        return threads
    return None


def replay(editor: Any, params: Mapping[str, Any], data: bytes, source: Any = None,
           threads: int | None = None) -> dict[str, Any]:
    """Re-run the recorded edit and compare its pixels, encoded as the file was, with the file's.

    It runs at :func:`replay_threads`: ``threads`` if given, else on a CPU the edit's own count."""
    import torch

    from .images import encode_image, load_image
    from .options import REPLAYED, EditOptions

    if "mask" in params:
        return {"checked": False, "note": "a masked edit: the replay needs its mask, not checked"}
    if "instruction" not in params:
        return {"checked": False, "note": "no instruction recorded"}
    source = source if source is not None else params.get("input")
    if not source or (isinstance(source, str) and not Path(source).is_file()):
        return {"checked": False, "note": "the input image is not at hand (give --input)"}
    options = EditOptions.from_mapping({k: params[k] for k in REPLAYED if k in params})
    device = getattr(editor, "device", torch.device("cpu"))
    threads = replay_threads(params, device, threads)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        result = editor.edit_with([load_image(source)], params["instruction"], options)
    finally:
        torch.set_num_threads(before)
    if params.get("input_sha256") not in (None, result.params[0]["input_sha256"]):
        return {"checked": False, "note": "the input at hand is not the recorded input (its pixels differ)"}
    fmt = {"image/jpeg": "jpeg", "image/webp": "webp"}.get(_mime(data), "png")
    again = np.asarray(load_image(encode_image(result.images[0], fmt)), dtype=np.int16)
    pixels = np.asarray(load_image(data), dtype=np.int16)
    if again.shape != pixels.shape:
        return {"checked": True, "reproduced": False, "note": f"the replay is {again.shape[1]}x{again.shape[0]}"}
    difference = int(np.abs(again - pixels).max())
    report = {"checked": True, "reproduced": difference == 0, "max_difference": difference}
    return report | ({"cpu_threads": threads} if device.type == "cpu" and threads else {})


def _actions_text(actions: list[dict[str, Any]]) -> str:
    words = []
    for action in actions:
        instruction = action.get("parameters", {}).get("instruction")
        words.append(action.get("action", "?") + (f" {instruction!r}" if instruction else ""))
    return ", ".join(words) or "none"


def format_report(report: Mapping[str, Any]) -> str:
    """:func:`verify`'s report as a few lines a person reads."""
    lines = [f"{report['file']} ({report['width']}x{report['height']})"]
    w = report["watermark"]
    if w["found"]:
        match = {True: ", matches the parameters", False: ", does NOT match the parameters"}.get(
            w.get("matches_params"), "")
        text = f"found: ip2p tag, edit id {w['edit_id']}{match}"
    else:
        text = "not found" + (f" ({w['note']})" if w.get("note") else "")
    lines.append(f"  watermark   {text}")
    c = report["c2pa"]
    if not c["present"]:
        text = "none"
    elif not c.get("state"):
        text = "invalid: " + "; ".join(c["errors"])
    else:
        signer = c["signer"]
        who = f"{signer.get('common_name', '?')} (issuer {signer.get('issuer', '?')})"
        text = (f"{'valid' if c['valid'] else 'INVALID'}, {'trusted' if c['trusted'] else 'untrusted'} signer {who}; "
                f"actions: {_actions_text(c['actions'])}; {c['chain']} manifest(s) in the chain")
        for ingredient in c["ingredients"]:
            own = "with its own manifest" if ingredient["has_manifest"] else "no manifest of its own"
            text += f"; ingredient {ingredient['title']!r} ({own})"
        if c["errors"]:
            text += "; problems: " + "; ".join(c["errors"])
    lines.append(f"  c2pa        {text}")
    p = report["params"]
    if not p["present"]:
        text = "absent"
    else:
        text = f"present: {p.get('instruction')!r}, seed {p.get('seed')}, model {p.get('model')}"
        if p.get("watermark") is False:
            text += ", made with --no-watermark"
        r = p.get("replay")
        if r is not None:
            if not r["checked"]:
                text += f"; replay not checked: {r['note']}"
            else:
                text += ("; replay reproduces the pixels" if r["reproduced"]
                         else f"; replay DIFFERS (max pixel difference {r.get('max_difference', '?')})")
    lines.append(f"  parameters  {text}")
    return "\n".join(lines)


def sign_hook(signer: C2paSigner | None, params: Mapping[str, Any], ingredient: bytes | None, title: str,
              ingredient_title: str = "input"):
    """What :func:`ip2p.images.save_image` takes as ``sign``: None without a signer."""
    if signer is None:
        return None
    return lambda data, fmt: signer.sign(data, fmt, params, ingredient, title, ingredient_title)
