"""Aggregating evaluation rows into the comparison table, and writing it as JSON and Markdown.

The table compares methods the way InstructPix2Pix is set against SDEdit (Brooks et al. 2023): a row
per method (and per sweep setting), a column per metric, and the measured time per edit. A multi-turn test set (MagicBrush) gets MagicBrush's two settings (Zhang et al. 2023, Table 2):
"all turns", every turn edited from its ground-truth input and averaged over all turns, and "final
turn", every turn edited from the method's own previous output and only the last turn scored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .metrics import HIGHER_IS_BETTER, METRICS

#: Column titles of the metrics; the arrow says which way is better.
TITLES = {
    "clip_text": "CLIP text-image", "clip_direction": "CLIP direction", "clip_image": "CLIP image",
    "l1": "L1", "l2": "L2", "clip_i": "CLIP-I", "dino": "DINO", "clip_t": "CLIP-T", "fid": "FID",
}
CHAIN_TITLES = {
    "all": "All turns: each turn edits its ground-truth input (MagicBrush's single-turn setting)",
    "final": "Final turn: each turn edits the previous output, the last turn is scored (multi-turn setting)",
}


def scored_rows(rows: Sequence[dict[str, Any]], chain: str) -> list[dict[str, Any]]:
    """The rows a table averages: every row of the "all" chain, the last turns of the "final" chain."""
    if chain == "final":
        return [r for r in rows if r["turn"] == r["turns"]]
    return list(rows)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 4) if values else None


def summarise(rows: Sequence[dict[str, Any]], metrics: Sequence[str],
              fid: Callable[[list[dict[str, Any]]], float | None] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Tables by chain: one line per (method, setting), in the order rows first name them, with the
    mean of each metric over the scored rows, ``fid`` of them (when asked and given), and
    ``seconds_per_edit`` over every edit the method made in that chain."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["chain"], row["method"], row["setting_label"]), []).append(row)
    tables: dict[str, list[dict[str, Any]]] = {}
    for (chain, method, label), members in groups.items():
        scored = scored_rows(members, chain)
        line = {"method": method, "family": members[0]["family"], "setting": members[0]["setting"],
                "setting_label": label, "n": len(scored)}
        for metric in metrics:
            if metric != "fid":
                line[metric] = _mean(r.get(metric) for r in scored)
        if "fid" in metrics:
            line["fid"] = None if fid is None else fid(scored)
        line["seconds_per_edit"] = _mean(r["seconds"] for r in members)
        tables.setdefault(chain, []).append(line)
    return tables


def _fmt(value, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(tables: dict[str, list[dict[str, Any]]], metrics: Sequence[str], title: str,
             multi_turn: bool) -> str:
    """The tables as Markdown, best value of each metric column in bold."""
    cols = [m for m in METRICS if m in metrics]
    lines = [f"# {title}", ""]
    for chain, table in tables.items():
        if multi_turn:
            lines += [f"## {CHAIN_TITLES[chain]}", ""]
        arrows = {m: ("↑" if m in HIGHER_IS_BETTER else "↓") for m in cols}
        lines.append("| method | setting | n | " + " | ".join(f"{TITLES[m]} {arrows[m]}" for m in cols)
                     + " | s / edit |")
        lines.append("|---|---|---:|" + "---:|" * len(cols) + "---:|")
        best = {}
        for m in cols:
            values = [r[m] for r in table if r.get(m) is not None and r["family"] != "identity"]
            if values:
                best[m] = max(values) if m in HIGHER_IS_BETTER else min(values)
        for r in table:
            cells = []
            for m in cols:
                text = _fmt(r.get(m), 2 if m == "fid" else 4)
                cells.append(f"**{text}**" if r.get(m) is not None and r.get(m) == best.get(m)
                             and r["family"] != "identity" else text)
            lines.append(f"| {r['method']} | {r['setting_label'] or '–'} | {r['n']} | " + " | ".join(cells)
                         + f" | {_fmt(r['seconds_per_edit'], 3)} |")
        lines.append("")
    lines.append("Identity (the input returned unchanged) is the floor: it is never bold. "
                 "Time per edit is wall-clock seconds of the edit alone, without the metrics.")
    return "\n".join(lines) + "\n"


def sweep_points(tables: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The trade-off plot's points: the single-turn table's lines, each annotated with its setting
    (or, for a family of baselines such as SDEdit at several strengths, its own name)."""
    table = tables.get("all", [])
    sizes: dict[str, int] = {}
    for r in table:
        sizes[r["family"]] = sizes.get(r["family"], 0) + 1
    points = []
    for r in table:
        note = r["setting_label"] or (r["method"].rpartition(", ")[2].rstrip(")") if sizes[r["family"]] > 1 else "")
        points.append({**r, "annotation": note})
    return points
