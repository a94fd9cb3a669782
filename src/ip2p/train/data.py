"""Edit-pair data sets: (input image, instruction, edited image) from three on-disk formats.

* ``ip2p``: the original release (Brooks et al. 2023): ``seeds.json`` lists ``[folder, [seeds]]``;
  each folder holds ``prompt.json`` (``caption``, ``output``, ``edit``) and ``{seed}_0`` / ``{seed}_1``
  images (.jpg or .png), the input and the edited image.
* ``hf``: a Hugging Face ``datasets`` data set (saved with ``save_to_disk``, a folder of parquet or
  arrow files, an image folder, or a cached hub id) with configurable column names.
* ``jsonl``: ``metadata.jsonl`` whose rows name the two images (paths relative to the file) and
  the instruction, beside an image folder.

A source may also name a *kind map* per sample (``prompt.json`` ``kinds``, a ``kind_map_image``
column): a grey-level label image of what each input pixel shows, which ``optim.kind_weight``
trains against (the shapes world writes one).

Every sample gets the same random resize, crop and flip on both images (and the kind map), drawn from a seed that
depends only on (run seed, epoch, index), so a resumed run sees exactly the same pixels. A sample
that cannot be read comes back as a ``bad`` marker instead of raising: the loop counts it, warns
once and carries on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import BadData, BadImage, first_line
from .config import DataConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
KIND_MAP_COLUMN = "kind_map_image"  # the jsonl / hf column of a sample's kind map (ip2p.shapes.dataset)


@dataclass
class Record:
    """One sample before decoding: two image references (path, bytes or PIL), the instruction and,
    where the source has one, a kind map reference."""

    input: Any
    edited: Any
    instruction: str
    kind_map: Any = None


# --------------------------------------------------------------------------------------------
# sources


class EditPairSource:
    """Random access to records; ``bad_at_index`` counts rows dropped while indexing."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self.bad_at_index: list[str] = []

    def __len__(self) -> int:
        raise NotImplementedError

    def record(self, index: int) -> Record:
        raise NotImplementedError

    def instructions(self) -> list[str]:
        return [self.record(i).instruction for i in range(len(self))]


class Ip2pFolderSource(EditPairSource):
    """The original release layout (``seeds.json`` plus per-prompt folders)."""

    def __init__(self, cfg: DataConfig, root: Path):
        super().__init__(cfg)
        try:
            seeds = json.loads((root / "seeds.json").read_text())
        except (OSError, ValueError) as exc:
            raise BadData(f"{root}/seeds.json is unreadable: {exc}") from None
        if not isinstance(seeds, list):
            raise BadData(f"{root}/seeds.json must be a list of [folder, [seeds]]")
        self.items: list[tuple[Path, int, str, str | None]] = []
        for entry in seeds:
            if not (isinstance(entry, list | tuple) and len(entry) == 2 and isinstance(entry[1], list)):
                self.bad_at_index.append(f"seeds.json entry {str(entry)[:60]} is not [folder, [seeds]]")
                continue
            folder = root / str(entry[0])
            try:
                prompt = json.loads((folder / "prompt.json").read_text())
                edit = prompt["edit"]
                if not isinstance(edit, str):
                    raise KeyError("edit")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                self.bad_at_index.append(f"{folder}/prompt.json: unreadable or no 'edit' field ({exc})")
                continue
            kinds = prompt.get("kinds") if isinstance(prompt.get("kinds"), str) else None
            for seed in entry[1]:
                self.items.append((folder, seed, edit, kinds))

    def __len__(self) -> int:
        return len(self.items)

    def record(self, index: int) -> Record:
        folder, seed, edit, kinds = self.items[index]
        return Record(_find_image(folder, f"{seed}_0"), _find_image(folder, f"{seed}_1"), edit,
                      folder / kinds if kinds else None)

    def instructions(self) -> list[str]:
        return [item[2] for item in self.items]


def _find_image(folder: Path, stem: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        path = folder / (stem + suffix)
        if path.is_file():
            return path
    return folder / (stem + ".jpg")  # missing: reported when loaded


class JsonlSource(EditPairSource):
    """``metadata.jsonl`` rows with image paths relative to the file."""

    def __init__(self, cfg: DataConfig, path: Path):
        super().__init__(cfg)
        self.root = path.parent
        cols = (cfg.input_column, cfg.instruction_column, cfg.edited_column)
        self.rows: list[tuple[str, str, str, str | None]] = []
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise BadData(f"cannot read {path}: {exc.strerror or exc}") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                values = tuple(row[c] for c in cols)
                if not all(isinstance(v, str) for v in values):
                    raise KeyError("non-string value")
            except (ValueError, KeyError, TypeError) as exc:
                self.bad_at_index.append(f"{path.name} line {number}: not a row with {', '.join(cols)} ({exc})")
                continue
            kinds = row.get(KIND_MAP_COLUMN)
            self.rows.append(values + (kinds if isinstance(kinds, str) else None,))

    def __len__(self) -> int:
        return len(self.rows)

    def record(self, index: int) -> Record:
        source, instruction, edited, kinds = self.rows[index]
        return Record(self.root / source, self.root / edited, instruction, self.root / kinds if kinds else None)

    def instructions(self) -> list[str]:
        return [row[1] for row in self.rows]


class HfSource(EditPairSource):
    """A ``datasets`` data set; images may be ``Image`` features, ``{bytes, path}`` dicts or paths."""

    def __init__(self, cfg: DataConfig, path: str):
        super().__init__(cfg)
        try:
            import datasets
        except ImportError:
            raise BadData("reading a Hugging Face data set needs the `datasets` package "
                          "(pip install 'ip2p[train]')") from None
        self.dataset = _open_hf(datasets, path, cfg.split)
        missing = [c for c in (cfg.input_column, cfg.instruction_column, cfg.edited_column)
                   if c not in self.dataset.column_names]
        if missing:
            raise BadData(f"{path}: no column {missing[0]!r} (columns: {', '.join(self.dataset.column_names)}); "
                          "set data.input_column / instruction_column / edited_column")

    def __len__(self) -> int:
        return len(self.dataset)

    def record(self, index: int) -> Record:
        row = self.dataset[index]
        cfg = self.cfg
        return Record(row[cfg.input_column], row[cfg.edited_column], row[cfg.instruction_column], row.get(KIND_MAP_COLUMN))

    def instructions(self) -> list[str]:
        return [t if isinstance(t, str) else "" for t in self.dataset[self.cfg.instruction_column]]


def _open_hf(datasets, path: str, split: str):
    folder = Path(path)
    try:
        if folder.is_dir() and ((folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()):
            loaded = datasets.load_from_disk(str(folder))
        elif folder.is_dir() and list(folder.rglob("*.parquet")):
            files = sorted(str(p) for p in folder.rglob("*.parquet"))
            loaded = datasets.load_dataset("parquet", data_files={split: files})
        elif folder.is_dir() and list(folder.rglob("*.arrow")):
            files = sorted(str(p) for p in folder.rglob("*.arrow"))
            loaded = datasets.load_dataset("arrow", data_files={split: files})
        else:
            loaded = datasets.load_dataset(path)
    except Exception as exc:  # datasets raises many types; all mean "cannot use this path"
        raise BadData(f"cannot open data set {path!r}: {first_line(exc)}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise BadData(f"data set {path!r} has no split {split!r} (splits: {', '.join(loaded)})")
        loaded = loaded[split]
    return loaded


def open_source(cfg: DataConfig) -> EditPairSource:
    """Detect the format (unless given) and index the data set."""
    path = Path(cfg.path).expanduser()
    fmt = cfg.format
    if fmt == "auto":
        if path.is_dir() and (path / "seeds.json").is_file():
            fmt = "ip2p"
        elif path.suffix == ".jsonl" or path.is_dir() and _is_pair_jsonl(path / "metadata.jsonl", cfg):
            fmt = "jsonl"
        else:
            fmt = "hf"
    if fmt == "ip2p":
        if not (path / "seeds.json").is_file():
            raise BadData(f"{path}: no seeds.json (the original InstructPix2Pix data layout)")
        source: EditPairSource = Ip2pFolderSource(cfg, path)
    elif fmt == "jsonl":
        file = path if path.is_file() else path / "metadata.jsonl"
        if not file.is_file():
            raise BadData(f"{path}: no metadata.jsonl")
        source = JsonlSource(cfg, file)
    else:
        if not path.exists() and "/" not in cfg.path:
            raise BadData(f"data set {cfg.path!r} not found")
        source = HfSource(cfg, cfg.path)
    if len(source) == 0:
        why = f" ({len(source.bad_at_index)} bad rows, first: {source.bad_at_index[0]})" if source.bad_at_index else ""
        raise BadData(f"data set {cfg.path!r} has no samples{why}")
    return source


def _is_pair_jsonl(file: Path, cfg: DataConfig) -> bool:
    if not file.is_file():
        return False
    with file.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                try:
                    return cfg.input_column in json.loads(line)
                except ValueError:
                    return False
    return False


# --------------------------------------------------------------------------------------------
# decoding and augmentation


def open_image(ref: Any) -> Image.Image:
    """Decode an image reference to RGB, raising :class:`BadImage` with the reason."""
    try:
        if isinstance(ref, Image.Image):
            image = ref
        elif isinstance(ref, dict) and (ref.get("bytes") or ref.get("path")):
            import io

            image = Image.open(io.BytesIO(ref["bytes"])) if ref.get("bytes") else Image.open(ref["path"])
        elif isinstance(ref, str | Path):
            image = Image.open(ref)
        elif ref is None:
            raise BadImage("missing image")
        else:
            raise BadImage(f"unsupported image value of type {type(ref).__name__}")
        image.load()
        return image.convert("RGB")
    except BadImage:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadImage(f"{ref if isinstance(ref, str | Path) else 'image'}: unreadable ({exc})") from None


def open_kind_map(ref: Any, size: tuple[int, int]) -> Image.Image:
    """A sample's kind map as a grey-level image of the input's size, or :class:`BadImage` why not."""
    if ref is None:
        raise BadImage("no kind map")
    try:
        if isinstance(ref, dict):
            import io

            labels = Image.open(io.BytesIO(ref["bytes"])) if ref.get("bytes") else Image.open(ref["path"])
        else:
            labels = ref if isinstance(ref, Image.Image) else Image.open(ref)
        labels.load()
    except (OSError, ValueError, SyntaxError, KeyError) as exc:
        raise BadImage(f"kind map: unreadable ({exc})") from None
    if labels.mode != "L" or labels.size != size:
        raise BadImage(f"kind map is {labels.mode} {labels.size[0]}x{labels.size[1]}, not L {size[0]}x{size[1]}")
    return labels


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> (3, H, W) float tensor in [-1, 1], as the VAE expects."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def augment_pair(source: Image.Image, edited: Image.Image, cfg: DataConfig, seed: int,
                 labels: Image.Image | None = None):
    """The same resize, crop and flip on both images (paper: random crop + flip); with ``labels``
    (a kind map) the same on it too, resized by nearest neighbour, and a triple comes back."""
    rng = np.random.default_rng(seed)
    if edited.size != source.size:
        edited = edited.resize(source.size, Image.Resampling.BICUBIC)
    short = cfg.resolution
    if cfg.resize_max and cfg.resize_max > cfg.resolution:
        short = int(rng.integers(cfg.resolution, cfg.resize_max + 1))
    w, h = source.size
    scale = short / min(w, h)
    size = (max(short, round(w * scale)), max(short, round(h * scale)))
    if size != source.size:
        source = source.resize(size, Image.Resampling.BICUBIC)
        edited = edited.resize(size, Image.Resampling.BICUBIC)
    if labels is not None and labels.size != size:
        labels = labels.resize(size, Image.Resampling.NEAREST)
    r = cfg.resolution
    if cfg.random_crop:
        left, top = int(rng.integers(0, size[0] - r + 1)), int(rng.integers(0, size[1] - r + 1))
    else:
        left, top = (size[0] - r) // 2, (size[1] - r) // 2
    box = (left, top, left + r, top + r)
    source, edited = source.crop(box), edited.crop(box)
    labels = labels.crop(box) if labels is not None else None
    if cfg.flip and rng.random() < 0.5:
        source = source.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        edited = edited.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        labels = labels.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if labels is not None else None
    return (source, edited) if labels is None else (source, edited, labels)


class EditPairDataset(torch.utils.data.Dataset):
    """Indexed by ``(index, augmentation seed)`` pairs that :class:`StreamSampler` yields; with
    ``kind_maps`` every sample also carries its ``kind_map`` (H, W) class indices."""

    def __init__(self, source: EditPairSource, cfg: DataConfig, kind_maps: bool = False):
        self.source = source
        self.cfg = cfg
        self.kind_maps = kind_maps

    def __len__(self) -> int:
        return len(self.source)

    def load(self, index: int, aug_seed: int) -> dict[str, Any]:
        """A decoded, augmented sample; raises :class:`BadImage`/:class:`BadData` on a bad one."""
        try:
            record = self.source.record(index)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise BadData(f"sample {index}: unreadable row ({exc})") from None
        if not isinstance(record.instruction, str):
            raise BadData(f"sample {index}: instruction is not text")
        source, edited = open_image(record.input), open_image(record.edited)
        if not self.kind_maps:
            source, edited = augment_pair(source, edited, self.cfg, aug_seed)
            return {"index": index, "input": to_tensor(source), "edited": to_tensor(edited), "text": record.instruction}
        labels = open_kind_map(record.kind_map, source.size)
        source, edited, labels = augment_pair(source, edited, self.cfg, aug_seed, labels)
        return {"index": index, "input": to_tensor(source), "edited": to_tensor(edited), "text": record.instruction,
                "kind_map": torch.from_numpy(np.array(labels, dtype=np.uint8))}

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        index, aug_seed = item
        try:
            return self.load(index, aug_seed)
        except (BadImage, BadData) as exc:
            return {"index": index, "bad": str(exc)}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the good samples; report the bad ones as ``(index, reason)`` pairs."""
    good = [it for it in items if "bad" not in it]
    batch: dict[str, Any] = {"bad": [(it["index"], it["bad"]) for it in items if "bad" in it],
                             "index": [it["index"] for it in good], "text": [it["text"] for it in good]}
    for key in ("input", "edited", "input_latent", "edited_mean", "edited_logvar", "kind_map"):
        if good and key in good[0]:
            batch[key] = torch.stack([it[key] for it in good])
    return batch


# --------------------------------------------------------------------------------------------
# text


def keep_word_set(keep_words: str) -> set[str]:
    """``data.keep_words`` as a set of lower-case words ("shapes": the shapes world's content words)."""
    from ..text import split_words

    if keep_words == "shapes":
        from ..shapes.phrasing import content_words

        return set(content_words())
    return set(split_words(keep_words))


def with_unknown_words(texts: list[str], probability: float, keep: set[str],
                       generator: torch.Generator, count: int = 1) -> list[str]:
    """Give a share ``probability`` of instructions made-up words of 3-8 letters: one, or with
    ``count`` N > 1 between one and N, as many as a uniform draw says.

    Each word either replaces a word that holds no word of ``keep`` or is inserted anywhere, half and
    half. Held-out wordings ("dye the circle blue", "kindly eliminate the star") bring verbs a
    word-level tokenizer never saw, sometimes two; trained this way, the model learns to read the edit
    from the content words around them. Every text takes the same number of draws (and ``count`` 1
    the draws it always took), so the stream stays exactly resumable.
    """
    out = []
    for text in texts:
        chance, *first = torch.rand(3, generator=generator).tolist()
        draws = [(*first, _made_up_word(generator))]
        if count > 1:
            extra = int(torch.randint(0, count, (1,), generator=generator))
            more = [(*torch.rand(2, generator=generator).tolist(), _made_up_word(generator)) for _ in range(count - 1)]
            draws += more[:extra]
        if chance >= probability:
            out.append(text)
            continue
        words = text.split()
        for how, where, word in draws:
            words = _place_word(words, word, how, where, keep | {w for *_, w in draws})
        out.append(" ".join(words))
    return out


def _made_up_word(generator: torch.Generator) -> str:
    length = int(torch.randint(3, 9, (1,), generator=generator))
    letters = torch.randint(0, 26, (8,), generator=generator).tolist()
    return "".join(chr(ord("a") + c) for c in letters[:length])


def _place_word(words: list[str], word: str, how: float, where: float, keep: set[str]) -> list[str]:
    """``word`` in place of a word outside ``keep`` (``how`` < 0.5, where there is one) or inserted.
    ``keep`` holds the made-up words too, so a second never replaces the first."""
    from ..text import split_words

    free = [i for i, w in enumerate(words) if not set(split_words(w)) & keep]
    if free and how < 0.5:
        return words[:(i := free[int(where * len(free))])] + [word] + words[i + 1:]
    at = int(where * (len(words) + 1))
    return words[:at] + [word] + words[at:]


# --------------------------------------------------------------------------------------------
# order


class StreamSampler:
    """An endless, resumable stream of batches, sharded over data-parallel processes.

    Epoch ``e`` is a permutation of the data set drawn from ``(seed, e)``; epochs are concatenated,
    global batch ``k`` is stream items ``[k*W*B, (k+1)*W*B)`` and process ``r`` takes the ``r``-th
    slice of ``B``. Starting at batch ``k`` is therefore an exact resume, for any data-set size.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, start: int = 0):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world, self.start = rank, world, start
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.size)}
        return self._perms[epoch]

    def batch(self, k: int) -> list[tuple[int, int]]:
        first = (k * self.world + self.rank) * self.batch_size
        out = []
        for position in range(first, first + self.batch_size):
            epoch, offset = divmod(position, self.size)
            index = int(self._perm(epoch)[offset])
            aug_seed = int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0])
            out.append((index, aug_seed))
        return out

    def epoch_of(self, k: int) -> float:
        return k * self.world * self.batch_size / self.size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        k = self.start
        while True:
            yield self.batch(k)
            k += 1

    def __len__(self) -> int:  # DataLoader asks; the stream is endless
        return 2**62
