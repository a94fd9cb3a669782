"""Atomic writes: a file or folder either keeps its old content or has the complete new one.

Everything is first written under a hidden temporary name beside the target (so the final rename
stays on one file system) and renamed into place only once complete; on any failure the temporary
file or folder is removed and the target is left as it was.

* :func:`write_atomic` for bytes or text in memory;
* :func:`atomic_path` for writers that need a file name (``torch.save``, safetensors'
  ``save_file``, pyarrow's ``ParquetWriter``);
* :func:`atomic_folder` for a folder written file by file (a diffusers model, a checkpoint).

Temporary files are named ``.{name}.{random}.tmp``, so a sweep for ``.*.tmp`` finds the ones a
killed process left; a temporary folder is ``.tmp-{name}``, one fixed name per target, so a later
attempt replaces what a killed one left (and processes of one run agree on it, see
:func:`temp_folder`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path


def _temp_file(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes | str, *, parents: bool = False) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically and durably (fsynced before the rename).

    ``parents`` creates missing parent folders first. The file gets the permissions a plain
    ``open(path, "wb")`` would give it. Returns ``path``.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_file(path)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer to create; when the block ends without an
    exception the file is fsynced and renamed to ``path``, otherwise it is removed."""
    path = Path(path)
    temp = _temp_file(path)
    try:
        yield temp
        _fsync(temp)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def temp_folder(target: str | os.PathLike) -> Path:
    """The temporary folder :func:`atomic_folder` fills for ``target``: ``.tmp-{name}`` beside it."""
    target = Path(target)
    return target.parent / f".tmp-{target.name}"


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh empty folder beside ``target`` (parents created; one a killed attempt left is
    removed first); when the block ends without an exception it replaces ``target`` (a previous
    ``target`` is deleted), otherwise it is removed and ``target`` is left as it was."""
    target = Path(target)
    temp = temp_folder(target)
    if temp.exists():
        shutil.rmtree(temp)
    temp.mkdir(parents=True)
    try:
        yield temp
        if target.exists():
            shutil.rmtree(target)
        os.replace(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
