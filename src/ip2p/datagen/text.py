"""The text stage: captions in, (instruction, edited caption) out.

The paper fine-tunes GPT-3 on 700 human-written triples; the model sees ``caption + "\\n##\\n"``
and writes ``instruction + "\\n%%\\n" + edited caption + "\\nEND"`` (Brooks et al. 2023, sec.
3.1.1). Every backend in :mod:`.backends` speaks that format, and this module owns it: formatting,
parsing, reading captions and prompt files, and the filters applied to what a model writes:

* a completion that does not parse is *malformed* and is asked for again (``retries`` times);
* an edited caption equal to its caption is dropped (the edit would be a no-op);
* a blocklist (word file) or a moderation callable can veto a triple;
* duplicates (same caption and instruction) are dropped.

Prompt files are jsonl with ``caption``, ``edit`` and ``output``; ``input`` is read as a synonym of
``caption`` because the original release writes ``input`` while its image script reads ``caption``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from ..errors import BadData, BadOptions, first_line
from ..files import write_atomic
from .util import derive_seed

DELIMITER_PROMPT = "\n##\n"
DELIMITER_EDIT = "\n%%\n"
STOP = "\nEND"
CAPTION_KEYS = ("caption", "input", "text", "prompt")
MAX_FIELD_CHARS = 500


@dataclass(frozen=True)
class EditRecord:
    """One line of a prompts file."""

    caption: str
    edit: str
    output: str

    def to_dict(self) -> dict:
        return asdict(self)


class TextBackend(Protocol):
    """Anything that completes captions: returns one raw completion per caption.

    A completion that ended on the stop sequence carries ``STOP`` at its end; one that ran out of
    tokens does not, and is treated as malformed.
    """

    def complete(self, captions: Sequence[str], seeds: Sequence[int]) -> list[str]: ...


Moderation = Callable[[EditRecord], bool]


@dataclass
class TextOptions:
    """Knobs of the text stage (sampling follows the paper: temperature 0.7, 256 tokens)."""

    temperature: float = 0.7
    max_tokens: int = 256
    retries: int = 3
    seed: int = 0
    batch_size: int = 8
    dedupe: bool = True
    blocklist: tuple[str, ...] = ()
    moderation: Moderation | None = field(default=None, repr=False)

    def check(self) -> TextOptions:
        if not 0.0 <= self.temperature <= 5.0:
            raise BadOptions(f"temperature must be in [0, 5], got {self.temperature}")
        if not 1 <= self.max_tokens <= 8192:
            raise BadOptions(f"max_tokens must be in [1, 8192], got {self.max_tokens}")
        if not 0 <= self.retries <= 100:
            raise BadOptions(f"retries must be in [0, 100], got {self.retries}")
        if not 1 <= self.batch_size <= 4096:
            raise BadOptions(f"batch_size must be in [1, 4096], got {self.batch_size}")
        self.blocklist = tuple(w.strip().lower() for w in self.blocklist if w.strip())
        return self


# --------------------------------------------------------------------------------------------
# the format


def format_prompt(caption: str) -> str:
    return caption.strip() + DELIMITER_PROMPT


def format_completion(edit: str, output: str) -> str:
    return edit.strip() + DELIMITER_EDIT + output.strip() + STOP


def parse_completion(text: str) -> tuple[str, str] | None:
    """``(instruction, edited caption)`` from a completion, or ``None`` if it is malformed.

    Well formed: ends with ``STOP`` (else the model ran out of tokens), exactly one ``%%``
    delimiter, two non-empty single-line parts of sane length.
    """
    end = text.find(STOP)
    if end < 0:
        return None
    body = text[:end]
    parts = body.split(DELIMITER_EDIT)
    if len(parts) != 2:
        return None
    edit, output = (p.strip() for p in parts)
    for part in (edit, output):
        if not part or "\n" in part or len(part) > MAX_FIELD_CHARS or "##" in part:
            return None
    return edit, output


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".")


def is_blocked(record: EditRecord, words: Iterable[str]) -> bool:
    """True when the instruction or the edited caption contains a blocked word or phrase."""
    text = f" {_norm(record.edit)} {_norm(record.output)} "
    text = re.sub(r"[^\w\s]", " ", text)
    return any(re.search(rf"(?<!\w){re.escape(w)}(?!\w)", text) for w in words)


def read_blocklist(path: str | Path) -> tuple[str, ...]:
    """One word or phrase per line; ``#`` starts a comment."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BadData(f"cannot read blocklist {path}: {exc.strerror or exc}") from None
    return tuple(w.strip().lower() for w in (line.split("#", 1)[0] for line in lines) if w.strip())


# --------------------------------------------------------------------------------------------
# generation


@dataclass
class TextStats:
    captions: int = 0
    kept: int = 0
    malformed: int = 0
    gave_up: int = 0
    unchanged: int = 0
    blocked: int = 0
    duplicates: int = 0


def generate_text(
    captions: Sequence[str],
    backend: TextBackend,
    options: TextOptions | None = None,
    callback: Callable[[int, int], None] | None = None,
) -> tuple[list[EditRecord], TextStats]:
    """Complete every caption with ``backend`` and filter the results (see module docstring).

    Malformed completions are asked for again with a new seed, up to ``options.retries`` times.
    ``callback(done, total)`` reports progress in captions. Output order follows input order.
    """
    options = (options or TextOptions()).check()
    stats = TextStats(captions=len(captions))
    results: dict[int, EditRecord] = {}
    pending = [i for i, c in enumerate(captions) if c.strip()]
    stats.gave_up += len(captions) - len(pending)
    done = len(captions) - len(pending)
    for attempt in range(options.retries + 1):
        retry: list[int] = []
        for start in range(0, len(pending), options.batch_size):
            chunk = pending[start:start + options.batch_size]
            seeds = [derive_seed("text", options.seed, i, attempt) for i in chunk]
            completions = backend.complete([captions[i].strip() for i in chunk], seeds)
            if len(completions) != len(chunk):
                raise BadData(f"text backend returned {len(completions)} completions for {len(chunk)} captions")
            for i, text in zip(chunk, completions, strict=True):
                parsed = parse_completion(text)
                if parsed is None:
                    stats.malformed += 1
                    retry.append(i)
                    continue
                results[i] = EditRecord(captions[i].strip(), *parsed)
                done += 1
                if callback is not None:
                    callback(done, len(captions))
        pending = retry
        if not pending:
            break
    stats.gave_up += len(pending)
    if callback is not None and pending:
        callback(len(captions), len(captions))

    kept: list[EditRecord] = []
    seen: set[tuple[str, str]] = set()
    for i in sorted(results):
        record = results[i]
        if _norm(record.output) == _norm(record.caption):
            stats.unchanged += 1
            continue
        if options.blocklist and is_blocked(record, options.blocklist):
            stats.blocked += 1
            continue
        if options.moderation is not None and not options.moderation(record):
            stats.blocked += 1
            continue
        key = (_norm(record.caption), _norm(record.edit))
        if options.dedupe and key in seen:
            stats.duplicates += 1
            continue
        seen.add(key)
        kept.append(record)
    stats.kept = len(kept)
    return kept, stats


# --------------------------------------------------------------------------------------------
# files


def _pick_column(names: Sequence[str], column: str | None, where: str) -> str:
    if column is not None:
        if column not in names:
            raise BadData(f"{where}: no column {column!r} (has {', '.join(names) or 'none'})")
        return column
    for key in CAPTION_KEYS:
        if key in names:
            return key
    raise BadData(f"{where}: no caption column ({'/'.join(CAPTION_KEYS)}); name one with --column")


def read_captions(source: str | Path, column: str | None = None, limit: int | None = None) -> list[str]:
    """Captions from a ``.txt`` (one per line), ``.jsonl`` or ``.parquet`` file."""
    path = Path(source)
    if not path.is_file():
        raise BadData(f"captions file {source} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        captions = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        captions = [c for c in captions if c]
    elif suffix in (".jsonl", ".json"):
        captions = []
        for n, row in enumerate(read_jsonl(path), 1):
            key = _pick_column(list(row), column, f"{path}:{n}")
            captions.append(str(row[key]).strip())
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise BadData(f"{path}: not a readable parquet file ({first_line(exc, 200)})") from None
        key = _pick_column(table.column_names, column, str(path))
        captions = [str(c).strip() for c in table.column(key).to_pylist() if c is not None]
    else:
        raise BadData(f"{path}: unknown captions format {suffix!r}; use .txt, .jsonl or .parquet")
    return captions[:limit] if limit is not None else captions


def read_hf_captions(name: str, column: str | None = None, split: str = "train",
                     limit: int | None = None) -> list[str]:
    """Captions from a Hugging Face dataset column (a hub id in the local cache, or a local folder)."""
    try:
        import datasets
    except ImportError:
        raise BadOptions("reading a Hugging Face dataset needs `pip install datasets`") from None
    try:
        data = datasets.load_dataset(name, split=split)
    except Exception as exc:  # datasets raises many types; all mean "cannot load"
        raise BadData(f"cannot load dataset {name!r} split {split!r}: {first_line(exc, 200)}") from None
    key = _pick_column(list(data.column_names), column, f"dataset {name}")
    if limit is not None:
        data = data.select(range(min(limit, len(data))))
    return [str(c).strip() for c in data[key] if c is not None]


def read_jsonl(path: Path) -> Iterable[dict]:
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise BadData(f"{path}:{n}: not valid JSON") from None
            if not isinstance(row, dict):
                raise BadData(f"{path}:{n}: expected a JSON object")
            yield row


def read_prompts(path: str | Path) -> list[dict]:
    """A prompts file as dicts that all have ``caption``, ``edit`` and ``output`` (other keys kept)."""
    path = Path(path)
    if not path.is_file():
        raise BadData(f"prompts file {path} does not exist")
    prompts = []
    for n, row in enumerate(read_jsonl(path), 1):
        if "caption" not in row and "input" in row:
            row = {"caption": row["input"], **{k: v for k, v in row.items() if k != "input"}}
        missing = [k for k in ("caption", "edit", "output") if not isinstance(row.get(k), str) or not row[k].strip()]
        if missing:
            raise BadData(f"{path}:{n}: missing or empty {', '.join(missing)}")
        prompts.append(row)
    if not prompts:
        raise BadData(f"prompts file {path} has no prompts")
    return prompts


def write_prompts(records: Iterable[EditRecord | dict], path: str | Path) -> Path:
    """Write a prompts jsonl atomically."""
    lines = [json.dumps(r.to_dict() if isinstance(r, EditRecord) else r, ensure_ascii=False) for r in records]
    return write_atomic(path, "".join(line + "\n" for line in lines), parents=True)
