"""Tiny random models for the data-generation stages, built offline in about a second.

Tests, benchmarks and examples use them in place of CLIP ViT-L/14 and a large language model:
the architectures are the real ``transformers`` ones at toy widths.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..tiny import TINY_WORDS

LM_CORPUS = (
    "a photo of a red circle on a white background\nmake it blue\na photo of a blue circle\nEND",
    "a cat sitting on a wooden chair, oil painting\n##\nturn the cat into a dog\n%%\n",
    "city street at night in winter with snow and fog, a pencil sketch, a watercolor painting",
)


def build_tiny_clip(seed: int = 0, image_size: int = 32):
    """A random ``CLIPModel`` (2 layers, width 32, projection 16) and a word-level CLIP tokenizer."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from ..text import build_clip_tokenizer

    torch.manual_seed(seed)
    text = dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  image_size=image_size, patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    tokenizer = build_clip_tokenizer(TINY_WORDS.split(), max_length=77)
    return model, tokenizer


def save_tiny_clip(model, tokenizer, folder: str | Path) -> Path:
    from ..text import save_tokenizer

    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    save_tokenizer(tokenizer, folder)
    return folder


def build_tiny_lm(seed: int = 0, corpus: Sequence[str] = LM_CORPUS, vocab_size: int = 400):
    """A random 2-layer GPT-2 and a byte-level BPE tokenizer trained on ``corpus`` in-process."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(list(corpus), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>",
                                        bos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=4,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    return GPT2LMHeadModel(config).eval(), tokenizer
