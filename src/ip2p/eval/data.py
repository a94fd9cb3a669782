"""Test sets for ``ip2p eval``: sessions of edit turns, each with its input, instruction, target and
captions.

* The trainer's formats (:mod:`ip2p.train.data`: the original InstructPix2Pix folder, JSONL, Hugging
  Face data sets) are indexed by the trainer's own readers; every pair is a one-turn session. Their
  captions come from where each format keeps them: ``prompt.json``'s ``caption`` / ``output`` in the
  original layout, and the first present of :data:`INPUT_CAPTION_KEYS` / :data:`OUTPUT_CAPTION_KEYS`
  in a JSONL row or a data set's columns (the released data set's ``original_prompt`` /
  ``edited_prompt`` among them).
* MagicBrush's test split (Zhang et al. 2023): ``edit_sessions.json`` maps an image id to its turns
  (``input``, ``instruction``, ``output``, ``mask`` file names), the images lie in ``images/<id>/``
  (``<id>-input.png``, ``<id>-output<k>.png``), and ``global_descriptions.json`` /
  ``local_descriptions.json`` map ``<id>`` then an image's file name to its caption. Turn ``k``'s
  ground-truth input is turn ``k - 1``'s target.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadData

FORMATS = ("auto", "ip2p", "jsonl", "hf", "magicbrush")
INPUT_CAPTION_KEYS = ("input_caption", "caption", "original_prompt")
OUTPUT_CAPTION_KEYS = ("output_caption", "edited_caption", "edited_prompt", "output")
SESSIONS_FILE = "edit_sessions.json"


@dataclass(frozen=True)
class Turn:
    """One edit of a session. ``input`` and ``target`` are image references (a path, ``{bytes, path}``
    or a PIL image); captions are None where the test set has none."""

    key: str
    session: str
    index: int  # 1-based
    input: Any
    instruction: str
    target: Any = None
    input_caption: str | None = None
    output_caption: str | None = None
    local_caption: str | None = None


@dataclass
class EvalSet:
    """An ordered list of sessions (lists of turns); single-turn sets have one turn per session."""

    path: str
    format: str
    sessions: list[list[Turn]]

    @property
    def multi_turn(self) -> bool:
        return any(len(s) > 1 for s in self.sessions)

    def turns(self) -> list[Turn]:
        return [t for s in self.sessions for t in s]

    def identity(self) -> dict[str, Any]:
        """What a resumed run must agree on."""
        return {"path": self.path, "format": self.format, "sessions": len(self.sessions),
                "turns": sum(len(s) for s in self.sessions)}


def open_eval_set(path: str, format: str = "auto", split: str = "test", limit: int | None = None,
                  columns: dict[str, str] | None = None) -> EvalSet:
    """Index a test set. ``format`` is auto-detected (MagicBrush when ``edit_sessions.json`` is there,
    else as the trainer detects); ``limit`` keeps the first sessions; ``columns`` renames the
    trainer's ``input_column`` / ``instruction_column`` / ``edited_column``."""
    if format not in FORMATS:
        raise BadData(f"test-set format must be one of {', '.join(FORMATS)}, got {format!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise BadData(f"limit must be a positive integer, got {limit!r}")
    root = Path(path).expanduser()
    if format == "magicbrush" or format == "auto" and (root / SESSIONS_FILE).is_file():
        sessions = _magicbrush(root, limit)
        fmt = "magicbrush"
    else:
        sessions, fmt = _trainer_format(path, format, split, limit, columns or {})
    if not sessions:
        raise BadData(f"test set {path!r} has no edits")
    return EvalSet(str(root.resolve()) if root.exists() else str(path), fmt, sessions)


# --------------------------------------------------------------------------------------------
# MagicBrush


def _read_json(path: Path, required: bool) -> Any:
    if not path.is_file():
        if required:
            raise BadData(f"{path}: missing (MagicBrush's test layout has {SESSIONS_FILE} beside images/)")
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadData(f"{path}: unreadable JSON ({exc})") from None


def _magicbrush(root: Path, limit: int | None) -> list[list[Turn]]:
    sessions = _read_json(root / SESSIONS_FILE, required=True)
    if not isinstance(sessions, dict):
        raise BadData(f"{root / SESSIONS_FILE}: expected an object of image id -> list of turns")
    captions = _read_json(root / "global_descriptions.json", required=False)
    local = _read_json(root / "local_descriptions.json", required=False)
    images = root / "images" if (root / "images").is_dir() else root
    out: list[list[Turn]] = []
    for image_id in sorted(sessions, key=_natural):
        turns = sessions[image_id]
        if not isinstance(turns, list) or not turns:
            raise BadData(f"{SESSIONS_FILE}: session {image_id!r} is not a list of turns")
        folder = images / str(image_id)
        global_of = captions.get(image_id, {}) if isinstance(captions, dict) else {}
        local_of = local.get(image_id, {}) if isinstance(local, dict) else {}
        session = []
        for index, turn in enumerate(turns, 1):
            try:
                source, target, instruction = turn["input"], turn["output"], turn["instruction"]
            except (KeyError, TypeError):
                raise BadData(f"{SESSIONS_FILE}: turn {index} of {image_id!r} lacks input/output/instruction") from None
            session.append(Turn(
                key=f"{image_id}/{index}", session=str(image_id), index=index, input=folder / source,
                instruction=str(instruction), target=folder / target, input_caption=global_of.get(source),
                output_caption=global_of.get(target), local_caption=local_of.get(target),
            ))
        out.append(session)
        if limit is not None and len(out) >= limit:
            break
    return out


def _natural(name: str):
    return (0, int(name), "") if str(name).isdigit() else (1, 0, str(name))


# --------------------------------------------------------------------------------------------
# the trainer's formats


def _first(row: dict, keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


def _trainer_format(path: str, format: str, split: str, limit: int | None, columns: dict[str, str]):
    from ..train.config import DataConfig
    from ..train.data import HfSource, Ip2pFolderSource, JsonlSource, open_source

    cfg = DataConfig(path=path, format=format, split=split, **columns)
    source = open_source(cfg)
    count = len(source) if limit is None else min(limit, len(source))
    captions: list[tuple[str | None, str | None]]
    if isinstance(source, Ip2pFolderSource):
        prompts: dict[Path, dict] = {}
        for folder, *_ in source.items[:count]:
            if folder not in prompts:
                prompts[folder] = _read_json(folder / "prompt.json", required=False)
        captions = [(_first(prompts[f], ("caption",)), _first(prompts[f], ("output",)))
                    for f, *_ in source.items[:count]]
        fmt = "ip2p"
    elif isinstance(source, JsonlSource):
        captions = _jsonl_captions(source, cfg, count)
        fmt = "jsonl"
    elif isinstance(source, HfSource):
        names = source.dataset.column_names
        pick = lambda keys: next((k for k in keys if k in names), None)  # noqa: E731
        ins, outs = pick(INPUT_CAPTION_KEYS), pick(OUTPUT_CAPTION_KEYS)
        captions = [(source.dataset[i][ins] if ins else None, source.dataset[i][outs] if outs else None)
                    for i in range(count)]
        fmt = "hf"
    else:  # pragma: no cover - open_source returns one of the three
        raise BadData(f"unsupported test set {path!r}")
    sessions = []
    for index in range(count):
        record = source.record(index)
        key = f"{index:06d}"
        sessions.append([Turn(key=key, session=key, index=1, input=record.input, instruction=record.instruction,
                              target=record.edited, input_caption=captions[index][0],
                              output_caption=captions[index][1])])
    return sessions, fmt


def _jsonl_captions(source, cfg, count: int) -> list[tuple[str | None, str | None]]:
    """Captions of the rows the trainer kept, matched by their (input, instruction, edited) values."""
    by_row: dict[tuple, dict] = {}
    file = source.root / "metadata.jsonl" if Path(cfg.path).is_dir() else Path(cfg.path)
    for line in file.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            by_row.setdefault((row[cfg.input_column], row[cfg.instruction_column], row[cfg.edited_column]), row)
        except (ValueError, KeyError, TypeError):
            continue
    out = []
    for values in source.rows[:count]:
        row = by_row.get(tuple(values[:3]), {})  # the fourth value is the optional kind map
        out.append((_first(row, INPUT_CAPTION_KEYS), _first(row, OUTPUT_CAPTION_KEYS)))
    return out
