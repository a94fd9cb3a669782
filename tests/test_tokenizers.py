"""A model keeps its own tokenizer: loading, editing, the image stage and train -> export.

The model here has a word-level tokenizer (``PreTrainedTokenizerFast`` over a tokenizers WordLevel
model), not CLIP's BPE: read as a ``CLIPTokenizer`` it turns nearly every word into <unk>.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ip2p.components import save_diffusers
from ip2p.errors import BadModel
from ip2p.models import load_folder
from ip2p.tiny import TINY_WORDS, build_tiny_components, gradient_image

torch.set_num_threads(1)  # the CPU is shared: oversubscribed OpenMP threads make tiny steps slower

SENTENCE = "make the circle blue"
SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")


def word_level_tokenizer(max_length: int = 77):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + tuple(sorted(set(TINY_WORDS.split()))))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=max_length)


def word_level_components(in_channels: int = 8):
    components = build_tiny_components(seed=4, in_channels=in_channels)
    components.tokenizer = word_level_tokenizer(components.text_encoder.config.max_position_embeddings)
    return components


def ids(tokenizer, text: str = SENTENCE) -> list[int]:
    return tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids


@pytest.fixture(scope="module")
def word_model(tmp_path_factory):
    return save_diffusers(word_level_components(), tmp_path_factory.mktemp("word") / "m")


def test_the_model_keeps_its_own_tokenizer(word_model):
    from transformers import AutoTokenizer

    own = AutoTokenizer.from_pretrained(word_model / "tokenizer")
    expected = ids(word_level_tokenizer())
    assert ids(own) == expected
    unk = own.convert_tokens_to_ids("<unk>")
    assert expected[:6] == own.convert_tokens_to_ids(["<s>", "make", "the", "circle", "blue", "</s>"])
    index = json.loads((word_model / "model_index.json").read_text())
    assert index["tokenizer"] == ["transformers", type(word_level_tokenizer()).__name__]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert not (word_model / "tokenizer" / "merges.txt").exists()  # a word-level model has no merges

    loaded = load_folder(word_model).tokenizer
    assert type(loaded).__name__ == index["tokenizer"][1]
    assert ids(loaded) == expected and unk not in ids(loaded)[:6]


def test_edit_matches_stock_diffusers(word_model):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from ip2p.editor import Editor
    from ip2p.models import load_components

    picture = gradient_image(32, 32, seed=2)
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(word_model, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    assert ids(pipe.tokenizer) == ids(word_level_tokenizer())
    stock = pipe(SENTENCE, image=picture, num_inference_steps=3, generator=[torch.Generator().manual_seed(9)]).images[0]
    ours = Editor(load_components(str(word_model), device="cpu")).edit(picture, SENTENCE, steps=3, seed=9).image
    diff = np.abs(np.asarray(stock, np.int16) - np.asarray(ours, np.int16)).max()
    assert diff <= 1


def test_index_without_a_tokenizer_class_and_a_broken_tokenizer(word_model, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(word_model, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["tokenizer"] = ["transformers", "NoSuchTokenizer"]  # unknown here: AutoTokenizer reads its config
    del index["text_encoder"]
    (folder / "model_index.json").write_text(json.dumps(index))
    assert ids(load_folder(folder).tokenizer) == ids(word_level_tokenizer())

    (folder / "tokenizer" / "tokenizer.json").write_text("{}")
    with pytest.raises(BadModel, match=r"could not load tokenizer/") as caught:
        load_folder(folder)
    assert "\n" not in str(caught.value)


def test_image_stage_keeps_the_tokenizer(tmp_path):
    from ip2p.datagen.images import load_t2i

    folder = save_diffusers(word_level_components(in_channels=4), tmp_path / "sd")
    components = load_t2i(str(folder), device="cpu")
    assert ids(components.tokenizer) == ids(word_level_tokenizer())
    assert components.vae.dtype == torch.float32 and components.unet.config.in_channels == 4


def test_train_and_export_keep_the_tokenizer(word_model, tmp_path):
    from transformers import AutoTokenizer

    from ip2p.train import TrainConfig, train

    data = tmp_path / "d"
    (data / "images").mkdir(parents=True)
    rows = []
    for i in range(2):
        gradient_image(16, 16, seed=i).save(data / "images" / f"{i}_in.png")
        gradient_image(16, 16, seed=10 + i).save(data / "images" / f"{i}_out.png")
        rows.append({"input_image": f"images/{i}_in.png", "edit_prompt": "make the square red",
                     "edited_image": f"images/{i}_out.png"})
    (data / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainConfig.from_mapping({
        "model": {"start": "ip2p", "base": str(word_model)},
        "data": {"path": str(data), "resolution": 16, "validation_count": 0},
        "optim": {"lr": 1e-3, "batch_size": 2},
        "run": {"output_dir": str(tmp_path / "run"), "max_steps": 1, "checkpoint_every": 0, "log_every": 1,
                "device": "cpu", "tensorboard": False, "seed": 1},
    })
    model = train(cfg, export=True).model_dir
    index = json.loads((model / "model_index.json").read_text())
    assert index["tokenizer"] == ["transformers", type(word_level_tokenizer()).__name__]
    sentence = "make the square red"
    expected = ids(word_level_tokenizer(), sentence)
    assert ids(AutoTokenizer.from_pretrained(model / "tokenizer"), sentence) == expected
    assert ids(load_folder(model).tokenizer, sentence) == expected


def test_a_single_file_refuses_a_word_level_tokenizer_in_one_line(tmp_path):
    from ip2p.convert import save_single_file

    with pytest.raises(BadModel, match="only a CLIP \\(BPE\\) tokenizer") as caught:
        save_single_file(word_level_components(), tmp_path / "m.safetensors")
    assert "\n" not in str(caught.value) and not (tmp_path / "m.safetensors").exists()
