"""What the readers (readers.py, documents.py) share: the row they yield, how much they read at a time, the text
stream over an upload, and how they write a size."""

from __future__ import annotations

import io
from typing import BinaryIO

# (number, row, error): the line/row/page/paragraph where the row starts, the row as read (None when it could not
# be), and a plain-language reason when it could not be read.
RawRow = tuple[int, object, str | None]
CHUNK = 64 * 1024


def _text_stream(raw: BinaryIO) -> io.TextIOWrapper:
    # utf-8-sig drops a leading BOM; newline="" keeps \r\n so that CSV and line counting see the real lines.
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="strict", newline="")


def _fmt_size(n: int) -> str:
    return f"{n:,} characters"
