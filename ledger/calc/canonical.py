"""Canonical JSON and SHA-256 helpers for the hash chain and request fingerprints."""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from fractions import Fraction
from typing import Any

GENESIS_HASH = "0" * 64


def jsonable(value: Any) -> Any:
    """A JSON value that survives a round trip through PostgreSQL jsonb and SQLite text unchanged.

    Floats, Decimals and Fractions become strings (jsonb would rewrite a float's digits), mapping keys become
    strings, tuples become lists."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float | Decimal):
        return str(value)
    if isinstance(value, Fraction):
        return f"{value.numerator}/{value.denominator}"
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    raise TypeError(f"{type(value).__name__} cannot be stored in ledger metadata.")


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def transaction_content(
    *,
    key: str,
    kind: str,
    status: str,
    memo: str,
    metadata: dict,
    request_hash: str,
    created_at: str,
    postings: list[tuple[int, int]],
) -> bytes:
    """The bytes a transaction's hash covers: everything about it and its postings (sorted by account id)."""
    return canonical_json(
        {
            "key": key,
            "kind": kind,
            "status": status,
            "memo": memo,
            "metadata": metadata,
            "request_hash": request_hash,
            "created_at": created_at,
            "postings": [[int(account), int(amount)] for account, amount in sorted(postings)],
        }
    )


def chain_hash(previous_hex: str, content: bytes) -> str:
    """hash_n = SHA-256(hash_{n-1} (32 raw bytes) || canonical JSON of transaction n)."""
    return hashlib.sha256(bytes.fromhex(previous_hex) + content).hexdigest()


def transaction_content_parts(
    *, key: str, kind: str, status: str, memo: str, metadata: dict, request_hash: str, created_at: str
) -> tuple[bytes, bytes]:
    """`transaction_content` split around its postings: head + postings JSON + tail == transaction_content(...).

    The PostgreSQL settlement function (migrations/0003) learns the posting account ids only under its row locks,
    so it writes the postings' JSON itself ('[[account,amount],...]', sorted, no spaces) between these two parts.
    The top-level "postings" is the last occurrence of that key: only the request hash (hex) and the status (one
    word) follow it in the sorted keys, while metadata, which may contain anything, comes before it."""
    whole = transaction_content(
        key=key,
        kind=kind,
        status=status,
        memo=memo,
        metadata=metadata,
        request_hash=request_hash,
        created_at=created_at,
        postings=[],
    )
    marker = b'"postings":[]'
    at = whole.rfind(marker)
    return whole[: at + len(marker) - 2], whole[at + len(marker) :]


def postings_json(postings: list[tuple[int, int]]) -> bytes:
    """The postings part of `transaction_content` on its own (what the SQL side writes between the parts)."""
    return canonical_json([[int(account), int(amount)] for account, amount in sorted(postings)])
