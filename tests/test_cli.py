"""The ``ip2p`` command as a user runs it: real processes, real files, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")


def ip2p(*args, stdin: bytes | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ip2p", *map(str, args)], input=stdin, capture_output=True,
                          env=ENV, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from ip2p.components import save_diffusers
    from ip2p.tiny import build_tiny_components

    return save_diffusers(build_tiny_components(seed=0), tmp_path_factory.mktemp("cli") / "tiny")


@pytest.fixture
def photo(tmp_path):
    from ip2p.tiny import gradient_image

    path = tmp_path / "in.png"
    gradient_image(40, 30).save(path)
    return path


def test_edit_writes_png_with_params_and_replays(tmp_path, model_dir, photo):
    out = tmp_path / "sub" / "out.png"
    run = ip2p("edit", photo, "-i", "make it blue", "-o", out, "--model", model_dir, "--steps", 3,
               "--seed", 11, "--scheduler", "ddim")
    assert run.returncode == 0, run.stderr.decode()
    image = Image.open(out)
    assert image.size == (40, 30)  # back at the input's own size
    shown = ip2p("show-params", out, "--json")
    params = json.loads(shown.stdout)
    assert params["seed"] == 11 and params["steps"] == 3 and params["scheduler"] == "ddim"
    assert params["instruction"] == "make it blue"
    text = ip2p("show-params", out).stdout.decode()
    assert "make it blue" in text and "Seed: 11" in text and "Image CFG scale: 1.5" in text

    again = tmp_path / "again.png"
    run = ip2p("edit", photo, "--replay", out, "-o", again)
    assert run.returncode == 0, run.stderr.decode()
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(image))


def test_replay_runs_at_the_recorded_cpu_threads(tmp_path, model_dir, photo):
    # another thread count sums in another order (a pixel may move by a level): replay uses the edit's
    out, again = tmp_path / "out.png", tmp_path / "again.png"
    run = ip2p("edit", photo, "-i", "make it blue", "-o", out, "--model", model_dir, "--steps", 3, "--seed", 2,
               "--threads", 1)
    assert run.returncode == 0, run.stderr.decode()
    params = json.loads(ip2p("show-params", out, "--json").stdout)
    assert params["device"] == "cpu" and params["cpu_threads"] == 1
    run = ip2p("edit", photo, "--replay", out, "-o", again, "--threads", 2)  # --threads wins: no note
    assert run.returncode == 0 and b"as recorded" not in run.stderr
    assert json.loads(ip2p("show-params", again, "--json").stdout)["cpu_threads"] == 2
    run = ip2p("edit", photo, "--replay", out, "-o", again)
    assert run.returncode == 0, run.stderr.decode()
    assert json.loads(ip2p("show-params", again, "--json").stdout)["cpu_threads"] == 1
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(out)))


def test_stdin_to_stdout_and_quiet(model_dir, photo):
    run = ip2p("edit", "-", "-i", "x", "-o", "-", "--model", model_dir, "--steps", 2, "--seed", 1, "-q",
               stdin=photo.read_bytes())
    assert run.returncode == 0, run.stderr.decode()
    assert run.stdout[:8] == b"\x89PNG\r\n\x1a\n"
    assert run.stderr == b""


def test_num_images_and_jpeg(tmp_path, model_dir, photo):
    run = ip2p("edit", photo, "-i", "x", "-o", tmp_path / "v.jpg", "--model", model_dir, "--steps", 2,
               "--seed", 5, "--num-images", 2)
    assert run.returncode == 0, run.stderr.decode()
    seeds = [json.loads(ip2p("show-params", tmp_path / f"v_s{seed}.jpg", "--json").stdout)["seed"]
             for seed in (5, 6)]
    assert seeds == [5, 6]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--steps", "0"], "--steps must be between 1 and 1000"),
        (["--text-cfg", "-2"], "--text-cfg must be between 0 and 50, got -2"),
        (["--guidance-scale", "99"], "--text-cfg must be between 0 and 50, got 99"),
        (["--scheduler", "warp"], "unknown scheduler 'warp'"),
        (["--steps", "many"], "argument --steps: invalid int value"),
        (["--device", "toaster"], "unknown device"),
        (["--dtype", "fp7"], "unknown dtype"),
    ],
)
def test_bad_flags_one_line_exit_2(tmp_path, model_dir, photo, args, needle):
    run = ip2p("edit", photo, "-i", "x", "-o", tmp_path / "o.png", "--model", model_dir, *args)
    err = run.stderr.decode().strip()
    assert run.returncode == 2
    assert needle in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_text("hello, not a picture"), "not an image"),
        (lambda p: None, "no such file"),
    ],
)
def test_bad_inputs_one_line_exit_2(tmp_path, model_dir, make, needle):
    bad = tmp_path / "bad.png"
    make(bad)
    out = tmp_path / "o.png"
    out.write_bytes(b"keep me")
    run = ip2p("edit", bad, "-i", "x", "-o", out, "--model", model_dir)
    err = run.stderr.decode().strip()
    assert run.returncode == 2 and needle in err.lower() and len(err.splitlines()) == 1
    assert out.read_bytes() == b"keep me"  # nothing already written is lost


def test_missing_model_and_bad_output_extension(tmp_path, photo):
    run = ip2p("edit", photo, "-i", "x", "-o", tmp_path / "o.png", "--model", "nobody/nothing")
    assert run.returncode == 2 and "ip2p download nobody/nothing" in run.stderr.decode()
    run = ip2p("edit", photo, "-i", "x", "-o", tmp_path / "o.gif", "--model", "nobody/nothing")
    assert run.returncode == 2 and ".png, .jpg" in run.stderr.decode()


def test_info_and_help():
    run = ip2p("info", "--json")
    assert run.returncode == 0
    info = json.loads(run.stdout)
    assert info["device"] == "cpu" or info["device"].startswith(("cuda", "mps"))
    assert "torch" in info and "diffusers" in info
    assert ip2p("--help").returncode == 0
    bad = ip2p("frobnicate")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr.decode()


def test_download_offline_fails_cleanly():
    run = ip2p("download", "nobody/nothing")
    err = run.stderr.decode().strip()
    assert run.returncode == 2 and "could not download 'nobody/nothing'" in err and len(err.splitlines()) == 1


def test_progress_bar_rate_is_measured_between_ticks(monkeypatch):
    """The bar starts at the first tick, so its first rate is not steps over a microsecond."""
    import time

    from ip2p.cli.common import ProgressBar

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bar = ProgressBar(True)
    bar(1, 20)
    time.sleep(0.2)
    bar(2, 20)
    rate = bar.bar.format_dict["rate"] or bar.bar.n / bar.bar.format_dict["elapsed"]
    bar.close()
    assert bar.bar.n == 2 and rate < 50, rate


def test_batch_help_states_its_seed_default():
    out = ip2p("batch", "--help").stdout.decode()
    assert "default 0" in " ".join(out.split()) and "random" not in out.split("--seed ")[1].split("--")[0]
