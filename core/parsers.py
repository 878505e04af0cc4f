"""The REST API's JSON parser: DRF's, with nesting refused before parsing (common/jsonlimits.py), so a body nested
100,000 deep is a 400 that says so rather than a RecursionError and a 500."""

from __future__ import annotations

import io

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from common.jsonlimits import JsonTooDeep, check_json_depth


class BoundedJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        raw = stream.read() if stream is not None else b""
        try:
            check_json_depth(raw)
            return super().parse(io.BytesIO(raw), media_type, parser_context)
        except (JsonTooDeep, RecursionError):
            raise ParseError(str(JsonTooDeep()), code="nested_too_deeply") from None
