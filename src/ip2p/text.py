"""CLIP tokenizers built offline: tiny ones for tests, word-level ones for small models.

A CLIP tokenizer is byte-level BPE with an ``</w>`` end-of-word suffix (Radford et al. 2021).
A word-level vocabulary is expressed as ordinary BPE merges that rebuild each known word from its
bytes, so the result is a stock ``CLIPTokenizer`` that transformers and diffusers load unchanged;
unknown words fall back to single bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
_WORD = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+", re.UNICODE)


def split_words(text: str) -> list[str]:
    """Split text the way CLIP's pre-tokenizer does (lower-cased)."""
    return _WORD.findall(text.lower())


def _byte_symbols(word: str) -> list[str]:
    table = bytes_to_unicode()
    symbols = [table[b] for b in word.encode("utf-8")]
    symbols[-1] += "</w>"
    return symbols


def build_clip_tokenizer(words: Iterable[str] = (), max_length: int = 77) -> CLIPTokenizer:
    """A CLIP tokenizer with every byte plus one token per word in ``words``.

    Merges are added left to right (``m a`` -> ``ma``, ``ma k`` -> ``mak``, ...), so each known
    word becomes one token and the vocabulary stays ``512 + (merges) + 2`` entries.
    """
    table = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for symbol in table + [s + "</w>" for s in table]:
        vocab[symbol] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in sorted({w for text in words for w in split_words(text)}):
        symbols = _byte_symbols(word)
        current = symbols[0]
        for nxt in symbols[1:]:
            merged = current + nxt
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append((current, nxt))
            current = merged
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def save_tokenizer(tokenizer, folder: str | Path) -> None:
    """Save any transformers tokenizer with its own ``save_pretrained``; a BPE one (CLIP's kind) also
    gets the vocab.json/merges.txt pair, so both transformers 4 (vocab/merges) and 5 (tokenizer.json)
    read it."""
    folder = Path(folder)
    tokenizer.save_pretrained(folder)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = json.loads(backend.to_str())["model"] if backend is not None else {}
    if model.get("type") != "BPE" or "vocab" not in model or "merges" not in model:
        return
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")
