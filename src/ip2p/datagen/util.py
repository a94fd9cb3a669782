"""Small helpers shared by the data-generation stages: stable seeds and atomic writes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def derive_seed(*parts: object) -> int:
    """A 32-bit seed that depends only on ``parts`` (stable across runs, machines and Python hashes).

    Every random choice of a sample (noise, p, guidance) comes from its seed, so a resumed or
    re-sharded run reproduces exactly the samples a single run would have made.
    """
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0xFFFFFFFF


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file next to ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))
