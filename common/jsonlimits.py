"""JSON from a request, refused before it is parsed when its arrays and objects are nested too deeply.

Python's json module parses nesting by recursion: a body of 100,000 `[` raised RecursionError, which no caller
expected (an API answered "something went wrong"). The depth is counted first, without parsing, so the limit is the
same number wherever the parse runs (not whatever stack depth happens to be left)."""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

MAX_JSON_DEPTH = 100
TOO_DEEP_MESSAGE = (
    f"The JSON is nested too deeply: at most {MAX_JSON_DEPTH} levels of arrays and objects inside one another."
)

# A JSON string (its brackets are text, not nesting): the unrolled form runs in linear time on long strings.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1


class JsonTooDeep(ValueError):
    def __init__(self):
        super().__init__(TOO_DEEP_MESSAGE)


def json_depth(data: bytes | str) -> int:
    """How deeply arrays and objects are nested in `data` (0 for a bare number or string), counted without parsing."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def check_json_depth(data: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raises JsonTooDeep (a ValueError) if `data` nests arrays and objects more than `max_depth` deep."""
    if len(data) > max_depth and json_depth(data) > max_depth:
        raise JsonTooDeep()


def loads_bounded(data: bytes | str, *, max_depth: int = MAX_JSON_DEPTH, **kwargs: Any) -> Any:
    """json.loads, refusing (JsonTooDeep) nesting deeper than `max_depth` before parsing."""
    check_json_depth(data, max_depth=max_depth)
    try:
        return json.loads(data, **kwargs)
    except RecursionError:  # only if the caller's own stack is nearly used up
        raise JsonTooDeep() from None
