"""The shapes benchmark: edit held-out scenes with any editor and score every kind exactly.

Examples are test-split scenes (disjoint from training seeds), kinds in round robin, half of them
phrased with held-out templates. Rows: one per edit kind, then the failure modes the literature
names as rows of their own (counting, spatial moves, identity preservation under large edits) and
the total. Columns: success rate overall, on seen and on held-out templates, PSNR to the target,
preservation error outside the mask and edit strength inside it. For the identity row, "success"
is the share of large edits (mask >= 30 % of the image) whose edge structure still matches the
target (edge-map correlation >= 0.8).

The editor is only called (``editor.edit([image], instruction, **options)``); this module never
imports torch itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..errors import BadOptions
from ..files import write_atomic
from .dataset import png_bytes
from .edits import check_kinds, make_example
from .render import check_size
from .score import ScoreRules, as_array, score_edit

#: Failure-mode rows: name -> the kinds they gather (None: the large-edit identity rule).
FAILURE_MODES = {"counting": ("count_add", "count_remove"), "spatial moves": ("move_object",)}
IDENTITY_ROW = "identity under large edits"
LARGE_EDIT_SHARE = 0.3
#: The settings a report records as used (from the first edit's params: the model may recommend them).
RECORDED_SETTINGS = ("steps", "guidance_scale", "image_guidance_scale", "scheduler")


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
        "psnr": _mean([r["psnr"] for r in items]),
        "preservation_mae": _mean([r["preservation_mae"] for r in items]),
        "edit_strength": _mean([r["edit_strength"] for r in items]),
        "target_strength": _mean([r["target_strength"] for r in items]),
    }


def summarise(results: list[dict[str, Any]], kinds: Sequence[str], rules: ScoreRules) -> dict[str, dict]:
    """Aggregate per-example scores into the report's rows."""
    rows: dict[str, dict] = {}
    for kind in kinds:
        items = [r for r in results if r["kind"] == kind]
        if items:
            rows[kind] = _row(items)
    for name, members in FAILURE_MODES.items():
        items = [r for r in results if r["kind"] in members]
        if items:
            rows[name] = _row(items)
    large = [dict(r, identity_kept=r["structure"] >= rules.structure) for r in results if r["mask_share"] >= LARGE_EDIT_SHARE]
    if large:
        rows[IDENTITY_ROW] = _row(large, "identity_kept")
    rows["all"] = _row(results)
    return rows


def markdown_table(rows: dict[str, dict], title: str) -> str:
    def fmt(v, pct=False):
        if v is None:
            return "–"
        return f"{100 * v:.1f} %" if pct else f"{v:.2f}"

    lines = [
        f"# {title}",
        "",
        "| row | n | success | seen templates | held-out templates | PSNR (dB) | preservation MAE | edit strength | target strength |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['n']} | {fmt(r['success'], True)} | {fmt(r['success_seen'], True)} | "
            f"{fmt(r['success_held_out'], True)} | {fmt(r['psnr'])} | {fmt(r['preservation_mae'])} | "
            f"{fmt(r['edit_strength'])} | {fmt(r['target_strength'])} |"
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
) -> dict[str, Any]:
    """Edit ``n`` held-out examples (test seeds ``seed .. seed + n - 1``) and score them.

    ``editor`` needs ``edit(images, instruction, **options)`` returning an object with ``.images``.
    Example ``i`` is edited with ``seed=seed + i`` and ``resolution=size`` unless ``edit_options``
    says otherwise. ``callback(done, total)`` runs after every example (raise
    :class:`ip2p.errors.Cancelled` in it to stop). With ``out_dir``, writes ``report.md``,
    ``report.json`` and ``grid.png`` there. Returns the report (``rows``, ``examples``, settings).
    """
    if not isinstance(n, int) or n < 1:
        raise BadOptions(f"n must be a positive integer, got {n!r}")
    check_size(size)
    kinds = check_kinds(kinds)
    rules = rules or ScoreRules()
    options = {"resolution": size, **{k: v for k, v in (edit_options or {}).items() if v is not None}}
    results, grid, used = [], [], {}
    for i in range(n):
        example = make_example(seed + i, size, kinds=[kinds[i % len(kinds)]], split="test")
        before = Image.fromarray(example.before)
        result = editor.edit([before], example.instruction, **{"seed": seed + i, **options})
        output = as_array(result.images[0], size)
        if not used and getattr(result, "params", None):
            used = {k: result.params[0][k] for k in RECORDED_SETTINGS if k in result.params[0]}
        score = score_edit(example, output, rules)
        results.append(
            {
                "seed": example.seed,
                "kind": example.kind,
                "instruction": example.instruction,
                "template_id": example.template_id,
                "held_out": example.held_out,
                **score,
            }
        )
        if len(grid) < grid_examples:
            mark = "ok" if score["success"] else "fail"
            grid.append((f"{example.kind} [{mark}] {example.instruction}", example.before, example.after, output))
        if callback:
            callback(i + 1, n)
    rows = summarise(results, kinds, rules)
    report = {
        "benchmark": "shapes",
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
    write_atomic(out_dir / "report.md", markdown_table(report["rows"], title).encode())
    write_atomic(out_dir / "report.json", json.dumps(report, indent=1).encode())
    write_atomic(out_dir / "grid.png", png_bytes(example_grid(grid)))
