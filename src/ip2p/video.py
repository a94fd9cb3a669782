"""Video in and out, and the flicker measure.

Reading gives a :class:`Video`: RGB frames, their rate, per-frame durations where the source has
them (animated GIF and WebP), and where the audio is (so that writing can carry it across). Sources:

* mp4 / m4v / mov / mkv / webm through PyAV (``av``, the ``video`` extra), audio included;
* animated GIF and WebP through Pillow (their frame times are kept);
* a folder of numbered frames (PNG, JPEG, WebP, BMP; natural sort order, ``fps`` given or 24).

Every refusal is one line: :class:`~ip2p.errors.BadImage` for something that is not a video or has
no frames, :class:`~ip2p.errors.ImageTooLarge` (HTTP 413) past the frame or pixel limits, which are
checked before all frames are decoded. Writing picks the format from the file name, is atomic, and
re-encodes the audio track of the source for the new container (AAC in mp4/mov, Opus in WebM).

The flicker measure: the mean absolute change between consecutive frames (0-255 RGB),
``F(x) = mean_t mean_p |x_t(p) - x_{t-1}(p)|``; :func:`flicker_ratio` is ``F(edited) / F(input)``, so
1.0 means the edit adds no frame-to-frame change the input did not already have.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageSequence

from .errors import BadImage, BadOptions, ImageTooLarge
from .files import atomic_folder, atomic_path
from .images import DEFAULT_MAX_PIXELS, load_image, save_image

#: File name endings read and written through PyAV, and the container each names.
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}
#: Animated image formats, read and written through Pillow.
ANIMATED = {".gif": "GIF", ".webp": "WEBP"}
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
#: Frames one read may hold (a minute at 16 fps); surfaces lower it (the server's ``max_video_frames``).
DEFAULT_MAX_FRAMES = 1000
#: All frames of one read together, in pixels (about 3 GB of RGB).
DEFAULT_MAX_TOTAL_PIXELS = 1_000_000_000
DEFAULT_FOLDER_FPS = 24
#: (video codec, audio codec, audio frame size, audio rate or None for the source's) per container.
_CODECS = {"mp4": ("libx264", "aac", 1024, None), "mov": ("libx264", "aac", 1024, None),
           "matroska": ("libx264", "aac", 1024, None), "webm": ("libvpx-vp9", "libopus", 960, 48000)}


@dataclass
class Audio:
    """Where a video's audio track is: the source (a path or the bytes) and the time range kept."""

    source: str | bytes
    start: float = 0.0
    end: float | None = None


@dataclass
class Video:
    """Frames (RGB, all one size) and their timing; ``durations`` (ms per frame) for GIF/WebP sources."""

    frames: list[Image.Image]
    fps: Fraction
    durations: list[int] | None = None
    audio: Audio | None = None
    name: str = "video"
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return self.frames[0].size

    def replace_frames(self, frames: list[Image.Image]) -> Video:
        """The same timing and audio with other frames (an edit's output)."""
        return Video(list(frames), self.fps, self.durations, self.audio, self.name, list(self.notes))


def require_av():
    try:
        import av
    except ImportError:
        raise BadOptions("video files need PyAV: pip install 'ip2p[video]'") from None
    av.logging.set_level(av.logging.PANIC)  # ffmpeg's own log lines are not ours to print
    return av


def kind_of(path: str | os.PathLike) -> str:
    """``container``, ``animated`` or ``folder`` for an output path, or a one-line error."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in CONTAINERS:
        return "container"
    if suffix in ANIMATED:
        return "animated"
    if not suffix or path.is_dir() or str(path).endswith(os.sep):
        return "folder"
    known = ", ".join([*CONTAINERS, *ANIMATED])
    raise BadOptions(f"{path}: unknown video format {suffix!r}; use one of {known}, or a folder for PNG frames")


# ------------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class ReadLimits:
    """What one read accepts: the range (seconds), frame and pixel limits, a folder's frame rate."""

    start: float = 0.0
    end: float | None = None
    max_frames: int = DEFAULT_MAX_FRAMES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_total_pixels: int = DEFAULT_MAX_TOTAL_PIXELS
    fps: float | None = None

    def check(self) -> ReadLimits:
        if not (isinstance(self.start, int | float) and self.start >= 0):
            raise BadOptions(f"--start must be a time in seconds >= 0, got {self.start!r}", param="start")
        if self.end is not None and not (isinstance(self.end, int | float) and self.end > self.start):
            raise BadOptions(f"--end must be a time in seconds after --start, got {self.end!r}", param="end")
        if not isinstance(self.max_frames, int) or self.max_frames < 1:
            raise BadOptions(f"--max-frames must be a positive integer, got {self.max_frames!r}", param="max_frames")
        if self.fps is not None and not (isinstance(self.fps, int | float) and 0 < self.fps <= 240):
            raise BadOptions(f"--fps must be between 0 and 240, got {self.fps!r}", param="fps")
        return self


class _Collector:
    """Keeps the frames in the time range and enforces the limits as they are decoded."""

    def __init__(self, name: str, limits: ReadLimits):
        self.name, self.limits = name, limits
        self.frames: list[Image.Image] = []
        self.times: list[float] = []
        self.pixels = 0

    def wants(self, time: float) -> bool:
        """Whether a frame shown at ``time`` (s from the start) is in range; raises past the limits."""
        return time + 1e-6 >= self.limits.start and (self.limits.end is None or time < self.limits.end - 1e-6)

    def done(self, time: float) -> bool:
        return self.limits.end is not None and time >= self.limits.end - 1e-6

    def add(self, image: Image.Image, time: float) -> None:
        limits = self.limits
        if len(self.frames) >= limits.max_frames:
            raise ImageTooLarge(f"{self.name}: more than {limits.max_frames:,} frames, over the limit of "
                                f"{limits.max_frames:,}; choose a shorter range (--start/--end) or raise --max-frames")
        width, height = image.size
        if width * height > limits.max_pixels:
            raise ImageTooLarge(f"{self.name}: frames are {width}x{height}, over the limit of "
                                f"{limits.max_pixels:,} pixels")
        if self.frames and image.size != self.frames[0].size:
            raise BadImage(f"{self.name}: frame {len(self.frames)} is {width}x{height}, the first is "
                           f"{self.frames[0].size[0]}x{self.frames[0].size[1]}; all frames must be one size")
        self.pixels += width * height
        if self.pixels > limits.max_total_pixels:
            raise ImageTooLarge(f"{self.name}: the frames hold more than {limits.max_total_pixels:,} pixels in all; "
                                "choose a shorter range (--start/--end) or a smaller video")
        self.frames.append(image)
        self.times.append(time)

    def finish(self, source_frames: int) -> list[Image.Image]:
        if not source_frames:
            raise BadImage(f"{self.name}: the video has no frames")
        if not self.frames:
            raise BadOptions(f"{self.name}: no frame between --start {self.limits.start:g} s and --end "
                             f"{self.limits.end if self.limits.end is not None else 'the end'} "
                             f"(the video has {source_frames} frames)")
        return self.frames


def read_video(source: str | os.PathLike | bytes, limits: ReadLimits | None = None, *, name: str | None = None
               ) -> Video:
    """Decode ``source`` (a video file, animated GIF/WebP, folder of frames, or the bytes of a file)."""
    limits = (limits or ReadLimits()).check()
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        name = name or "video data"
        if not data:
            raise BadImage(f"{name}: empty file")
        if data[:6] in (b"GIF87a", b"GIF89a") or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
            return _read_animated(io.BytesIO(data), name, limits)
        return _read_container(data, name, limits)
    path = Path(source)
    name = name or str(path)
    if path.is_dir():
        return _read_folder(path, name, limits)
    if not path.is_file():
        raise BadImage(f"{name}: no such file or folder")
    if path.stat().st_size == 0:
        raise BadImage(f"{name}: empty file")
    if path.suffix.lower() in ANIMATED:
        return _read_animated(path, name, limits)
    return _read_container(str(path), name, limits)


def _read_container(source: str | bytes, name: str, limits: ReadLimits) -> Video:
    av = require_av()
    try:
        container = av.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except av.error.EOFError:
        raise BadImage(f"{name}: the video has no frames (the file ends before the first one)") from None
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise BadImage(f"{name}: not a video file ({_first(exc)})") from None
    with container:
        if not container.streams.video:
            raise BadImage(f"{name}: not a video file (it has no video stream)")
        if container.format.name.endswith("_pipe") or container.format.name == "image2":
            raise BadImage(f"{name}: a still image, not a video (edit it with `ip2p edit`)")
        stream = container.streams.video[0]
        fps = Fraction(stream.average_rate or stream.guessed_rate or DEFAULT_FOLDER_FPS).limit_denominator(100_000)
        declared = stream.frames or 0
        if limits.start == 0 and limits.end is None and declared > limits.max_frames:
            raise ImageTooLarge(f"{name}: {declared:,} frames, over the limit of {limits.max_frames:,}; choose a "
                                "shorter range (--start/--end) or raise --max-frames")
        keep = _Collector(name, limits)
        seen, first = 0, None
        try:
            for frame in container.decode(stream):
                time = float(frame.time or 0.0)
                first = time if first is None else first
                seen += 1
                if keep.done(time - first):
                    break
                if keep.wants(time - first):
                    keep.add(frame.to_image(), time - first)
        except av.error.FFmpegError as exc:
            if not seen:
                raise BadImage(f"{name}: the video has no frames that decode ({_first(exc)})") from None
        frames = keep.finish(seen)
        audio = None
        if container.streams.audio:
            start = keep.times[0] + (first or 0.0)
            audio = Audio(source, start, start + len(frames) / float(fps))
    return Video(frames, fps, audio=audio, name=name)


def _read_animated(source, name: str, limits: ReadLimits) -> Video:
    try:
        with Image.open(source) as im:
            count = getattr(im, "n_frames", 1)
            if limits.start == 0 and limits.end is None and count > limits.max_frames:
                raise ImageTooLarge(f"{name}: {count:,} frames, over the limit of {limits.max_frames:,}; choose "
                                    "a shorter range (--start/--end) or raise --max-frames")
            keep, durations, clock = _Collector(name, limits), [], 0.0
            for frame in ImageSequence.Iterator(im):
                frame.load()  # WebP knows a frame's duration only once it is decoded
                duration = int(frame.info.get("duration") or 100)
                if keep.done(clock):
                    break
                if keep.wants(clock):
                    keep.add(load_image(frame.copy(), max_pixels=limits.max_pixels), clock)
                    durations.append(duration)
                clock += duration / 1000
    except (OSError, ValueError, EOFError) as exc:
        raise BadImage(f"{name}: not a readable animated image ({_first(exc)})") from None
    frames = keep.finish(count)
    return Video(frames, _rate(durations), durations=durations, name=name)


def _rate(durations: list[int]) -> Fraction:
    """The frame rate of frames shown for ``durations`` ms: a whole number of frames per second when
    one fits the total within GIF's 10 ms tick (a 24 fps GIF stores 40, 40, 50, ... ms)."""
    total = max(1, sum(durations))
    whole = round(1000 * len(durations) / total)
    if whole >= 1 and abs(1000 * len(durations) / whole - total) <= 10:
        return Fraction(whole)
    return Fraction(1000 * len(durations), total).limit_denominator(1001)


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _read_folder(path: Path, name: str, limits: ReadLimits) -> Video:
    files = sorted((p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith(".")),
                   key=_natural_key)
    if not files:
        raise BadImage(f"{name}: the folder has no frames ({', '.join(FRAME_SUFFIXES)} files)")
    if len(files) > limits.max_frames and limits.start == 0 and limits.end is None:
        raise ImageTooLarge(f"{name}: {len(files):,} frames, over the limit of {limits.max_frames:,}; choose a "
                            "shorter range (--start/--end) or raise --max-frames")
    fps = Fraction(limits.fps or DEFAULT_FOLDER_FPS).limit_denominator(1000)
    keep = _Collector(name, limits)
    for index, file in enumerate(files):
        time = index / float(fps)
        if keep.done(time):
            break
        if keep.wants(time):
            keep.add(load_image(file, max_pixels=limits.max_pixels), time)
    return Video(keep.finish(len(files)), fps, name=name)


def _first(exc: BaseException) -> str:
    """A library error's own words, without errno and file name (the message names the file)."""
    text = getattr(exc, "strerror", None) or " ".join(str(exc).split())
    return text[:200] or type(exc).__name__


# ------------------------------------------------------------------------------------------------
# Writing


def write_video(video: Video, path: str | os.PathLike, params: dict[str, Any] | None = None) -> Path:
    """Write ``video`` to ``path`` atomically, in the format its name says (see :func:`kind_of`).

    Containers get H.264 (VP9 for WebM) at the video's rate, odd sides padded by one edge pixel
    (4:2:0 video needs even sides), the source's audio re-encoded, and ``params`` as JSON in the
    ``comment`` tag. GIF keeps frame times in 1/100 s, so rates that do not divide 100 are rounded.
    A folder gets ``000000.png``, ... each carrying ``params``.
    """
    path = Path(path)
    kind = kind_of(path)
    if not video.frames:
        raise BadOptions("no frames to write")
    if kind == "folder":
        with atomic_folder(path) as folder:
            for index, frame in enumerate(video.frames):
                save_image(frame, folder / f"{index:06d}.png", {**(params or {}), "frame": index})
        return path
    if not path.parent.is_dir():
        raise BadOptions(f"cannot write {path}: folder {path.parent} does not exist")
    with atomic_path(path) as temp:
        if kind == "animated":
            _write_animated(video, temp, ANIMATED[path.suffix.lower()])
        else:
            with open(temp, "wb") as handle:
                handle.write(encode_video(video, CONTAINERS[path.suffix.lower()], params))
    return path


def _durations(video: Video, tick: int) -> list[int]:
    """Frame times in ms, multiples of ``tick``, rounded on the running total so the rate holds."""
    if video.durations and len(video.durations) == len(video.frames):
        ends = np.cumsum(video.durations, dtype=np.float64)
    else:
        ends = np.arange(1, len(video.frames) + 1) * (1000 / float(video.fps))
    ends = np.maximum(np.round(ends / tick) * tick, tick * np.arange(1, len(ends) + 1))
    return np.diff(ends, prepend=0).astype(int).tolist()


def video_bytes(video: Video, fmt: str, params: dict[str, Any] | None = None) -> bytes:
    """``video`` as the bytes of an ``mp4``, ``mov``, ``mkv``, ``webm``, ``gif`` or ``webp`` file."""
    suffix = "." + fmt.lower().lstrip(".")
    if suffix in ANIMATED:
        buffer = io.BytesIO()
        _write_animated(video, buffer, ANIMATED[suffix])
        return buffer.getvalue()
    if suffix not in CONTAINERS:
        raise BadOptions(f"unknown video format {fmt!r}; use one of {', '.join(s[1:] for s in [*CONTAINERS, *ANIMATED])}",
                         param="format")
    return encode_video(video, CONTAINERS[suffix], params)


def _write_animated(video: Video, path, fmt: str) -> None:
    first, *rest = video.frames
    extra = {"lossless": True} if fmt == "WEBP" else {"optimize": False}
    durations = _durations(video, 10 if fmt == "GIF" else 1)  # GIF counts in 1/100 s
    first.save(path, format=fmt, save_all=True, append_images=rest, duration=durations, loop=0, **extra)


def encode_video(video: Video, container_format: str = "mp4", params: dict[str, Any] | None = None) -> bytes:
    """The bytes of ``video`` as an mp4 / mov / matroska / webm file (see :func:`write_video`)."""
    import json

    av = require_av()
    vcodec, acodec, frame_size, audio_rate = _CODECS[container_format]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container_format) as out:
        if params:
            out.metadata["comment"] = json.dumps(params, sort_keys=True)
        width, height = video.size
        stream = out.add_stream(vcodec, rate=video.fps)
        stream.width, stream.height, stream.pix_fmt = width + width % 2, height + height % 2, "yuv420p"
        stream.options = {"crf": "18"} if vcodec == "libx264" else {"crf": "24", "b": "0"}
        audio_in = _open_audio(av, video.audio)
        audio_out = None
        if audio_in is not None:
            rate = audio_rate or audio_in.streams.audio[0].rate
            audio_out = out.add_stream(acodec, rate=rate)
        for index, frame in enumerate(video.frames):
            array = np.asarray(frame.convert("RGB"))
            if width % 2 or height % 2:
                array = np.pad(array, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
            picture = av.VideoFrame.from_ndarray(array, format="rgb24")
            picture.pts = index
            out.mux(stream.encode(picture))
        out.mux(stream.encode(None))
        if audio_in is not None:
            with audio_in:
                _copy_audio(av, audio_in, out, audio_out, video.audio, frame_size)
    return buffer.getvalue()


def _open_audio(av, audio: Audio | None):
    if audio is None:
        return None
    try:
        source = audio.source
        container = av.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (av.error.FFmpegError, OSError):
        return None
    if not container.streams.audio:
        container.close()
        return None
    return container


def _copy_audio(av, source, out, stream, audio: Audio, frame_size: int) -> None:
    """Decode the source's audio in ``audio``'s time range and encode it into ``stream`` of ``out``."""
    resampler = av.AudioResampler(format=stream.format, layout=stream.layout, rate=stream.rate,
                                  frame_size=frame_size)
    samples = 0
    for frame in source.decode(source.streams.audio[0]):
        time = float(frame.time or 0.0)
        if time + frame.samples / frame.sample_rate <= audio.start or (audio.end is not None and time >= audio.end):
            continue
        frame.pts = None
        for chunk in resampler.resample(frame):
            chunk.pts = samples
            samples += chunk.samples
            out.mux(stream.encode(chunk))
    for chunk in resampler.resample(None):
        chunk.pts = samples
        samples += chunk.samples
        out.mux(stream.encode(chunk))
    out.mux(stream.encode(None))


# ------------------------------------------------------------------------------------------------
# The flicker measure


def _arrays(frames) -> list[np.ndarray]:
    return [np.asarray(f.convert("RGB") if isinstance(f, Image.Image) else f, dtype=np.float32) for f in frames]


def flicker(frames) -> float:
    """Mean absolute change between consecutive frames, 0-255 (0.0 for fewer than two frames)."""
    arrays = _arrays(frames)
    if len(arrays) < 2:
        return 0.0
    return float(np.mean([np.abs(b - a).mean() for a, b in zip(arrays, arrays[1:], strict=False)]))


def flicker_ratio(outputs, inputs) -> float | None:
    """``flicker(outputs) / flicker(inputs)``; None for a still input (nothing to compare with).

    Outputs of another size than the inputs are compared at their own size: the measure is a mean.
    """
    base = flicker(inputs)
    return None if base == 0 else flicker(outputs) / base
