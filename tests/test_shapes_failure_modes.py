"""The failure-mode kinds of the shapes world (counting, spatial, viewpoint, identity), their exact
scoring on right, wrong and alternative answers, and the ``failure-modes`` benchmark suite."""

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from ip2p.shapes import EDIT_KINDS, HELD_OUT, TEMPLATES, make_example, render, vocabulary
from ip2p.shapes.bench import FAILURE_MODE_SUITE, run_benchmark
from ip2p.shapes.phrasing import FAILURE_KINDS, REMOVE_NUMBERS
from ip2p.shapes.scene import Background, Scene, Shape
from ip2p.shapes.score import score_edit

WORD = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+")


def test_failure_kinds_are_opt_in_phrased_and_exact():
    assert not set(FAILURE_KINDS) & set(EDIT_KINDS)
    assert {k for members in FAILURE_MODE_SUITE.values() for k in members} >= set(FAILURE_KINDS)
    # the default mix never draws them: default data sets stay as they were
    assert not {make_example(s, 64).kind for s in range(80)} & set(FAILURE_KINDS)
    vocab = set(vocabulary())
    for kind in FAILURE_KINDS:
        assert len(TEMPLATES[kind]) >= 20 and len(set(TEMPLATES[kind])) == len(TEMPLATES[kind])
        assert len(HELD_OUT[kind]) >= 3 and not set(HELD_OUT[kind]) & set(TEMPLATES[kind])
        for seed in range(5):
            ex = make_example(seed, 64, kinds=[kind], split="test")
            assert ex.kind == kind and np.array_equal(ex.mask, np.any(ex.before != ex.after, axis=-1))
            assert ex.mask.any() and ("/h" in ex.template_id) == ex.held_out
            for text in (ex.instruction, ex.caption, ex.output_caption):
                assert not set(WORD.findall(text.lower())) - vocab, text
            if kind != "flip_scene":
                assert np.array_equal(render(ex.edited_scene, 64).image, ex.after)


def test_failure_edits_do_what_they_say():
    ex = make_example(3, 64, kinds=["count_remove_n"])
    n = ex.target["removed"]
    assert REMOVE_NUMBERS[n] in ex.instruction.split() and len(ex.scene.objects) - len(ex.edited_scene.objects) == n
    assert len(ex.target["group_ids"]) > n and ex.free is not None and not (ex.free & ex.mask).any()

    ex = make_example(4, 64, kinds=["swap_objects"])
    a, b = ex.target["object_ids"]
    before, after = ex.scene, ex.edited_scene
    assert (after.get(a).x, after.get(a).y) == (before.get(b).x, before.get(b).y)
    assert (after.get(b).x, after.get(b).y) == (before.get(a).x, before.get(a).y)

    ex = make_example(5, 64, kinds=["flip_scene"])
    assert np.array_equal(ex.after, ex.before[:, ::-1])
    for kind in ("rotate_object", "flip_object", "keep_object"):
        ex = make_example(6, 64, kinds=[kind])
        turned = ex.edited_scene.get(ex.target["object_id"])
        assert turned.angle == {"rotate_object": 90.0, "flip_object": 180.0, "keep_object": 0.0}[kind]
    assert "upside-down" in make_example(7, 64, kinds=["flip_object"]).output_caption


def test_rotation_is_clockwise_and_exact_at_the_centre():
    """A triangle turned 90 degrees is the unturned one's picture turned clockwise (np.rot90 k=-1)."""
    bg = Background("plain", "white")
    up = Scene(bg, (Shape("triangle", "red", "large", 0.5, 0.5, 0),))
    right = Scene(bg, (Shape("triangle", "red", "large", 0.5, 0.5, 0, angle=90.0),))
    a, b = render(up, 64).visible[0] > 0.5, render(right, 64).visible[0] > 0.5
    clockwise, counter = np.rot90(a, -1), np.rot90(a, 1)
    iou = lambda x, y: (x & y).sum() / (x | y).sum()  # noqa: E731
    assert iou(b, clockwise) > 0.95 and iou(b, counter) < 0.7
    # an unturned shape renders exactly as before the angle existed (angle 0 is not rotated at all)
    assert np.array_equal(render(up, 64).image, render(Scene(bg, (Shape("triangle", "red", "large", 0.5, 0.5, 0),)),
                                                     64).image)


@pytest.mark.parametrize("kind", FAILURE_KINDS)
def test_score_perfect_identity_and_noise(kind):
    for seed in range(6):
        ex = make_example(seed, 64, kinds=[kind], split="test")
        assert score_edit(ex, ex.after)["success"]
        assert not score_edit(ex, ex.before)["success"]
        noise = np.random.default_rng(seed).integers(0, 256, ex.before.shape, dtype=np.uint8)
        assert not score_edit(ex, noise)["success"]


def test_alternative_and_wrong_answers():
    # remove N: any N of the group is right; one too few, or a member of another group, is wrong
    for seed in range(10):
        ex = make_example(seed, 64, kinds=["count_remove_n"], split="test")
        group, removed = ex.target["group_ids"], ex.target["object_ids"]
        others = [i for i in group if i not in removed]
        alternative = others[: len(removed)]
        if len(alternative) == len(removed):
            assert score_edit(ex, render(ex.scene.without(*alternative), 64).image)["success"]
        assert not score_edit(ex, render(ex.scene.without(*removed[1:]), 64).image)["success"]
        outsiders = [o.id for o in ex.scene.objects if o.id not in group]
        if outsiders:
            wrong = render(ex.scene.without(*removed[:-1], outsiders[0]), 64).image
            assert not score_edit(ex, wrong)["success"]
    # swap: moving only one of the two is not a swap
    ex = make_example(2, 64, kinds=["swap_objects"], split="test")
    a, b = ex.target["object_ids"]
    half = ex.scene.swap(ex.scene.get(a).replace(x=ex.scene.get(b).x, y=ex.scene.get(b).y))
    assert not score_edit(ex, render(half, 64).image)["success"]
    # rotate: counter-clockwise is the wrong way for a triangle
    for seed in range(40):
        ex = make_example(seed, 64, kinds=["rotate_object"], split="test")
        shape = ex.scene.get(ex.target["object_id"])
        if shape.kind == "triangle":
            wrong = render(ex.scene.swap(shape.replace(angle=270.0)), 64).image
            assert not score_edit(ex, wrong)["success"]
            break
    else:
        pytest.fail("no triangle among 40 rotate_object examples")
    # identity: the background recoloured right but the named object painted over is a failure
    ex = make_example(1, 64, kinds=["keep_object"], split="test")
    shape = ex.scene.get(ex.target["object_id"])
    erased = render(ex.edited_scene.without(shape.id), 64).image
    s = score_edit(ex, erased)
    assert not s["success"] and s["kind_measure"] < 0.8


class Oracle:
    """Returns the exact target or the input: real pixels, no model."""

    model_name = "oracle"

    def __init__(self, mode, examples):
        self.mode, self.examples = mode, examples

    def edit(self, images, instruction, **options):
        given = np.asarray(images[0])
        ex = next(e for e in self.examples if e.instruction == instruction and np.array_equal(e.before, given))
        return SimpleNamespace(images=[Image.fromarray(ex.after if self.mode == "perfect" else ex.before)])


def test_failure_mode_suite_report(tmp_path):
    kinds = [k for members in FAILURE_MODE_SUITE.values() for k in members]
    n = 2 * len(kinds)
    examples = [make_example(i, 64, kinds=[kinds[i % len(kinds)]], split="test") for i in range(n)]
    report = run_benchmark(Oracle("perfect", examples), n=n, size=64, out_dir=tmp_path, suite="failure-modes")
    rows = report["rows"]
    assert list(rows)[-5:] == [*FAILURE_MODE_SUITE, "all"] and report["suite"] == "failure-modes"
    assert all(rows[c]["success"] == 1.0 and rows[c]["preserved"] == 1.0 for c in FAILURE_MODE_SUITE)
    assert rows["counting"]["n"] == 6 and rows["identity"]["n"] == 2
    same = run_benchmark(Oracle("identity", examples), n=n, size=64, suite="failure-modes")["rows"]
    assert all(same[c]["success"] == 0.0 for c in FAILURE_MODE_SUITE)
    assert same["all"]["preserved"] == 1.0 and same["all"]["edit_done"] == 0.0
    md = (tmp_path / "report.md").read_text()
    assert "| **viewpoint** |" in md and "edit done" in md
    assert json.loads((tmp_path / "report.json").read_text())["rows"]["spatial"]["n"] == 4
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (3 * 128, n * (128 + 14))


def test_cli_failure_modes(tmp_path, capsys, tiny_model_dir):
    from ip2p.cli import main

    out = tmp_path / "fm"
    assert main(["bench", "shapes", "--suite", "failure-modes", "--model", str(tiny_model_dir), "--n", "4",
                 "--steps", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| **counting** |" in printed and "| **spatial** |" in printed
    data = json.loads((out / "report.json").read_text())
    assert data["suite"] == "failure-modes" and [e["kind"] for e in data["examples"]] == \
        ["count_add", "count_remove", "count_remove_n", "move_object"]
    with pytest.raises(SystemExit) as stop:
        main(["bench", "shapes", "--suite", "nope", "--out", str(tmp_path / "x")])
    assert stop.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
