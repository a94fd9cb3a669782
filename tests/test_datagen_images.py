"""The image stage: paired sampling with Prompt-to-Prompt, CLIP filter, store, resume, export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ip2p.components import save_diffusers
from ip2p.datagen import p2p
from ip2p.datagen.clipfilter import ClipScorer, FilterOptions, passes, preprocess, select, to_tensor
from ip2p.datagen.images import (
    ImageOptions,
    PairRenderer,
    PairSpec,
    encode_text,
    load_t2i,
    pair_specs,
    sample_pairs,
)
from ip2p.datagen.pipeline import run_images, shard
from ip2p.datagen.store import PairStore, export_parquet
from ip2p.datagen.tiny import build_tiny_clip, save_tiny_clip
from ip2p.errors import BadData, BadModel, BadOptions
from ip2p.tiny import build_tiny_components

torch.set_num_threads(1)  # tiny models: one thread is faster than two on a shared CPU

PROMPTS = [
    {"caption": "a red circle", "edit": "make it blue", "output": "a blue circle"},
    {"input": "a cat on a white background", "edit": "turn the cat into a dog", "output": "a dog on a white background"},
    {"caption": "a green square", "edit": "make it a star", "output": "a green star"},
]
ACCEPT_ALL = FilterOptions(clip_threshold=-1, dir_threshold=-1, image_threshold=-1, keep=2)


@pytest.fixture(scope="module")
def t2i():
    return build_tiny_components(seed=0, in_channels=4)


@pytest.fixture(scope="module")
def scorer():
    model, tokenizer = build_tiny_clip(seed=0)
    return ClipScorer(model, tokenizer)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, t2i, scorer):
    """The tiny models on disk, as the CLI and worker processes load them."""
    root = tmp_path_factory.mktemp("models")
    save_diffusers(t2i, root / "sd")
    save_tiny_clip(scorer.model, scorer.tokenizer, root / "clip")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return root


def _pair(t2i, source, edited, p, share="self", seed=7, steps=4):
    emb, _ = encode_text(t2i, [source, edited, ""])
    return sample_pairs(t2i, emb[0:1], emb[1:2], emb[2:3], [PairSpec(seed, p, 7.5)], steps=steps, resolution=32,
                        share=share)


# ---------------------------------------------------------------------------------------------
# sampling and Prompt-to-Prompt


def test_p0_gives_independent_images(t2i):
    src, edit = _pair(t2i, "a red circle", "a blue square", p=0.0)
    assert (src - edit).abs().mean() > 1e-3  # different prompts, different images
    # with no sharing the edited branch is exactly the edited prompt rendered on its own
    alone, _ = _pair(t2i, "a blue square", "a blue square", p=0.0)
    torch.testing.assert_close(edit, alone, atol=1e-5, rtol=0)


def test_same_prompt_twice_gives_identical_images(t2i):
    src, edit = _pair(t2i, "a red circle", "a red circle", p=0.5, share="both")
    torch.testing.assert_close(src, edit, atol=1e-6, rtol=0)
    assert src.std() > 0.01  # a real image, not a constant


def test_sharing_changes_the_edited_image(t2i):
    _, edit0 = _pair(t2i, "a red circle", "a blue square", p=0.0)
    src1, edit1 = _pair(t2i, "a red circle", "a blue square", p=1.0)
    src0, _ = _pair(t2i, "a red circle", "a blue square", p=0.0)
    torch.testing.assert_close(src0, src1, atol=2e-5, rtol=0)  # the source branch never changes
    assert (edit0 - edit1).abs().max() > 1e-4


@pytest.fixture(scope="module")
def keys_only_text(t2i):
    """A UNet whose cross-attention reads the text's dims 0-15 only through keys (the maps) and its
    dims 16-31 only through values, plus two embeddings that differ only in dims 0-15: the two
    prompts then differ *only* in their cross-attention maps."""
    import copy

    model = copy.deepcopy(t2i)
    for name, module in model.unet.named_modules():
        if name.endswith("attn2"):
            module.to_k.weight.data[:, 16:] = 0
            module.to_v.weight.data[:, :16] = 0
    gen = torch.Generator().manual_seed(3)
    source = torch.randn(1, 77, 32, generator=gen)
    edited = source.clone()
    edited[..., :16] = torch.randn(1, 77, 16, generator=gen)
    uncond = torch.randn(1, 77, 32, generator=gen)
    return model, source, edited, uncond


@pytest.mark.parametrize(("share", "p", "equal"), [
    ("cross", 1.0, True), ("both", 1.0, True),   # every map the prompts differ in is injected
    ("cross", 0.0, False), ("cross", 0.5, False),  # not injected, or only for the first half
    ("self", 1.0, False), ("none", 1.0, False),   # self maps alone cannot hide different cross maps
])
def test_injected_maps_fully_determine_the_edit(keys_only_text, share, p, equal):
    model, source, edited, uncond = keys_only_text
    src, edit = sample_pairs(model, source, edited, uncond, [PairSpec(11, p, 9.0)], steps=4, resolution=32,
                             share=share)
    gap = (src - edit).abs().max().item()
    assert (gap < 1e-5) if equal else (gap > 1e-4), gap


def test_processor_uses_source_maps_with_edited_values(t2i):
    from diffusers.models.attention_processor import AttnProcessor

    attn = dict(t2i.unet.named_modules())["down_blocks.0.attentions.0.transformer_blocks.0.attn1"]
    pairs, tokens, dim = 2, 9, attn.to_q.in_features
    hidden = torch.randn(4 * pairs, tokens, dim, generator=torch.Generator().manual_seed(0))
    state = p2p.ShareState(mode="self", active=torch.tensor([True, False]))
    with torch.no_grad():
        out = p2p.SharedAttnProcessor(state)(attn, hidden)
        ref = AttnProcessor()(attn, hidden)

        def manual(maps_from, values_from):
            q = attn.head_to_batch_dim(attn.to_q(hidden[maps_from:maps_from + 1]))
            k = attn.head_to_batch_dim(attn.to_k(hidden[maps_from:maps_from + 1]))
            v = attn.head_to_batch_dim(attn.to_v(hidden[values_from:values_from + 1]))
            probs = attn.get_attention_scores(q, k)
            return attn.to_out[0](attn.batch_to_head_dim(probs @ v))[0]

    # rows: [src c (0,1), edit c (2,3), src u (4,5), edit u (6,7)]; pair 0 shares, pair 1 does not
    torch.testing.assert_close(out[2], manual(0, 2), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[6], manual(4, 6), atol=1e-5, rtol=1e-4)
    assert (out[2] - ref[2]).abs().max() > 1e-4
    for row in (0, 1, 3, 4, 5, 7):
        torch.testing.assert_close(out[row], ref[row], atol=1e-5, rtol=1e-4)


def test_align_tokens():
    assert p2p.align_tokens([0, 5, 6, 2], [0, 7, 6, 2], 6) == [0, 1, 2, 3, 4, 5]  # word swap
    mapping = p2p.align_tokens([0, 5, 6, 2], [0, 9, 5, 6, 2], 7)  # "a X" -> "a big X"
    assert mapping[:5] == [0, -1, 1, 2, 3]
    assert mapping[5:] == [4, 5]  # padding aligned end to end


def test_pair_specs_are_deterministic_and_in_range():
    options = ImageOptions(samples=20, seed=3)
    specs = pair_specs(5, options)
    assert specs == pair_specs(5, options)
    assert len({s.seed for s in specs}) == 20
    assert all(0.1 <= s.p <= 0.9 and 7.5 <= s.cfg <= 15 for s in specs)
    assert {s.seed for s in specs}.isdisjoint(s.seed for s in pair_specs(6, options))


@pytest.mark.parametrize("kwargs", [{"resolution": 30}, {"p_min": 0.9, "p_max": 0.1}, {"share": "all"},
                                    {"samples": 0}])
def test_bad_image_options(kwargs):
    with pytest.raises(BadOptions):
        ImageOptions(**kwargs).check()


def test_load_t2i_reads_components_and_rejects_8_channels(saved, tmp_path):
    components = load_t2i(saved / "sd", device="cpu")
    assert components.unet.config.in_channels == 4
    save_diffusers(build_tiny_components(in_channels=8), tmp_path / "ip2p")
    with pytest.raises(BadModel, match="4-channel"):
        load_t2i(tmp_path / "ip2p", device="cpu")


# ---------------------------------------------------------------------------------------------
# CLIP filter


def test_preprocess_matches_clip_image_processor():
    from transformers import CLIPImageProcessorPil

    rng = np.random.default_rng(0)
    base = rng.random((12, 20, 3))
    image = Image.fromarray((np.kron(base, np.ones((4, 4, 1))) * 255).astype(np.uint8))  # 48x80, smooth-ish
    ours = preprocess(to_tensor([image]), 32)
    ref = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})(
        images=[image], return_tensors="pt")["pixel_values"]
    assert ours.shape == ref.shape == (1, 3, 32, 32)
    assert (ours - ref).abs().mean() < 0.03


def test_filter_thresholds_and_ranking():
    options = FilterOptions()
    good = {"seed": 1, "clip_sim_0": 0.25, "clip_sim_1": 0.3, "clip_sim_dir": 0.5, "clip_sim_image": 0.8}
    assert passes(good, options)
    for key, bad in (("clip_sim_0", 0.19), ("clip_sim_1", 0.1), ("clip_sim_dir", 0.19), ("clip_sim_image", 0.69)):
        assert not passes({**good, key: bad}, options), key
    many = [{**good, "seed": s, "clip_sim_dir": d} for s, d in enumerate([0.3, 0.9, 0.1, 0.5, 0.7, 0.6])]
    assert [c["seed"] for c in select(many, options)] == [1, 4, 5, 3]  # 0.1 fails, best 4 by direction
    with pytest.raises(BadOptions):
        FilterOptions(image_threshold=1.5).check()


def test_clip_scores_on_real_images(scorer):
    from transformers import CLIPImageProcessorPil

    rng = np.random.default_rng(1)
    a = Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8))
    b = Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8))
    same = scorer.score([a], [a], "a red circle", "a blue circle")[0]
    assert same["clip_sim_image"] == pytest.approx(1.0, abs=1e-5)
    assert same["clip_sim_dir"] == pytest.approx(0.0, abs=1e-6)  # nothing changed: no direction
    assert not passes(same, FilterOptions(clip_threshold=-1, image_threshold=-1))  # rejected on direction
    pair = scorer.score([a], [b], "a red circle", "a blue circle")[0]
    swapped = scorer.score([b], [a], "a blue circle", "a red circle")[0]
    assert pair["clip_sim_dir"] == pytest.approx(swapped["clip_sim_dir"], abs=1e-5)
    assert pair["clip_sim_image"] < 1 - 1e-4
    # against features computed through transformers' own preprocessing
    proc = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    with torch.no_grad():
        feats = scorer.model.get_image_features(**proc(images=[a, b], return_tensors="pt")).pooler_output
        feats = torch.nn.functional.normalize(feats, dim=-1)
    assert pair["clip_sim_image"] == pytest.approx(float(feats[0] @ feats[1]), abs=0.02)
    threshold = pair["clip_sim_image"]
    assert passes(pair, FilterOptions(-1, -1, threshold - 1e-6)) == (pair["clip_sim_dir"] >= -1)
    assert not passes(pair, FilterOptions(-1, -1, threshold + 1e-3))


# ---------------------------------------------------------------------------------------------
# the store, end to end


def _dataset(root: Path) -> dict:
    out = {}
    for name, seeds in json.loads((root / "seeds.json").read_text()):
        for seed in seeds:
            out[(name, seed)] = [np.asarray(Image.open(root / name / f"{seed}_{k}.jpg"), dtype=np.int16) for k in (0, 1)]
    return out


def test_run_writes_the_original_layout(t2i, scorer, tmp_path):
    options = ImageOptions(samples=3, steps=3, resolution=32, batch_size=2)
    prompts = [dict(p, caption=p.get("caption", p.get("input"))) for p in PROMPTS]
    summary = run_images(prompts, tmp_path, PairRenderer(t2i, options), scorer, ACCEPT_ALL)
    assert summary.pairs_generated == 9 and summary.pairs_kept == 6
    seeds = json.loads((tmp_path / "seeds.json").read_text())
    assert [name for name, _ in seeds] == ["0000000", "0000001", "0000002"]
    folder = tmp_path / "0000001"
    assert json.loads((folder / "prompt.json").read_text())["edit"] == "turn the cat into a dog"
    meta = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert [m["seed"] for m in meta] == seeds[1][1]
    assert meta[0]["clip_sim_dir"] >= meta[1]["clip_sim_dir"]
    for m in meta:
        assert Image.open(folder / f"{m['seed']}_0.jpg").size == (32, 32)
        assert Image.open(folder / f"{m['seed']}_1.jpg").size == (32, 32)
    assert not (folder / "candidates.jsonl").exists() and not (folder / ".candidates").exists()
    # a second run finds everything done and generates nothing
    again = run_images(prompts, tmp_path, PairRenderer(t2i, options), scorer, ACCEPT_ALL)
    assert again.skipped == 3 and again.pairs_generated == 0

    # strict thresholds keep nothing, and a prompt with no pairs is left out of seeds.json
    strict = run_images(prompts[:1], tmp_path / "strict", PairRenderer(t2i, options), scorer,
                        FilterOptions(clip_threshold=0.99))
    assert strict.pairs_kept == 0
    assert json.loads((tmp_path / "strict" / "seeds.json").read_text()) == []


def test_shards_cover_all_prompts_once():
    parts = [shard(10, 3, k) for k in range(3)]
    assert sorted(sum(parts, [])) == list(range(10))
    with pytest.raises(BadOptions):
        shard(10, 3, 3)


def test_export_parquet_reads_back_with_datasets(t2i, scorer, tmp_path):
    import datasets

    options = ImageOptions(samples=2, steps=2, resolution=32, batch_size=2)
    prompts = [dict(p, caption=p.get("caption", p.get("input"))) for p in PROMPTS[:2]]
    run_images(prompts, tmp_path / "d", PairRenderer(t2i, options), scorer, ACCEPT_ALL)
    assert export_parquet(tmp_path / "d", tmp_path / "pairs.parquet") == 4
    data = datasets.load_dataset("parquet", data_files=str(tmp_path / "pairs.parquet"), split="train")
    assert len(data) == 4
    row = data[0]
    assert row["edit_prompt"] == "make it blue" and row["original_prompt"] == "a red circle"
    on_disk = Image.open(tmp_path / "d" / "0000000" / f"{row['seed']}_1.jpg")
    assert np.array_equal(np.asarray(row["edited_image"].convert("RGB")), np.asarray(on_disk.convert("RGB")))


def test_store_cuts_a_torn_line_and_refuses_another_prompts_folder(tmp_path):
    store = PairStore(tmp_path)
    store.begin(0, {"caption": "a", "edit": "b", "output": "c"})
    store.add_candidate(0, {"seed": 1, "clip_sim_dir": 0.1})
    with open(tmp_path / "0000000" / "candidates.jsonl", "ab") as fh:
        fh.write(b'{"seed": 2, "clip')  # a write cut by SIGKILL
    assert [r["seed"] for r in store.candidates(0)] == [1]
    store.add_candidate(0, {"seed": 3, "clip_sim_dir": 0.1})
    assert [r["seed"] for r in store.candidates(0)] == [1, 3]
    with pytest.raises(BadData, match="another prompt"):
        store.begin(0, {"caption": "x", "edit": "b", "output": "y"})


KILL_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    torch.set_num_threads(1)
    from ip2p.datagen.clipfilter import ClipScorer, FilterOptions
    from ip2p.datagen.images import ImageOptions, PairRenderer, load_t2i
    from ip2p.datagen.pipeline import run_images
    from ip2p.datagen.text import read_prompts
    models, out = sys.argv[1], sys.argv[2]
    def progress(event, info):
        print(event, info["index"], flush=True)
        time.sleep(0.3)  # pace the run so the parent's SIGKILL lands right after a recorded pair
    renderer = PairRenderer(load_t2i(models + "/sd", device="cpu"),
                            ImageOptions(samples=4, steps=2, resolution=32, batch_size=1))
    run_images(read_prompts(models + "/prompts.jsonl"), out, renderer, ClipScorer.load(models + "/clip", device="cpu"),
               FilterOptions(-1, -1, -1, keep=2), progress=progress)
    print("finished", flush=True)
""")


def test_sigkilled_run_resumes_without_loss_or_duplicates(saved, tmp_path):
    script = tmp_path / "gen.py"
    script.write_text(KILL_SCRIPT)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")

    def run(out, kill_after=None):
        proc = subprocess.Popen([sys.executable, str(script), str(saved), str(out)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=env)
        pairs = 0
        for line in proc.stdout:
            pairs += line.startswith("pair")
            if kill_after is not None and pairs >= kill_after:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=120)
        return proc.returncode

    out = tmp_path / "killed"
    assert run(out, kill_after=6) == -signal.SIGKILL  # mid prompt 1 (4 pairs per prompt)
    store = PairStore(out)
    assert not (out / "seeds.json").exists()
    recorded = [r["seed"] for i in range(3) if not store.is_done(i) for r in store.candidates(i)]
    finished = {int(n): json.loads((out / n / "done.json").read_text())["generated"] for n, _ in store.done_prompts()}
    assert list(finished) == [0] and finished[0] == 4
    assert len(recorded) == len(set(recorded)) == 2  # killed in the middle of prompt 1

    from ip2p.datagen.clipfilter import ClipScorer
    from ip2p.datagen.text import read_prompts

    torch.manual_seed(0)
    renderer = PairRenderer(load_t2i(saved / "sd", device="cpu"), ImageOptions(samples=4, steps=2, resolution=32,
                                                                                batch_size=1))
    summary = run_images(read_prompts(saved / "prompts.jsonl"), out, renderer, ClipScorer.load(saved / "clip", "cpu"),
                         FilterOptions(-1, -1, -1, keep=2))
    assert summary.skipped == len(finished)
    assert summary.pairs_generated == 12 - 4 * len(finished) - len(recorded)  # nothing made twice
    for name, _ in store.done_prompts():
        assert json.loads((out / name / "done.json").read_text())["generated"] == 4
    run_images(read_prompts(saved / "prompts.jsonl"), tmp_path / "ref", renderer, ClipScorer.load(saved / "clip", "cpu"),
               FilterOptions(-1, -1, -1, keep=2))  # the same data set, made without interruption
    ref, got = _dataset(tmp_path / "ref"), _dataset(out)
    assert ref.keys() == got.keys() and len(ref) == 6
    for key in ref:
        for a, b in zip(ref[key], got[key], strict=True):
            assert np.abs(a - b).max() <= 2  # same pixels (JPEG of identical renders)


# ---------------------------------------------------------------------------------------------
# the command line


def _cli(argv):
    from ip2p.cli import Parser, datagen

    parser = Parser(prog="ip2p")
    datagen.register(parser.add_subparsers(dest="command", parser_class=Parser))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_images_shards_then_export(saved, tmp_path):
    out = tmp_path / "data"
    common = ["datagen", "images", "--prompts", str(saved / "prompts.jsonl"), "--model", str(saved / "sd"),
              "--clip", str(saved / "clip"), "--out", str(out), "--samples", "2", "--keep", "1", "--steps", "2",
              "--resolution", "32", "--clip-threshold", "-1", "--dir-threshold", "-1", "--image-threshold", "-1",
              "--device", "cpu", "--partitions", "2"]
    assert _cli(common + ["--partition", "1"]) == 0
    assert [n for n, _ in json.loads((out / "seeds.json").read_text())] == ["0000001"]
    assert _cli(common + ["--partition", "0"]) == 0
    assert [n for n, _ in json.loads((out / "seeds.json").read_text())] == ["0000000", "0000001", "0000002"]
    assert _cli(["datagen", "export", "--dir", str(out), "--out", str(tmp_path / "x.parquet")]) == 0
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "x.parquet").num_rows == 3


def test_cli_images_bad_model_is_one_line_error(saved, tmp_path):
    with pytest.raises(BadModel):
        _cli(["datagen", "images", "--prompts", str(saved / "prompts.jsonl"), "--model", str(tmp_path),
              "--clip", str(saved / "clip"), "--out", str(tmp_path / "o"), "--device", "cpu"])
