"""The on-disk data set, in the original InstructPix2Pix layout, written so a killed run resumes.

Layout (what the original image script writes and its training loader reads)::

    OUT/seeds.json                      [[ "0000000", [seed, ...] ], ...]  prompts with kept pairs
    OUT/0000000/prompt.json             {"caption", "edit", "output", ...}
    OUT/0000000/{seed}_0.jpg            the source image of a kept pair
    OUT/0000000/{seed}_1.jpg            its edited image
    OUT/0000000/metadata.jsonl          one line per kept pair: seed, p, cfg and the CLIP scores

Bookkeeping that makes a run resumable (removed or ignored by readers):

    OUT/0000000/candidates.jsonl        one line per *generated* pair (kept or not), appended
                                        after its images are in place; a torn last line is cut
    OUT/0000000/.candidates/            images of pairs that passed the thresholds
    OUT/0000000/done.json               written last: the prompt is complete

A pair is generated at most once: after a crash, every seed in ``candidates.jsonl`` is skipped and
the rest of the prompt's seeds are made. Folder names are the prompt's index in the prompts file,
so shards (``index % partitions == partition``) never collide.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import BadData
from ..files import atomic_path, write_atomic

CANDIDATES = "candidates.jsonl"
CANDIDATE_DIR = ".candidates"
DONE = "done.json"


def prompt_name(index: int) -> str:
    return f"{index:07d}"


def _jpeg(image, quality: int) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


class PairStore:
    """Reads and writes one output folder; every write is atomic or append-then-validate."""

    def __init__(self, root: str | Path, jpeg_quality: int = 95):
        self.root = Path(root)
        self.jpeg_quality = jpeg_quality
        if self.root.exists() and not self.root.is_dir():
            raise BadData(f"output {self.root} exists and is not a folder")
        self.root.mkdir(parents=True, exist_ok=True)

    def folder(self, index: int) -> Path:
        return self.root / prompt_name(index)

    def is_done(self, index: int) -> bool:
        return (self.folder(index) / DONE).is_file()

    def begin(self, index: int, prompt: dict) -> None:
        path = self.folder(index) / "prompt.json"
        record = {"caption": prompt["caption"], "edit": prompt["edit"], "output": prompt["output"],
                  **{k: v for k, v in prompt.items() if k not in ("caption", "edit", "output", "input")}}
        if path.is_file():
            try:
                old = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                old = None
            if old is not None and (old.get("caption"), old.get("output")) != (record["caption"], record["output"]):
                raise BadData(f"{path} belongs to another prompt ({old.get('caption')!r}); "
                              "use a fresh output folder for a different prompts file")
            if old == record:
                return
        write_atomic(path, json.dumps(record, ensure_ascii=False), parents=True)

    # ---------------------------------------------------------------------------------------
    # candidates

    def candidates(self, index: int) -> list[dict]:
        """The pairs already generated for a prompt; a torn trailing line is cut off the file."""
        path = self.folder(index) / CANDIDATES
        if not path.is_file():
            return []
        data = path.read_bytes()
        records, good = [], 0
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                records.append(json.loads(line))
            except ValueError:
                break
            good += len(line)
        if good != len(data):
            with open(path, "r+b") as fh:
                fh.truncate(good)
        return records

    def add_candidate(self, index: int, record: dict, images: Sequence | None = None) -> None:
        """Record one generated pair; ``images`` (source, edited) are kept only for passing pairs."""
        folder = self.folder(index)
        if images is not None:
            for k, image in enumerate(images):
                write_atomic(folder / CANDIDATE_DIR / f"{record['seed']}_{k}.jpg", _jpeg(image, self.jpeg_quality),
                             parents=True)
        line = (json.dumps(record) + "\n").encode("utf-8")
        with open(folder / CANDIDATES, "ab") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def finish(self, index: int, kept: Sequence[dict]) -> None:
        """Move the kept pairs into place, write metadata and the done-marker, drop bookkeeping.

        Idempotent: a crash at any point leaves a state this can be called on again.
        """
        folder = self.folder(index)
        for record in kept:
            for k in (0, 1):
                name = f"{record['seed']}_{k}.jpg"
                source = folder / CANDIDATE_DIR / name
                if source.is_file():
                    os.replace(source, folder / name)
                elif not (folder / name).is_file():
                    raise BadData(f"{folder}: kept pair {record['seed']} has no image {name}")
        lines = "".join(json.dumps(r) + "\n" for r in kept)
        write_atomic(folder / "metadata.jsonl", lines, parents=True)
        generated = len(self.candidates(index))
        done = {"seeds": [r["seed"] for r in kept], "generated": generated}
        write_atomic(folder / DONE, json.dumps(done), parents=True)
        shutil.rmtree(folder / CANDIDATE_DIR, ignore_errors=True)
        (folder / CANDIDATES).unlink(missing_ok=True)

    # ---------------------------------------------------------------------------------------
    # reading a finished data set

    def done_prompts(self) -> Iterator[tuple[str, list[int]]]:
        for marker in sorted(self.root.glob(f"*/{DONE}")):
            try:
                seeds = json.loads(marker.read_text())["seeds"]
            except (ValueError, KeyError):
                raise BadData(f"{marker} is corrupt; delete it to regenerate that prompt") from None
            yield marker.parent.name, [int(s) for s in seeds]

    def write_seeds(self) -> Path:
        """(Re)write ``seeds.json`` from the done-markers: the index the training loader reads."""
        entries = [[name, seeds] for name, seeds in self.done_prompts() if seeds]
        return write_atomic(self.root / "seeds.json", json.dumps(entries), parents=True)

    def pairs(self) -> Iterator[dict]:
        """Every kept pair: prompt fields, metadata and the two JPEG files' paths."""
        for name, seeds in self.done_prompts():
            folder = self.root / name
            prompt = json.loads((folder / "prompt.json").read_text(encoding="utf-8"))
            meta = {}
            for line in (folder / "metadata.jsonl").read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    meta[int(row["seed"])] = row
            for seed in seeds:
                yield {"name": name, "prompt": prompt, "meta": meta.get(seed, {"seed": seed}),
                       "image_0": folder / f"{seed}_0.jpg", "image_1": folder / f"{seed}_1.jpg"}


# --------------------------------------------------------------------------------------------
# Hugging Face parquet export

HF_FEATURES = {
    "original_prompt": {"dtype": "string", "_type": "Value"},
    "original_image": {"_type": "Image"},
    "edit_prompt": {"dtype": "string", "_type": "Value"},
    "edited_prompt": {"dtype": "string", "_type": "Value"},
    "edited_image": {"_type": "Image"},
    "seed": {"dtype": "int64", "_type": "Value"},
    "p": {"dtype": "float64", "_type": "Value"},
    "cfg": {"dtype": "float64", "_type": "Value"},
    "clip_sim_0": {"dtype": "float64", "_type": "Value"},
    "clip_sim_1": {"dtype": "float64", "_type": "Value"},
    "clip_sim_dir": {"dtype": "float64", "_type": "Value"},
    "clip_sim_image": {"dtype": "float64", "_type": "Value"},
}


def export_parquet(root: str | Path, out: str | Path, rows_per_group: int = 256) -> int:
    """Write every kept pair of ``root`` to one parquet file readable by ``datasets``.

    Columns follow the public instruct-pix2pix data sets (``original_prompt``, ``original_image``,
    ``edit_prompt``, ``edited_prompt``, ``edited_image``) plus seed, p, cfg and the CLIP scores;
    images are ``{bytes, path}`` structs with the ``datasets`` Image feature in the schema metadata.
    Returns the number of rows. The file appears atomically.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = PairStore(root)
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fields = [pa.field("original_prompt", pa.string()), pa.field("original_image", image),
              pa.field("edit_prompt", pa.string()), pa.field("edited_prompt", pa.string()),
              pa.field("edited_image", image), pa.field("seed", pa.int64())]
    fields += [pa.field(k, pa.float64()) for k in ("p", "cfg", "clip_sim_0", "clip_sim_1", "clip_sim_dir",
                                                    "clip_sim_image")]
    metadata = {b"huggingface": json.dumps({"info": {"features": HF_FEATURES}}).encode()}
    schema = pa.schema(fields, metadata=metadata)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with atomic_path(out) as tmp:
        with pq.ParquetWriter(str(tmp), schema) as writer:
            rows: list[dict] = []
            for pair in store.pairs():
                meta = pair["meta"]
                rows.append({
                    "original_prompt": pair["prompt"]["caption"],
                    "original_image": {"bytes": pair["image_0"].read_bytes(), "path": None},
                    "edit_prompt": pair["prompt"]["edit"],
                    "edited_prompt": pair["prompt"]["output"],
                    "edited_image": {"bytes": pair["image_1"].read_bytes(), "path": None},
                    "seed": int(meta["seed"]),
                    **{k: meta.get(k) for k in ("p", "cfg", "clip_sim_0", "clip_sim_1", "clip_sim_dir",
                                                "clip_sim_image")},
                })
                if len(rows) >= rows_per_group:
                    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                    count += len(rows)
                    rows = []
            if rows or count == 0:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                count += len(rows)
    return count
