"""``ip2p batch``: real files, a real tiny model, real processes for interruption and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from ip2p.cli import main
from ip2p.images import read_params
from ip2p.tiny import gradient_image

ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
FAST = ["--steps", "2", "--text-cfg", "1", "--image-cfg", "1", "--resolution", "64", "-q"]


def manifest(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def tree(tmp_path):
    """in/a.png, in/sub/b.jpg (another size), in/sub/c.png, and a broken in/bad.png."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    gradient_image(64, 32, seed=1).save(root / "a.png")
    gradient_image(32, 64, seed=2).save(root / "sub" / "b.jpg")
    gradient_image(64, 32, seed=3).save(root / "sub" / "c.png")
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


def test_folder_mirrors_tree_records_failures_and_resumes(tmp_path, tree, tiny_model_dir):
    out = tmp_path / "out"
    code = main(["batch", str(tree), "-i", "make it blue", "-o", str(out), "--model", str(tiny_model_dir),
                 "--seed", "7", *FAST])
    assert code == 1  # one input failed; the others were done
    for rel, size in (("a.png", (64, 32)), ("sub/b.png", (32, 64)), ("sub/c.png", (64, 32))):
        image = Image.open(out / rel)
        assert image.size == size
        params = read_params(out / rel)
        assert params["instruction"] == "make it blue" and params["seed"] == 7 and params["steps"] == 2
        source = np.asarray(Image.open(tree / rel.replace("b.png", "b.jpg")).convert("RGB"), dtype=float)
        assert np.abs(np.asarray(image.convert("RGB"), dtype=float) - source).mean() > 5  # really edited
    records = {r["input"].split("in/")[-1]: r for r in manifest(out / "manifest.jsonl")}
    assert {k: r["status"] for k, r in records.items()} == {
        "a.png": "ok", "sub/b.jpg": "ok", "sub/c.png": "ok", "bad.png": "failed"}
    assert "bad.png" in records["bad.png"]["error"] and "\n" not in records["bad.png"]["error"]
    assert not (out / "bad.png").exists()

    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    code = main(["batch", str(tree), "-i", "make it blue", "-o", str(out), "--model", str(tiny_model_dir),
                 "--seed", "7", *FAST])
    assert code == 1
    second = manifest(out / "manifest.jsonl")[4:]
    assert sorted(r["status"] for r in second) == ["failed", "skipped", "skipped", "skipped"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == mtimes

    # Another instruction is another job: nothing is skipped.
    code = main(["batch", str(tree / "a.png"), "-i", "make it red", "-o", str(out), "--model", str(tiny_model_dir),
                 "--seed", "7", *FAST])
    assert code == 0 and read_params(out / "a.png")["instruction"] == "make it red"


def test_same_image_alone_or_batched_is_identical(tmp_path, tree, tiny_model_dir, tiny_editor):
    out = tmp_path / "out"
    assert main(["batch", str(tree / "sub"), "-i", "make it blue", "-o", str(out), "--model", str(tiny_model_dir),
                 "--batch-size", "4", *FAST]) == 0
    alone = tiny_editor.edit(Image.open(tree / "sub" / "c.png"), "make it blue", steps=2, guidance_scale=1,
                             image_guidance_scale=1, resolution=64, seed=0)  # batch's default seed is 0
    assert np.array_equal(np.asarray(Image.open(out / "c.png")), np.asarray(alone.image))


def test_table_with_per_row_options_and_seed_variations(tmp_path, tree, tiny_model_dir):
    table = tmp_path / "jobs.csv"
    table.write_text("image,instruction,steps,seed\n"
                     "in/a.png,make it green,1,\n"
                     "in/sub/c.png,,3,5\n"
                     "in/missing.png,make it red,,\n"
                     "in/a.png,x,many,\n")
    out = tmp_path / "out"
    code = main(["batch", str(table), "-i", "default words", "-o", str(out), "--model", str(tiny_model_dir),
                 "--format", "webp", *FAST[2:]])
    assert code == 1
    assert read_params(out / "in/a.webp")["instruction"] == "make it green"
    assert read_params(out / "in/a.webp")["steps"] == 1
    c = read_params(out / "in/sub/c.webp")
    assert (c["instruction"], c["steps"], c["seed"]) == ("default words", 3, 5)
    errors = [r["error"] for r in manifest(out / "manifest.jsonl") if r["status"] == "failed"]
    assert any("missing.png: no such file" in e for e in errors)
    assert any("jobs.csv:5" in e and "steps must be an integer" in e for e in errors)

    jsonl = tmp_path / "jobs.jsonl"
    jsonl.write_text(json.dumps({"image": "in/a.png", "instruction": "make it blue"}) + "\n")
    code = main(["batch", str(jsonl), "-o", str(tmp_path / "var"), "--model", str(tiny_model_dir),
                 "--seeds", "3,9", *FAST])
    assert code == 0
    assert [read_params(tmp_path / "var" / "in" / f"a_s{s}.png")["seed"] for s in (3, 9)] == [3, 9]


@pytest.mark.parametrize("argv,needle", [
    (["--seeds", "1,x"], "--seeds must be comma-separated integers"),
    (["--seeds", "1", "--seed", "2"], "either --seeds or --seed"),
    (["--steps", "0"], "--steps must be between 1 and 1000"),
    (["--scheduler", "warp"], "unknown scheduler 'warp'"),
])
def test_bad_flags_fail_before_any_work(tmp_path, tree, tiny_model_dir, capsys, argv, needle):
    code = main(["batch", str(tree), "-i", "x", "-o", str(tmp_path / "out"), "--model", str(tiny_model_dir), *argv])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_missing_input_is_a_usage_error(tmp_path, capsys):
    assert main(["batch", str(tmp_path / "nope"), "-i", "x", "-o", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _start(args):
    return subprocess.Popen([sys.executable, "-m", "ip2p", "batch", *map(str, args)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_outputs(out, count, proc, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list(out.rglob("*.png"))) >= count:
            return
        if proc.poll() is not None:
            pytest.fail(f"batch ended early ({proc.returncode}): {proc.stderr.read().decode()}")
        time.sleep(0.05)
    pytest.fail("no outputs appeared in time")


@pytest.mark.slow
def test_ctrl_c_then_sigkill_then_resume_computes_each_output_once(tmp_path, tiny_model_dir):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(10):
        gradient_image(64, 32, seed=i).save(inputs / f"img{i:02d}.png")
    out = tmp_path / "out"
    args = [inputs, "-i", "make it blue", "-o", out, "--model", tiny_model_dir, "--batch-size", "1",
            "--steps", "4", "--text-cfg", "1", "--image-cfg", "1", "--resolution", "64"]

    proc = _start(args)  # Ctrl-C: finishes cleanly with 130 and a flushed manifest
    _wait_for_outputs(out, 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert "run the same command again to resume" in err.decode()
    first = manifest(out / "manifest.jsonl")
    assert 2 <= len(first) < 10 and all(r["status"] == "ok" for r in first)

    proc = _start(args)  # SIGKILL: no chance to clean up at all
    _wait_for_outputs(out, len(first) + 2, proc)
    proc.kill()
    proc.wait(timeout=30)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}

    proc = _start(args)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    outputs = sorted(out.glob("*.png"))
    assert [p.name for p in outputs] == [f"img{i:02d}.png" for i in range(10)]
    for path in outputs:  # every output complete, readable and carrying its parameters
        Image.open(path).load()
        assert read_params(path)["instruction"] == "make it blue"
    for name, mtime in before.items():  # what existed after the kill was not made again
        assert (out / name).stat().st_mtime_ns == mtime
    records = manifest(out / "manifest.jsonl")
    made = [r["outputs"][0] for r in records if r["status"] == "ok"]
    assert len(made) == len(set(made))  # no output computed twice across the three runs
    assert set(made) | {r["outputs"][0] for r in records if r["status"] == "skipped"} == {str(p) for p in outputs}
