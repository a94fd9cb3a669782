"""Provenance on real files: the invisible watermark (embed, detect, the three attacks), C2PA
content credentials (signed with a throw-away CA chain made here, read back field by field, chained
over two edits, refused for bad certificates), ``ip2p verify`` on marked, unmarked, stripped and
tampered files, and ``POST /v1/verify`` over real HTTP."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("imwatermark")
pytest.importorskip("c2pa")

from ip2p.provenance import (  # noqa: E402
    DIGITAL_SOURCE_TYPE,
    ID_TOLERANCE,
    WATERMARK_TAG,
    C2paSigner,
    SigningError,
    bit_errors,
    edit_id,
    embed_watermark,
    read_manifest,
    read_watermark,
)
from ip2p.version import __version__  # noqa: E402

ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
ENV.pop("IP2P_C2PA_CERT", None)
ENV.pop("IP2P_C2PA_KEY", None)


def ip2p(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ip2p", *map(str, args)], capture_output=True, env=ENV,
                          timeout=300)


def cli(capsys, *args) -> tuple[int, str, str]:
    """The CLI in this process (the same code path as ``ip2p``; no interpreter start-up)."""
    from ip2p.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def texture(seed: int, size: int = 512) -> Image.Image:
    """A photograph-like test picture: noise at four scales (the benchmark's texture family)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3))
    for cells, weight in ((8, 60), (32, 30), (128, 15), (size, 6)):
        small = Image.fromarray(((rng.normal(0, 1, (cells, cells, 3)) + 3) * 40).clip(0, 255).astype(np.uint8))
        img += weight * np.asarray(small.resize((size, size), Image.Resampling.BICUBIC), float) / 40
    img = img - img.mean() + rng.uniform(80, 170, 3)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def png_bytes(image: Image.Image, **info) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **info)
    return buffer.getvalue()


def jpeg_again(image: Image.Image, quality: int = 80) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


# ------------------------------------------------------------------------------------------------
# A throw-away certificate chain: root CA -> intermediate CA -> signing certificate (ES256)


def _certificate(subject, key, issuer, issuer_key, *, ca: bool, days=(-1, 30)):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ip2p tests")])

    now = dt.datetime.now(dt.UTC)
    usage = dict(content_commitment=False, key_encipherment=False, data_encipherment=False, key_agreement=False,
                 encipher_only=False, decipher_only=False)
    builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now + dt.timedelta(days=days[0])).not_valid_after(now + dt.timedelta(days=days[1]))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                              critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(digital_signature=False, key_cert_sign=True, crl_sign=True,
                                                      **usage), critical=True)
    else:  # C2PA's signer profile: digitalSignature, and an EKU such as emailProtection (never anyEKU)
        builder = builder.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                                      **usage), critical=True)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = tmp_path_factory.mktemp("certs")
    root_key, ca_key, key, other = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    root = _certificate("ip2p test root", root_key, "ip2p test root", root_key, ca=True)
    inter = _certificate("ip2p test CA", ca_key, "ip2p test root", root_key, ca=True)
    leaf = _certificate("ip2p test signer", key, "ip2p test CA", ca_key, ca=False)
    expired = _certificate("ip2p test signer", key, "ip2p test CA", ca_key, ca=False, days=(-60, -30))
    selfish = _certificate("ip2p self", key, "ip2p self", key, ca=False)

    def pem(*chain):
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)

    def private(k):
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    files = {"chain": pem(leaf, inter), "root": pem(root), "key": private(key), "other_key": private(other),
             "expired": pem(expired, inter), "self": pem(selfish)}
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.pem"
        paths[name].write_bytes(data)
    return paths


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from ip2p.components import save_diffusers
    from ip2p.tiny import build_tiny_components

    return save_diffusers(build_tiny_components(seed=0), tmp_path_factory.mktemp("prov") / "tiny")


@pytest.fixture
def photo(tmp_path):
    """A 256x256 input: outputs come back at its size, large enough to be marked."""
    path = tmp_path / "in.png"
    texture(1, 256).save(path)
    return path


EDIT = ("-i", "make it blue", "--steps", 2, "--seed", 3, "--resolution", 32, "-q")


# ------------------------------------------------------------------------------------------------
# Watermark


def test_watermark_survives_jpeg_and_resize_but_not_a_crop():
    """docs/provenance.md's table, on one texture picture: found after JPEG q80 and a 0.5x resize
    and back, lost after cutting 5 % off each side (the block grid moves)."""
    image = texture(3)
    payload = WATERMARK_TAG + bytes.fromhex("a1b2c3")
    marked = embed_watermark(image, payload)
    mse = np.mean((np.asarray(marked, float) - np.asarray(image, float)) ** 2)
    assert 10 * np.log10(255**2 / mse) > 44  # PSNR in dB: 46.7 measured on textures
    found = read_watermark(marked)
    assert found.found and found.payload == payload.hex() and found.edit_id == "a1b2c3" and found.tag_errors == 0
    assert read_watermark(jpeg_again(marked)).edit_id == "a1b2c3"
    half = marked.resize((256, 256), Image.Resampling.LANCZOS).resize((512, 512), Image.Resampling.BICUBIC)
    assert read_watermark(half).edit_id == "a1b2c3"
    assert not read_watermark(marked.crop((25, 25, 487, 487))).found


def test_unmarked_pictures_are_not_reported_as_marked():
    from ip2p.shapes.edits import make_example

    pictures = [texture(seed) for seed in (10, 11)] + [Image.fromarray(make_example(4, size=512).before)]
    for picture in pictures:
        assert not read_watermark(picture).found
    small = read_watermark(texture(1, 128))
    assert not small.found and "under 256x256" in small.note


def test_the_editor_marks_every_large_output_and_records_it(tiny_editor):
    from ip2p.editor import Editor

    image = texture(2, 256)
    assert isinstance(tiny_editor, Editor)
    marked = tiny_editor.edit(image, "make it blue", steps=2, seed=1, resolution=32)
    params = marked.params[0]
    assert params["watermark"] is True and params["watermark_id"] == edit_id(params)
    assert bit_errors(read_watermark(marked.image).edit_id, params["watermark_id"]) <= ID_TOLERANCE
    plain = tiny_editor.edit(image, "make it blue", steps=2, seed=1, resolution=32, watermark=False)
    assert plain.params[0]["watermark"] is False and "watermark_id" not in plain.params[0]
    assert not read_watermark(plain.image).found
    assert edit_id(plain.params[0]) != params["watermark_id"]  # the choice is part of the edit
    small = tiny_editor.edit(texture(2, 64), "make it blue", steps=2, seed=1, resolution=32)
    assert "under 256x256" in small.params[0]["watermark_note"]


def test_a_masked_edit_keeps_the_inputs_pixels_outside_the_mask(tiny_editor):
    image = texture(5, 256)
    mask = np.zeros((256, 256), bool)
    mask[64:192, 64:192] = True
    result = tiny_editor.edit(image, "make it blue", steps=2, seed=1, resolution=32, mask=mask)
    outside = np.ones((256, 256), bool)
    outside[56:200, 56:200] = False  # beyond the 3-pixel feather, with room to spare
    assert np.array_equal(np.asarray(result.image)[outside], np.asarray(image)[outside])
    assert result.params[0]["watermark_id"] == edit_id(result.params[0])  # marked inside the mask only


def test_cli_no_watermark_and_replay_reproduce_the_pixels(capsys, tmp_path, model_dir, photo):
    out, plain = tmp_path / "out.png", tmp_path / "plain.png"
    for path, extra in ((out, ()), (plain, ("--no-watermark",))):
        code, _, err = cli(capsys, "edit", photo, "-o", path, "--model", model_dir, *EDIT, *extra)
        assert code == 0, err
    for source, copy in ((out, tmp_path / "again.png"), (plain, tmp_path / "plain-again.png")):
        code, _, err = cli(capsys, "edit", photo, "--replay", source, "-o", copy, "-q")
        assert code == 0, err
        assert np.array_equal(np.asarray(Image.open(copy)), np.asarray(Image.open(source)))
    assert not np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(plain)))
    assert json.loads(cli(capsys, "show-params", plain, "--json")[1])["watermark"] is False
    assert "Watermark: True" in cli(capsys, "show-params", out)[1]


# ------------------------------------------------------------------------------------------------
# C2PA


def test_sign_then_read_field_by_field(certs, tmp_path):
    signer = C2paSigner.load(certs["chain"], certs["key"])
    source = png_bytes(texture(1, 64))
    params = {"instruction": "make it blue", "seed": 3, "steps": 2, "model": "tiny", "watermark_id": "a1b2c3"}
    for fmt in ("png", "jpeg"):
        buffer = io.BytesIO()
        texture(2, 64).save(buffer, fmt.upper())
        signed = signer.sign(buffer.getvalue(), fmt, params, source, f"out.{fmt}", "in.png")
        report = read_manifest(signed, trust_anchors=certs["root"].read_bytes())
        assert report["present"] and report["valid"] and report["trusted"], report
        assert report["signer"]["common_name"] == "ip2p test signer" and report["signer"]["issuer"] == "ip2p tests"
        opened, edited = report["actions"]
        assert opened["action"] == "c2pa.opened"
        assert edited["action"] == "c2pa.edited"
        assert edited["digitalSourceType"] == DIGITAL_SOURCE_TYPE
        assert edited["softwareAgent"] == {"name": "ip2p", "version": __version__}
        assert edited["parameters"]["instruction"] == "make it blue"
        assert edited["parameters"]["watermark_id"] == "a1b2c3"
        assert report["ingredients"] == [{"title": "in.png", "relationship": "parentOf", "has_manifest": False}]
        assert Image.open(io.BytesIO(signed)).tobytes() == Image.open(buffer).tobytes()  # pixels untouched
    untrusted = read_manifest(signed)
    assert untrusted["valid"] and not untrusted["trusted"]


def test_two_chained_edits_keep_the_chain_and_verify_reads_it(capsys, certs, tmp_path, model_dir, photo):
    first, second = tmp_path / "first.png", tmp_path / "second.jpg"
    sign = ("--c2pa-cert", certs["chain"], "--c2pa-key", certs["key"])
    run = ip2p("edit", photo, "-o", first, "--model", model_dir, *EDIT, *sign)  # a real process, once
    assert run.returncode == 0, run.stderr.decode()
    code, _, err = cli(capsys, "edit", first, "-o", second, "--model", model_dir, *EDIT, *sign)
    assert code == 0, err
    run = ip2p("verify", first, second, "--json", "--trust-anchors", certs["root"])
    assert run.returncode == 0, run.stderr.decode()
    one, two = json.loads(run.stdout)
    assert one["c2pa"]["chain"] == 1 and one["c2pa"]["ingredients"][0]["has_manifest"] is False
    assert two["c2pa"]["chain"] == 2 and two["c2pa"]["trusted"]
    assert two["c2pa"]["ingredients"] == [{"title": "first.png", "relationship": "parentOf", "has_manifest": True}]
    assert two["watermark"]["found"] and two["watermark"]["matches_params"]
    assert two["params"]["instruction"] == "make it blue"
    text = cli(capsys, "verify", second)[1]
    assert "found: ip2p tag" in text and "valid, untrusted signer ip2p test signer" in text
    assert "'first.png' (with its own manifest)" in text


@pytest.mark.parametrize("cert, key, cause", [
    ("expired", "key", "expired on"),
    ("self", "key", "self-signed"),
    ("chain", "other_key", "wrong key"),
    ("chain", None, "--c2pa-key is missing"),
])
def test_bad_certificates_fail_in_one_line_before_any_work(capsys, certs, tmp_path, photo, cert, key, cause):
    out = tmp_path / "out.png"
    flags = ["--c2pa-cert", certs[cert]] + (["--c2pa-key", certs[key]] if key else [])
    code, _, err = cli(capsys, "edit", photo, "-o", out, "--model", "/nonexistent/model", *EDIT, *flags)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and cause in lines[0], lines
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def _chunks(data: bytes):
    at = 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        yield at, length, data[at + 4:at + 8]
        at += 12 + length


def _with_chunk(data: bytes, kind: bytes, body: bytes, starting: bytes = b"") -> bytes:
    """``data`` with the content of its first ``kind`` chunk that starts with ``starting`` replaced
    (CRC recomputed)."""
    for at, length, name in _chunks(data):
        if name == kind and data[at + 8:at + 8 + len(starting)] == starting:
            crc = struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
            return data[:at] + struct.pack(">I", len(body)) + kind + body + crc + data[at + 12 + length:]
    raise AssertionError(f"no {kind!r} chunk")


@pytest.mark.parametrize("keep", [40, 0.5])
def test_a_corrupt_input_manifest_is_refused_and_nothing_written(capsys, certs, tmp_path, model_dir, photo, keep):
    signed = tmp_path / "signed.png"
    sign = ("--c2pa-cert", certs["chain"], "--c2pa-key", certs["key"])
    assert cli(capsys, "edit", photo, "-o", signed, "--model", model_dir, *EDIT, *sign)[0] == 0
    data = signed.read_bytes()
    manifest = next(data[at + 8:at + 8 + n] for at, n, kind in _chunks(data) if kind == b"caBX")
    broken = tmp_path / "broken.png"  # the manifest cut short: its first 40 bytes, or its first half
    broken.write_bytes(_with_chunk(data, b"caBX", manifest[:keep if keep > 1 else len(manifest) // 2]))
    out = tmp_path / "out.png"
    code, _, err = cli(capsys, "edit", broken, "-o", out, "--model", model_dir, *EDIT, *sign)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "C2PA manifest is corrupt" in lines[0], lines
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))
    code, text, _ = cli(capsys, "verify", broken, "--json")
    assert code == 1
    report = json.loads(text)[0]
    assert report["c2pa"]["valid"] is False and "corrupt manifest" in report["c2pa"]["errors"][0]


def test_signer_load_names_each_problem(certs, tmp_path):
    with pytest.raises(SigningError, match="not a PEM certificate"):
        C2paSigner.load(certs["key"], certs["key"])
    with pytest.raises(SigningError, match="cannot read it"):
        C2paSigner.load(tmp_path / "missing.pem", certs["key"])
    with pytest.raises(SigningError, match="expired on"):
        C2paSigner.load(certs["chain"], certs["key"], now=dt.datetime.now(dt.UTC) + dt.timedelta(days=365))


# ------------------------------------------------------------------------------------------------
# ip2p verify


def test_verify_marked_unmarked_stripped_and_tampered(capsys, certs, tmp_path, model_dir, photo):
    marked = tmp_path / "marked.png"
    sign = ("--c2pa-cert", certs["chain"], "--c2pa-key", certs["key"])
    threads = torch.get_num_threads()
    edit_threads = 2 if threads == 1 else 1  # not what the verify process starts with
    try:
        assert cli(capsys, "edit", photo, "-o", marked, "--model", model_dir, *EDIT, *sign,
                   "--threads", edit_threads)[0] == 0
    finally:
        torch.set_num_threads(threads)
    stripped = tmp_path / "stripped.png"
    Image.open(marked).convert("RGB").save(stripped)  # a re-save: every chunk but the pixels is gone
    data = marked.read_bytes()
    text = next(data[at + 8:at + 8 + n] for at, n, kind in _chunks(data) if kind == b"tEXt" and
                data[at + 8:at + 13] == b"ip2p\0")
    tampered = tmp_path / "tampered.png"  # someone rewrote the instruction in the metadata
    tampered.write_bytes(_with_chunk(data, b"tEXt", text.replace(b"make it blue", b"make it red!"), b"ip2p\0"))

    # the replay runs at the edit's recorded thread count: another count may sum in another order
    run = ip2p("verify", marked, photo, stripped, tampered, "--json", "--model", model_dir)
    assert run.returncode == 1, run.stderr.decode()  # the tampered file
    good, plain, bare, bad = json.loads(run.stdout)
    assert good["watermark"]["found"] and good["watermark"]["matches_params"]
    assert good["c2pa"]["valid"] and good["params"]["replay"] == {"checked": True, "reproduced": True,
                                                                   "max_difference": 0,
                                                                   "cpu_threads": edit_threads}
    assert not plain["watermark"]["found"] and not plain["c2pa"]["present"] and not plain["params"]["present"]
    assert bare["watermark"]["found"] and bare["watermark"]["edit_id"] == good["watermark"]["edit_id"]
    assert not bare["c2pa"]["present"] and not bare["params"]["present"]
    assert bad["watermark"]["found"] and bad["watermark"]["matches_params"] is False
    assert bad["c2pa"]["present"] and not bad["c2pa"]["valid"]
    assert any("dataHash.mismatch" in e for e in bad["c2pa"]["errors"])

    code, out, err = cli(capsys, "verify", tmp_path / "nothing.png", marked)
    assert code == 2
    assert err.strip() == f"ip2p: error: {tmp_path / 'nothing.png'}: no such file"
    assert "replay" not in out and "found: ip2p tag" in out


# ------------------------------------------------------------------------------------------------
# The server


def test_server_signs_outputs_and_verifies_uploads(tiny_editor, certs):
    import httpx

    from ip2p.server import BackgroundServer, ServerSettings, create_app

    settings = ServerSettings(ui=False, c2pa_cert=str(certs["chain"]), c2pa_key=str(certs["key"]))
    with BackgroundServer(create_app(tiny_editor, settings)) as running, \
            httpx.Client(base_url=running.url, timeout=120) as client:
        reply = client.post("/v1/edit", json={"image": base64.b64encode(png_bytes(texture(4, 256))).decode(),
                                              "instruction": "make it blue", "steps": 2, "resolution": 32,
                                              "seed": 1})
        assert reply.status_code == 200, reply.text
        output = base64.b64decode(reply.json()["images"][0]["b64_json"])
        checked = client.post("/v1/verify", files={"file": ("out.png", output, "image/png")})
        assert checked.status_code == 200, checked.text
        report = checked.json()
        assert report["object"] == "verification" and report["watermark"]["matches_params"] is True
        assert report["c2pa"]["valid"] and report["c2pa"]["ingredients"][0]["title"] == "input"
        assert report["params"]["model"] == reply.json()["images"][0]["params"]["model"]
        plain = client.post("/v1/verify", json={"image": base64.b64encode(png_bytes(texture(6, 256))).decode()})
        assert plain.status_code == 200 and not plain.json()["watermark"]["found"]
        assert not plain.json()["c2pa"]["present"]
        bad = client.post("/v1/verify", files={"file": ("x.png", b"not an image", "image/png")})
        assert bad.status_code == 400 and "not an image file" in bad.json()["error"]["message"]
    with pytest.raises(SigningError, match="self-signed"):
        create_app(tiny_editor, ServerSettings(ui=False, c2pa_cert=str(certs["self"]), c2pa_key=str(certs["key"])))


def test_the_uis_edit_again_keeps_the_chain(tiny_editor, certs):
    """The UI's history: a download's parent is the previous download when the input is that output."""
    from ip2p.ui import Scratch, edit_one, outcome_of

    scratch = Scratch(signer=C2paSigner.load(certs["chain"], certs["key"]))
    options = {"steps": 2, "seed": 1, "resolution": 32}
    from ip2p.options import EditOptions

    first_input = texture(7, 256)
    first = outcome_of(edit_one(tiny_editor, first_input, "make it blue", EditOptions(**options)), first_input,
                       scratch)
    again_input = first.chosen[0]
    second = outcome_of(edit_one(tiny_editor, again_input, "make it red", EditOptions(**options)), again_input,
                        scratch, first)
    one, two = (read_manifest(Path(o.chosen[2]).read_bytes()) for o in (first, second))
    assert one["valid"] and one["chain"] == 1 and not one["ingredients"][0]["has_manifest"]
    assert two["valid"] and two["chain"] == 2 and two["ingredients"][0]["has_manifest"]
    assert two["actions"][-1]["parameters"]["instruction"] == "make it red"
    assert read_watermark(Image.open(second.chosen[2])).found
