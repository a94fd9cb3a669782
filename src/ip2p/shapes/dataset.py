"""Writing shapes data sets in the formats the trainer reads, sharded and resumable.

Examples ``start .. start + n - 1`` of a split are cut into shards of ``shard_size``. A shard is
done when its manifest (``.shards/NNNNN.json``; for ``hf`` the parquet file itself) exists, and
manifests are written atomically after the shard's images, so a killed run resumes by skipping
the finished shards and rewriting (under the same names, never duplicating) only the unfinished
ones. The final index (``seeds.json`` or ``metadata.jsonl``) is assembled from the manifests.

Formats (images are PNG, lossless, so targets stay exact; the trainer accepts PNG or JPEG):

* ``ip2p``: the original InstructPix2Pix layout, ``seeds.json`` = ``[[folder, [seed]], ...]`` and
  ``<folder>/prompt.json`` (``caption``, ``output``, ``edit`` plus ``kind``, ``template_id``, ...),
  ``<folder>/<seed>_0.png`` (input), ``<seed>_1.png`` (edited), ``<seed>_mask.png``,
  ``<seed>_kinds.png`` (``prompt.json`` ``kinds``).
* ``jsonl``: ``metadata.jsonl`` lines with ``input_image``, ``edit_prompt``, ``edited_image``,
  ``mask_image``, ``kind_map_image`` (paths under ``images/``), ``kind``, ``caption``, ...
* ``hf``: ``data/<split>-NNNNN-of-MMMMM.parquet`` with image columns as ``{"bytes", "path"}``
  structs and Hugging Face feature metadata, for ``datasets.load_dataset("parquet", ...)``.

The kind map is a grey-level PNG of the input: 0 where the background shows, ``1 + KINDS.index(kind)``
where a shape does (:func:`render.kind_map`), the dense label ``optim.kind_weight`` trains against.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import BadOptions
from ..files import write_atomic  # temporary files are .{name}.*.tmp, which _sweep removes
from .edits import REFERENCE_MIXES, SPLITS, TEST_SEED_OFFSET, check_kinds, make_example
from .phrasing import PHRASINGS
from .render import check_size, kind_map

FORMATS = ("ip2p", "jsonl", "hf")
CONFIG_NAME = "shapes.json"


# Options added after data sets were first made: identity() leaves them out at these defaults, so
# older folders resume, and a folder's recorded identity without them means these values.
OMITTED_AT_DEFAULT = {"references": "phrase", "phrasings": "stock"}


@dataclass
class MakeOptions:
    out: str
    n: int = 1000
    size: int = 64
    format: str = "ip2p"
    split: str = "train"
    start: int = 0
    kinds: tuple[str, ...] | None = None
    workers: int = 2
    shard_size: int = 500
    references: str = "phrase"  # edits.REFERENCE_MIXES
    phrasings: str = "stock"  # phrasing.PHRASINGS

    def check(self) -> MakeOptions:
        if not isinstance(self.n, int) or self.n < 1:
            raise BadOptions(f"--n must be a positive integer, got {self.n!r}")
        check_size(self.size)
        if self.format not in FORMATS:
            raise BadOptions(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.split not in SPLITS:
            raise BadOptions(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if not isinstance(self.start, int) or self.start < 0 or self.start + self.n > TEST_SEED_OFFSET:
            raise BadOptions(f"--start must be an integer >= 0 (and start + n < 2**40), got {self.start!r}")
        if not isinstance(self.workers, int) or not 1 <= self.workers <= 64:
            raise BadOptions(f"--workers must be from 1 to 64, got {self.workers!r}")
        if not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise BadOptions(f"--shard-size must be a positive integer, got {self.shard_size!r}")
        if self.references not in REFERENCE_MIXES:
            raise BadOptions(f"--references must be one of {', '.join(REFERENCE_MIXES)}, got {self.references!r}")
        if self.phrasings not in PHRASINGS:
            raise BadOptions(f"--phrasings must be one of {', '.join(PHRASINGS)}, got {self.phrasings!r}")
        if self.phrasings != "stock" and self.split != "train":
            raise BadOptions(f"--phrasings {self.phrasings} is for --split train only: the test split keeps the "
                             "stock phrasings")
        self.kinds = None if self.kinds is None else check_kinds(self.kinds)
        return self

    @property
    def shards(self) -> int:
        return -(-self.n // self.shard_size)

    def identity(self) -> dict[str, Any]:
        """What a resumed run must agree on (workers may differ)."""
        d = asdict(self)
        d.pop("workers")
        d.pop("out")
        d["kinds"] = list(self.kinds) if self.kinds else None
        for key, default in OMITTED_AT_DEFAULT.items():  # folders made before the option stay resumable
            if d[key] == default:
                del d[key]
        return d


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    """Write one example file in place. Atomicity is per shard: a file of an unfinished shard may be
    cut short by a kill, but no index names it until its shard's manifest (written atomically, after
    all its files) exists, and a resumed run rewrites the whole unfinished shard."""
    with open(path, "wb") as f:
        f.write(data)


def _sweep(folder: Path) -> None:
    """Delete temporary files a killed run left behind in ``folder``."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                os.unlink(entry.path)


def _shard_done(opts: MakeOptions, out: Path, shard: int) -> bool:
    return _marker(opts, out, shard).exists()


def _marker(opts: MakeOptions, out: Path, shard: int) -> Path:
    if opts.format == "hf":
        return out / "data" / f"{opts.split}-{shard:05d}-of-{opts.shards:05d}.parquet"
    return out / ".shards" / f"{shard:05d}.json"


def _write_shard(args: tuple[MakeOptions, int]) -> int:
    """Write one shard's examples and then its marker; returns the number of examples."""
    opts, shard = args
    out = Path(opts.out)
    first = opts.start + shard * opts.shard_size
    last = min(opts.start + opts.n, first + opts.shard_size)
    records, rows = [], []
    for seed in range(first, last):
        ex = make_example(seed, opts.size, opts.kinds, opts.split, reference_mix=opts.references,
                          phrasings=opts.phrasings)
        before, after, mask = (png_bytes(im) for im in ex.images())
        kinds = png_bytes(Image.fromarray(kind_map(ex.scene, opts.size), mode="L"))
        meta = ex.record()
        name = f"{seed:08d}"
        if opts.format == "ip2p":
            folder = out / name
            folder.mkdir(exist_ok=True)
            for suffix, data in (("0", before), ("1", after), ("mask", mask), ("kinds", kinds)):
                _write(folder / f"{seed}_{suffix}.png", data)
            prompt = {"caption": ex.caption, "output": ex.output_caption, "edit": ex.instruction}
            prompt.update({k: meta[k] for k in ("kind", "template_id", "held_out", "split", "seed", "size")})
            prompt["mask"], prompt["kinds"] = f"{seed}_mask.png", f"{seed}_kinds.png"
            _write(folder / "prompt.json", json.dumps(prompt).encode())
            records.append([name, [seed]])
        elif opts.format == "jsonl":
            paths = {}
            files = (("input_image", "0", before), ("edited_image", "1", after), ("mask_image", "mask", mask),
                     ("kind_map_image", "kinds", kinds))
            for key, suffix, data in files:
                paths[key] = f"images/{name}_{suffix}.png"
                _write(out / paths[key], data)
            records.append(_flat_record(meta, ex.caption, ex.output_caption) | paths)
        else:
            rows.append(
                _flat_record(meta, ex.caption, ex.output_caption)
                | {
                    "input_image": {"bytes": before, "path": f"{name}_0.png"},
                    "edited_image": {"bytes": after, "path": f"{name}_1.png"},
                    "mask_image": {"bytes": mask, "path": f"{name}_mask.png"},
                    "kind_map_image": {"bytes": kinds, "path": f"{name}_kinds.png"},
                }
            )
    marker = _marker(opts, out, shard)
    if opts.format == "hf":
        write_atomic(marker, _parquet_bytes(rows))
    else:
        write_atomic(marker, json.dumps(records).encode())
    return last - first


def _flat_record(meta: dict[str, Any], caption: str, output_caption: str) -> dict[str, Any]:
    return {
        "edit_prompt": meta["edit_prompt"],
        "kind": meta["kind"],
        "caption": caption,
        "output_caption": output_caption,
        "template_id": meta["template_id"],
        "held_out": meta["held_out"],
        "split": meta["split"],
        "seed": meta["seed"],
        "target": json.dumps(meta["target"]),
    }


_IMAGE_COLUMNS = ("input_image", "edited_image", "mask_image", "kind_map_image")
_STRING_COLUMNS = ("edit_prompt", "kind", "caption", "output_caption", "template_id", "split", "target")


def _parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fields = [(c, image) for c in _IMAGE_COLUMNS] + [(c, pa.string()) for c in _STRING_COLUMNS]
    fields += [("held_out", pa.bool_()), ("seed", pa.int64())]
    features = {c: {"_type": "Image"} for c in _IMAGE_COLUMNS}
    features |= {c: {"dtype": "string", "_type": "Value"} for c in _STRING_COLUMNS}
    features |= {"held_out": {"dtype": "bool", "_type": "Value"}, "seed": {"dtype": "int64", "_type": "Value"}}
    schema = pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": features}})})
    table = pa.Table.from_pylist(rows, schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _check_config(opts: MakeOptions, out: Path) -> None:
    path = out / CONFIG_NAME
    want = opts.identity()
    if path.exists():
        try:
            have = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise BadOptions(f"{path} is unreadable ({exc}); remove it or use another --out") from exc
        stated = OMITTED_AT_DEFAULT  # a key absent on either side means its default
        diff = sorted(k for k in {*want, *have} if have.get(k, stated.get(k)) != want.get(k, stated.get(k)))
        if diff:
            k = diff[0]
            raise BadOptions(
                f"{out} holds a data set made with {k}={have.get(k, stated.get(k))!r}, "
                f"not {want.get(k, stated.get(k))!r}; "
                "resume with the same options or use another --out"
            )
    else:
        write_atomic(path, json.dumps(want, indent=1).encode())


def _finish(opts: MakeOptions, out: Path) -> None:
    if opts.format == "hf":
        return
    records: list = []
    for shard in range(opts.shards):
        records.extend(json.loads(_marker(opts, out, shard).read_text()))
    if opts.format == "ip2p":
        write_atomic(out / "seeds.json", json.dumps(records).encode())
    else:
        write_atomic(out / "metadata.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())


def make_dataset(opts: MakeOptions, callback: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write (or finish writing) the data set ``opts`` describes.

    ``callback(done, total)`` is called after every finished shard with example counts. Returns
    ``written`` (examples made by this call), ``skipped`` (already there), ``seconds`` and ``rate``
    (examples per second of this call).
    """
    opts.check()
    out = Path(opts.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for sub in {"ip2p": [".shards"], "jsonl": [".shards", "images"], "hf": ["data"]}[opts.format]:
            (out / sub).mkdir(exist_ok=True)
    except OSError as exc:
        raise BadOptions(f"cannot create output folder {out}: {exc.strerror}") from exc
    _check_config(opts, out)
    for sub in (".", ".shards", "images", "data"):
        if (out / sub).is_dir():
            _sweep(out / sub)
    pending = [s for s in range(opts.shards) if not _shard_done(opts, out, s)]
    skipped = opts.n - sum(min(opts.shard_size, opts.n - s * opts.shard_size) for s in pending)
    done, written = skipped, 0
    t0 = time.perf_counter()
    if callback:
        callback(done, opts.n)
    jobs = [(opts, s) for s in pending]
    if opts.workers == 1 or len(jobs) <= 1:
        results = map(_write_shard, jobs)
        pool = None
    else:
        pool = multiprocessing.get_context("fork").Pool(min(opts.workers, len(jobs)))
        results = pool.imap_unordered(_write_shard, jobs)
    try:
        for count in results:
            done += count
            written += count
            if callback:
                callback(done, opts.n)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    _finish(opts, out)
    seconds = time.perf_counter() - t0
    return {
        "out": str(out),
        "format": opts.format,
        "written": written,
        "skipped": skipped,
        "seconds": round(seconds, 3),
        "rate": round(written / seconds, 1) if written and seconds > 0 else None,
    }
