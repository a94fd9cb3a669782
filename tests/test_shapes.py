"""The shapes world: scenes, rendering, edits, phrasing, splits and exact scoring."""

import re
import subprocess
import sys

import numpy as np
import pytest

from ip2p.errors import BadImage, BadOptions
from ip2p.shapes import (
    EDIT_KINDS,
    HELD_OUT,
    KINDS,
    TEMPLATES,
    make_example,
    reference_type,
    references,
    render,
    vocabulary,
)
from ip2p.shapes.color import COLORS, delta_e, palette_separation, srgb_to_lab
from ip2p.shapes.measure import count_blobs, label_components
from ip2p.shapes.scene import Background, Scene, Shape, caption
from ip2p.shapes.score import score_edit


def test_palette_is_well_separated_and_lab_is_right():
    assert len(COLORS) >= 8
    assert palette_separation() >= 40
    # reference values (D65): white is L=100, pure sRGB red is (53.24, 80.09, 67.20)
    np.testing.assert_allclose(srgb_to_lab(np.array([255, 255, 255], np.uint8)), [100, 0, 0], atol=0.01)
    np.testing.assert_allclose(srgb_to_lab(np.array([255, 0, 0], np.uint8)), [53.24, 80.09, 67.20], atol=0.05)
    assert delta_e(np.array([10, 20, 30], np.uint8), np.array([10, 20, 30], np.uint8)) == 0


def test_render_is_deterministic_antialiased_and_any_size():
    scene = Scene(
        Background("stripes", "white", angle=45, period=0.2),
        (Shape("circle", "red", "large", 0.4, 0.4, 0), Shape("star", "blue", "medium", 0.6, 0.6, 1)),
    )
    for size in (64, 100, 512):
        a, b = render(scene, size), render(scene, size)
        assert a.image.shape == (size, size, 3) and a.image.dtype == np.uint8
        assert np.array_equal(a.image, b.image)
    r = render(scene, 128)
    red = np.array(COLORS["red"], np.float32)
    # the disc centre is exactly red, and its edge has blended (anti-aliased) pixels
    assert np.array_equal(r.image[int(0.3 * 128), int(0.4 * 128)], red.astype(np.uint8))
    vis = r.visible[0]
    assert ((vis > 0.05) & (vis < 0.95)).sum() > 20
    # the star is on top of the circle, so the circle's visible area is less than its disc
    assert vis.sum() < np.pi * (0.24 * 128) ** 2 * 0.99
    with pytest.raises(BadOptions, match="size"):
        render(scene, 32)


def test_scenes_have_one_to_five_objects_of_many_kinds_and_backgrounds():
    seen_kinds, seen_styles, counts = set(), set(), set()
    for seed in range(150):
        ex = make_example(seed, 64)
        counts.add(len(ex.scene.objects))
        seen_kinds |= {o.kind for o in ex.scene.objects}
        seen_styles.add(ex.scene.background.style)
        # objects are big enough to survive an f=4 VAE at 64 px: radius >= 8 px
        assert all(o.radius * 64 >= 8 for o in ex.scene.objects)
    assert counts <= {1, 2, 3, 4, 5} and len(counts) >= 4
    assert seen_kinds == set(KINDS) and len(KINDS) >= 6
    assert seen_styles == {"plain", "gradient", "stripes", "texture"}


def test_same_seed_same_example_and_splits_are_disjoint():
    a, b = make_example(7, 64), make_example(7, 64)
    assert a.instruction == b.instruction and np.array_equal(a.after, b.after) and np.array_equal(a.mask, b.mask)
    t = make_example(7, 64, split="test")
    assert not np.array_equal(a.before, t.before)
    with pytest.raises(BadOptions, match="split"):
        make_example(7, 64, split="val")
    with pytest.raises(BadOptions, match="edit kind"):
        make_example(7, 64, kinds=["explode"])
    with pytest.raises(BadOptions, match="held-out"):
        make_example(7, 64, split="train", held_out_p=0.5)


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_every_kind_yields_an_exact_triplet(kind):
    for seed in range(6):
        ex = make_example(seed, 64, kinds=[kind])
        assert ex.kind == kind and ex.instruction and ex.caption and ex.output_caption
        # the mask is exactly where the pixels differ, and it is not empty
        assert np.array_equal(ex.mask, np.any(ex.before != ex.after, axis=-1)) and ex.mask.any()
        if kind not in ("grayscale", "invert", "darken", "brighten"):
            assert np.array_equal(render(ex.edited_scene, 64).image, ex.after)
            assert ex.caption != ex.output_caption or kind == "move_object"
        before, after, mask = ex.images()
        assert before.size == after.size == mask.size == (64, 64) and mask.mode == "L"


def test_edits_do_what_they_say():
    ex = make_example(1, 96, kinds=["recolor_object"])
    obj = ex.scene.get(ex.target["object_id"])
    assert ex.target["color"] in ex.instruction and ex.target["color"] != obj.color
    assert ex.edited_scene.get(obj.id).color == ex.target["color"]
    ex = make_example(2, 96, kinds=["count_add"])
    added = len(ex.edited_scene.objects) - len(ex.scene.objects)
    number = re.search(r"\b(two|three)\b", ex.instruction).group(1)
    assert added == ex.target["added"] == {"two": 2, "three": 3}[number]
    ex = make_example(3, 96, kinds=["move_object"])
    a, b = ex.scene.get(ex.target["object_id"]), ex.edited_scene.get(ex.target["object_id"])
    d = ex.target["direction"]
    assert d in ex.instruction
    assert {"left": b.x < a.x, "right": b.x > a.x, "up": b.y < a.y, "down": b.y > a.y}[d]


def test_references_are_never_ambiguous():
    bg = Background("plain", "white")
    scene = Scene(bg, (Shape("circle", "red", "small", 0.2, 0.5, 0), Shape("circle", "blue", "small", 0.8, 0.5, 1),
                       Shape("square", "red", "small", 0.5, 0.2, 2)))
    refs = references(scene, scene.objects[0])
    assert "the circle" not in refs and "the red shape" not in refs
    assert "the red circle" in refs and "the circle on the left" in refs and "the leftmost circle" in refs
    assert "the circle on the right" in references(scene, scene.objects[1])
    assert "the square" in references(scene, scene.objects[2])
    # two identical red circles side by side at the same height: only position tells them apart
    twins = Scene(bg, (Shape("circle", "red", "small", 0.2, 0.5, 0), Shape("circle", "red", "small", 0.8, 0.5, 1)))
    assert references(twins, twins.objects[0]) == ["the circle on the left", "the leftmost circle"]
    assert [reference_type(p) for p in references(scene, scene.objects[0])] == ["colour+kind"] + ["position"] * 2
    assert [reference_type(p) for p in references(scene, scene.objects[1])][:4] == ["colour"] * 3 + ["colour+kind"]
    assert reference_type("the square") == "kind" and reference_type("the lowest star") == "position"
    # generated instructions only name kinds that are present and unique when named bare
    for seed in range(120):
        ex = make_example(seed, 64, kinds=["recolor_object", "remove_object", "move_object", "resize_object"])
        m = re.search(r"the (" + "|".join(KINDS) + r")\b(?! on| at)", ex.instruction)
        if m and not re.search(r"the (\w+) " + m.group(1), ex.instruction):
            assert sum(o.kind == m.group(1) for o in ex.scene.objects) == 1, ex.instruction


def test_templates_phrasing_and_held_out():
    for kind in EDIT_KINDS:
        assert len(TEMPLATES[kind]) >= 20 and len(set(TEMPLATES[kind])) == len(TEMPLATES[kind])
        assert len(HELD_OUT[kind]) >= 2 and not set(HELD_OUT[kind]) & set(TEMPLATES[kind])
    train_ids = {make_example(s, 64).template_id for s in range(300)}
    assert not any("/h" in t for t in train_ids) and len(train_ids) > 150
    test = [make_example(s, 64, split="test") for s in range(60)]
    assert 10 < sum(e.held_out for e in test) < 50
    assert all(("/h" in e.template_id) == e.held_out for e in test)


def test_vocabulary_covers_every_generated_text():
    vocab = set(vocabulary())
    assert {"circle", "red", "background", "night", "remove"} <= vocab
    word = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+")
    for seed in range(200):
        for split in ("train", "test"):
            ex = make_example(seed, 64, split=split)
            for text in (ex.instruction, ex.caption, ex.output_caption):
                missing = set(word.findall(text.lower())) - vocab
                assert not missing, (text, missing)


def test_caption_grammar():
    scene = Scene(Background("gradient", "orange"), (Shape("star", "blue", "small", 0.2, 0.2, 0),
                                                     Shape("heart", "white", "large", 0.5, 0.5, 1)))
    assert caption(scene) == (
        "a small blue star at the top left and a large white heart in the center on an orange gradient background"
    )


def test_blob_labelling():
    mask = np.zeros((20, 20), bool)
    mask[2:5, 2:5] = True
    mask[10:15, 10:12] = True
    mask[14, 12:18] = True  # an L joined to the bar
    mask[5, 5] = True  # diagonal neighbour: not 4-connected
    labels, n = label_components(mask)
    assert n == 3 and len(np.unique(labels[10:15, 10:12])) == 1 and labels[14, 17] == labels[10, 10]


def _noise(ex, seed):
    return np.random.default_rng(seed).integers(0, 256, ex.before.shape, dtype=np.uint8)


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_score_perfect_identity_and_noise(kind):
    for seed in range(8):
        ex = make_example(seed, 64, kinds=[kind], split="test")
        perfect = score_edit(ex, ex.after)
        assert perfect["success"] and perfect["psnr"] == 100.0 and perfect["inside_mae"] == 0
        identity = score_edit(ex, ex.before)
        assert not identity["success"] and identity["edit_strength"] == 0
        noise = score_edit(ex, _noise(ex, seed))
        assert not noise["success"] and noise["psnr"] < 15


def test_score_partial_and_off_target_edits():
    ex = make_example(4, 64, kinds=["recolor_object"], split="test")
    # right colour on the object, but the rest of the picture is spoiled
    spoiled = ex.after.copy()
    spoiled[~ex.mask] = 255 - spoiled[~ex.mask]
    s = score_edit(ex, spoiled)
    assert s["kind_ok"] and not s["success"] and s["preservation_mae"] > 12
    # the wrong colour on the object: nothing else changed, still a failure
    wrong = ex.before.copy()
    other = next(c for c in COLORS if c not in (ex.target["color"], ex.scene.get(ex.target["object_id"]).color))
    wrong[ex.mask] = COLORS[other]
    assert not score_edit(ex, wrong)["success"]
    # a PIL output at another size is resized for scoring
    from PIL import Image

    big = Image.fromarray(ex.after).resize((128, 128), Image.Resampling.NEAREST)
    assert score_edit(ex, big)["success"]
    with pytest.raises(BadImage):
        score_edit(ex, np.zeros((64, 64), np.uint8))


def test_add_as_asked_judges_colour_kind_and_region_not_the_unsaid_spot():
    """score_edit's as_asked for add_object: the named shape anywhere in the named region passes it
    (while the target-IoU rule fails it away from the drawn spot); the wrong kind, the wrong region,
    nothing added, or a spoiled rest fail it."""
    from ip2p.shapes.phrasing import PLACES
    from ip2p.shapes.scene import EXTENT, SIZES

    checked = 0
    for seed in range(40):
        ex = make_example(seed, 64, kinds=["add_object"], split="test")
        added = ex.edited_scene.get(ex.target["object_id"])
        x0, y0, x1, y1 = PLACES[ex.target["place"]]
        r = SIZES[added.size] * EXTENT + 0.01
        corner = added.replace(x=max(x0, r), y=max(y0, r))  # a corner of where it may go, not the target's spot
        moved = render(ex.edited_scene.swap(corner), 64).image
        if score_edit(ex, moved)["success"] or not score_edit(ex, ex.after)["as_asked"]:
            continue  # the corner is the drawn spot, or the target itself is covered by another shape
        checked += 1
        assert score_edit(ex, moved)["as_asked"]
        assert not score_edit(ex, ex.before)["as_asked"]
        other = "circle" if added.kind in ("star", "cross", "heart") else "cross"
        assert not score_edit(ex, render(ex.edited_scene.swap(corner.replace(kind=other)), 64).image)["as_asked"]
        away = corner.replace(x=1 - corner.x, y=1 - corner.y) if ex.target["place"] != "in the middle" else None
        if away is not None and not (x0 <= away.x <= x1 and y0 <= away.y <= y1):
            assert not score_edit(ex, render(ex.edited_scene.swap(away), 64).image)["as_asked"]
        spoiled = moved.copy()
        spoiled[~ex.mask] = 255 - spoiled[~ex.mask]
        assert not score_edit(ex, spoiled)["as_asked"]
        assert "as_asked" not in score_edit(make_example(seed, 64, kinds=["remove_object"], split="test"), ex.before)
    assert checked >= 10


def test_counting_scores_count_blobs():
    ex = make_example(5, 64, kinds=["count_add"], split="test")
    color = ex.target["color"]
    assert count_blobs(ex.after, color) == ex.target["counts"][color] > count_blobs(ex.before, color)


def test_no_torch_import():
    code = (
        "import sys, ip2p.shapes, ip2p.shapes.bench, ip2p.shapes.dataset, ip2p.cli.shapes, ip2p.shapes.score;"
        "ip2p.shapes.make_example(0, 64); assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
