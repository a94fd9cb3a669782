"""``ip2p batch --ray``: the Ray Data backend of the batch job, against the local job.

The fast tests run the code each Ray worker runs (the inspection task and the editor actor) in this
process; the slow ones start a real local Ray instance (``ray.init(num_cpus=2)``: about a minute on a
busy core before the first edit), run the CLI on it, and kill an actor process in the middle of a job.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ip2p.batch import group, plan, read_parquet, read_table
from ip2p.cli import main
from ip2p.images import read_params
from ip2p.tiny import gradient_image

pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")

FAST = ["--steps", "2", "--text-cfg", "1", "--image-cfg", "1", "--resolution", "32", "-q"]


def manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def pictures(folder: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(folder).as_posix(): np.asarray(Image.open(p).convert("RGB"))
            for p in sorted(folder.rglob("*.png"))}


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    """in/p0.png ... in/p5.png: two sizes, so the job has more than one working size."""
    root = tmp_path / "in"
    root.mkdir()
    for i in range(6):
        gradient_image(*((32, 24) if i % 2 else (24, 32)), seed=i).save(root / f"p{i}.png")
    return root


def table_rows(photos: Path) -> list[dict]:
    """Good rows (an instruction each, one with its own steps), a bad option, a missing image."""
    rows = [{"image": f"in/p{i}.png", "instruction": ["make it blue", "add snow"][i % 2], "steps": None}
            for i in range(4)]
    rows[1]["steps"] = 3
    rows.insert(2, {"image": "in/p4.png", "instruction": "make it red", "steps": -5})  # row 3: bad option
    rows.append({"image": None, "instruction": "make it red", "steps": None})  # row 6: no image
    return rows


# ------------------------------------------------------------------------------------------------
# Fast: the workers' code, in this process


def test_parquet_table_reports_bad_rows_by_number(tmp_path, photos):
    table = write_parquet(tmp_path / "jobs.parquet", table_rows(photos))
    items = read_parquet(table)
    assert len(items) == 6
    errors = {i: item.error for i, item in enumerate(items, start=1) if item.error}
    assert set(errors) == {3, 6}, errors
    assert errors[3].startswith("jobs.parquet:row 3: ") and "steps" in errors[3]
    assert errors[6].startswith("jobs.parquet:row 6: ")
    assert items[1].overrides == {"steps": 3} and items[0].overrides == {}  # a null cell means "not given"
    assert items[0].source == photos / "p0.png" and items[0].instruction == "make it blue"
    binary = write_parquet(tmp_path / "bytes.parquet", [{"image": b"\x89PNG...", "instruction": "x"}])
    assert "holds image data" in read_parquet(binary)[0].error
    assert main(["batch", str(write_parquet(tmp_path / "none.parquet", [{"file": "a.png"}])), "-i", "x",
                 "-o", str(tmp_path / "o")]) == 2


def test_worker_code_gives_the_local_batch_pixels(tmp_path, photos, tiny_model_dir):
    """The Ray path's inspection task and editor actor, called here, write the local job's pixels."""
    from ip2p.batch_ray import EditActor, _indexed_groups, _inspect_rows

    local = tmp_path / "local"
    args = ["-i", "make it blue", "--model", str(tiny_model_dir), "--seed", "3", "--batch-size", "2", *FAST]
    assert main(["batch", str(photos), "-o", str(local), *args]) == 0

    out = tmp_path / "ray"
    items = read_table(write_jsonl(tmp_path / "t.jsonl", [{"image": f"in/p{i}.png"} for i in range(6)]))
    model = str(tiny_model_dir)
    units = plan(items, out_dir=out, instruction="make it blue", base={"seed": 3, "steps": 2, "guidance_scale": 1.0,
                 "image_guidance_scale": 1.0, "resolution": 32}, seeds=None, fmt="png", model=model, inspect=False)
    assert all(u.status == "pending" and not u.digest for u in units)
    rows = _inspect_rows({"index": list(range(6)), "unit": [pickle.dumps(u) for u in units]}, model=model)
    units = [pickle.loads(blob) for blob in rows["unit"]]
    assert all(u.digest and u.working in ((32, 24), (24, 32)) for u in units)
    groups = _indexed_groups(units, 2)
    assert [[i for i, _ in g] for g in groups] == [[0, 2], [4], [1, 3], [5]]  # three of each size, two a batch
    assert [[u for _, u in g] for g in groups] == group(units, 2)

    actor = EditActor(model, "cpu", "auto", "default", 1, 2, None, None)
    answer = actor({"units": [pickle.dumps(g) for g in groups]})
    entries = [json.loads(line) for line in answer["entry"]]
    assert sorted(answer["index"]) == list(range(6))
    assert {e["status"] for e in entries} == {"ok"} and all(e["worker"].endswith(f":{os.getpid()}") for e in entries)
    ours, theirs = pictures(out / "in"), pictures(local)
    assert ours.keys() == theirs.keys() and len(ours) == 6
    for name in ours:
        assert np.array_equal(ours[name], theirs[name]), name
    assert read_params(out / "in" / "p1.png")["seed"] == 3

    broken = EditActor(str(tmp_path / "no-model"), "cpu", "auto", "default", 1, 2, None, None)
    failed = [json.loads(line) for line in broken({"units": [pickle.dumps(groups[0])]})["entry"]]
    assert [e["status"] for e in failed] == ["failed", "failed"] and "\n" not in failed[0]["error"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_ray_flags_are_checked_before_ray_starts(tmp_path, photos, capsys):
    for flags, needle in ((["--ray", "--ray-runtime-env", "{nope"], "--ray-runtime-env: not valid JSON"),
                          (["--ray", "--ray-runtime-env", "[1]"], "must be a JSON object"),
                          (["--ray", "--ray-workers", "0"], "--ray-workers must be at least 1")):
        assert main(["batch", str(photos), "-i", "x", "-o", str(tmp_path / "o"), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err


# ------------------------------------------------------------------------------------------------
# Slow: a real local Ray instance


@pytest.fixture(scope="module")
def local_ray():
    import ray

    for name in ("RAY_raylet_start_wait_time_s", "RAY_agent_register_timeout_ms"):  # a busy core starts
        os.environ.setdefault(name, "300" if name.endswith("_s") else "300000")  # Ray's agents slowly
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_batch_equals_local_resumes_and_names_bad_rows(tmp_path, photos, tiny_model_dir, local_ray):
    table = write_parquet(tmp_path / "jobs.parquet", table_rows(photos))
    args = ["--model", str(tiny_model_dir), "--seed", "5", *FAST]
    assert main(["batch", str(table), "-o", str(tmp_path / "local"), *args]) == 1
    out = tmp_path / "ray"
    assert main(["batch", str(table), "-o", str(out), "--ray", "--ray-workers", "2", *args]) == 1
    records = manifest(out / "manifest.jsonl")
    assert len(records) == 6
    failed = sorted(r["error"] for r in records if r["status"] == "failed")
    assert len(failed) == 2 and failed[0].startswith("jobs.parquet:row 3: ") and "steps" in failed[0]
    assert failed[1].startswith("jobs.parquet:row 6: ")
    assert sum(r["status"] == "ok" for r in records) == 4 and all(r.get("worker") for r in records if r["status"] == "ok")
    ours, theirs = pictures(out / "in"), pictures(tmp_path / "local" / "in")
    assert ours.keys() == theirs.keys() == {f"p{i}.png" for i in range(4)}
    for name in ours:
        assert np.array_equal(ours[name], theirs[name]), name
    assert read_params(out / "in" / "p1.png")["steps"] == 3 and read_params(out / "in" / "p0.png")["steps"] == 2

    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert main(["batch", str(table), "-o", str(out), "--ray", *args]) == 1  # the bad rows still fail
    again = manifest(out / "manifest.jsonl")[6:]
    assert sorted(r["status"] for r in again) == ["failed", "failed", "skipped", "skipped", "skipped", "skipped"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == mtimes


def _actor_processes():
    import psutil

    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if "EditActor" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            pass
    return found


@pytest.mark.slow
def test_a_killed_actor_loses_and_doubles_nothing(tmp_path, tiny_model_dir, local_ray):
    pytest.importorskip("psutil")
    root = tmp_path / "in"
    root.mkdir()
    for i in range(10):
        gradient_image(32, 32, seed=10 + i).save(root / f"q{i}.png")
    args = ["-i", "make it blue", "--model", str(tiny_model_dir), "--batch-size", "1", "--steps", "12",
            "--resolution", "32", "-q"]
    out = tmp_path / "ray"
    seen: dict = {}

    def kill_one_actor_mid_job():  # the job runs in the main thread (it installs signal handlers)
        deadline = time.monotonic() + 600
        while not list(out.glob("*.png")) and time.monotonic() < deadline:
            time.sleep(0.1)
        seen["actors"] = actors = _actor_processes()
        if len(actors) == 2:
            os.kill(actors[0].pid, signal.SIGKILL)  # both actors are busy, one group each
            seen["victim"] = actors[0]

    killer = threading.Thread(target=kill_one_actor_mid_job, daemon=True)
    killer.start()
    assert main(["batch", str(root), "-o", str(out), "--ray", "--ray-workers", "2", *args]) == 0
    killer.join(timeout=60)
    assert len(seen["actors"]) == 2, seen["actors"]
    alive = {a.pid for a in seen["actors"]}
    victim = seen["victim"]
    assert not victim.is_running() or victim.status() == "zombie"

    records = manifest(out / "manifest.jsonl")
    assert sorted(Path(r["input"]).name for r in records) == sorted(f"q{i}.png" for i in range(10))  # once each
    assert {r["status"] for r in records} == {"ok"}
    workers = {int(r["worker"].rsplit(":", 1)[1]) for r in records}
    assert workers - alive, "no group was run by the restarted actor"

    local = tmp_path / "local"
    assert main(["batch", str(root), "-o", str(local), *args]) == 0
    ours, theirs = pictures(out), pictures(local)
    assert ours.keys() == theirs.keys() and len(ours) == 10
    for name in ours:
        assert np.array_equal(ours[name], theirs[name]), name
