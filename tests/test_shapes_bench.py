"""The shapes benchmark: aggregation and reports with real scores, and one end-to-end run with a tiny model."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from ip2p.errors import BadOptions, Cancelled
from ip2p.shapes import EDIT_KINDS, make_example
from ip2p.shapes.bench import IDENTITY_ROW, run_benchmark


class Oracle:
    """An 'editor' that returns the exact target (or the input, or noise): no model, real pixels."""

    model_name = "oracle"

    def __init__(self, mode):
        self.mode, self.calls = mode, []

    def edit(self, images, instruction, **options):
        self.calls.append((instruction, options))
        given = np.asarray(images[0])
        ex = next(e for e in self._examples if e.instruction == instruction and np.array_equal(e.before, given))
        out = {"perfect": ex.after, "identity": ex.before}.get(self.mode)
        if out is None:
            out = np.random.default_rng(options["seed"]).integers(0, 256, ex.before.shape, dtype=np.uint8)
        return SimpleNamespace(images=[Image.fromarray(out)])

    def prepare(self, n, size, seed=0):
        self._examples = [make_example(seed + i, size, kinds=[EDIT_KINDS[i % len(EDIT_KINDS)]], split="test")
                          for i in range(n)]
        return self


def test_perfect_identity_and_noise_reports(tmp_path):
    n = 24
    perfect = run_benchmark(Oracle("perfect").prepare(n, 64), n=n, size=64, out_dir=tmp_path / "p")
    rows = perfect["rows"]
    assert set(EDIT_KINDS) <= set(rows) and {"counting", "spatial moves", IDENTITY_ROW, "all"} <= set(rows)
    assert all(rows[k]["success"] == 1.0 for k in EDIT_KINDS) and rows["all"]["psnr"] == 100.0
    assert rows["all"]["success_held_out"] == 1.0 and rows["all"]["success_seen"] == 1.0
    # object edits again, split by how the instruction names the object; other kinds have no reference
    split = {name: r for name, r in rows.items() if name.startswith("recolor_object / ")}
    assert split and sum(r["n"] for r in split.values()) == rows["recolor_object"]["n"]
    assert "grayscale / kind" not in rows and "colour" in {name.split(" / ")[1] for name in rows if " / " in name}
    identity = run_benchmark(Oracle("identity").prepare(n, 64), n=n, size=64)["rows"]
    assert all(identity[k]["success"] == 0.0 for k in EDIT_KINDS)
    assert identity["all"]["edit_strength"] == 0.0 and identity["all"]["preservation_mae"] == 0.0
    noise = run_benchmark(Oracle("noise").prepare(n, 64), n=n, size=64)["rows"]
    assert noise["all"]["success"] == 0.0 and noise["all"]["preservation_mae"] > 50
    # report files
    md = (tmp_path / "p" / "report.md").read_text()
    assert "| counting |" in md and "held-out templates" in md
    data = json.loads((tmp_path / "p" / "report.json").read_text())
    assert len(data["examples"]) == n and data["rows"]["all"]["n"] == n
    grid = Image.open(tmp_path / "p" / "grid.png")
    assert grid.size[0] == 3 * 128 and grid.size[1] > 128


def test_options_callback_and_cancel():
    editor = Oracle("perfect").prepare(3, 64, seed=10)
    seen = []
    run_benchmark(editor, n=3, size=64, seed=10, edit_options={"steps": 5}, callback=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert [o["seed"] for _, o in editor.calls] == [10, 11, 12] and editor.calls[0][1]["steps"] == 5
    assert editor.calls[0][1]["resolution"] == 64

    def cancel(done, total):
        raise Cancelled("stop")

    with pytest.raises(Cancelled):
        run_benchmark(editor, n=3, size=64, seed=10, callback=cancel)
    with pytest.raises(BadOptions):
        run_benchmark(editor, n=0)


@pytest.mark.slow
def test_end_to_end_with_tiny_random_model(tmp_path):
    from ip2p.editor import Editor
    from ip2p.tiny import build_tiny_components

    editor = Editor(build_tiny_components())
    report = run_benchmark(editor, n=4, size=64, out_dir=tmp_path, edit_options={"steps": 2}, grid_examples=4)
    for name in ("report.md", "report.json", "grid.png"):
        assert (tmp_path / name).stat().st_size > 0
    for row in report["rows"].values():
        assert 0.0 <= row["success"] <= 1.0 and 0 <= row["psnr"] <= 100
        assert row["preservation_mae"] is None or 0 <= row["preservation_mae"] <= 255


def test_cli_bench_threads(tmp_path, capsys):
    import torch

    from ip2p.cli import main
    from ip2p.components import save_diffusers
    from ip2p.tiny import build_tiny_components

    model = save_diffusers(build_tiny_components(), tmp_path / "tiny")
    before = torch.get_num_threads()
    try:
        assert main(["bench", "shapes", "--model", str(model), "--n", "2", "--steps", "2", "--threads", "1",
                     "--out", str(tmp_path / "bench")]) == 0
        assert torch.get_num_threads() == 1 and (tmp_path / "bench" / "report.json").is_file()
    finally:
        torch.set_num_threads(before)
    capsys.readouterr()
    assert main(["bench", "shapes", "--threads", "0", "--out", str(tmp_path / "none")]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err and not (tmp_path / "none").exists()


def test_a_stopped_benchmark_resumes_without_editing_again(tmp_path):
    n, out = 12, tmp_path / "report"
    oracle = Oracle("perfect").prepare(n, 64)

    def stop_at_5(done, total):
        if done == 5:
            raise Cancelled("stopped")

    with pytest.raises(Cancelled):
        run_benchmark(oracle, n=n, size=64, out_dir=out, callback=stop_at_5)
    assert len(oracle.calls) == 5
    with (out / "examples.jsonl").open("a") as log:
        log.write('{"i": 5, "resu')  # a line torn by a kill
    resumed = run_benchmark(oracle, n=n, size=64, out_dir=out)
    assert len(oracle.calls) == 12  # the 5 finished examples were not edited again; the torn one was
    fresh = run_benchmark(Oracle("perfect").prepare(n, 64), n=n, size=64, out_dir=tmp_path / "fresh")
    assert resumed["rows"] == fresh["rows"] and resumed["examples"] == fresh["examples"]
    assert (out / "grid.png").read_bytes() == (tmp_path / "fresh" / "grid.png").read_bytes()
    with pytest.raises(BadOptions, match="holds another benchmark run"):
        run_benchmark(Oracle("identity").prepare(n, 64), n=n, size=64, seed=1, out_dir=out)


def test_add_object_ceiling_script(tmp_path):
    """benchmarks/add_object_ceiling.py, as a process: the exact target passes the add rule, an editor
    right about everything the instruction says (kind, colour, region, even the size) mostly fails it."""
    import subprocess
    import sys
    from pathlib import Path

    script = str(Path(__file__).parents[1] / "benchmarks" / "add_object_ceiling.py")
    out = tmp_path / "ceiling.json"
    proc = subprocess.run([sys.executable, script, "--n", "80", "--out", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["examples"] == 10 and report["success"]["target"] == 1.0
    assert report["success"]["true_size_region_centre"] <= 0.5
    assert all(report["success"][f"{s}_region_centre"] <= 0.5 for s in ("small", "medium", "large"))
    proc = subprocess.run([sys.executable, script, "--kinds", "invert", "--out", str(out)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and "--kinds must include add_object" in proc.stderr and "Traceback" not in proc.stderr
