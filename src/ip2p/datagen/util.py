"""Small helpers shared by the data-generation stages: stable seeds (atomic writes are in ip2p.files)."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 32-bit seed that depends only on ``parts`` (stable across runs, machines and Python hashes).

    Every random choice of a sample (noise, p, guidance) comes from its seed, so a resumed or
    re-sharded run reproduces exactly the samples a single run would have made.
    """
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0xFFFFFFFF
