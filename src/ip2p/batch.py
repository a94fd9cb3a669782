"""``ip2p batch``: edit many images, resumably.

A job is planned first, then run. Planning turns the inputs (folders, image files, text lists, or
CSV/JSONL tables with an instruction per row) into *units*: one input image with its checked
:class:`~ip2p.options.EditOptions`, its seeds and its output paths. The output tree mirrors the
input tree. A unit whose outputs already exist and carry the same parameters (read back with
:func:`ip2p.images.read_params`) is skipped, so rerunning an interrupted job resumes it. Because of
that, batch seeds are never random: ``--seed`` defaults to 0 and output ``k`` of every input uses
``seed + k`` (or the k-th of ``--seeds``), exactly as ``ip2p edit`` would for that one image.

Running groups the remaining units by instruction, options and working size into batches of
``--batch-size`` output images (the instruction is encoded once, :meth:`Editor.encode_instruction`
caches it), writes each output atomically and appends one JSON line per unit to the manifest
(``ok`` / ``skipped`` / ``failed`` with the one-line error). A bad input is recorded and skipped.
A stop request (Ctrl-C) cancels the batch in flight at its next denoising step, lets writes that
have started finish, flushes the manifest and exits with 130.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import BadData, BadOptions, Cancelled, Ip2pError, first_line
from .options import MATCHED, EditOptions

#: Files a folder walk picks up as inputs.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
#: Output format name -> file extension.
FORMATS = {"png": ".png", "jpg": ".jpg", "jpeg": ".jpg", "webp": ".webp"}
#: Parameters that must match for an existing output to count as done. Execution details (dtype,
#: device, ip2p version) may differ; the input's pixels may not.
MATCH_KEYS = ("instruction", *MATCHED, "model", "input_sha256")
#: Table columns that name the image and the instruction; every other column is an edit option.
IMAGE_COLUMNS = ("image", "input", "path")
INSTRUCTION_COLUMNS = ("instruction", "prompt", "edit")
MANIFEST_NAME = "manifest.jsonl"


# ------------------------------------------------------------------------------------------------
# Inputs


@dataclass
class Item:
    """One input image as the user named it, before any model work."""

    source: Path
    rel: PurePosixPath  # where its outputs go under the output folder (suffix replaced later)
    instruction: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # a problem found while reading a list (recorded as failed)


def _rel_for(path_text: str, fallback_name: str) -> PurePosixPath:
    rel = PurePosixPath(path_text.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        return PurePosixPath(fallback_name)
    return rel


def _walk(folder: Path, skip: Path | None) -> list[Item]:
    items = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (skip is None or (here / d).resolve() != skip))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                path = here / name
                items.append(Item(path, PurePosixPath(path.relative_to(folder).as_posix())))
    return items


def _row_item(base: Path, where: str, row: dict[str, Any]) -> Item:
    """A CSV/JSONL row -> Item; problems become the item's error, not an exception."""
    image_key = next((k for k in IMAGE_COLUMNS if row.get(k) not in (None, "")), None)
    text_key = next((k for k in INSTRUCTION_COLUMNS if k in row), None)
    instruction = row.get(text_key) if text_key else None
    overrides = {k: v for k, v in row.items() if k not in IMAGE_COLUMNS + INSTRUCTION_COLUMNS and v not in (None, "")}
    if image_key is None:
        return Item(base / where, PurePosixPath(where.replace(":", "_")), error=f"{where}: no image column")
    text = str(row[image_key])
    path = Path(text).expanduser()
    path = path if path.is_absolute() else base / path
    item = Item(path, _rel_for(text, path.name), instruction or None, overrides)
    try:
        EditOptions.from_mapping(overrides).check()
    except BadOptions as exc:
        item.error = f"{where}: {exc}"
    if instruction is not None and not isinstance(instruction, str):
        item.error = f"{where}: instruction must be text"
    return item


def read_table(path: Path) -> list[Item]:
    """Items from a CSV (header row) or JSONL (one object a line) file; paths are relative to it."""
    base = path.parent
    items: list[Item] = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadData(f"{path}: cannot read the list ({exc})") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        columns = reader.fieldnames or []
        if not any(c in columns for c in IMAGE_COLUMNS):
            raise BadData(f"{path}: no 'image' column (columns: {', '.join(columns) or 'none'})")
        for number, row in enumerate(reader, start=2):
            items.append(_row_item(base, f"{path.name}:{number}", {k: v for k, v in row.items() if k}))
        return items
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{number}"
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            items.append(Item(path, PurePosixPath(f"{path.stem}-line{number}"), error=f"{where}: not a JSON object"))
            continue
        items.append(_row_item(base, where, row))
    return items


def read_parquet(path: Path) -> list[Item]:
    """Items from a Parquet table, with the columns of :func:`read_table` (image paths relative to
    it). A bad row (no image, image bytes instead of a path, a bad option) fails alone, named
    ``table.parquet:row N`` (data rows counted from 1); a null or NaN cell means "not given"."""
    import math

    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BadOptions(f"{path}: reading Parquet needs pyarrow: pip install 'ip2p[ray]'") from None
    try:
        table = pq.ParquetFile(path)
        columns = table.schema_arrow.names
        if not any(c in columns for c in IMAGE_COLUMNS):
            raise BadData(f"{path}: no 'image' column (columns: {', '.join(columns) or 'none'})")
        rows = [row for batch in table.iter_batches(batch_size=65_536) for row in batch.to_pylist()]
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise BadData(f"{path}: cannot read the Parquet table ({first_line(exc)})") from None
    items: list[Item] = []
    for number, row in enumerate(rows, start=1):
        where = f"{path.name}:row {number}"
        row = {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
        image = next((row[k] for k in IMAGE_COLUMNS if row.get(k) not in (None, "")), None)
        if isinstance(image, bytes | bytearray | dict):
            items.append(Item(path, PurePosixPath(f"{path.stem}-row{number}"),
                              error=f"{where}: the image column holds image data; give image paths"))
            continue
        items.append(_row_item(path.parent, where, row))
    return items


def read_path_list(path: Path) -> list[Item]:
    """Items from a text file with one image path a line (blank lines and # comments ignored)."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadData(f"{path}: cannot read the list ({exc})") from None
    items = []
    for line in lines:
        text = line.strip()
        if text and not text.startswith("#"):
            target = Path(text).expanduser()
            target = target if target.is_absolute() else path.parent / target
            items.append(Item(target, _rel_for(text, target.name)))
    return items


def collect_items(inputs: Sequence[str | Path], out_dir: Path) -> list[Item]:
    """Expand folders, lists and tables into items. A named input that does not exist is a user
    error (raised before any work); a bad entry inside a list becomes a failed item."""
    skip = out_dir.resolve()
    items: list[Item] = []
    for given in inputs:
        path = Path(given).expanduser()
        if path.is_dir():
            items.extend(_walk(path, skip))
        elif not path.exists():
            raise BadOptions(f"input {str(given)!r} does not exist")
        elif path.suffix.lower() in (".csv", ".jsonl"):
            items.extend(read_table(path))
        elif path.suffix.lower() == ".parquet":
            items.extend(read_parquet(path))
        elif path.suffix.lower() in (".txt", ".lst"):
            items.extend(read_path_list(path))
        else:
            items.append(Item(path, PurePosixPath(path.name)))
    return items


# ------------------------------------------------------------------------------------------------
# Planning


@dataclass
class Unit:
    """One input image to edit: checked options, its seeds and where each output goes."""

    item: Item
    instruction: str = ""
    options: EditOptions | None = None
    seeds: list[int] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    working: tuple[int, int] = (0, 0)
    digest: str = ""
    status: str = "pending"  # pending | skipped | failed | ok
    error: str | None = None
    mask: Any = None  # a mask file, "auto" or "text:PHRASE" (ip2p.masks), or None
    mask_digest: str = ""  # of a mask file, at the input's size

    def expected(self, k: int, model: str) -> dict[str, Any]:
        """The parameters output ``k`` will carry, limited to :data:`MATCH_KEYS` (and the mask's)."""
        opts = self.options
        assert opts is not None
        values = {name: getattr(opts, name) for name in MATCHED}
        record = {"instruction": self.instruction, **values, "seed": self.seeds[k], "model": model,
                  "input_sha256": self.digest}
        if self.mask is not None:
            record.update(mask_feather=opts.mask_feather)
            if self.mask_digest:
                record.update(mask="image", mask_sha256=self.mask_digest)
            elif self.mask == "auto":
                record.update(mask="auto", mask_threshold=opts.mask_threshold, mask_dilation=opts.mask_dilation)
            else:
                record["mask"] = self.mask
        return record

    def params_hash(self, model: str) -> str:
        blob = json.dumps([self.expected(k, model) for k in range(len(self.seeds))], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def output_paths(rel: PurePosixPath, out_dir: Path, seeds: Sequence[int], suffix: str, variations: bool) -> list[Path]:
    """``a/b.jpg`` -> ``OUT/a/b.png``; with variations ``OUT/a/b_s{seed}.png`` for each seed."""
    target = out_dir / Path(*rel.parts)
    if not variations:
        return [target.with_suffix(suffix)]
    return [target.with_name(f"{target.stem}_s{seed}{suffix}") for seed in seeds]


def _same_params(path: Path, expected: dict[str, Any]) -> bool:
    from .images import read_params

    if not path.is_file():
        return False
    try:
        stored = read_params(path)
    except Ip2pError:
        return False  # unreadable or foreign file: make it again
    return all(k in stored and stored[k] == v for k, v in expected.items())


def plan(
    items: Iterable[Item],
    *,
    out_dir: Path,
    instruction: str | None,
    base: dict[str, Any],
    seeds: Sequence[int] | None,
    fmt: str,
    model: str,
    align_floor: int = 8,
    recommended: dict | None = None,
    native_resolution: int = 512,
    mask: str | None = None,
    mask_dir: Path | None = None,
    inspect: bool = True,
) -> list[Unit]:
    """Check each item's options, compute its working size and decide whether it is already done.

    ``base`` holds the options the user gave on the command line (canonical names); a table row
    overrides them. ``align_floor`` is the model's VAE factor (the editor aligns to at least it).
    ``recommended`` is the model's ip2p.json: it fills what neither gives. ``native_resolution``
    (the model's training size) is the working size when no resolution is given, as in the editor.
    ``mask`` (one mask file, ``auto`` or ``text:PHRASE``) applies to every item; ``mask_dir`` holds one
    mask per input, at the input's relative path (any image suffix). ``inspect`` False leaves the
    reading of each input (:func:`inspect_unit`) to the caller: ``ip2p batch --ray`` spreads it.
    """
    suffix = FORMATS[fmt]
    units: list[Unit] = []
    claimed: dict[Path, str] = {}
    for item in items:
        unit = Unit(item)
        units.append(unit)
        if item.error:
            unit.status, unit.error = "failed", item.error
            continue
        try:
            values = {**base, **item.overrides}
            values.setdefault("seed", 0)
            opts = EditOptions.from_mapping(values).check(recommended)
            if opts.resolution is None:
                opts = dataclasses.replace(opts, resolution=native_resolution)
            unit.instruction = item.instruction if item.instruction is not None else (instruction or "")
            if not unit.instruction.strip():
                raise BadOptions("no instruction (give -i or an 'instruction' column)")
            explicit = seeds if seeds and "seed" not in item.overrides and "num_images" not in item.overrides else None
            unit.seeds = list(explicit) if explicit else [opts.seed + k for k in range(opts.num_images)]
            unit.options = dataclasses.replace(opts, seed=unit.seeds[0], num_images=len(unit.seeds))
            variations = len(unit.seeds) > 1 or bool(explicit)
            unit.outputs = output_paths(item.rel, out_dir, unit.seeds, suffix, variations)
            for path in unit.outputs:
                if path in claimed:
                    raise BadOptions(f"its output {path} is also the output of {claimed[path]}; rename one")
                claimed[path] = str(item.source)
        except Ip2pError as exc:
            unit.status, unit.error = "failed", str(exc)
            continue
        if inspect:
            inspect_unit(unit, model=model, align_floor=align_floor, mask=mask, mask_dir=mask_dir)
    return units


def inspect_unit(unit: Unit, *, model: str, align_floor: int = 8, mask: str | None = None,
                 mask_dir: Path | None = None) -> Unit:
    """Read a planned unit's input: its pixel digest, its mask, its working size, and whether its
    outputs exist already with the same parameters (then it is ``skipped``); a problem marks it
    ``failed``. Arguments as for :func:`plan`."""
    from .editor import pixel_digest
    from .images import load_image, working_size
    from .masks import load_mask, mask_digest, parse_mask

    if unit.status != "pending" or unit.options is None:
        return unit
    opts = unit.options
    try:
        image = load_image(unit.item.source)
        unit.digest = pixel_digest(image)
        unit.mask = _mask_for(unit.item, mask, mask_dir)
        if unit.mask is not None and parse_mask(unit.mask).kind == "image":
            unit.mask_digest = mask_digest(load_mask(unit.mask, image.size, str(unit.mask))[0])
        unit.working = working_size(*image.size, resolution=opts.resolution, align=max(opts.align, align_floor))
    except Ip2pError as exc:
        unit.status, unit.error = "failed", str(exc)
        return unit
    if all(_same_params(p, unit.expected(k, model)) for k, p in enumerate(unit.outputs)):
        unit.status = "skipped"
    return unit


def _mask_for(item: Item, mask: str | None, mask_dir: Path | None) -> Any:
    """The mask of one input: its file in ``mask_dir`` (same relative path, any image suffix), else
    the job's ``mask``."""
    if mask_dir is None:
        return mask
    stem = mask_dir / Path(*item.rel.parts)
    for candidate in [stem, *(stem.with_suffix(s) for s in IMAGE_SUFFIXES)]:
        if candidate.is_file():
            return str(candidate)
    raise BadOptions(f"no mask for {item.rel} in {mask_dir} (looked for {stem.with_suffix('.png').name} and "
                     "other image suffixes)")


def group(units: Sequence[Unit], batch_size: int) -> list[list[Unit]]:
    """Pending units in batches of at most ``batch_size`` outputs (at least one unit each) that
    share instruction, options (but seeds) and working size: one editor call per batch."""
    groups: dict[tuple, list[Unit]] = {}
    for unit in units:
        if unit.status != "pending":
            continue
        assert unit.options is not None
        key = (unit.instruction, dataclasses.replace(unit.options, seed=0), unit.working)
        groups.setdefault(key, []).append(unit)
    batches: list[list[Unit]] = []
    for members in groups.values():
        current: list[Unit] = []
        for unit in members:
            if current and sum(len(u.seeds) for u in current) + len(unit.seeds) > batch_size:
                batches.append(current)
                current = []
            current.append(unit)
        if current:
            batches.append(current)
    return batches


# ------------------------------------------------------------------------------------------------
# Running


class Manifest:
    """Append-only JSONL record of outcomes; every line is flushed and fsynced as it is written,
    so a killed job leaves a manifest that is complete up to the last finished unit."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("a", encoding="utf-8")
        self.counts = {"ok": 0, "skipped": 0, "failed": 0}

    def record(self, unit: Unit, status: str, model: str, error: str | None = None, seconds: float | None = None):
        unit.status, unit.error = status, error
        self.write(self.entry(unit, status, model, error, seconds))

    @staticmethod
    def entry(unit: Unit, status: str, model: str, error: str | None = None,
              seconds: float | None = None) -> dict[str, Any]:
        """The manifest line of one unit's outcome."""
        return {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "input": str(unit.item.source),
            "outputs": [str(p) for p in unit.outputs],
            "status": status,
            "seeds": unit.seeds,
            "params_hash": unit.params_hash(model) if unit.options is not None and unit.digest else None,
            "error": error,
            "seconds": None if seconds is None else round(seconds, 3),
        }

    def write(self, entry: dict[str, Any]) -> None:
        """Append one line (made by :meth:`entry`, here or in a worker) and count its status."""
        self.counts[entry["status"]] += 1
        self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def _edit(editor, images, names, unit_seeds: list[list[int]], instruction: str, opts: EditOptions, callback,
          batch_size: int, masks: list | None = None, segmenter: Any = None):
    """Edit a batch as one editor call; returns (images, params), one per output, in unit order.

    Each output's noise comes from its own seeded generator, so pixels do not depend on batching.
    """
    flat = [s for seeds in unit_seeds for s in seeds]
    opts = dataclasses.replace(opts, seed=flat[0], num_images=len(unit_seeds[0]))
    result = editor.edit_with(images, instruction, opts, callback=callback, batch_size=batch_size,
                              input_names=names, seeds=flat,
                              mask=masks if masks and any(m is not None for m in masks) else None,
                              segmenter=segmenter)
    return result.images, result.params


def _input_bytes(path: Path) -> bytes:
    """An input file's own bytes: a signed output's ingredient (its manifest included)."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BadData(f"{path}: cannot read it again to sign its edit ({exc.strerror or exc})") from None


def run_units(
    units: Sequence[Unit],
    get_editor: Callable[[], Any],
    manifest: Manifest,
    *,
    model: str,
    batch_size: int = 4,
    stop: threading.Event | None = None,
    progress: Callable[[int], None] | None = None,
    segmenter: Any = None,
    signer: Any = None,
) -> bool:
    """Record planned outcomes, then edit every pending unit. Returns False when stopped early.

    ``progress(n)`` is told each time ``n`` more outputs are written (or skipped as failed).
    ``signer`` (:class:`ip2p.provenance.C2paSigner`) signs each output, its input as ingredient.
    """
    from .images import load_image, save_image
    from .provenance import sign_hook

    stop = stop or threading.Event()
    for unit in units:
        if unit.status in ("skipped", "failed"):
            manifest.record(unit, unit.status, model, unit.error)

    def check_stop(step: int, total: int) -> None:
        if stop.is_set():
            raise Cancelled("stopped by the user")

    editor = None
    for batch in group(units, batch_size):
        if stop.is_set():
            return False
        started = time.perf_counter()
        ready, images = [], []
        for unit in batch:
            try:
                images.append(load_image(unit.item.source))
                ready.append(unit)
            except Ip2pError as exc:
                manifest.record(unit, "failed", model, str(exc))
                if progress:
                    progress(len(unit.seeds))
        if not ready:
            continue
        editor = editor or get_editor()
        opts = ready[0].options
        try:
            pictures, params = _edit(editor, images, [str(u.item.source) for u in ready], [u.seeds for u in ready],
                                     ready[0].instruction, opts, check_stop, batch_size, [u.mask for u in ready],
                                     segmenter)
        except Cancelled:
            return False
        except Ip2pError as exc:
            for unit in ready:
                manifest.record(unit, "failed", model, str(exc))
            continue
        seconds = (time.perf_counter() - started) / len(ready)
        offset = 0
        for unit in ready:
            try:
                ingredient = None if signer is None else _input_bytes(unit.item.source)
                for k, path in enumerate(unit.outputs):
                    sign = sign_hook(signer, params[offset + k], ingredient, path.name, unit.item.source.name)
                    save_image(pictures[offset + k], path, params[offset + k], sign=sign)
                manifest.record(unit, "ok", model, seconds=seconds)
            except Ip2pError as exc:
                manifest.record(unit, "failed", model, str(exc))
            offset += len(unit.seeds)
            if progress:
                progress(len(unit.seeds))
    return not stop.is_set()
