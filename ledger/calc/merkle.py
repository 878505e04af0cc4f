"""Merkle tree over transaction hashes, as in RFC 6962 (Certificate Transparency): leaves and inner nodes are
hashed with different prefixes, so a leaf can never pass for an inner node, and an odd tree splits at the largest
power of two below its size (no duplicated leaves, so no second-preimage trick)."""

from __future__ import annotations

import hashlib


def _leaf(hex_hash: str) -> bytes:
    return hashlib.sha256(b"\x00" + bytes.fromhex(hex_hash)).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _root(leaves: list[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return _node(_root(leaves[:k]), _root(leaves[k:]))


def merkle_root(hashes: list[str]) -> str:
    if not hashes:
        return hashlib.sha256(b"").hexdigest()
    return _root([_leaf(h) for h in hashes]).hex()


def _path(index: int, leaves: list[bytes]) -> list[tuple[str, bytes]]:
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return [*_path(index, leaves[:k]), ("right", _root(leaves[k:]))]
    return [*_path(index - k, leaves[k:]), ("left", _root(leaves[:k]))]


def inclusion_proof(hashes: list[str], index: int) -> list[dict]:
    """The sibling hashes from leaf `index` up to the root: [{"side": "left"|"right", "hash": hex}, ...]."""
    if not 0 <= index < len(hashes):
        raise IndexError(f"leaf {index} is not in a tree of {len(hashes)}")
    return [{"side": side, "hash": digest.hex()} for side, digest in _path(index, [_leaf(h) for h in hashes])]


def verify_inclusion(leaf_hash: str, proof: list[dict], root: str) -> bool:
    digest = _leaf(leaf_hash)
    for step in proof:
        sibling = bytes.fromhex(step["hash"])
        digest = _node(sibling, digest) if step["side"] == "left" else _node(digest, sibling)
    return digest.hex() == root
