"""Editing videos with the real tiny model: determinism, what each consistency technique does to the
pixels, carrying between edited frames, and ``ip2p video`` as a user runs it (exit codes, a resume
after SIGKILL, the report)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image, ImageFilter

from ip2p.options import EditOptions
from ip2p.video import Video, flicker, read_video, write_video
from ip2p.video_edit import VideoOptions, blend_still, carry, colormap, edit_video, plan_batches

pytest.importorskip("av")
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
FAST = EditOptions(steps=2, seed=5, resolution=32)


def ip2p(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ip2p", *map(str, args)], capture_output=True, env=ENV,
                          timeout=timeout)


@pytest.fixture(scope="module")
def clip():
    from ip2p.shapes.animate import make_clip

    return make_clip(1, frames=6, size=64, kinds=["invert"])


def arrays(frames):
    return [np.asarray(f, np.int16) for f in frames]


def test_batches_start_with_the_anchor():
    assert plan_batches(range(5), 2, "none") == [([0, 1], [0, 1]), ([2, 3], [2, 3]), ([4], [4])]
    assert plan_batches(range(5), 2, "first") == [([0, 1], [0, 1]), ([0, 2], [2]), ([0, 3], [3]), ([0, 4], [4])]
    assert plan_batches(range(0, 9, 2), 3, "first+previous") == [([0, 2, 4], [0, 2, 4]), ([0, 4, 6], [6]),
                                                                 ([0, 6, 8], [8])]


def test_same_seed_same_video_and_another_seed_another(tiny_editor, clip):
    first = tiny_editor.edit_video(clip.inputs(), clip.instruction, FAST)
    again = tiny_editor.edit_video(clip.inputs(), clip.instruction, FAST)
    assert all(np.array_equal(a, b) for a, b in zip(arrays(first.frames), arrays(again.frames), strict=True))
    other = tiny_editor.edit_video(clip.inputs(), clip.instruction, EditOptions(steps=2, seed=6, resolution=32))
    assert not np.array_equal(arrays(first.frames)[2], arrays(other.frames)[2])
    assert first.params["seed"] == 5 and first.params["video"]["anchor"] == "first"
    assert first.report["frames"] == 6 and first.report["flicker_ratio"] is not None


def test_one_noise_for_all_frames_flickers_far_less_than_naive(tiny_editor, clip):
    naive = tiny_editor.edit_video(clip.inputs(), clip.instruction, FAST, video="naive")
    noise = tiny_editor.edit_video(clip.inputs(), clip.instruction, FAST, video="noise")
    assert flicker(naive.frames) > 2 * flicker(noise.frames)


def test_blend_keeps_still_regions_from_the_previous_output(tiny_editor, clip):
    raw = tiny_editor.edit_video(clip.inputs(), clip.instruction, FAST, video="attention").frames
    blended = tiny_editor.edit_video(clip.inputs(), clip.instruction, FAST, video="blend").frames
    assert all(np.array_equal(a, b) for a, b in zip(arrays(blended), arrays(blend_still(clip.inputs(), raw)),
                                                    strict=True))
    inputs, outputs, fresh = arrays(clip.inputs()), arrays(blended), arrays(raw)
    ever = np.zeros(inputs[0].shape[:2], bool)  # where the input has changed at all so far
    for i in range(1, len(outputs)):
        ever |= (inputs[i] != inputs[0]).any(-1)
        moved = ever | (np.abs(fresh[i] - outputs[i - 1]).max(-1) > 48)
        near = np.asarray(Image.fromarray(moved.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(11))) > 0
        assert (~near).mean() > 0.2  # a good part of the frame is still
        assert np.array_equal(outputs[i][~near], outputs[i - 1][~near])
    assert flicker(blended) < flicker(raw)


def test_blend_still_and_colormap_on_known_pixels():
    a = Image.new("RGB", (8, 8), (10, 10, 10))
    b = a.copy()
    b.paste((200, 0, 0), (0, 0, 2, 2))
    out_a, out_b = Image.new("RGB", (8, 8), (0, 200, 0)), Image.new("RGB", (8, 8), (0, 220, 10))  # a wobble
    out_b.putpixel((7, 7), (255, 255, 255))  # a real change of the output where the input is still
    mixed = np.asarray(blend_still([a, b], [out_a, out_b], threshold=10, feather=0)[1])
    assert (mixed[:2, :2] == (0, 220, 10)).all()  # the input changed: the new output
    assert (mixed[4:7, 4:7] == (0, 200, 0)).all()  # still: the previous output, no wobble
    assert tuple(mixed[7, 7]) == (255, 255, 255)
    # an inverting key frame: its colour map inverts a colour it saw, and shifts one it did not
    key_in = Image.fromarray(np.array([[[10, 10, 10], [200, 0, 0]]], np.uint8))
    key_out = Image.fromarray(255 - np.asarray(key_in))
    mapped = np.asarray(colormap(key_in, key_out, Image.fromarray(np.array([[[200, 0, 0], [90, 90, 90]]], np.uint8))))
    assert tuple(mapped[0, 0]) == (55, 255, 255)
    assert tuple(mapped[0, 1]) == (90 + 45, 255, 255)  # + the mean change (45, 245, 245), clipped


def test_every_second_frame_is_edited_and_the_rest_carried(tiny_editor, clip):
    video = VideoOptions.preset("attention", every=2, carry="colormap")
    result = edit_video(tiny_editor, clip.inputs(), clip.instruction, FAST, video)
    assert len(result.frames) == 6 and result.report["edited_frames"] == 3
    held = carry(clip.inputs(), {0: result.frames[0]})  # the default: hold
    assert all(np.array_equal(np.asarray(h), np.asarray(result.frames[0])) for h in held)
    assert not np.array_equal(np.asarray(result.frames[1]), np.asarray(result.frames[0]))  # the moving part follows


def test_video_options_refuse_bad_values():
    from ip2p.errors import BadOptions

    for kwargs, needle in (({"every": 0}, "--every"), ({"carry": "warp"}, "--carry"), ({"batch_size": 1}, "at least 2")):
        with pytest.raises(BadOptions, match=needle):
            VideoOptions.preset("attention", **kwargs)
    with pytest.raises(BadOptions, match="--consistency"):
        VideoOptions.preset("magic")


# ------------------------------------------------------------------------------------------------
# the command line


@pytest.fixture(scope="module")
def gif(tmp_path_factory, clip):
    path = tmp_path_factory.mktemp("video") / "in.gif"
    write_video(Video(clip.inputs(), Fraction(12)), path)
    return path


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, tiny_model_dir, gif):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 50)
    empty = tmp_path / "frames"
    empty.mkdir()
    cases = [((junk, "-i", "x", "-o", tmp_path / "o.mp4"), "not a video file"),
             ((empty, "-i", "x", "-o", tmp_path / "o.mp4"), "has no frames"),
             ((gif, "-i", "x", "-o", tmp_path / "o.mp4", "--max-frames", 4), "6 frames, over the limit of 4"),
             ((gif, "-i", " ", "-o", tmp_path / "o.mp4"), "--instruction is empty"),
             ((gif, "-i", "x", "-o", tmp_path / "o.avi"), "unknown video format"),
             ((gif, "-i", "x", "-o", tmp_path / "o.gif", "--every", 0), "--every must be")]
    for args, needle in cases:
        run = ip2p("video", *args, "--model", tiny_model_dir)
        err = run.stderr.decode()
        assert run.returncode == 2, err
        assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_cli_resumes_after_sigkill_and_gives_the_same_video(tmp_path, tiny_model_dir, tiny_editor, clip):
    frames = clip.inputs() + clip.inputs()[-2::-1][:2]  # 8 frames
    source = write_video(Video(frames, Fraction(12)), tmp_path / "in")
    common = ["-i", clip.instruction, "--model", tiny_model_dir, "--steps", 8, "--seed", 9, "--resolution", 32,
              "--batch-size", 2, "--fps", 12]
    out, work = tmp_path / "out", tmp_path / "out.ip2p-work"
    process = subprocess.Popen([sys.executable, "-m", "ip2p", "video", source, "-o", out, *map(str, common), "-q"],
                               env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while len(list(work.glob("0*.png"))) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # mid-run: after the first batch of seven
    process.wait(timeout=30)
    done = len(list(work.glob("0*.png")))
    assert 2 <= done < 8 and not out.exists(), done

    again = ip2p("video", source, "-o", out, *common)
    err = again.stderr.decode()
    assert again.returncode == 0, err
    assert f"resumed: {done} of 8 edited frames" in err
    assert not work.exists()  # removed once the video is written
    # the same frames an uninterrupted edit makes (same weights, in this process)
    expected = tiny_editor.edit_video(read_video(source).frames, clip.instruction, EditOptions(
        steps=8, seed=9, resolution=32), video=VideoOptions.preset("blend", batch_size=2)).frames
    resumed = read_video(out).frames
    # Equal up to float rounding: the resumed run's UNet batches have other shapes, and CPU kernels
    # choose their algorithm by batch shape (at most 1/255, as in the sampler's docstring).
    assert len(resumed) == 8
    assert max(np.abs(a.astype(int) - b.astype(int)).max() for a, b in zip(arrays(expected), arrays(resumed),
                                                                           strict=True)) <= 1


def test_cli_report_scores_every_frame_against_exact_targets(tmp_path, tiny_model_dir):
    made = ip2p("shapes", "video", "--frames", 5, "--kinds", "grayscale", "--out", tmp_path / "clips")
    assert made.returncode == 0, made.stderr.decode()
    line = json.loads(made.stdout.decode().splitlines()[0])
    folder = tmp_path / "clips" / "clip-00000"
    assert {p.name for p in folder.iterdir()} >= {"input", "target", "mask", "input.gif", "target.gif", "clip.json"}
    run = ip2p("video", folder / "input.gif", "-i", line["instruction"], "-o", tmp_path / "out.mp4", "--report",
               "--targets", folder, "--model", tiny_model_dir, "--steps", 2, "--resolution", 32, "-q")
    assert run.returncode == 0, run.stderr.decode()
    report = json.loads(run.stdout)
    assert report["frames"] == 5 and report["consistency"] == "blend"
    assert len(report["targets"]["per_frame"]) == 5 and report["targets"]["kind"] == "grayscale"
    assert report["flicker_ratio"] == pytest.approx(report["flicker_output"] / report["flicker_input"], rel=1e-3)
    written = read_video(tmp_path / "out.mp4")
    assert len(written.frames) == 5 and written.fps == 12 and written.size == (64, 64)
