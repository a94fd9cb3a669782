"""``ip2p eval``: metrics on hand-built cases, test-set readers (MagicBrush's 2-turn layout, the trainer's
formats), multi-turn chains, resume after a kill, the sweep's JSON and figure, SDEdit on a tiny
text-to-image model, FID with a tiny feature network and the CLI end to end. Every model is tiny,
random (or, for the colour test, trained here in seconds) and built in-process."""

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from ip2p.errors import BadData, BadModel, BadOptions
from ip2p.eval.baselines import IdentityMethod, Ip2pMethod, SdeditMethod
from ip2p.eval.data import Turn, open_eval_set
from ip2p.eval.metrics import DinoScorer, FeatureNet, Scorer, directional, frechet_distance, pixel_distances
from ip2p.eval.run import EvalOptions, evaluate
from ip2p.eval.sweep import parse_sweep
from ip2p.train.data import open_image

ALL = ("clip_text", "clip_direction", "clip_image", "l1", "l2", "clip_i", "dino", "clip_t")


def shape(kind: str, color: str, size: int = 32, background: str = "white") -> Image.Image:
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    box = (size // 5, size // 5, size - size // 5, size - size // 5)
    (draw.ellipse if kind == "circle" else draw.rectangle)(box, fill=color)
    return image


@pytest.fixture(scope="session")
def colour_clip(tmp_path_factory):
    """A tiny CLIP trained for a few seconds to tell red/blue/green circles and squares apart, so that
    the sign of a CLIP score means something; saved to a folder for the CLI."""
    from ip2p.datagen.clipfilter import ClipScorer, preprocess, to_tensor
    from ip2p.datagen.tiny import build_tiny_clip, save_tiny_clip

    pairs = [(shape(k, c), f"a {c} {k}") for k in ("circle", "square") for c in ("red", "blue", "green")]
    model, tokenizer = build_tiny_clip(seed=0)
    pixels = preprocess(to_tensor([p for p, _ in pairs]), 32)
    ids = tokenizer([t for _, t in pairs], padding="max_length", max_length=77, return_tensors="pt")
    optimiser = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(40):
        loss = model(input_ids=ids.input_ids, attention_mask=ids.attention_mask, pixel_values=pixels,
                     return_loss=True).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    scorer = ClipScorer(model.eval(), tokenizer)
    folder = save_tiny_clip(scorer.model, tokenizer, tmp_path_factory.mktemp("clip") / "clip")
    return scorer, folder


@pytest.fixture(scope="session")
def tiny_dino(tmp_path_factory):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=37)
    folder = tmp_path_factory.mktemp("dino") / "dino"
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    return DinoScorer.load(str(folder), device="cpu"), folder


@pytest.fixture
def scorer(colour_clip, tiny_dino):
    return Scorer(ALL, clip=colour_clip[0], clip_i=colour_clip[0], dino=tiny_dino[0])


@pytest.fixture
def magicbrush(tmp_path):
    """MagicBrush's test layout: session 7 has two turns (red circle -> blue circle -> blue square on
    yellow), session 12 one (green square -> red square)."""
    root = tmp_path / "mb"
    images = {
        "7": {"7-input.png": shape("circle", "red"), "7-output1.png": shape("circle", "blue"),
              "7-output2.png": shape("square", "blue", background="yellow")},
        "12": {"12-input.png": shape("square", "green"), "12-output1.png": shape("square", "red")},
    }
    for image_id, files in images.items():
        (root / "images" / image_id).mkdir(parents=True)
        for name, image in files.items():
            image.save(root / "images" / image_id / name)
    sessions = {
        "7": [{"input": "7-input.png", "mask": "7-mask1.png", "instruction": "make the circle blue",
               "output": "7-output1.png"},
              {"input": "7-output1.png", "mask": "7-mask2.png", "instruction": "turn it into a square",
               "output": "7-output2.png"}],
        "12": [{"input": "12-input.png", "mask": "12-mask1.png", "instruction": "make it red",
                "output": "12-output1.png"}],
    }
    captions = {"7": {"7-input.png": "a red circle", "7-output1.png": "a blue circle",
                      "7-output2.png": "a blue square"},
                "12": {"12-input.png": "a green square", "12-output1.png": "a red square"}}
    (root / "edit_sessions.json").write_text(json.dumps(sessions))
    (root / "global_descriptions.json").write_text(json.dumps(captions))
    (root / "local_descriptions.json").write_text(json.dumps({"7": {"7-output2.png": "blue square"}}))
    return root


class Oracle:
    """Returns the turn's target: a perfect method, real pixels, no model."""

    name = family = "oracle"
    sweepable = False

    def __init__(self):
        self.calls = 0

    def edit(self, image, turn, seed, setting):
        self.calls += 1
        return open_image(turn.target)

    def describe(self):
        return {"kind": "oracle"}


# --------------------------------------------------------------------------------------------
# metrics


def test_identical_images_score_one_and_distances_are_magicbrushs(scorer):
    red = shape("circle", "red")
    turn = Turn("a", "a", 1, red, "keep it", red, "a red circle", "a red circle")
    same = scorer.score(red, red, turn, red)
    for name in ("clip_image", "clip_i", "dino"):
        assert same[name] == pytest.approx(1.0, abs=1e-5)
    assert same["l1"] == 0 and same["l2"] == 0 and same["clip_direction"] == 0.0  # nothing changed
    black, white = Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8), (255, 255, 255))
    assert pixel_distances(black, white) == (1.0, 1.0)
    half = Image.new("RGB", (8, 8), (255, 255, 255))
    half.paste((0, 0, 0), (0, 0, 8, 4))
    assert pixel_distances(half, white) == (0.5, 0.5)
    # the output is resized to the target's size first
    assert pixel_distances(white.resize((16, 16)), white) == (0.0, 0.0)
    # a turn without target or captions leaves those metrics empty
    bare = scorer.score(red, red, Turn("b", "b", 1, red, "x"), None)
    assert bare["clip_image"] == pytest.approx(1.0, abs=1e-5) and bare["l1"] is None and bare["clip_text"] is None


def test_directional_formula_on_hand_vectors():
    i0, i1 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    t0, t1 = torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 1.0])
    # image delta (-1, 1, 0), text delta (0, 1, 0): cos = 1 / sqrt(2)
    assert directional(i0, i1, t0, t1) == pytest.approx(2**-0.5)
    assert directional(i1, i0, t0, t1) == pytest.approx(-(2**-0.5))
    assert directional(i0, i0, t0, t1) == 0.0 and directional(i0, i1, t0, t0) == 0.0
    # the same picture encoded twice may differ in the last bits: that is no change, not a direction
    assert directional(i0, i0 + torch.tensor([0.0, 3e-7, -2e-7]), t0, t1) == 0.0


def test_colour_swap_moves_the_scores_the_expected_way(scorer):
    red, blue = shape("circle", "red"), shape("circle", "blue")
    turn = Turn("c", "c", 1, red, "make it blue", blue, "a red circle", "a blue circle")
    right = scorer.score(red, blue, turn, blue)
    assert right["clip_direction"] > 0.3  # the image moved the way the caption moved
    wrong_way = scorer.score(blue, red, Turn("d", "d", 1, blue, "x", None, "a red circle", "a blue circle"), None)
    assert wrong_way["clip_direction"] == pytest.approx(-right["clip_direction"], abs=1e-5)
    unchanged = scorer.score(red, red, turn, blue)
    assert unchanged["clip_direction"] == 0.0 and unchanged["clip_text"] < right["clip_text"]
    assert unchanged["clip_i"] < right["clip_i"] and unchanged["l1"] > right["l1"] == 0
    # another shape, same colours: the direction still points the right way
    square = Turn("e", "e", 1, shape("square", "red"), "x", None, "a red square", "a blue square")
    assert scorer.score(shape("square", "red"), shape("square", "blue"), square, None)["clip_direction"] > 0.3


def test_fid_with_a_tiny_feature_network(tiny_dino):
    features = FeatureNet(tiny_dino[0])
    reds = [shape("circle", c) for c in ("red", "darkred", "crimson", "orangered", "firebrick")]
    blues = [shape("square", c, background="black") for c in ("blue", "navy", "royalblue", "steelblue", "teal")]
    same = frechet_distance(reds, reds, features)
    apart = frechet_distance(reds, blues, features)
    assert abs(same) < 1e-3 * apart and apart > 0
    with pytest.raises(BadOptions, match="at least 2"):
        frechet_distance(reds[:1], blues, features)


# --------------------------------------------------------------------------------------------
# test sets


def test_magicbrush_two_turn_layout(magicbrush):
    data = open_eval_set(str(magicbrush))
    # sessions in numeric id order: 7 before 12
    assert data.format == "magicbrush" and data.multi_turn and [len(s) for s in data.sessions] == [2, 1]
    first, second = data.sessions[0]
    assert second.input == magicbrush / "images" / "7" / "7-output1.png" == first.target
    assert (second.input_caption, second.output_caption, second.local_caption) == \
        ("a blue circle", "a blue square", "blue square")
    assert first.local_caption is None and second.key == "7/2" and second.index == 2
    assert len(open_eval_set(str(magicbrush), limit=1).sessions) == 1
    (magicbrush / "edit_sessions.json").write_text('{"7": [{"input": "7-input.png"}]}')
    with pytest.raises(BadData, match="lacks input/output/instruction"):
        open_eval_set(str(magicbrush))


@pytest.mark.parametrize("fmt", ["ip2p", "jsonl"])
def test_trainer_formats_with_their_captions(tmp_path, fmt):
    from ip2p.shapes.dataset import MakeOptions, make_dataset
    from ip2p.shapes.edits import make_example

    make_dataset(MakeOptions(out=str(tmp_path / fmt), n=3, size=64, format=fmt, split="test", workers=1).check())
    data = open_eval_set(str(tmp_path / fmt))
    assert data.format == fmt and not data.multi_turn and len(data.turns()) == 3
    for turn in data.turns():
        ex = make_example(int(turn.key) if fmt == "jsonl" else _seed_of(turn), 64, split="test")
        assert turn.instruction == ex.instruction
        assert (turn.input_caption, turn.output_caption) == (ex.caption, ex.output_caption)
        assert np.array_equal(np.asarray(open_image(turn.target)), ex.after)
    with pytest.raises(BadData):
        open_eval_set(str(tmp_path / "missing"), format="jsonl")


def _seed_of(turn):
    return int(turn.input.parent.name)


# --------------------------------------------------------------------------------------------
# running, multi-turn and resume


def test_multi_turn_chains_and_identity_floor(magicbrush, scorer, tmp_path):
    data = open_eval_set(str(magicbrush))
    oracle = Oracle()
    report = evaluate(data, [oracle, IdentityMethod()], scorer, EvalOptions(out=str(tmp_path / "r"), metrics=ALL))
    tables = report["tables"]
    assert list(tables) == ["all", "final"]
    perfect = next(r for r in tables["all"] if r["method"] == "oracle")
    assert perfect["n"] == 3 and perfect["l1"] == 0 and perfect["clip_i"] == pytest.approx(1, abs=1e-4)
    # the final chain reuses each session's first turn: the oracle edited 3 + 1 times, not 3 + 3
    assert oracle.calls == 4
    identity_all = next(r for r in tables["all"] if r["method"] == "identity")
    identity_final = next(r for r in tables["final"] if r["method"] == "identity")
    assert identity_all["clip_image"] == pytest.approx(1, abs=1e-4) and identity_final["n"] == 2
    # all turns: session 7's turn 2 starts from the ground-truth output 1; final turn: from the input
    root = magicbrush / "images"
    out1, out2 = Image.open(root / "7" / "7-output1.png"), Image.open(root / "7" / "7-output2.png")
    l1_all = np.mean([pixel_distances(Image.open(root / "7" / "7-input.png"), out1)[0],
                      pixel_distances(out1, out2)[0],
                      pixel_distances(Image.open(root / "12" / "12-input.png"),
                                      Image.open(root / "12" / "12-output1.png"))[0]])
    assert identity_all["l1"] == pytest.approx(l1_all, abs=1e-4)
    l1_final = np.mean([pixel_distances(Image.open(root / "7" / "7-input.png"), out2)[0],
                        pixel_distances(Image.open(root / "12" / "12-input.png"),
                                        Image.open(root / "12" / "12-output1.png"))[0]])
    assert identity_final["l1"] == pytest.approx(l1_final, abs=1e-4)
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Final turn" in md and "| oracle | – | 3 |" in md and "s / edit" in md


def test_resume_after_a_kill_edits_nothing_twice(magicbrush, scorer, tmp_path):
    data = open_eval_set(str(magicbrush))
    options = lambda: EvalOptions(out=str(tmp_path / "r"), metrics=("l1", "clip_i"))  # noqa: E731

    def kill_after(n):
        def callback(done, total):
            if done == n:
                raise KeyboardInterrupt
        return callback

    first = Oracle()
    with pytest.raises(KeyboardInterrupt):
        evaluate(data, [first], scorer, options(), callback=kill_after(2))
    rows = (tmp_path / "r" / "rows.jsonl").read_text().splitlines()
    assert len(rows) == 2 and first.calls == 2
    with (tmp_path / "r" / "rows.jsonl").open("a") as handle:
        handle.write('{"method": "oracle", "setting_la')  # a write a kill cut short
    again, seen = Oracle(), []
    report = evaluate(data, [again], scorer, options(), callback=lambda d, t: seen.append((d, t)))
    assert again.calls == 2 and seen[-1] == (6, 6)  # 3 all-turn + 3 final-turn edits, 2 were done
    lines = (tmp_path / "r" / "rows.jsonl").read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(line) for line in lines)
    fresh = evaluate(data, [Oracle()], scorer, EvalOptions(out=str(tmp_path / "fresh"), metrics=("l1", "clip_i")))
    strip = lambda t: [{k: v for k, v in r.items() if k != "seconds_per_edit"} for r in t]  # noqa: E731
    assert strip(report["tables"]["all"]) == strip(fresh["tables"]["all"])
    with pytest.raises(BadOptions, match="another metrics"):
        evaluate(data, [Oracle()], scorer, EvalOptions(out=str(tmp_path / "r"), metrics=("l1",)))


# --------------------------------------------------------------------------------------------
# sweep and baselines


def test_parse_sweep():
    assert parse_sweep("image_guidance_scale=1.0:2.2:0.2").values == (1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2)
    assert parse_sweep("s_T=5,7.5").name == "guidance_scale" and parse_sweep("steps=2,4").values == (2, 4)
    for bad in ("image_guidance_scale", "foo=1:2:1", "s_I=2:1:0.1", "steps=1.5", "s_I=a,b"):
        with pytest.raises(BadOptions, match="--sweep"):
            parse_sweep(bad)


def test_sweep_json_and_figure(magicbrush, scorer, tiny_editor, tmp_path):
    data = open_eval_set(str(magicbrush), limit=1)
    ip2p = Ip2pMethod(tiny_editor, {"steps": 2})
    options = EvalOptions(out=str(tmp_path / "s"), metrics=("clip_direction", "clip_image", "l1"), chains=("all",),
                          sweep=parse_sweep("image_guidance_scale=1.0:2.0:0.5"))
    report = evaluate(data, [ip2p, IdentityMethod()], scorer, options)
    sweep = json.loads((tmp_path / "s" / "sweep.json").read_text())
    points = sweep["points"]
    assert sweep["sweep"] == {"name": "image_guidance_scale", "values": [1.0, 1.5, 2.0]}
    assert [p["annotation"] for p in points] == ["s_I=1", "s_I=1.5", "s_I=2", ""]
    assert all(p["clip_direction"] is not None and p["clip_image"] is not None for p in points)
    assert len({p["clip_image"] for p in points[:3]}) == 3  # s_I changes the output
    assert [r["setting"] for r in report["tables"]["all"][:3]] == [{"image_guidance_scale": v} for v in (1, 1.5, 2)]
    figure = Image.open(tmp_path / "s" / "sweep.png")
    assert figure.format == "PNG" and figure.size == (768, 576)
    assert len(np.unique(np.asarray(figure.convert("L")))) > 10  # axes, points and text, not blank
    assert "s_I=1.5" in (tmp_path / "s" / "sweep.md").read_text()


@pytest.fixture(scope="session")
def tiny_t2i(tmp_path_factory):
    from ip2p.components import save_diffusers
    from ip2p.tiny import build_tiny_components

    return save_diffusers(build_tiny_components(seed=3, in_channels=4), tmp_path_factory.mktemp("t2i") / "t2i")


def test_sdedit_end_to_end_on_a_tiny_text_to_image_model(tiny_t2i, tiny_model_dir):
    method = SdeditMethod.load(str(tiny_t2i), device="cpu", strength=0.5, steps=4)
    source = shape("circle", "red")
    turn = Turn("t", "t", 1, source, "make it blue", None, "a red circle", "a blue circle")
    a, b = method.edit(source, turn, 7, {}), method.edit(source, turn, 7, {})
    assert a.size == source.size and np.array_equal(np.asarray(a), np.asarray(b))  # same seed, same pixels
    assert not np.array_equal(np.asarray(a), np.asarray(source))
    assert method.resolution == 32  # the tiny model's native size, from its configs
    strong = SdeditMethod(method.pipeline, method.model_name, strength=1.0, steps=4, resolution=32)
    assert not np.array_equal(np.asarray(strong.edit(source, turn, 7, {})), np.asarray(a))
    assert method.describe()["strength"] == 0.5 and "strength 0.5" in method.name
    with pytest.raises(BadData, match="output caption"):
        method.edit(source, Turn("u", "u", 1, source, "x"), 7, {})
    with pytest.raises(BadModel, match="text-to-image"):
        SdeditMethod.load(str(tiny_model_dir), device="cpu")
    with pytest.raises(BadOptions, match="strength"):
        SdeditMethod(method.pipeline, "m", strength=0.0)


# --------------------------------------------------------------------------------------------
# command line


def test_cli_eval_end_to_end(magicbrush, colour_clip, tiny_dino, tiny_model_dir, tiny_t2i, tmp_path, capsys):
    from ip2p.cli import main

    out = tmp_path / "cli"
    argv = ["eval", "--data", str(magicbrush), "--model", str(tiny_model_dir), "--steps", "2", "--out", str(out),
            "--clip-model", str(colour_clip[1]), "--clip-i-model", str(colour_clip[1]),
            "--dino-model", str(tiny_dino[1]), "--metrics", ",".join(ALL) + ",fid", "--fid-features", "dino",
            "--sdedit", str(tiny_t2i), "--sdedit-strength", "0.5,0.8", "--device", "cpu"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "## All turns" in printed and "SDEdit" in printed and "| identity |" in printed
    report = json.loads((out / "report.json").read_text())
    methods = [r["method"] for r in report["tables"]["final"]]
    assert len(methods) == 4 and methods[-1] == "identity"
    assert all(r["fid"] is not None and r["dino"] is not None for r in report["tables"]["all"])
    assert len((out / "rows.jsonl").read_text().splitlines()) == 4 * 6
    # a rerun resumes: nothing left to edit, same table
    assert main(argv) == 0 and json.loads((out / "report.json").read_text())["tables"] == report["tables"]
    capsys.readouterr()
    for bad, message in ((["--metrics", "nope"], "unknown metric 'nope'"), (["--sweep", "x=1"], "--sweep"),
                         (["--text-cfg", "-1"], "--text-cfg"), (["--turns", "some"], "--turns")):
        assert main(["eval", "--data", str(magicbrush), "--out", str(tmp_path / "bad"), *bad]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
