"""Signed anchors: the ledger's chain root, signed with an Ed25519 key the database never holds, appended to a file
outside the database. Someone who can rewrite the database (drop the newest transactions, or rewrite history and
recompute every hash) cannot produce a matching signed root, so `ledger_verify --anchors` gives them away.

One anchor per line (JSON, keys sorted): sequence (1, 2, ...), last_seq / last_tx_id / tx_count (how much of the
chain it covers), root (the chain hash of transaction last_seq, which commits to every transaction before it),
merkle_root / first_seq (the checkpoint it was written with), created_at, prev_anchor (SHA-256 of the previous
line, GENESIS_HASH for the first, so a line removed or edited in the middle breaks the chain of anchors),
key_id, public_key (raw, hex) and signature: Ed25519 over `anchor_message` (the canonical JSON of every other
field). Plain Python (no Django), so an auditor can run it on the file alone."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.calc.canonical import GENESIS_HASH, canonical_json, sha256_hex

SIGNATURE_ALGORITHM = "Ed25519 over the canonical JSON (sorted keys, no spaces) of every field but signature"


class AnchorError(Exception):
    """An anchors file or key that does not check out, in words."""


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The signing key at `path` (PEM, PKCS#8); created on first use, readable by its owner only (0600)."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first: use theirs
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise AnchorError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (a public key, or the private key it belongs to)."""
    data = Path(path).read_bytes()
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError):
            raise AnchorError(f"{path} holds no PEM Ed25519 key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AnchorError(f"{path} is not an Ed25519 key")
    return key


def public_key_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def public_key_hex(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def key_id(key: Ed25519PublicKey) -> str:
    """The first 16 hex digits of SHA-256 of the raw public key."""
    return sha256_hex(bytes.fromhex(public_key_hex(key)))[:16]


def anchor_message(anchor: dict) -> bytes:
    """What the signature covers: the canonical JSON of every field but the signature."""
    return canonical_json({k: v for k, v in anchor.items() if k != "signature"})


def anchor_hash(anchor: dict) -> str:
    """SHA-256 of the whole anchor (signature included): the next anchor's prev_anchor."""
    return sha256_hex(canonical_json(anchor))


def anchor_sign(fields: dict, key: Ed25519PrivateKey) -> dict:
    public = key.public_key()
    anchor = {**fields, "key_id": key_id(public), "public_key": public_key_hex(public)}
    return {**anchor, "signature": key.sign(anchor_message(anchor)).hex()}


def _last_line(handle) -> bytes:
    handle.seek(0, os.SEEK_END)
    end = handle.tell()
    size = min(end, 4096)
    while True:
        handle.seek(end - size)
        lines = handle.read(size).rstrip(b"\n").split(b"\n")
        if len(lines) > 1 or size == end:
            return lines[-1]
        size = min(end, size * 2)


def anchor_append(path: Path, make: Callable[[dict | None], dict]) -> dict:
    """Appends `make(previous anchor or None)` as one line, under an exclusive lock on the file (so concurrent
    writers take turns and each sees the line before its own), flushed to disk before it returns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            last = _last_line(handle)
            previous = json.loads(last) if last.strip() else None
            anchor = make(previous)
            handle.write(canonical_json(anchor) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    return anchor


def anchor_latest(path: Path) -> dict | None:
    """The newest anchor in the file (None when there is no file or it is empty)."""
    try:
        with open(path, "rb") as handle:
            last = _last_line(handle)
    except FileNotFoundError:
        return None
    return json.loads(last) if last.strip() else None


def anchors_read(path: Path) -> list[dict]:
    try:
        lines = Path(path).read_bytes().split(b"\n")
    except FileNotFoundError:
        raise AnchorError(f"there is no anchors file at {path}") from None
    anchors = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            anchor = json.loads(line)
        except ValueError:
            raise AnchorError(f"line {number} of {path} is not a JSON anchor (edited?)") from None
        if not isinstance(anchor, dict):
            raise AnchorError(f"line {number} of {path} is not a JSON anchor (edited?)")
        anchors.append(anchor)
    return anchors


def anchors_check(anchors: list[dict], key: Ed25519PublicKey) -> None:
    """Raises AnchorError at the first anchor that is out of sequence, does not link to the one before it, was
    signed by another key, or whose signature does not match its content."""
    expected_prev, trusted = GENESIS_HASH, key_id(key)
    for position, anchor in enumerate(anchors, start=1):
        name = f"anchor {anchor.get('sequence')!r} (line {position})"
        if anchor.get("sequence") != position:
            raise AnchorError(f"{name}: expected sequence {position}; an anchor was removed or inserted")
        if anchor.get("prev_anchor") != expected_prev:
            raise AnchorError(f"{name}: does not link to the anchor before it; a line was edited or removed")
        if anchor.get("key_id") != trusted or anchor.get("public_key") != public_key_hex(key):
            raise AnchorError(f"{name}: signed by key {anchor.get('key_id')!r}, not the trusted key {trusted}")
        try:
            key.verify(bytes.fromhex(str(anchor.get("signature", ""))), anchor_message(anchor))
        except (InvalidSignature, ValueError):
            raise AnchorError(f"{name}: the signature does not match its content (edited)") from None
        expected_prev = anchor_hash(anchor)
