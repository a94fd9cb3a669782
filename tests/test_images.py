"""Image input/output: every conversion and refusal on real files and real pixels."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from ip2p.errors import BadImage, BadOptions, ImageTooLarge
from ip2p.images import (
    SAMPLER_NAMES,
    encode_image,
    format_parameters,
    load_image,
    parse_parameters,
    read_params,
    restore_size,
    save_image,
    to_working,
    working_size,
)

# Any warning that escapes (a decompression-bomb warning above all) fails the test.
pytestmark = pytest.mark.filterwarnings("error")


def colourful(width: int = 24, height: int = 16) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x * 7 + y * 13) % 256], -1)
    return Image.fromarray(rgb.astype(np.uint8))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert message and "\n" not in message
    return message


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def patched_png(width: int, height: int) -> bytes:
    """A real 8x8 PNG whose IHDR (with a valid CRC) claims ``width`` x ``height``."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def bomb_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG: a few kilobytes on disk, ``width*height`` pixels decoded."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


PARAMS = {
    "instruction": "turn the sky into a starry night, Van Gogh style — «très» 夜",
    "negative_prompt": "blurry, low quality",
    "steps": 20,
    "guidance_scale": 7.5,
    "image_guidance_scale": 1.5,
    "seed": 42,
    "scheduler": "euler_a",
    "width": 24,
    "height": 16,
    "model": "demo",
    "resolution": 512,
    "align": 8,
    "keep_working_size": False,
    "input": "photos/cat, 1.png",
    "input_sha256": "ab" * 32,
    "history": [{"instruction": "earlier", "seed": 1}],
}


# ------------------------------------------------------------------------------------------------
# Inputs that decode


def test_every_source_kind_gives_the_same_rgb_pixels(tmp_path):
    original = colourful()
    path = tmp_path / "in.png"
    original.save(path)
    data = path.read_bytes()
    with Image.open(path) as opened:
        sources = [path, str(path), data, bytearray(data), io.BytesIO(data), opened, original,
                   np.asarray(original)]
        for source in sources:
            image = load_image(source)
            assert image.mode == "RGB" and image.size == (24, 16)
            np.testing.assert_array_equal(pixels(image), pixels(original))
    assert load_image(original) is not original  # never hands back the caller's object


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (200, 40, 0)
    rgba[..., 3] = [[0, 255, 128], [0, 255, 128]]
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba).save(path)
    got = pixels(load_image(path))
    np.testing.assert_array_equal(got[:, 0], [[255, 255, 255]] * 2)  # fully transparent -> white
    np.testing.assert_array_equal(got[:, 1], [[200, 40, 0]] * 2)  # opaque -> unchanged
    expected = np.rint(np.array([200, 40, 0]) * 128 / 255 + 255 * 127 / 255)
    assert np.abs(got[:, 2] - expected).max() <= 1  # half transparent -> halfway to white


def test_la_and_palette_transparency_are_composited_on_white(tmp_path):
    la = Image.fromarray(np.array([[[10, 0], [10, 255]]], np.uint8), "LA")
    np.testing.assert_array_equal(pixels(load_image(la)), [[[255] * 3, [10] * 3]])

    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 255, 255, 0, 0] + [0] * 762)
    palette.putdata([0, 1])
    path = tmp_path / "palette.png"
    palette.save(path, transparency=0)  # index 0 (blue) is transparent
    np.testing.assert_array_equal(pixels(load_image(path)), [[[255, 255, 255], [255, 0, 0]]])
    gif = tmp_path / "palette.gif"
    palette.save(gif, transparency=0)
    np.testing.assert_array_equal(pixels(load_image(gif)), [[[255, 255, 255], [255, 0, 0]]])


def test_palette_cmyk_gray_and_bilevel_become_rgb(tmp_path):
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 128, 255, 250, 200, 10] + [0] * 762)
    palette.putdata([1, 0])
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(pixels(load_image(tmp_path / "p.png")), [[[250, 200, 10], [0, 128, 255]]])

    Image.new("CMYK", (3, 2), (0, 255, 255, 0)).save(tmp_path / "cmyk.tif")
    assert np.all(pixels(load_image(tmp_path / "cmyk.tif")) == [255, 0, 0])
    Image.new("CMYK", (8, 8), (255, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    assert np.abs(pixels(load_image(tmp_path / "cmyk.jpg")) - [0, 255, 255]).max() <= 3

    Image.fromarray(np.array([[0, 77, 255]], np.uint8)).save(tmp_path / "l.png")
    np.testing.assert_array_equal(pixels(load_image(tmp_path / "l.png")), [[[0] * 3, [77] * 3, [255] * 3]])
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    bilevel.save(tmp_path / "bw.png")
    np.testing.assert_array_equal(pixels(load_image(tmp_path / "bw.png")), [[[0] * 3, [255] * 3]])


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    samples = np.array([[0, 257 * 100, 40000, 65535]], np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(samples).save(path)
    with Image.open(path) as opened:
        assert opened.mode.startswith("I")
    got = pixels(load_image(path))[..., 0]
    np.testing.assert_array_equal(got, [[0, 100, round(40000 / 257), 255]])  # clipping would give 255s


def test_32_bit_and_float_grayscale_are_scaled():
    wide = Image.fromarray(np.array([[0, 25700, 65535]], np.int32))
    assert wide.mode == "I"
    np.testing.assert_array_equal(pixels(load_image(wide))[..., 0], [[0, 100, 255]])
    signed = Image.fromarray(np.array([[-1000, 0, 1000]], np.int32))
    np.testing.assert_array_equal(pixels(load_image(signed))[..., 0], [[0, 128, 255]])  # stretched

    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    assert unit.mode == "F"
    np.testing.assert_array_equal(pixels(load_image(unit))[..., 0], [[0, 128, 255]])
    hdr = Image.fromarray(np.array([[2.0, 4.0, 10.0]], np.float32))
    np.testing.assert_array_equal(pixels(load_image(hdr))[..., 0], [[0, 64, 255]])
    with pytest.raises(BadImage) as exc:
        load_image(Image.fromarray(np.array([[0.0, np.nan]], np.float32)))
    assert "NaN" in one_line(exc)


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)  # left half red
    stored[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    image = load_image(path)
    assert image.size == (20, 40)  # portrait now
    got = pixels(image)
    assert np.abs(got[:18] - [255, 0, 0]).max() < 40  # the stored left edge is now the top
    assert np.abs(got[22:] - [0, 0, 255]).max() < 40


def test_animated_images_give_their_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(path) as opened:
        assert opened.n_frames == 3
    assert np.all(pixels(load_image(path)) == [255, 0, 0])


def test_numpy_inputs():
    gray = np.array([[0, 128], [255, 7]], np.uint8)
    np.testing.assert_array_equal(pixels(load_image(gray)), np.repeat(gray[..., None], 3, -1))
    np.testing.assert_array_equal(pixels(load_image(gray[..., None])), np.repeat(gray[..., None], 3, -1))
    rgb = np.asarray(colourful())
    np.testing.assert_array_equal(pixels(load_image(rgb)), rgb)
    rgba = np.concatenate([rgb, np.zeros(rgb.shape[:2] + (1,), np.uint8)], -1)
    assert np.all(pixels(load_image(rgba)) == 255)  # fully transparent -> white
    for dtype in (np.float16, np.float32, np.float64):
        unit = (rgb / 255.0).astype(dtype)
        assert np.abs(pixels(load_image(unit)) - rgb).max() <= (1 if dtype != np.float16 else 2)


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.zeros((4, 4, 2), np.uint8), r"shape \(4, 4, 2\) is not an image; expected HxW"),
        (np.zeros((4, 4, 3, 1), np.uint8), r"shape \(4, 4, 3, 1\) is not an image"),
        (np.zeros(16, np.uint8), r"shape \(16,\) is not an image"),
        (np.zeros((0, 4, 3), np.uint8), "no pixels"),
        (np.zeros((4, 4), np.uint16), "dtype uint16 is not supported"),
        (np.zeros((4, 4), np.int64), "dtype int64 is not supported"),
        (np.zeros((4, 4), bool), "dtype bool is not supported"),
        (np.full((4, 4), 2.0), r"values in \[0, 1\], got 2\.\.2"),
        (np.full((4, 4), -0.5), r"values in \[0, 1\], got -0\.5"),
        (np.array([[0.1, np.inf]]), "NaN or infinite"),
    ],
)
def test_numpy_refusals_say_what_is_wrong(array, words):
    with pytest.raises(BadImage, match=words) as exc:
        load_image(array)
    assert not isinstance(exc.value, ImageTooLarge)
    one_line(exc)


# ------------------------------------------------------------------------------------------------
# Inputs that are refused


def test_missing_folder_and_empty_inputs_are_refused(tmp_path):
    cases = [
        (tmp_path / "nope.png", "nope.png: no such file"),
        (tmp_path, "is a folder"),
        (b"", "empty image data"),
        (io.BytesIO(b""), "empty image data"),
        (12, "cannot read an image from int"),
    ]
    (tmp_path / "empty.png").write_bytes(b"")
    cases.append((tmp_path / "empty.png", "empty.png: empty file"))
    for source, words in cases:
        with pytest.raises(BadImage, match=words) as exc:
            load_image(source)
        one_line(exc)
    (tmp_path / "t.txt").write_text("hello")
    with open(tmp_path / "t.txt") as text_mode, pytest.raises(BadImage, match="binary mode") as exc:
        load_image(text_mode)
    one_line(exc)


def test_non_image_files_are_refused(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture\n" * 10)
    with pytest.raises(BadImage, match="notes.png: not an image file") as exc:
        load_image(path)
    one_line(exc)
    with pytest.raises(BadImage, match="image data: not an image file"):
        load_image(b"%PDF-1.7 not an image")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_truncated_files_are_refused(tmp_path, fmt):
    buffer = io.BytesIO()
    colourful(64, 64).save(buffer, fmt)
    data = buffer.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(BadImage, match="truncated or corrupt") as exc:
        load_image(path)
    assert isinstance(exc.value, BadImage) and not isinstance(exc.value, ImageTooLarge)
    one_line(exc)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_pixel_limit_is_checked(tmp_path):
    with pytest.raises(ImageTooLarge, match=r"image is 24x16 = 384 pixels, over the limit of 383") as exc:
        load_image(colourful(), max_pixels=383)
    one_line(exc)
    assert load_image(colourful(), max_pixels=384).size == (24, 16)
    with pytest.raises(ImageTooLarge, match="over the limit"):
        load_image(np.zeros((20, 20), np.uint8), max_pixels=399)
    with pytest.raises(BadOptions, match="max_pixels must be a positive integer"):
        load_image(colourful(), max_pixels=0)


def test_pixel_limit_is_checked_from_the_header_before_decoding(tmp_path):
    # 9000x7500 = 67.5 MP: over our 64 MP default but under Pillow's own bomb limit, and with only
    # 8x8 pixels of data: decoding first would report truncation, not size.
    path = tmp_path / "claims-huge.png"
    path.write_bytes(patched_png(9000, 7500))
    with pytest.raises(ImageTooLarge, match="9000x7500 = 67,500,000 pixels, over the limit of 64,000,000") as exc:
        load_image(path)
    one_line(exc)
    # With the limit raised the same file gets as far as decoding, and fails there.
    with pytest.raises(BadImage, match="truncated or corrupt") as exc:
        load_image(path, max_pixels=10**8)
    assert not isinstance(exc.value, ImageTooLarge)


@pytest.mark.parametrize(("width", "height"), [(12000, 12000), (20000, 20000)])
def test_decompression_bombs_are_refused_without_a_warning(tmp_path, width, height):
    # 144 MP triggers Pillow's DecompressionBombWarning, 400 MP its DecompressionBombError; both
    # become ImageTooLarge even when the caller raised max_pixels (warnings are errors here).
    data = bomb_png(width, height)
    assert len(data) < 200_000
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    for source in (path, data):
        for limit in (10**10, 64_000_000):
            # Whatever the caller's warning filters say, the bomb is refused and nothing is emitted.
            with warnings.catch_warnings(record=True) as emitted:
                warnings.simplefilter("always")
                with pytest.raises(ImageTooLarge, match="refusing a possible decompression bomb") as exc:
                    load_image(source, max_pixels=limit)
            assert emitted == []
            one_line(exc)
        with pytest.raises(ImageTooLarge, match="decompression bomb"):
            read_params(source)


# ------------------------------------------------------------------------------------------------
# Size policy


@pytest.mark.parametrize(
    ("size", "resolution", "align", "expected"),
    [
        ((1000, 500), 512, 8, (512, 256)),
        ((500, 1000), 512, 8, (256, 512)),
        ((512, 512), 512, 8, (512, 512)),
        ((640, 480), 512, 8, (512, 384)),
        ((1920, 1080), 512, 8, (512, 288)),
        ((1920, 1080), 768, 8, (768, 432)),
        ((1000, 333), 512, 8, (512, 168)),  # 170.5 -> 168 (nearest multiple of 8)
        ((1920, 1080), 512, 64, (512, 320)),  # 288 = 4.5 * 64 rounds half up
        ((1600, 1000), 512, 64, (512, 320)),  # 320 stays
        ((2000, 1000), 512, 64, (512, 256)),
        ((1000, 700), 512, 64, (512, 384)),  # 358.4 -> 384
        ((700, 1000), 500, 64, (320, 512)),  # long side itself rounds: 500 -> 512
        ((10, 7), 512, 8, (512, 360)),  # tiny inputs are enlarged
        ((1, 1), 512, 8, (512, 512)),
        ((10000, 1), 512, 8, (512, 8)),  # never below align
        ((1, 10000), 512, 64, (64, 512)),
    ],
)
def test_working_size_table(size, resolution, align, expected):
    assert working_size(*size, resolution=resolution, align=align) == expected


def test_working_size_refuses_nonsense():
    for args in [(0, 5), (5, -1), (5, 5, 0), (5, 5, 512, 0), (5.5, 5), (True, 5)]:
        with pytest.raises(BadOptions, match="must be a positive integer"):
            working_size(*args)


def test_to_working_and_restore_size_use_the_right_filters():
    big = colourful(100, 50)
    small = to_working(big, 64, 8)
    assert small.size == (64, 32)
    np.testing.assert_array_equal(pixels(small), pixels(big.resize((64, 32), Image.Resampling.LANCZOS)))
    assert pixels(small).std() > 10  # real pixels, not a blank
    enlarged = to_working(small, 96, 8)
    np.testing.assert_array_equal(pixels(enlarged), pixels(small.resize((96, 48), Image.Resampling.BICUBIC)))
    exact = colourful(64, 32)
    assert to_working(exact, 64, 8) is exact  # already the working size: no resampling at all
    back = restore_size(small, big.size)
    assert back.size == (100, 50)
    assert np.abs(pixels(back) - pixels(big)).mean() < 6  # close to the original after a round trip
    assert restore_size(exact, (64, 32)) is exact
    with pytest.raises(BadOptions):
        restore_size(exact, (0, 32))


# ------------------------------------------------------------------------------------------------
# Writing


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".jpeg", ".webp", ".PNG"])
def test_save_image_writes_each_format_and_creates_folders(tmp_path, suffix):
    image = colourful()
    path = save_image(image, tmp_path / "a" / "b" / f"out{suffix}")
    assert path.is_file()
    with Image.open(path) as written:
        expected = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}[suffix.lower()]
        assert written.format == expected and written.size == image.size
    tolerance = 0 if suffix.lower() == ".png" else 12
    assert np.abs(pixels(load_image(path)) - pixels(image)).mean() <= tolerance
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp files left over


def test_save_image_refuses_other_extensions(tmp_path):
    for name in ("out.gif", "out.tiff", "out"):
        with pytest.raises(BadOptions, match=r"unsupported extension .*use \.png, \.jpg, \.jpeg, \.webp") as exc:
            save_image(colourful(), tmp_path / name)
        one_line(exc)
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(BadOptions, match="is a folder"):
        save_image(colourful(), tmp_path / "dir.png")
    assert not list(tmp_path.glob(".*.tmp"))


def test_failed_save_keeps_the_old_file_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "out.png"
    old = colourful(8, 8)
    save_image(old, target)
    before = target.read_bytes()
    # The encoder fails (a parameter that is not JSON).
    with pytest.raises(BadOptions, match="parameter 'when' is not JSON-serialisable"):
        save_image(colourful(64, 64), target, {"instruction": "x", "when": object()})
    # The disk fails mid-write: a 2 KB file-size limit in a child process (SIGXFSZ ignored -> EFBIG).
    script = textwrap.dedent(
        f"""
        import resource, signal
        import numpy as np
        from PIL import Image
        from ip2p.errors import BadOptions
        from ip2p.images import save_image
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))
        noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        try:
            save_image(Image.fromarray(noise), {str(target)!r})
        except BadOptions as exc:
            print("refused:", exc)
        """
    )
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    assert child.stdout.startswith(f"refused: cannot write {target}: File too large"), child.stdout
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["out.png"]


def test_encode_image_refusals_and_conversions():
    image = colourful()
    with pytest.raises(BadOptions, match="unknown image format 'gif'; choose png, jpeg or webp"):
        encode_image(image, "gif")
    with pytest.raises(BadOptions, match="quality must be an integer from 1 to 100"):
        encode_image(image, "jpeg", quality=0)
    with pytest.raises(ImageTooLarge, match="too large for JPEG"):
        encode_image(Image.new("RGB", (65_501, 1)), "jpeg")
    with pytest.raises(BadImage, match="can only encode a PIL image"):
        encode_image(np.asarray(image), "png")
    assert encode_image(image, "JPG")[:2] == b"\xff\xd8"
    transparent = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    as_jpeg = Image.open(io.BytesIO(encode_image(transparent, "jpeg")))
    assert as_jpeg.mode == "RGB" and np.all(pixels(as_jpeg) >= 250)  # on white, not black or red
    assert Image.open(io.BytesIO(encode_image(transparent, "webp"))).mode == "RGBA"


# ------------------------------------------------------------------------------------------------
# Metadata


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_metadata_round_trip(tmp_path, suffix):
    path = save_image(colourful(), tmp_path / f"edit{suffix}", PARAMS)
    assert read_params(path) == PARAMS
    assert read_params(path.read_bytes()) == PARAMS
    with Image.open(path) as opened:
        assert read_params(opened) == PARAMS
    fmt = "jpeg" if suffix == ".jpg" else suffix[1:]
    assert read_params(encode_image(colourful(), fmt, PARAMS)) == PARAMS


def test_png_metadata_layout(tmp_path):
    path = save_image(colourful(), tmp_path / "edit.png", PARAMS)
    with Image.open(path) as opened:
        assert opened.info["parameters"] == format_parameters(PARAMS)
        assert json.loads(opened.info["ip2p"]) == PARAMS
        assert opened.info["parameters"].splitlines()[0] == PARAMS["instruction"]


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_exif_user_comment_layout(fmt):
    with Image.open(io.BytesIO(encode_image(colourful(), fmt, PARAMS))) as opened:
        comment = opened.getexif().get_ifd(0x8769)[0x9286]
    assert comment[:8] == b"ASCII\0\0\0"
    payload = json.loads(comment[8:].decode("ascii"))
    assert payload == {"parameters": format_parameters(PARAMS), "ip2p": PARAMS}


def test_read_params_refuses_images_without_metadata(tmp_path):
    for suffix in (".png", ".jpg", ".webp"):
        path = save_image(colourful(), tmp_path / f"plain{suffix}")
        with pytest.raises(BadImage, match="no ip2p or AUTOMATIC1111 'parameters' metadata") as exc:
            read_params(path)
        one_line(exc)
    with pytest.raises(BadImage, match="no such file"):
        read_params(tmp_path / "missing.png")
    with pytest.raises(BadImage, match="not an image file"):
        read_params(b"plain text")


A1111_TEXT = (
    "a photo of a cat wearing a hat\n"
    "Negative prompt: ugly, blurry\n"
    "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234567890, Size: 512x768, "
    'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "hat: abc, cat: def", Version: v1.6.0'
)


def test_read_params_reads_files_from_a1111_style_tools(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", A1111_TEXT)
    colourful().save(tmp_path / "a1111.png", pnginfo=info)
    expected = parse_parameters(A1111_TEXT)
    assert read_params(tmp_path / "a1111.png") == expected
    # A1111 writes the bare text as UNICODE UserComment, UTF-16 big-endian; some tools little-endian.
    for encoding in ("utf-16-be", "utf-16-le"):
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + A1111_TEXT.encode(encoding)
        colourful().save(tmp_path / "a1111.jpg", exif=exif.tobytes())
        assert read_params(tmp_path / "a1111.jpg") == expected


def test_parse_a1111_text():
    assert parse_parameters(A1111_TEXT) == {
        "instruction": "a photo of a cat wearing a hat",
        "negative_prompt": "ugly, blurry",
        "steps": 30,
        "scheduler": "dpm++2m",
        "guidance_scale": 7.0,
        "seed": 1234567890,
        "width": 512,
        "height": 768,
        "model_hash": "6ce0161689",
        "model": "v1-5-pruned-emaonly",
        "lora_hashes": "hat: abc, cat: def",
        "version": "v1.6.0",
    }
    assert parse_parameters("just a prompt") == {"instruction": "just a prompt"}
    assert parse_parameters("x\nSteps: 5, Sampler: DPM++ SDE Karras")["scheduler"] == "DPM++ SDE Karras"


def test_format_parameters_layout():
    text = format_parameters(PARAMS)
    first, negative, settings = text.split("\n")
    assert first == PARAMS["instruction"]
    assert negative == "Negative prompt: blurry, low quality"
    assert settings.startswith(
        "Steps: 20, Sampler: Euler a, CFG scale: 7.5, Image CFG scale: 1.5, Seed: 42, Size: 24x16, Model: demo, "
    )
    assert 'Input: "photos/cat, 1.png"' in settings  # a comma inside a value is quoted
    assert "History" not in settings  # non-scalars live only in the ip2p JSON
    assert "Negative prompt" not in format_parameters({"instruction": "x", "negative_prompt": "", "steps": 3})


@pytest.mark.parametrize("scheduler", sorted(SAMPLER_NAMES))
def test_every_scheduler_maps_to_an_a1111_sampler_and_back(scheduler):
    text = format_parameters({"instruction": "x", "steps": 4, "scheduler": scheduler})
    assert f"Sampler: {SAMPLER_NAMES[scheduler]}" in text
    assert parse_parameters(text)["scheduler"] == scheduler


@pytest.mark.parametrize(
    "params",
    [
        {k: v for k, v in PARAMS.items() if k != "history"},
        {"instruction": "", "steps": 1, "seed": 0, "width": 8, "height": 8},
        {"instruction": "two\nlines", "negative_prompt": "neg\nalso", "steps": 50, "guidance_scale": 12.25,
         "image_guidance_scale": 1.0, "seed": 2**63 - 1, "scheduler": "dpm++2m", "model": "a:b, c"},
        {"instruction": "tricky values", "steps": 3, "note": "42", "flag": "True", "ratio": 1e-05,
         "empty": "", "quote": 'say "hi"', "spaced": " x ", "negative": -3, "big": True},
    ],
)
def test_format_parse_round_trip(params):
    text = format_parameters(params)
    assert parse_parameters(text) == params
    assert format_parameters(parse_parameters(text)) == text


def test_jpeg_metadata_size_limit_is_a_clear_error(tmp_path):
    huge = {"instruction": "x" * 70_000, "steps": 1}
    with pytest.raises(BadOptions, match="too long for JPEG metadata .* save as PNG or WebP") as exc:
        save_image(colourful(), tmp_path / "long.jpg", huge)
    one_line(exc)
    assert not (tmp_path / "long.jpg").exists()
    assert read_params(save_image(colourful(), tmp_path / "long.webp", huge)) == huge
    assert read_params(save_image(colourful(), tmp_path / "long.png", huge)) == huge
