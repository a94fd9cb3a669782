"""Running an evaluation: every method (at every sweep setting) on every turn, resumably.

The output folder holds

* ``run.json``: what the rows were made with (test set, seed, metrics, each method's description);
  a rerun must agree on it, and may add methods or sweep settings;
* ``rows.jsonl``: one line per finished edit (method, setting, chain, turn, seed, seconds, image,
  metrics), appended and fsynced as each edit finishes; a rerun after a kill reads it back, drops a
  torn last line and skips every edit it holds, so nothing is edited twice;
* ``images/<method>/<setting>/<chain>/<turn>.png``: each output, written atomically before its row
  (a "final turn" chain continues from the saved previous output);
* ``report.json`` and ``report.md`` (the comparison table), and with a sweep ``sweep.json``,
  ``sweep.md`` and ``sweep.png`` (the trade-off plot).

Edit ``k`` of session ``i`` uses seed ``seed + i``, so a turn's first edit is the same in both chains
and the "final" chain reuses the "all" chain's first turn. Progress is ``callback(done, total)``
after every edit (resumed ones included).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import BadData, BadOptions
from ..files import write_atomic
from .data import EvalSet
from .metrics import EDIT_METRICS, FID_FEATURES, FeatureNet, Scorer, check_metrics, frechet_distance
from .report import markdown, summarise, sweep_points
from .sweep import Sweep, plot_tradeoff, setting_label

CHAINS = ("all", "final")
ROWS = "rows.jsonl"
RUN = "run.json"


@dataclass
class EvalOptions:
    """What to compute and where; ``fid_features`` is inception, clip, dino or a torch module."""

    out: str
    metrics: tuple[str, ...] = EDIT_METRICS
    seed: int = 0
    chains: tuple[str, ...] = CHAINS
    sweep: Sweep | None = None
    fid_features: Any = "inception"
    fid_reference: str | None = None
    title: str = "ip2p eval"
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in report.json as given

    def check(self) -> EvalOptions:
        self.metrics = check_metrics(self.metrics)
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**62:
            raise BadOptions(f"--seed must be an integer >= 0, got {self.seed!r}", param="--seed")
        self.chains = tuple(dict.fromkeys(self.chains))
        if not self.chains or set(self.chains) - set(CHAINS):
            raise BadOptions(f"--turns must be some of {', '.join(CHAINS)}, got {','.join(self.chains)!r}",
                             param="--turns")
        if isinstance(self.fid_features, str) and self.fid_features not in FID_FEATURES:
            raise BadOptions(f"--fid-features must be one of {', '.join(FID_FEATURES)}", param="--fid-features")
        if self.fid_reference is not None and not Path(self.fid_reference).is_dir():
            raise BadOptions(f"--fid-reference {self.fid_reference}: not a folder", param="--fid-reference")
        return self


class Journal:
    """The finished rows of a run, read back on start (a torn last line, from a kill, is cut off)."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[tuple, dict[str, Any]] = {}
        if not path.is_file():
            return
        data = path.read_bytes()
        keep = data[: data.rfind(b"\n") + 1]
        for line in keep.splitlines():
            try:
                row = json.loads(line)
                self.rows[self.key(row)] = row
            except (ValueError, KeyError, TypeError):
                raise BadData(f"{path}: unreadable line {line[:60]!r}; remove it to resume") from None
        if keep != data:
            write_atomic(path, keep)

    @staticmethod
    def key(row: dict[str, Any]) -> tuple:
        return row["method"], row["setting_label"], row["chain"], row["key"]

    def get(self, *key) -> dict[str, Any] | None:
        return self.rows.get(tuple(key))

    def append(self, row: dict[str, Any]) -> None:
        with self.path.open("ab") as handle:
            handle.write((json.dumps(row) + "\n").encode())
            handle.flush()
            os.fsync(handle.fileno())
        self.rows[self.key(row)] = row


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_") or "default"


def _check_run(out: Path, eval_set: EvalSet, methods, options: EvalOptions) -> None:
    """Refuse a folder made with another test set, seed or metrics, or another method of the same name."""
    current = {"data": eval_set.identity(), "seed": options.seed, "metrics": list(options.metrics),
               "methods": {m.name: m.describe() for m in methods}}
    path = out / RUN
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            raise BadData(f"{path}: unreadable; use a new --out") from None
        for key in ("data", "seed", "metrics"):
            if old.get(key) != current[key]:
                raise BadOptions(f"{out} holds a run with another {key} ({old.get(key)!r}); use a new --out",
                                 param="--out")
        for name, described in current["methods"].items():
            if name in old.get("methods", {}) and old["methods"][name] != described:
                raise BadOptions(f"{out} holds {name!r} made with other settings; use a new --out", param="--out")
        current["methods"] = {**old.get("methods", {}), **current["methods"]}
    write_atomic(path, json.dumps(current, indent=1))


def _open(ref) -> Image.Image:
    from ..train.data import open_image

    return open_image(ref)


def _png(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def evaluate(eval_set: EvalSet, methods: Sequence, scorer: Scorer, options: EvalOptions,
             callback: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run ``methods`` on ``eval_set``, score each edit with ``scorer``, write the report; returns it."""
    options.check()
    names = [m.name for m in methods]
    if not methods or len(set(names)) != len(names):
        raise BadOptions("an evaluation needs at least one method, each with its own name")
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_run(out, eval_set, methods, options)
    journal = Journal(out / ROWS)
    chains = [c for c in CHAINS if c in options.chains] if eval_set.multi_turn else ["all"]
    jobs = [(m, s) for m in methods for s in (options.sweep.settings() if options.sweep and m.sweepable else [{}])]
    total, done = len(jobs) * len(chains) * len(eval_set.turns()), 0
    wanted = []
    for method, setting in jobs:
        label = setting_label(setting)
        for chain in chains:
            for number, session in enumerate(eval_set.sessions):
                previous: str | None = None
                for turn in session:
                    row = journal.get(method.name, label, chain, turn.key)
                    if row is None and chain == "final" and turn.index == 1 and "all" in chains:
                        first = journal.get(method.name, label, "all", turn.key)
                        if first is not None:
                            row = {**first, "chain": "final"}
                            journal.append(row)
                    if row is None:
                        source = turn.input if chain == "all" or previous is None else out / previous
                        row = _edit_one(out, method, setting, label, chain, turn, len(session),
                                        options.seed + number, source, scorer)
                        journal.append(row)
                    previous = row["image"]
                    wanted.append(row)
                    done += 1
                    if callback:
                        callback(done, total)
    return _write_report(out, eval_set, methods, options, wanted, scorer)


def _edit_one(out: Path, method, setting, label, chain, turn, turns: int, seed: int, source, scorer: Scorer):
    image = _open(source)
    target = _open(turn.target) if turn.target is not None else None
    start = time.perf_counter()
    output = method.edit(image, turn, seed, dict(setting))
    seconds = time.perf_counter() - start
    rel = "/".join(("images", _slug(method.name), _slug(label), chain, _slug(turn.key) + ".png"))
    write_atomic(out / rel, _png(output.convert("RGB")), parents=True)
    return {"method": method.name, "family": method.family, "setting": setting, "setting_label": label,
            "chain": chain, "key": turn.key, "session": turn.session, "turn": turn.index, "turns": turns,
            "seed": seed, "seconds": round(seconds, 4), "image": rel,
            **scorer.score(image, output, turn, target)}


def _fid_function(out: Path, eval_set: EvalSet, options: EvalOptions, scorer: Scorer):
    if "fid" not in options.metrics:
        return None
    features = options.fid_features
    if features in ("clip", "dino"):
        model = scorer.models["clip" if features == "clip" else "dino"]
        if model is None:
            raise BadOptions(f"--fid-features {features} needs the {features} metrics' model; add a "
                             f"{'clip_image' if features == 'clip' else 'dino'} metric", param="--fid-features")
        features = FeatureNet(model)
    targets = {t.key: t.target for t in eval_set.turns()}
    reference = None
    if options.fid_reference:
        from ..train.data import IMAGE_SUFFIXES

        files = sorted(p for p in Path(options.fid_reference).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        reference = [_open(p) for p in files]

    def fid(rows: list[dict[str, Any]]) -> float | None:
        real = reference if reference is not None else [_open(targets[r["key"]]) for r in rows
                                                        if targets.get(r["key"]) is not None]
        if len(rows) < 2 or len(real) < 2:
            return None
        return round(frechet_distance(real, [_open(out / r["image"]) for r in rows], features), 4)

    return fid


def _write_report(out: Path, eval_set: EvalSet, methods, options: EvalOptions, rows, scorer: Scorer):
    tables = summarise(rows, options.metrics, _fid_function(out, eval_set, options, scorer))
    report = {
        "title": options.title, "data": eval_set.identity(), "seed": options.seed, "metrics": list(options.metrics),
        "methods": {m.name: m.describe() for m in methods}, "chains": list(tables), "tables": tables,
        "sweep": None if options.sweep is None else {"name": options.sweep.name, "values": list(options.sweep.values)},
        **options.extra,
    }
    write_atomic(out / "report.json", json.dumps(report, indent=1))
    write_atomic(out / "report.md", markdown(tables, options.metrics, options.title, eval_set.multi_turn))
    if options.sweep is not None:
        points = sweep_points(tables)
        write_atomic(out / "sweep.json", json.dumps({"sweep": report["sweep"], "points": points}, indent=1))
        write_atomic(out / "sweep.md", markdown({"all": points}, options.metrics,
                                                f"{options.title}: sweep of {options.sweep.name}", False))
        if "clip_direction" in options.metrics and "clip_image" in options.metrics:
            plot_tradeoff(points, out / "sweep.png", f"{options.title}: sweep of {options.sweep.name}")
    return report
