"""Writing shapes data sets: the three formats, exact PNGs, resuming after a kill, the CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ip2p.cli import main
from ip2p.errors import BadOptions
from ip2p.shapes import make_example
from ip2p.shapes.dataset import MakeOptions, make_dataset
from ip2p.shapes.scene import KINDS


def test_ip2p_format(tmp_path):
    summary = make_dataset(MakeOptions(out=str(tmp_path), n=12, format="ip2p", shard_size=5, workers=2))
    assert summary["written"] == 12
    seeds = json.loads((tmp_path / "seeds.json").read_text())
    assert [s for _, [s] in seeds] == list(range(12))
    folder, [seed] = seeds[3]
    prompt = json.loads((tmp_path / folder / "prompt.json").read_text())
    ex = make_example(seed, 64)
    assert prompt["edit"] == ex.instruction and prompt["caption"] == ex.caption and prompt["output"] == ex.output_caption
    assert prompt["kind"] == ex.kind
    before = np.asarray(Image.open(tmp_path / folder / f"{seed}_0.png"))
    after = np.asarray(Image.open(tmp_path / folder / f"{seed}_1.png"))
    mask = np.asarray(Image.open(tmp_path / folder / prompt["mask"]))
    assert np.array_equal(before, ex.before) and np.array_equal(after, ex.after)
    assert np.array_equal(mask > 0, ex.mask)
    _check_kind_map(Image.open(tmp_path / folder / prompt["kinds"]), ex)


def _check_kind_map(image: Image.Image, ex) -> None:
    """The kind map labels every pixel that shows only one object with that object's kind, and the
    pixels no object touches with 0."""
    from ip2p.shapes.render import render

    labels = np.asarray(image)
    assert image.mode == "L" and labels.shape == ex.before.shape[:2]
    rendering = render(ex.scene, ex.size)
    for shape in ex.scene.objects:
        core = rendering.core(shape.id)
        assert core.any() and (labels[core] == 1 + KINDS.index(shape.kind)).all()
    untouched = sum(rendering.visible.values()) == 0
    assert untouched.any() and (labels[untouched] == 0).all()


def test_jsonl_format(tmp_path):
    make_dataset(MakeOptions(out=str(tmp_path), n=7, size=96, format="jsonl", workers=1, split="test"))
    lines = [json.loads(x) for x in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    assert len(lines) == 7
    rec = lines[2]
    for key in ("input_image", "edit_prompt", "edited_image", "kind", "caption", "output_caption", "mask_image",
                "template_id", "split"):
        assert key in rec
    ex = make_example(rec["seed"], 96, split="test")
    assert rec["split"] == "test" and rec["edit_prompt"] == ex.instruction
    assert np.array_equal(np.asarray(Image.open(tmp_path / rec["edited_image"])), ex.after)
    _check_kind_map(Image.open(tmp_path / rec["kind_map_image"]), ex)


def test_hf_format_loads_with_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    make_dataset(MakeOptions(out=str(tmp_path), n=9, format="hf", shard_size=4, workers=2))
    files = sorted(str(p) for p in (tmp_path / "data").glob("*.parquet"))
    assert len(files) == 3 and files[0].endswith("train-00000-of-00003.parquet")
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 9
    row = ds[4]
    ex = make_example(row["seed"], 64)
    assert row["edit_prompt"] == ex.instruction and row["kind"] == ex.kind
    assert isinstance(row["input_image"], Image.Image)
    assert np.array_equal(np.asarray(row["edited_image"]), ex.after)
    assert np.array_equal(np.asarray(row["mask_image"]) > 0, ex.mask)
    _check_kind_map(row["kind_map_image"], ex)


def test_bad_options_and_mismatched_resume(tmp_path):
    with pytest.raises(BadOptions, match="format"):
        make_dataset(MakeOptions(out=str(tmp_path / "a"), n=3, format="tar"))
    with pytest.raises(BadOptions, match="size"):
        make_dataset(MakeOptions(out=str(tmp_path / "a"), n=3, size=1024))
    make_dataset(MakeOptions(out=str(tmp_path / "b"), n=3, workers=1))
    with pytest.raises(BadOptions, match="size=64"):
        make_dataset(MakeOptions(out=str(tmp_path / "b"), n=3, size=96, workers=1))
    with pytest.raises(BadOptions, match="references"):  # not the folder's phrase mix
        make_dataset(MakeOptions(out=str(tmp_path / "b"), n=3, workers=1, references="type"))


def test_target_first_phrasings_name_the_colour_first_in_training_only(tmp_path, capsys):
    """--phrasings target-first: some recolour instructions name the new colour before what takes it;
    the test split (the benchmark) and the default keep the stock phrasings, example for example."""
    kinds = ["recolor_object", "recolor_background"]
    stock = [make_example(s, 64, kinds=kinds) for s in range(80)]
    first = [make_example(s, 64, kinds=kinds, phrasings="target-first") for s in range(80)]
    added = [e for e in first if "/f" in e.template_id]
    assert 8 <= len(added) <= 40 and not any("/f" in e.template_id for e in stock)
    for e in added:  # the colour, then "the background" or the object's phrase ("the red one", ...)
        assert e.instruction.index(e.target["color"]) < e.instruction.rindex("the ")
    assert [(a.kind, a.scene) for a in stock] == [(b.kind, b.scene) for b in first]  # only the wording moves
    objects = [make_example(s, 64, kinds=kinds, phrasings="target-first-objects") for s in range(80)]
    assert {e.kind for e in objects if "/f" in e.template_id} == {"recolor_object"}  # never the background
    assert [e.instruction for e in objects if e.kind == "recolor_background"] == [
        e.instruction for e in stock if e.kind == "recolor_background"]
    with pytest.raises(BadOptions, match="training examples only"):
        make_example(0, 64, split="test", phrasings="target-first")
    make_dataset(MakeOptions(out=str(tmp_path / "d"), n=6, workers=1, kinds=tuple(kinds), phrasings="target-first"))
    prompts = [json.loads((tmp_path / "d" / f"{s:08d}" / "prompt.json").read_text()) for s in range(6)]
    assert [p["edit"] for p in prompts] == [first[s].instruction for s in range(6)]
    with pytest.raises(BadOptions, match="phrasings"):  # not the folder's phrasings
        make_dataset(MakeOptions(out=str(tmp_path / "d"), n=6, workers=1, kinds=tuple(kinds)))
    code = main(["shapes", "make", "--n", "2", "--out", str(tmp_path / "t"), "--split", "test",
                 "--phrasings", "target-first"])
    err = capsys.readouterr().err
    assert code != 0 and "--phrasings target-first is for --split train only" in err and "Traceback" not in err


def test_reference_mix_type_draws_object_phrases_by_form(tmp_path):
    """--references type: each form an object admits is equally likely, so the bare kind ("the circle")
    and kind-plus-colour phrases come up more often than among all phrases, where colour forms dominate."""
    kinds = ["recolor_object", "remove_object"]
    by_phrase = [make_example(s, 64, kinds=kinds) for s in range(300)]
    by_type = [make_example(s, 64, kinds=kinds, reference_mix="type") for s in range(300)]
    assert [e.instruction for e in by_phrase] == [make_example(s, 64, kinds=kinds).instruction for s in range(300)]
    share = {mix: {ref: sum(e.reference == ref for e in examples) / 300 for ref in ("kind", "colour")}
             for mix, examples in (("phrase", by_phrase), ("type", by_type))}
    assert share["type"]["kind"] > 1.2 * share["phrase"]["kind"] and share["type"]["colour"] < share["phrase"]["colour"]
    # --references kind: the bare kind 70 % of the time it can, so more than a third of object edits use it
    bare = sum(make_example(s, 64, kinds=kinds, reference_mix="kind").reference == "kind" for s in range(300)) / 300
    assert bare > max(1 / 3, 1.5 * share["type"]["kind"])
    make_dataset(MakeOptions(out=str(tmp_path), n=4, workers=1, references="type"))
    prompt = json.loads((tmp_path / "00000002" / "prompt.json").read_text())
    assert prompt["edit"] == make_example(2, 64, reference_mix="type").instruction
    with pytest.raises(BadOptions, match="--references must be one of phrase, type, kind, got 'form'"):
        MakeOptions(out=str(tmp_path / "x"), references="form").check()


def test_killed_run_resumes_without_redoing_or_duplicating(tmp_path):
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "ip2p", "shapes", "make", "--n", "400", "--out", str(out), "--format", "jsonl",
           "--shard-size", "20", "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(list((out / ".shards").glob("*.json"))) < 3:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in (out / ".shards").glob("*.json")}
    assert 3 <= len(done) < 20 and not (out / "metadata.jsonl").exists()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["skipped"] == 20 * len(done) and summary["written"] == 400 - summary["skipped"]
    # finished shards were not rewritten
    assert all((out / ".shards" / name).stat().st_mtime_ns == t for name, t in done.items())
    lines = [json.loads(x) for x in (out / "metadata.jsonl").read_text().splitlines()]
    assert sorted(r["seed"] for r in lines) == list(range(400))
    assert len(list((out / "images").glob("*.png"))) == 4 * 400  # input, edited, mask, kind map
    assert not list(out.rglob("*.tmp"))


def test_cli_show_and_errors(tmp_path, capsys):
    target = tmp_path / "strip.png"
    assert main(["shapes", "show", "--seed", "3", "--size", "64", "--out", str(target)]) == 0
    info = json.loads(capsys.readouterr().out)
    strip = Image.open(target)
    assert strip.size == (192, 64) and info["edit_prompt"] == make_example(3, 64).instruction
    assert main(["shapes", "show", "--seed", "3", "--size", "20", "--out", str(target)]) == 2
    assert "size" in capsys.readouterr().err
    assert main(["shapes", "make", "--n", "2", "--out", str(tmp_path / "m"), "--format", "zip"]) == 2
    assert "--format" in capsys.readouterr().err
    assert main(["shapes", "make", "--n", "3", "--out", str(tmp_path / "m"), "--workers", "1"]) == 0
    assert Path(tmp_path / "m" / "seeds.json").exists()
