"""Fine-tune a causal LM to write edits, as the paper fine-tuned GPT-3 (700 examples, one epoch).

Each example becomes ``prompt = caption \\n##\\n`` and ``completion = instruction \\n%%\\n edited
caption \\nEND`` followed by the end-of-text token. The loss is the usual next-token cross-entropy
restricted to the completion tokens: prompt positions get label -100, so the model learns to
write edits, not captions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadData, BadOptions
from .text import EditRecord, format_completion, format_prompt, read_prompts

IGNORE = -100


@dataclass
class FinetuneOptions:
    epochs: float = 1.0
    learning_rate: float = 5e-5
    batch_size: int = 4
    weight_decay: float = 0.0
    seed: int = 0
    max_length: int = 512

    def check(self) -> FinetuneOptions:
        if not 0 < self.epochs <= 1000:
            raise BadOptions(f"epochs must be in (0, 1000], got {self.epochs}")
        if not 0 < self.learning_rate < 1:
            raise BadOptions(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if not 1 <= self.batch_size <= 1024:
            raise BadOptions(f"batch_size must be in [1, 1024], got {self.batch_size}")
        return self


def read_examples(path: str | Path) -> list[EditRecord]:
    """Human-written examples: a prompts jsonl, or the GPT-3 fine-tune jsonl (``prompt``/``completion``)."""
    path = Path(path)
    if not path.is_file():
        raise BadData(f"examples file {path} does not exist")
    first = next((line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()), "")
    try:
        head = json.loads(first) if first else {}
    except ValueError:
        raise BadData(f"{path}:1: not valid JSON") from None
    if isinstance(head, dict) and "prompt" in head and "completion" in head:
        from .text import parse_completion, read_jsonl

        records = []
        for n, row in enumerate(read_jsonl(path), 1):
            parsed = parse_completion(str(row.get("completion", "")))
            caption = str(row.get("prompt", "")).split("\n##", 1)[0].strip()
            if parsed is None or not caption:
                raise BadData(f"{path}:{n}: completion is not 'instruction\\n%%\\nedited caption\\nEND'")
            records.append(EditRecord(caption, *parsed))
        return records
    return [EditRecord(p["caption"], p["edit"], p["output"]) for p in read_prompts(path)]


def encode_example(tokenizer, record: EditRecord, max_length: int = 512) -> tuple[list[int], list[int]]:
    """Token ids and labels for one example; labels are -100 on the prompt."""
    prompt = tokenizer(format_prompt(record.caption), add_special_tokens=False)["input_ids"]
    completion = tokenizer(format_completion(record.edit, record.output), add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        completion = completion + [tokenizer.eos_token_id]
    ids = (prompt + completion)[:max_length]
    labels = ([IGNORE] * len(prompt) + completion)[:max_length]
    return ids, labels


def collate(batch: Sequence[tuple[list[int], list[int]]], pad_id: int):
    """Right-pad a batch; padding is masked out of attention and loss."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (i, lab) in enumerate(batch):
        ids[row, :len(i)] = torch.tensor(i)
        labels[row, :len(lab)] = torch.tensor(lab)
        mask[row, :len(i)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def finetune_text(
    model,
    tokenizer,
    examples: Sequence[EditRecord],
    options: FinetuneOptions | None = None,
    callback: Callable[[int, int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` in place on ``examples``; returns the loss of every optimiser step.

    ``callback(step, total, loss)`` is called after every step.
    """
    import torch

    options = (options or FinetuneOptions()).check()
    if not examples:
        raise BadData("no fine-tuning examples")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise BadOptions("the tokenizer has neither a pad nor an end-of-text token")
    encoded = [encode_example(tokenizer, r, options.max_length) for r in examples]
    generator = torch.Generator().manual_seed(options.seed)
    per_epoch = math.ceil(len(encoded) / options.batch_size)
    total = max(1, round(per_epoch * options.epochs))
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)
    device = next(model.parameters()).device
    model.train()
    losses: list[float] = []
    order: list[int] = []
    for step in range(total):
        if len(order) < options.batch_size:
            order += torch.randperm(len(encoded), generator=generator).tolist()
        chunk, order = order[:options.batch_size], order[options.batch_size:]
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in chunk], pad_id).items()}
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if callback is not None:
            callback(step + 1, total, losses[-1])
    model.eval()
    return losses


def completion_loss(model, tokenizer, examples: Sequence[EditRecord]) -> float:
    """Mean completion-token loss over ``examples`` (an evaluation helper)."""
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch = collate([encode_example(tokenizer, r) for r in examples], pad_id)
    device = next(model.parameters()).device
    with torch.no_grad():
        return float(model(**{k: v.to(device) for k, v in batch.items()}).loss)
