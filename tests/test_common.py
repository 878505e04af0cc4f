"""common/: the plain-Python helpers every app and pure core shares (Merkle trees, CSV cells, retry with backoff).
No database and no Django: these run on plain data."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.csvsafe import csv_safe
from common.merkle import EMPTY_ROOT, inclusion_proof, manifest_root, merkle_root, verify_inclusion
from common.retry import full_jitter, retry

ROOT = Path(__file__).resolve().parent.parent


def _hashes(n: int) -> list[str]:
    return [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]


# --- The two constructions the ledger and the datanets used before they shared common.merkle, kept as references ---
def _leaf(hex_hash: str) -> bytes:
    return hashlib.sha256(b"\x00" + bytes.fromhex(hex_hash)).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _rfc6962_split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _rfc6962_root(leaves: list[bytes]) -> bytes:
    """The ledger's checkpoints: RFC 6962, an odd tree splits at the largest power of two below its size."""
    if len(leaves) == 1:
        return leaves[0]
    k = _rfc6962_split(len(leaves))
    return _node(_rfc6962_root(leaves[:k]), _rfc6962_root(leaves[k:]))


def _rfc6962_path(index: int, leaves: list[bytes]) -> list[dict]:
    if len(leaves) == 1:
        return []
    k = _rfc6962_split(len(leaves))
    if index < k:
        return [*_rfc6962_path(index, leaves[:k]), {"side": "right", "hash": _rfc6962_root(leaves[k:]).hex()}]
    return [*_rfc6962_path(index - k, leaves[k:]), {"side": "left", "hash": _rfc6962_root(leaves[:k]).hex()}]


def _carry_up_root(leaves: list[bytes]) -> bytes:
    """The datanets' manifests: levels built pairwise, a level's odd last node carried up unchanged."""
    level = leaves
    while len(level) > 1:
        up = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            up.append(level[-1])
        level = up
    return level[0]


@pytest.mark.parametrize("n", range(71))
def test_the_two_constructions_give_one_root_and_common_merkle_gives_it(n):
    hashes = _hashes(n)
    if n == 0:
        assert merkle_root(hashes) == EMPTY_ROOT == hashlib.sha256(b"").hexdigest()
        return
    leaves = [_leaf(h) for h in hashes]
    rfc6962 = _rfc6962_root(leaves).hex()
    assert _carry_up_root(leaves).hex() == rfc6962
    assert merkle_root(hashes) == rfc6962
    assert merkle_root(iter(hashes)) == rfc6962  # any iterable
    for index in range(n):
        proof = inclusion_proof(hashes, index)
        assert proof == _rfc6962_path(index, leaves)
        assert verify_inclusion(hashes[index], proof, rfc6962)


def test_stored_roots_do_not_change():
    """Roots computed with the ledger's and the datanets' own modules before they shared common.merkle."""
    hashes = _hashes(70)
    assert merkle_root(hashes) == "ea05a61b105435b4287247b47c858c3eb110cce56a5203c4a2145e2f8b49c2f1"
    assert manifest_root(hashes) == "9fac05dc3da8a2b8c3c0d356af805336a7b30709baaa136b9dfb8abe18683d39"
    assert merkle_root(hashes[:13]) == "5f3077640cbbda5a01d5c99d332bbb243cf3633ce1e9be673863cb0508081941"
    assert inclusion_proof(hashes[:13], 12) == [
        {"side": "left", "hash": "7d3fbf58a1f96e87e673e243aa2dca2f2c0ab3d973caeb2bb4ab4601e4d67b1a"},
        {"side": "left", "hash": "da17ac5d45a1b0c50260c7e411bf342ba2a41c9c824bb3b6404e5330a585a057"},
    ]


def test_the_manifest_root_is_the_root_of_the_sorted_distinct_lowercase_hashes():
    hashes = _hashes(9)
    expected = merkle_root(sorted(hashes))
    assert manifest_root(hashes) == expected
    assert manifest_root(reversed(hashes)) == expected
    assert manifest_root([h.upper() for h in hashes] + hashes[:3]) == expected
    assert manifest_root([]) == EMPTY_ROOT
    assert merkle_root(hashes) != expected  # the ledger's root keeps the order given


def test_a_proof_fails_for_another_leaf_root_or_index():
    hashes = _hashes(11)
    root = merkle_root(hashes)
    proof = inclusion_proof(hashes, 4)
    assert not verify_inclusion(hashes[5], proof, root)
    assert not verify_inclusion(hashes[4], proof, merkle_root(hashes[:10]))
    assert not verify_inclusion(hashes[4], inclusion_proof(hashes, 5), root)
    for index in (-1, 11):
        with pytest.raises(IndexError, match=f"leaf {index} is not in a tree of 11"):
            inclusion_proof(hashes, index)


# --- csv_safe ---------------------------------------------------------------------------------------------------
def test_csv_safe():
    cells = ["=1+1", "+1", "-3", "@x", "\tx", "\rx", "plain", "a=b", "", None, 7, -2, 1.5]
    assert [csv_safe(v) for v in cells] == [
        "'=1+1",
        "'+1",
        "'-3",
        "'@x",
        "'\tx",
        "'\rx",
        "plain",
        "a=b",
        "",
        "",
        "7",
        "'-2",
        "1.5",
    ]


# --- retry --------------------------------------------------------------------------------------------------------
class Transient(Exception):
    pass


class Fatal(Exception):
    pass


def _failing(times: int, error=Transient, result="done"):
    calls = []

    def fn():
        calls.append(len(calls) + 1)
        if len(calls) <= times:
            raise error(f"attempt {len(calls)}")
        return result

    return fn, calls


def _is_transient(exc: Exception) -> bool:
    return isinstance(exc, Transient)


def test_retry_returns_the_first_success_after_sleeping_the_backoff_between_attempts():
    fn, calls = _failing(3)
    slept = []
    result = retry(fn, retryable=_is_transient, attempts=5, delay=lambda n: n / 10, sleep=slept.append)
    assert result == "done"
    assert calls == [1, 2, 3, 4]
    assert slept == [0.1, 0.2, 0.3]


def test_retry_without_failures_calls_once_and_never_sleeps():
    fn, calls = _failing(0)
    slept = []
    assert retry(fn, retryable=_is_transient, attempts=3, delay=lambda n: 1.0, sleep=slept.append) == "done"
    assert calls == [1]
    assert slept == []


def test_retry_raises_a_non_retryable_error_at_once():
    fn, calls = _failing(1, error=Fatal)
    slept = []
    with pytest.raises(Fatal, match="attempt 1"):
        retry(fn, retryable=_is_transient, attempts=5, delay=lambda n: 1.0, sleep=slept.append)
    assert calls == [1]
    assert slept == []


def test_retry_reraises_the_last_attempts_error_without_asking_about_it():
    errors, asked, slept = [], [], []

    def fn():
        errors.append(Transient(f"attempt {len(errors) + 1}"))
        raise errors[-1]

    def retryable(exc):
        asked.append(exc)
        return True

    with pytest.raises(Transient) as raised:
        retry(fn, retryable=retryable, attempts=4, delay=lambda n: 0.5, sleep=slept.append)
    assert len(errors) == 4
    assert raised.value is errors[-1]
    assert asked == errors[:3]
    assert slept == [0.5, 0.5, 0.5]


def test_retry_once_is_one_call():
    fn, calls = _failing(1)
    slept = []
    with pytest.raises(Transient, match="attempt 1"):
        retry(fn, retryable=_is_transient, attempts=1, delay=lambda n: 1.0, sleep=slept.append)
    assert calls == [1]
    assert slept == []
    with pytest.raises(ValueError, match="attempts must be at least 1, not 0"):
        retry(fn, retryable=_is_transient, attempts=0, delay=lambda n: 1.0, sleep=slept.append)
    assert calls == [1]


def test_retry_never_catches_base_exceptions():
    def fn():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        retry(fn, retryable=lambda exc: True, attempts=3, delay=lambda n: 0.0, sleep=lambda s: None)


def test_full_jitter_draws_between_zero_and_the_doubling_cap():
    draws = []

    def uniform(low, high):
        draws.append((low, high))
        return high / 2

    delay = full_jitter(0.002, uniform=uniform)
    assert [delay(n) for n in (1, 2, 3, 7)] == [0.002, 0.004, 0.008, 0.128]
    assert draws == [(0, 0.004), (0, 0.008), (0, 0.016), (0, 0.256)]
    capped = full_jitter(1.0, max_delay=5.0, uniform=lambda low, high: high)
    assert [capped(n) for n in (1, 2, 3, 4)] == [2.0, 4.0, 5.0, 5.0]
    assert all(0 <= full_jitter(0.002)(3) <= 0.016 for _ in range(100))


def test_retry_with_full_jitter_sleeps_the_drawn_delays():
    fn, calls = _failing(7)
    slept = []
    delay = full_jitter(0.002, uniform=lambda low, high: high)
    assert retry(fn, retryable=_is_transient, attempts=8, delay=delay, sleep=slept.append) == "done"
    assert calls == list(range(1, 9))
    assert slept == [0.002 * 2**n for n in range(1, 8)]


def test_common_imports_without_django():
    # sys.modules[name] = None makes any `import name` raise ImportError, as if the package were not installed
    code = (
        "import importlib, sys\n"
        "sys.modules['django'] = None\n"
        "for module in ('common.csvsafe', 'common.merkle', 'common.retry'):\n"
        "    importlib.import_module(module)\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] in "
        "('ledger', 'datanets', 'attribution', 'modelfactory', 'accounts', 'core')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"


def test_json_depth_counts_arrays_and_objects_but_not_brackets_in_strings():
    from common.jsonlimits import JsonTooDeep, json_depth, loads_bounded

    assert json_depth(b"3") == 0
    assert json_depth('"[[[["') == 0
    assert json_depth(b'[[1, {"a": "[[[[\\"[["}], []]') == 3
    assert json_depth("[" * 100_000 + "]" * 100_000) == 100_000
    assert loads_bounded("[" * 100 + "]" * 100) == json.loads("[" * 100 + "]" * 100)
    with pytest.raises(JsonTooDeep, match="^The JSON is nested too deeply: at most 100 levels"):
        loads_bounded("[" * 101 + "]" * 101)
