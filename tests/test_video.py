"""Video in and out through real files (PyAV for containers, Pillow for GIF/WebP), and the flicker
measure on known pixels."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from ip2p.errors import BadImage, BadOptions, ImageTooLarge
from ip2p.video import (
    ReadLimits,
    Video,
    encode_video,
    flicker,
    flicker_ratio,
    kind_of,
    read_video,
    write_video,
)

av = pytest.importorskip("av")


def moving_frames(count: int = 12, width: int = 48, height: int = 32) -> list[Image.Image]:
    """A bright square crossing a gradient: every frame differs, and by a known amount."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 4, y * 6, np.full_like(x, 90)], -1).astype(np.uint8)
    frames = []
    for t in range(count):
        frame = base.copy()
        frame[8:20, 2 + 3 * t:14 + 3 * t] = (250, 250, 40)
        frames.append(Image.fromarray(frame))
    return frames


def with_audio(path, frames, fps: int = 12) -> None:
    """An mp4 with H.264 video and a one-second AAC tone."""
    out = av.open(str(path), "w")
    video = out.add_stream("libx264", rate=fps)
    video.width, video.height, video.pix_fmt = frames[0].size[0], frames[0].size[1], "yuv420p"
    audio = out.add_stream("aac", rate=16000)
    for frame in frames:
        out.mux(video.encode(av.VideoFrame.from_image(frame)))
    out.mux(video.encode(None))
    tone = (0.2 * np.sin(np.linspace(0, 2 * np.pi * 440, 16000))).astype(np.float32)[None]
    samples = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
    samples.sample_rate = 16000
    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=16000, frame_size=1024)
    for chunk in resampler.resample(samples) + resampler.resample(None):
        out.mux(audio.encode(chunk))
    out.mux(audio.encode(None))
    out.close()


def mean_error(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".mov"])
def test_container_round_trip_keeps_frames_rate_size_and_pixels(tmp_path, suffix):
    frames = moving_frames()
    path = write_video(Video(frames, Fraction(12)), tmp_path / f"clip{suffix}", {"instruction": "x"})
    back = read_video(path)
    assert len(back.frames) == 12 and back.fps == 12 and back.size == (48, 32)
    assert max(mean_error(a, b) for a, b in zip(frames, back.frames, strict=True)) < 6  # lossy, but close
    assert back.audio is None


def test_mp4_audio_track_survives_an_edit_round_trip(tmp_path):
    frames = moving_frames()
    with_audio(tmp_path / "in.mp4", frames)
    video = read_video(tmp_path / "in.mp4", ReadLimits(start=0.25))
    assert len(video.frames) == 9 and video.audio is not None  # frames 3..11 of 12 at 12 fps
    out = write_video(video.replace_frames([f.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for f in video.frames]),
                      tmp_path / "out.webm")
    with av.open(str(out)) as container:
        kinds = sorted(s.type for s in container.streams)
        audio = container.streams.audio[0]
        seconds = sum(f.samples for f in container.decode(audio)) / audio.rate
    assert kinds == ["audio", "video"]
    assert 0.6 < seconds < 0.9  # the 0.75 s kept, not the whole second
    back = read_video(out)
    assert len(back.frames) == 9 and back.fps == 12


@pytest.mark.parametrize("suffix,fps", [(".gif", 10), (".gif", 24), (".webp", 12)])
def test_animated_round_trip_keeps_frames_rate_and_size(tmp_path, suffix, fps):
    frames = moving_frames(10)
    path = write_video(Video(frames, Fraction(fps)), tmp_path / f"clip{suffix}")
    back = read_video(path)
    assert len(back.frames) == 10 and back.fps == fps and back.size == (48, 32)
    assert sum(back.durations) == pytest.approx(10 * 1000 / fps, abs=10)
    assert mean_error(frames[4], back.frames[4]) < 3  # GIF: one palette per frame; WebP: lossless
    assert read_video(path.read_bytes()).fps == fps  # an upload (bytes) reads the same


def test_folder_round_trip_is_exact_and_carries_params(tmp_path):
    from ip2p.images import read_params

    frames = moving_frames(5)
    out = write_video(Video(frames, Fraction(24)), tmp_path / "frames", {"instruction": "x"})
    assert sorted(p.name for p in out.iterdir()) == [f"{i:06d}.png" for i in range(5)]
    assert read_params(out / "000003.png")["frame"] == 3
    back = read_video(out, ReadLimits(fps=8))
    assert back.fps == 8 and all(np.array_equal(a, b) for a, b in zip(frames, back.frames, strict=True))


def test_odd_sizes_are_padded_for_4_2_0_video(tmp_path):
    frames = moving_frames(3, width=33, height=21)
    back = read_video(write_video(Video(frames, Fraction(5)), tmp_path / "odd.mp4"))
    assert back.size == (34, 22)
    assert mean_error(frames[1], back.frames[1].crop((0, 0, 33, 21))) < 10  # 4:2:0 chroma on sharp edges


def test_start_end_and_the_frame_limit(tmp_path):
    path = write_video(Video(moving_frames(12), Fraction(12)), tmp_path / "clip.mp4")
    assert len(read_video(path, ReadLimits(start=0.5, end=0.75)).frames) == 3
    with pytest.raises(ImageTooLarge, match="12 frames, over the limit of 5"):
        read_video(path, ReadLimits(max_frames=5))
    with pytest.raises(ImageTooLarge, match="more than 5 frames"):
        read_video(path, ReadLimits(start=0.05, max_frames=5))  # counted while decoding
    with pytest.raises(BadOptions, match="no frame between"):
        read_video(path, ReadLimits(start=3))
    with pytest.raises(BadOptions, match="--end"):
        ReadLimits(start=2, end=1).check()


def test_bad_inputs_get_one_line_errors(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video at all" * 10)
    still = tmp_path / "still.png"
    moving_frames(1)[0].save(still)
    empty = tmp_path / "empty"
    empty.mkdir()
    zero = tmp_path / "zero.mkv"
    with av.open(str(zero), "w") as out:
        stream = out.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        out.start_encoding()
    cases = [(junk, "not a video file"), (still, "a still image, not a video"), (empty, "has no frames"),
             (zero, "has no frames"), (tmp_path / "missing.mp4", "no such file"), (b"", "empty")]
    for source, needle in cases:
        with pytest.raises(BadImage) as caught:
            read_video(source)
        message = str(caught.value)
        assert needle in message and "\n" not in message, message
    with pytest.raises(BadOptions, match="unknown video format"):
        kind_of(tmp_path / "out.avi")


def test_a_huge_declared_frame_count_is_refused_before_decoding(tmp_path):
    frames = moving_frames(2, 16, 16) * 150  # 300 frames
    data = encode_video(Video(frames, Fraction(30)))
    with pytest.raises(ImageTooLarge, match="300 frames, over the limit of 48"):
        read_video(data, ReadLimits(max_frames=48))


def test_flicker_is_the_mean_consecutive_change():
    black, white = (Image.new("RGB", (4, 4), c) for c in ("black", "white"))
    gray = Image.new("RGB", (4, 4), (51, 51, 51))
    assert flicker([black, white, black]) == 255.0
    assert flicker([black, gray, black, gray]) == pytest.approx(51.0)
    assert flicker([black]) == 0.0
    assert flicker_ratio([black, gray, black], [black, white, black]) == pytest.approx(0.2)
    assert flicker_ratio([black, white], [gray, gray]) is None  # a still input has nothing to compare with
