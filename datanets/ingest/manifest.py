"""Manifest hash of a datanet version."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"


def merkle_root(row_hashes: Iterable[str]) -> str:
    """SHA-256 Merkle root over a set of row hashes; the manifest hash of a DatanetVersion.

    Exact construction (so anyone can recompute it from the version's rows):
      1. Take the row hashes (64-character lowercase hex SHA-256 of each row's canonical JSON, see
         `normalise.content_hash`), remove repeats and sort them as strings (ascending).
      2. Leaf i = SHA-256(0x00 || bytes.fromhex(hash_i)).
      3. Build levels pairwise: parent = SHA-256(0x01 || left || right) over the 32-byte digests. When a level has
         an odd count, its last node is carried up unchanged (not duplicated, so two different sets cannot share a
         root by repeating the last row).
      4. The root is the single node left, as lowercase hex. The empty set's root is SHA-256 of the empty string.
    The 0x00/0x01 prefixes separate leaves from inner nodes (no second-preimage by passing a node off as a leaf).
    """
    hashes = sorted({h.lower() for h in row_hashes})
    if not hashes:
        return hashlib.sha256(b"").hexdigest()
    level = [hashlib.sha256(LEAF_PREFIX + bytes.fromhex(h)).digest() for h in hashes]
    while len(level) > 1:
        nxt = [hashlib.sha256(NODE_PREFIX + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0].hex()
