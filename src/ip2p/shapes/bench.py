"""The shapes benchmark: edit held-out scenes with any editor and score every kind exactly.

Examples are test-split scenes (disjoint from training seeds), kinds in round robin, half of them
phrased with held-out templates. Rows: one per edit kind, then the failure modes the literature
names as rows of their own (counting, spatial moves, identity preservation under large edits), each
object edit split by how its instruction names the object (its kind, its colour, both, or its place:
``recolor_object / kind``), and the total. Columns: success rate overall, on seen and on held-out
templates, PSNR to the target, preservation error outside the mask and edit strength inside it. For the identity row, "success"
is the share of large edits (mask >= 30 % of the image) whose edge structure still matches the
target (edge-map correlation >= 0.8).

The ``failure-modes`` suite measures the four failure modes on which instruction editors differ
most, each as a group of exact kinds (:data:`FAILURE_MODE_SUITE`): counting (add N, remove all,
remove N), spatial (move left/right/up/down, swap two objects), viewpoint (turn an object a quarter
turn, upside down, mirror the picture) and identity (a large edit elsewhere that must keep a named
object's structure). Its rows are the kinds, then the four categories and the total, with the share
of edits whose kind rule held ("edit done") and whose outside pixels stayed ("preserved").

The editor is only called (``editor.edit([image], instruction, **options)``); this module never
imports torch itself.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..errors import BadOptions
from ..files import write_atomic
from .dataset import png_bytes
from .edits import REFERENCE_TYPES, check_kinds, make_example
from .render import check_size
from .score import ScoreRules, as_array, score_edit

#: Failure-mode rows: name -> the kinds they gather (None: the large-edit identity rule).
FAILURE_MODES = {"counting": ("count_add", "count_remove"), "spatial moves": ("move_object",)}
IDENTITY_ROW = "identity under large edits"
LARGE_EDIT_SHARE = 0.3
#: The settings a report records as used (from the first edit's params: the model may recommend them).
RECORDED_SETTINGS = ("steps", "guidance_scale", "image_guidance_scale", "scheduler")
#: The failure-mode suite: category -> its kinds.
FAILURE_MODE_SUITE = {
    "counting": ("count_add", "count_remove", "count_remove_n"),
    "spatial": ("move_object", "swap_objects"),
    "viewpoint": ("rotate_object", "flip_object", "flip_scene"),
    "identity": ("keep_object",),
}
SUITES = ("default", "failure-modes")


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(float(np.mean(vals)), 4) if vals else None


def _row(items: list[dict[str, Any]], success_key: str = "success") -> dict[str, Any]:
    seen = [r for r in items if not r["held_out"]]
    held = [r for r in items if r["held_out"]]
    return {
        "n": len(items),
        "success": _mean([float(r[success_key]) for r in items]),
        "success_seen": _mean([float(r[success_key]) for r in seen]),
        "success_held_out": _mean([float(r[success_key]) for r in held]),
        "edit_done": _mean([float(r["kind_ok"]) for r in items]),
        "preserved": _mean([float(r["preserved"]) for r in items]),
        "psnr": _mean([r["psnr"] for r in items]),
        "preservation_mae": _mean([r["preservation_mae"] for r in items]),
        "edit_strength": _mean([r["edit_strength"] for r in items]),
        "target_strength": _mean([r["target_strength"] for r in items]),
    }


def summarise(results: list[dict[str, Any]], kinds: Sequence[str], rules: ScoreRules,
              suite: str = "default") -> dict[str, dict]:
    """Aggregate per-example scores into the report's rows: kinds, then the suite's groups, then all."""
    rows: dict[str, dict] = {}
    for kind in kinds:
        items = [r for r in results if r["kind"] == kind]
        if items:
            rows[kind] = _row(items)
    if suite == "failure-modes":
        for name, members in FAILURE_MODE_SUITE.items():
            items = [r for r in results if r["kind"] in members]
            if items:
                rows[name] = _row(items)
        rows["all"] = _row(results)
        return rows
    for name, members in FAILURE_MODES.items():
        items = [r for r in results if r["kind"] in members]
        if items:
            rows[name] = _row(items)
    for kind in kinds:  # an object edit by how its instruction names the object ("the circle", "the red one")
        for ref in REFERENCE_TYPES:
            items = [r for r in results if r["kind"] == kind and r.get("reference") == ref]
            if items:
                rows[f"{kind} / {ref}"] = _row(items)
    adds = [r for r in results if r.get("as_asked") is not None]
    if adds:  # add_object judged on what its instruction says (ip2p.shapes.score)
        rows["add_object / as asked"] = _row(adds, "as_asked")
    large = [dict(r, identity_kept=r["structure"] >= rules.structure) for r in results if r["mask_share"] >= LARGE_EDIT_SHARE]
    if large:
        rows[IDENTITY_ROW] = _row(large, "identity_kept")
    rows["all"] = _row(results)
    return rows


def _fmt(v, pct=False):
    if v is None:
        return "–"
    return f"{100 * v:.1f} %" if pct else f"{v:.2f}"


def failure_mode_table(rows: dict[str, dict], title: str) -> str:
    """The failure-mode suite's Markdown table: success, its two halves, and preservation."""
    lines = [
        f"# {title}",
        "",
        "| row | n | success | seen templates | held-out templates | edit done | preserved | preservation MAE | PSNR (dB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        label = f"**{name}**" if name in FAILURE_MODE_SUITE or name == "all" else name
        lines.append(
            f"| {label} | {r['n']} | {_fmt(r['success'], True)} | {_fmt(r['success_seen'], True)} | "
            f"{_fmt(r['success_held_out'], True)} | {_fmt(r['edit_done'], True)} | {_fmt(r['preserved'], True)} | "
            f"{_fmt(r['preservation_mae'])} | {_fmt(r['psnr'])} |"
        )
    return "\n".join(lines) + "\n"


def markdown_table(rows: dict[str, dict], title: str) -> str:
    lines = [
        f"# {title}",
        "",
        "| row | n | success | seen templates | held-out templates | PSNR (dB) | preservation MAE | edit strength | target strength |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['n']} | {_fmt(r['success'], True)} | {_fmt(r['success_seen'], True)} | "
            f"{_fmt(r['success_held_out'], True)} | {_fmt(r['psnr'])} | {_fmt(r['preservation_mae'])} | "
            f"{_fmt(r['edit_strength'])} | {_fmt(r['target_strength'])} |"
        )
    return "\n".join(lines) + "\n"


def example_grid(entries: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], cell: int = 128) -> Image.Image:
    """Rows of (label, input, target, output), each image scaled to ``cell`` px, a label above."""
    label_h = 14
    grid = Image.new("RGB", (3 * cell, max(1, len(entries)) * (cell + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, (label, *images) in enumerate(entries):
        y = i * (cell + label_h)
        draw.text((2, y + 1), label[:60], fill=(0, 0, 0))
        for j, im in enumerate(images):
            tile = Image.fromarray(im).resize((cell, cell), Image.Resampling.NEAREST)
            grid.paste(tile, (j * cell, y + label_h))
    return grid


def run_benchmark(
    editor,
    n: int = 500,
    size: int = 64,
    seed: int = 0,
    out_dir: str | Path | None = None,
    kinds: Sequence[str] | None = None,
    edit_options: dict[str, Any] | None = None,
    rules: ScoreRules | None = None,
    grid_examples: int = 24,
    callback: Callable[[int, int], None] | None = None,
    suite: str = "default",
) -> dict[str, Any]:
    """Edit ``n`` held-out examples (test seeds ``seed .. seed + n - 1``) and score them.

    ``editor`` needs ``edit(images, instruction, **options)`` returning an object with ``.images``.
    Example ``i`` is edited with ``seed=seed + i`` and ``resolution=size`` unless ``edit_options``
    says otherwise. ``suite`` is ``default`` (kinds default to the world's default mix) or
    ``failure-modes`` (kinds default to :data:`FAILURE_MODE_SUITE`'s, rows grouped by category). ``callback(done, total)`` runs after every example (raise
    :class:`ip2p.errors.Cancelled` in it to stop). With ``out_dir``, writes ``report.md``,
    ``report.json`` and ``grid.png`` there. Returns the report (``rows``, ``examples``, settings).
    """
    if not isinstance(n, int) or n < 1:
        raise BadOptions(f"n must be a positive integer, got {n!r}")
    check_size(size)
    if suite not in SUITES:
        raise BadOptions(f"suite must be one of {', '.join(SUITES)}, got {suite!r}")
    if kinds is None and suite == "failure-modes":
        kinds = [kind for members in FAILURE_MODE_SUITE.values() for kind in members]
    kinds = check_kinds(kinds)
    rules = rules or ScoreRules()
    options = {"resolution": size, **{k: v for k, v in (edit_options or {}).items() if v is not None}}
    model = getattr(editor, "model_name", None)
    settings = {"suite": suite, "size": size, "seed": seed, "kinds": list(kinds), "rules": rules.__dict__,
                "options": {k: v for k, v in options.items() if _jsonable(v)}, "model": model if _jsonable(model) else None,
                "weights": _weights_stamp(model)}
    log = _ExampleLog(Path(out_dir), settings) if out_dir is not None else None
    done = log.read(n) if log else []
    results = [entry["result"] for entry in done]
    used = done[0]["used"] if done else {}
    grid = []
    for i in range(n):
        example = make_example(seed + i, size, kinds=[kinds[i % len(kinds)]], split="test")
        if i < len(done):
            output = log.output(i) if i < grid_examples else None
            score = results[i]
        else:
            before = Image.fromarray(example.before)
            result = editor.edit([before], example.instruction, **{"seed": seed + i, **options})
            output = as_array(result.images[0], size)
            if not used and getattr(result, "params", None):
                used = {k: result.params[0][k] for k in RECORDED_SETTINGS if k in result.params[0]}
            score = {"seed": example.seed, "kind": example.kind, "instruction": example.instruction,
                     "template_id": example.template_id, "held_out": example.held_out,
                     "reference": example.reference, **score_edit(example, output, rules)}
            results.append(score)
            if log:
                log.append(i, score, used, output if i < grid_examples else None)
        if len(grid) < grid_examples and output is not None:
            mark = "ok" if score["success"] else "fail"
            grid.append((f"{example.kind} [{mark}] {example.instruction}", example.before, example.after, output))
            if suite == "failure-modes":  # each category's examples together, in suite order
                grid.sort(key=lambda entry: _category_rank(entry[0].split(" ", 1)[0]))
        if callback:
            callback(i + 1, n)
    rows = summarise(results, kinds, rules, suite)
    report = {
        "benchmark": "shapes",
        "suite": suite,
        "n": n,
        "size": size,
        "seed": seed,
        "kinds": list(kinds),
        "edit_options": {k: v for k, v in {**options, **used}.items() if _jsonable(v)},
        "rules": rules.__dict__,
        "model": getattr(editor, "model_name", None) if _jsonable(getattr(editor, "model_name", None)) else None,
        "rows": rows,
        "examples": results,
    }
    if out_dir is not None:
        write_report(report, grid, Path(out_dir))
    return report


class _ExampleLog:
    """``examples.jsonl`` in the report folder: one line per scored example, appended and flushed as
    it is made, so a killed run resumes where it stopped (a torn last line is made again). The first
    line holds the run's settings; a folder holding another run's log is refused."""

    def __init__(self, out_dir: Path, settings: dict[str, Any]):
        self.path, self.pictures, self.settings = out_dir / "examples.jsonl", out_dir / "outputs", settings

    def read(self, n: int) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        lines = self.path.read_text().splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
        except ValueError:
            header = {}
        if header.get("settings") != self.settings:
            raise BadOptions(f"{self.path.parent} holds another benchmark run (other settings or model); "
                             "choose another --out or delete it")
        entries = []
        for line in lines[1:]:
            try:
                entry = json.loads(line)
            except ValueError:
                break  # torn by a kill: made again
            if entry.get("i") != len(entries):
                break
            entries.append(entry)
        return entries[:n]

    def append(self, i: int, result: dict, used: dict, output: np.ndarray | None) -> None:
        self.pictures.mkdir(parents=True, exist_ok=True)
        if output is not None:
            write_atomic(self.pictures / f"{i:05d}.png", png_bytes(Image.fromarray(output)))
        if i == 0:
            write_atomic(self.path, (json.dumps({"settings": self.settings}) + "\n").encode())
        with self.path.open("a") as log:
            log.write(json.dumps({"i": i, "result": result, "used": used}) + "\n")
            log.flush()
            os.fsync(log.fileno())

    def output(self, i: int) -> np.ndarray | None:
        path = self.pictures / f"{i:05d}.png"
        return np.asarray(Image.open(path).convert("RGB")) if path.is_file() else None


def _weights_stamp(model: Any) -> list | None:
    """Size and modification time of a model folder's weight files: a resumed run must be scoring
    the same weights, not merely a model of the same name."""
    if not isinstance(model, str) or not Path(model).is_dir():
        return None
    files = sorted(p for p in Path(model).rglob("*") if p.suffix in (".safetensors", ".bin", ".ckpt"))
    return [[str(p.relative_to(model)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _category_rank(kind: str) -> int:
    order = [k for members in FAILURE_MODE_SUITE.values() for k in members]
    return order.index(kind) if kind in order else len(order)


def _jsonable(value) -> bool:
    return value is None or isinstance(value, str | int | float | bool) and not (
        isinstance(value, float) and math.isnan(value)
    )


def write_report(report: dict[str, Any], grid, out_dir: Path) -> None:
    """Write report.md, report.json and grid.png (input / target / output columns) atomically."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadOptions(f"cannot create report folder {out_dir}: {exc.strerror}") from exc
    title = f"Shapes benchmark: {report['model'] or 'editor'}, {report['n']} examples at {report['size']} px"
    if report.get("suite") == "failure-modes":
        table = failure_mode_table(report["rows"], title.replace("benchmark", "failure modes"))
    else:
        table = markdown_table(report["rows"], title)
    write_atomic(out_dir / "report.md", table.encode())
    write_atomic(out_dir / "report.json", json.dumps(report, indent=1).encode())
    write_atomic(out_dir / "grid.png", png_bytes(example_grid(grid)))
