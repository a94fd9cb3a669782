"""Atomic writes (ip2p.files): a target is never half-written and no temporary is left behind."""

from __future__ import annotations

import pytest

from ip2p.files import atomic_folder, atomic_path, temp_folder, write_atomic


class Boom(Exception):
    pass


def test_write_atomic_writes_bytes_and_text_and_replaces(tmp_path):
    target = tmp_path / "a.json"
    assert write_atomic(target, b"old") == target
    write_atomic(target, "néw")
    assert target.read_text(encoding="utf-8") == "néw"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    write_atomic(tmp_path / "x" / "y" / "b.txt", "deep", parents=True)
    assert (tmp_path / "x" / "y" / "b.txt").read_text() == "deep"
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "c.txt", "no parents")


def test_write_atomic_failure_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("ip2p.files.os.replace", fail)
    with pytest.raises(OSError, match="No space"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_atomic_path_renames_only_on_success(tmp_path):
    target = tmp_path / "w.pt"
    target.write_bytes(b"old")
    with pytest.raises(Boom), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".w.pt.") and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"half")  # a writer that dies halfway
        raise Boom
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["w.pt"]
    with atomic_path(target) as tmp:
        assert target.read_bytes() == b"old"
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["w.pt"]


def test_atomic_folder_replaces_an_existing_folder(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.bin").write_bytes(b"old")
    with atomic_folder(target) as tmp:
        assert tmp == temp_folder(target) and tmp.is_dir() and not any(tmp.iterdir())
        (tmp / "weights.bin").write_bytes(b"new")
        assert (target / "stale.bin").exists()  # the old folder stays until the new one is complete
    assert sorted(p.name for p in target.iterdir()) == ["weights.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    # parents are created, and a temporary folder a killed attempt left is cleared first
    nested = tmp_path / "a" / "b" / "out"
    temp_folder(nested).mkdir(parents=True)
    (temp_folder(nested) / "leftover").write_text("x")
    with atomic_folder(nested) as tmp:
        (tmp / "f").write_text("y")
    assert sorted(p.name for p in nested.iterdir()) == ["f"]
    assert [p.name for p in nested.parent.iterdir()] == ["out"]


def test_atomic_folder_failure_keeps_the_old_folder(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.bin").write_bytes(b"old")
    with pytest.raises(Boom), atomic_folder(target) as tmp:
        (tmp / "half.bin").write_bytes(b"half")
        raise Boom
    assert sorted(p.name for p in target.iterdir()) == ["old.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    with pytest.raises(Boom), atomic_folder(tmp_path / "fresh"):
        raise Boom
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
