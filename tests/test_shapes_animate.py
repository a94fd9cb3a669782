"""The animated shapes world: deterministic clips whose every frame has an exact target."""

from __future__ import annotations

import numpy as np
import pytest

from ip2p.errors import BadData, BadOptions
from ip2p.shapes.animate import make_clip, read_clip, score_clip, write_clip
from ip2p.shapes.phrasing import EDIT_KINDS


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_every_frame_has_an_exact_target_and_the_objects_move(kind):
    clip = make_clip(3, frames=8, size=64, kinds=[kind])
    assert clip.kind == kind and len(clip.frames) == 8
    assert any(p.kind != "still" for p in clip.paths.values())
    perfect, untouched = score_clip(clip, clip.targets()), score_clip(clip, clip.inputs())
    assert perfect["success"] == 1.0 and untouched["success"] == 0.0
    assert perfect["flicker_input"] > 0 and perfect["flicker_ratio"] == pytest.approx(perfect["target_ratio"])
    for frame in clip.frames:
        assert frame.instruction == clip.instruction
        assert np.array_equal(frame.mask, np.any(frame.before != frame.after, axis=-1))


def test_clips_are_deterministic_and_follow_their_paths():
    a, b = make_clip(5, frames=6), make_clip(5, frames=6)
    assert a.instruction == b.instruction
    assert all(np.array_equal(x.before, y.before) and np.array_equal(x.after, y.after)
               for x, y in zip(a.frames, b.frames, strict=True))
    assert make_clip(5, frames=6, kinds=[a.kind]).instruction == a.instruction  # the kind alone fixes the rest
    start = {o.id: o for o in a.frames[0].scene.objects}
    for t, frame in enumerate(a.frames):  # frame t: every object moved by its path at u = t / (frames - 1)
        for shape in frame.scene.objects:
            path = a.paths[shape.id]
            (dx, dy), (x0, y0) = path.offset(t / 5), path.offset(0.0)
            assert shape.x == pytest.approx(start[shape.id].x + dx - x0, abs=2e-4)
            assert shape.y == pytest.approx(start[shape.id].y + dy - y0, abs=2e-4)


def test_clip_folders_round_trip(tmp_path):
    clip = make_clip(2, frames=5, kinds=["darken"])
    folder = write_clip(clip, tmp_path / "clip")
    assert sorted(p.name for p in (folder / "target").iterdir()) == [f"{i:06d}.png" for i in range(5)]
    again = read_clip(folder)
    assert again.instruction == clip.instruction and len(again.frames) == 5
    (folder / "clip.json").write_text("{}")
    with pytest.raises(BadData, match="not a shapes clip folder"):
        read_clip(folder)


def test_bad_clip_arguments():
    with pytest.raises(BadOptions, match="--frames"):
        make_clip(0, frames=1)
    with pytest.raises(BadOptions, match="unknown edit kind"):
        make_clip(0, kinds=["explode"])
