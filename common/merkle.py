"""One Merkle tree over SHA-256 hex hashes, for the ledger's checkpoints and the datanets' manifests.

The tree of RFC 6962 (Certificate Transparency): leaves and inner nodes are hashed with different prefixes (0x00,
0x01), so a leaf can never pass for an inner node, and a tree whose size is not a power of two splits at the largest
power of two below its size, with no duplicated leaves (so no second-preimage trick by repeating the last one).
Built level by level instead, pairing neighbours and carrying a level's odd last node up unchanged, it is the same
tree with the same root for every size (tests/test_common.py checks both constructions); that is how it is computed
here, in one pass per level."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").hexdigest()


def _leaf(hex_hash: str) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + bytes.fromhex(hex_hash)).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _parents(level: list[bytes]) -> list[bytes]:
    """The next level up: neighbours paired, an odd last node carried up unchanged."""
    parents = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
    if len(level) % 2:
        parents.append(level[-1])
    return parents


def merkle_root(hashes: Iterable[str]) -> str:
    """The root over the hex hashes in the order given, as lowercase hex; SHA-256 of b"" for no hashes."""
    level = [_leaf(h) for h in hashes]
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        level = _parents(level)
    return level[0].hex()


def inclusion_proof(hashes: Sequence[str], index: int) -> list[dict]:
    """The sibling hashes from leaf `index` up to the root: [{"side": "left"|"right", "hash": hex}, ...]. A level
    where the node is carried up adds no step."""
    if not 0 <= index < len(hashes):
        raise IndexError(f"leaf {index} is not in a tree of {len(hashes)}")
    proof = []
    level = [_leaf(h) for h in hashes]
    while len(level) > 1:
        sibling = index ^ 1
        if sibling < len(level):
            proof.append({"side": "left" if index % 2 else "right", "hash": level[sibling].hex()})
        level, index = _parents(level), index // 2
    return proof


def verify_inclusion(leaf_hash: str, proof: list[dict], root: str) -> bool:
    """Whether `proof` (from inclusion_proof) leads from the leaf's hash to `root`."""
    digest = _leaf(leaf_hash)
    for step in proof:
        sibling = bytes.fromhex(step["hash"])
        digest = _node(sibling, digest) if step["side"] == "left" else _node(digest, sibling)
    return digest.hex() == root


def manifest_root(row_hashes: Iterable[str]) -> str:
    """SHA-256 Merkle root over a set of row hashes; the manifest hash of a DatanetVersion.

    Exact construction (so anyone can recompute it from the version's rows):
      1. Take the row hashes (64-character lowercase hex SHA-256 of each row's canonical JSON, see
         `datanets.ingest.normalise.content_hash`), remove repeats and sort them as strings (ascending).
      2. Leaf i = SHA-256(0x00 || bytes.fromhex(hash_i)).
      3. Build levels pairwise: parent = SHA-256(0x01 || left || right) over the 32-byte digests. When a level has
         an odd count, its last node is carried up unchanged (not duplicated, so two different sets cannot share a
         root by repeating the last row).
      4. The root is the single node left, as lowercase hex. The empty set's root is SHA-256 of the empty string.
    The 0x00/0x01 prefixes separate leaves from inner nodes (no second-preimage by passing a node off as a leaf).
    This is `merkle_root` over the sorted, de-duplicated hashes (the tree of RFC 6962)."""
    return merkle_root(sorted({h.lower() for h in row_hashes}))
