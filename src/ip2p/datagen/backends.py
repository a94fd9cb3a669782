"""Text backends: things that turn a caption into ``instruction %% edited caption END``.

* :class:`HFBackend` - a ``transformers`` causal LM (local folder or cached hub id, or objects
  built in-process), prompted in the paper's fine-tuned format (no few-shot examples needed).
* :class:`OpenAIBackend` - any OpenAI-compatible HTTP endpoint (vLLM, llama.cpp server, Ollama,
  OpenAI), ``/v1/completions`` or ``/v1/chat/completions``, with a few-shot prompt. Plain urllib.
* :class:`TemplateBackend` - offline rules (colour swaps, object swaps, seasons, styles); no model.

All return raw completions; parsing and filtering live in :mod:`.text`.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import BadModel, BadOptions, Ip2pError, ModelNotFound, first_line
from .text import DELIMITER_EDIT, STOP, EditRecord, format_completion, format_prompt

#: Hand-written demonstrations for the few-shot prompt (written for this project).
FEW_SHOT = (
    EditRecord("a wooden cabin by a lake at sunset", "make it snow", "a snowy wooden cabin by a lake at sunset"),
    EditRecord("portrait of an old fisherman, oil painting", "give him a red hat",
               "portrait of an old fisherman wearing a red hat, oil painting"),
    EditRecord("a bowl of green apples on a table", "turn the apples into oranges", "a bowl of oranges on a table"),
    EditRecord("city street at noon, photograph", "make it night time", "city street at night, photograph"),
)

CHAT_SYSTEM = (
    "You write image-editing data. Given an image caption, reply with an editing instruction, "
    "then a line containing only %%, then the caption of the edited image, then a line containing "
    "only END. The instruction must change something visible; keep everything else the same."
)


# --------------------------------------------------------------------------------------------
# transformers causal LM


class HFBackend:
    """Sample completions from a causal LM fine-tuned on the ``caption \\n##\\n`` format."""

    def __init__(self, model, tokenizer, *, temperature: float = 0.7, max_tokens: int = 256):
        import torch

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._torch = torch
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"

    @classmethod
    def load(cls, ref: str, device: str = "auto", **kwargs) -> HFBackend:
        """Load a causal LM and its tokenizer from a folder or a hub id in the local cache."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..models import resolve_device

        try:
            tokenizer = AutoTokenizer.from_pretrained(ref)
            model = AutoModelForCausalLM.from_pretrained(ref)
        except OSError as exc:
            raise ModelNotFound(f"language model {ref!r} not found locally: {first_line(exc, 200)}") from None
        except (ValueError, KeyError) as exc:
            raise BadModel(f"{ref}: not a causal language model ({first_line(exc, 200)})") from None
        return cls(model.to(resolve_device(device)), tokenizer, **kwargs)

    def complete(self, captions: Sequence[str], seeds: Sequence[int]) -> list[str]:
        torch = self._torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        tok = self.tokenizer
        prompts = [format_prompt(c) for c in captions]
        batch = tok(prompts, return_tensors="pt", padding=True).to(self.model.device)
        start = batch["input_ids"].shape[1]

        class _StopAtEnd(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                texts = tok.batch_decode(input_ids[:, start:], skip_special_tokens=True)
                return torch.tensor([STOP in t for t in texts], device=input_ids.device)

        torch.manual_seed(seeds[0] if seeds else 0)
        with torch.no_grad():
            out = self.model.generate(
                **batch,
                do_sample=self.temperature > 0,
                temperature=self.temperature if self.temperature > 0 else None,
                top_k=0,
                max_new_tokens=self.max_tokens,
                stopping_criteria=StoppingCriteriaList([_StopAtEnd()]),
                pad_token_id=tok.pad_token_id,
            )
        texts = tok.batch_decode(out[:, start:], skip_special_tokens=True)
        return [_cut_at_stop(t) for t in texts]


def _cut_at_stop(text: str, finished: bool = False) -> str:
    """Keep the text up to and including ``STOP``; append it when the server stopped there."""
    end = text.find(STOP)
    if end >= 0:
        return text[:end + len(STOP)]
    return text.rstrip("\n") + STOP if finished else text


# --------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP


@dataclass
class OpenAIBackend:
    """Few-shot completions from an OpenAI-compatible server over plain HTTP.

    ``base_url`` is the API root (``http://127.0.0.1:8000/v1``); ``api`` is ``completions`` or
    ``chat``. The key, if any, comes from ``api_key`` or ``$OPENAI_API_KEY``. Transient failures
    (connection reset, 429, 5xx) are retried with back-off; anything else is a one-line error.
    """

    base_url: str
    model: str
    api: str = "completions"
    temperature: float = 0.7
    max_tokens: int = 256
    api_key: str | None = None
    timeout: float = 60.0
    attempts: int = 3
    examples: tuple[EditRecord, ...] = FEW_SHOT

    def __post_init__(self):
        if self.api not in ("completions", "chat"):
            raise BadOptions(f"api must be 'completions' or 'chat', got {self.api!r}")
        if not re.match(r"^https?://", self.base_url):
            raise BadOptions(f"endpoint {self.base_url!r} must start with http:// or https://")
        self.base_url = self.base_url.rstrip("/")
        if self.api_key is None:
            self.api_key = os.environ.get("OPENAI_API_KEY")

    def few_shot_prompt(self, caption: str) -> str:
        shots = "".join(format_prompt(e.caption) + format_completion(e.edit, e.output) + "\n\n" for e in self.examples)
        return shots + format_prompt(caption)

    def chat_messages(self, caption: str) -> list[dict]:
        messages = [{"role": "system", "content": CHAT_SYSTEM}]
        for e in self.examples:
            messages.append({"role": "user", "content": e.caption})
            messages.append({"role": "assistant", "content": format_completion(e.edit, e.output)})
        messages.append({"role": "user", "content": caption})
        return messages

    def complete(self, captions: Sequence[str], seeds: Sequence[int]) -> list[str]:
        return [self._one(c, s) for c, s in zip(captions, seeds, strict=True)]

    def _one(self, caption: str, seed: int) -> str:
        body = {"model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens,
                "stop": [STOP], "seed": int(seed), "n": 1}
        if self.api == "chat":
            body["messages"] = self.chat_messages(caption)
            reply = self._post("/chat/completions", body)
            choice = _first_choice(reply)
            text = (choice.get("message") or {}).get("content") or ""
        else:
            body["prompt"] = self.few_shot_prompt(caption)
            reply = self._post("/completions", body)
            choice = _first_choice(reply)
            text = choice.get("text") or ""
        if not isinstance(text, str):
            return ""
        return _cut_at_stop(text.lstrip(), finished=choice.get("finish_reason") == "stop")

    def _post(self, path: str, body: dict) -> dict:
        url = self.base_url + path
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode("utf-8")
        last = ""
        for attempt in range(self.attempts):
            request = urllib.request.Request(url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[:200].replace("\n", " ")
                if exc.code != 429 and exc.code < 500:
                    raise BadOptions(f"{url} answered HTTP {exc.code}: {detail}") from None
                last = f"HTTP {exc.code}: {detail}"
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, ConnectionRefusedError):
                    raise BadOptions(f"cannot reach text endpoint {url}: connection refused") from None
                last = str(exc.reason)
            except (TimeoutError, ConnectionError) as exc:
                last = type(exc).__name__
            except ValueError:
                raise Ip2pError(f"{url} did not answer JSON") from None
            time.sleep(min(0.5 * 2**attempt, 8.0))
        raise Ip2pError(f"text endpoint {url} failed {self.attempts} times; last error: {last}")


def _first_choice(reply: dict) -> dict:
    choices = reply.get("choices") if isinstance(reply, dict) else None
    if not choices or not isinstance(choices[0], dict):
        raise Ip2pError("text endpoint answered without choices")
    return choices[0]


# --------------------------------------------------------------------------------------------
# offline rules


COLOURS = ("red", "green", "blue", "yellow", "white", "black", "orange", "purple", "pink", "brown", "gray")
SWAPS = {
    "cat": "dog", "dog": "cat", "horse": "zebra", "car": "bicycle", "apple": "orange", "tree": "palm tree",
    "circle": "square", "square": "triangle", "triangle": "circle", "star": "heart", "heart": "star",
    "house": "castle", "boat": "ship", "man": "robot", "woman": "statue", "bird": "butterfly",
}
SCENES = (("make it winter", "{c} in winter"), ("make it night", "{c} at night"),
          ("add fog", "{c} in thick fog"), ("make it autumn", "{c} in autumn"))
STYLES = (("turn it into a watercolor painting", "a watercolor painting of {c}"),
          ("make it a pencil sketch", "a pencil sketch of {c}"),
          ("make it look like a mosaic", "a mosaic of {c}"))


class TemplateBackend:
    """Rewrite captions with simple rules, no model: a deterministic, offline stand-in for an LM.

    Colour swaps and object swaps apply when the caption names a known colour or object; scene
    and style edits apply to any caption. The rule is drawn from the seed.

    For the synthetic shapes world use :func:`shapes_prompts`, whose edits are exact.
    """

    def complete(self, captions: Sequence[str], seeds: Sequence[int]) -> list[str]:
        return [self._one(c, s) for c, s in zip(captions, seeds, strict=True)]

    def _one(self, caption: str, seed: int) -> str:
        rng = random.Random(seed)
        words = re.findall(r"[A-Za-z]+", caption.lower())
        options = []
        colours = [w for w in words if w in COLOURS]
        if colours:
            old = rng.choice(colours)
            new = rng.choice([c for c in COLOURS if c != old])
            after = words[words.index(old) + 1] if words.index(old) + 1 < len(words) else ""
            target = f"the {after}" if after and after not in COLOURS else "it"
            options.append((f"make {target} {new}", _replace_word(caption, old, new)))
        objects = [w for w in words if w in SWAPS]
        if objects:
            old = rng.choice(objects)
            options.append((f"turn the {old} into a {SWAPS[old]}", _replace_word(caption, old, SWAPS[old])))
        bare = caption.strip().rstrip(".")
        lowered = bare[:1].lower() + bare[1:]
        options.append(tuple(s.format(c=bare) for s in rng.choice(SCENES)))
        options.append(tuple(s.format(c=lowered) for s in rng.choice(STYLES)))
        edit, output = rng.choice(options)
        return edit + DELIMITER_EDIT + output + STOP


def shapes_prompts(count: int, seed: int = 0, size: int = 64, kinds: Sequence[str] | None = None) -> list[EditRecord]:
    """``count`` exact triples from the shapes world (:mod:`ip2p.shapes`): the caption of a random
    scene, an instruction, and the caption of the edited scene. Example ``seed + i`` of the train
    split, so the triples match the shapes data set's own examples."""
    if count < 1:
        raise BadOptions(f"count must be at least 1, got {count}")
    from ..shapes import make_example

    records = []
    for i in range(count):
        edit = make_example(seed + i, size=size, kinds=kinds, split="train")
        records.append(EditRecord(edit.caption, edit.instruction, edit.output_caption))
    return records


def _replace_word(text: str, old: str, new: str) -> str:
    return re.sub(rf"\b{re.escape(old)}\b", new, text, count=1, flags=re.IGNORECASE)


# --------------------------------------------------------------------------------------------


def make_backend(kind: str, *, model: str | None = None, endpoint: str | None = None, api: str = "completions",
                 temperature: float = 0.7, max_tokens: int = 256, device: str = "auto"):
    """Build a backend by name: ``hf`` (needs ``model``), ``openai`` (needs ``endpoint`` and
    ``model``) or ``template``."""
    if kind == "template":
        return TemplateBackend()
    if kind == "hf":
        if not model:
            raise BadOptions("the hf backend needs --model (a causal LM folder or cached hub id)")
        return HFBackend.load(model, device=device, temperature=temperature, max_tokens=max_tokens)
    if kind == "openai":
        if not endpoint or not model:
            raise BadOptions("the openai backend needs --endpoint URL and --model NAME")
        return OpenAIBackend(endpoint, model, api=api, temperature=temperature, max_tokens=max_tokens)
    raise BadOptions(f"unknown text backend {kind!r}; use hf, openai or template")
