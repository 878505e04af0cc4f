"""Streaming readers: each yields (number, row, error) one row at a time, never holding the whole file.

`number` is the line (JSONL, CSV, TSV, JSON array, TXT/Markdown), the row (Parquet), the page (PDF) or the
paragraph (DOCX) where the row starts; `error` is a plain-language reason when the row could not be read.
`read_rows` picks the reader for a format; documents (TXT/Markdown, PDF, DOCX) are read in documents.py."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from typing import BinaryIO

from datanets.ingest.documents import read_docx, read_pdf, read_plain
from datanets.ingest.errors import IngestError
from datanets.ingest.formats import SUPPORTED, not_utf8_message
from datanets.ingest.streaming import CHUNK, RawRow, _fmt_size, _text_stream
from datanets.ingest.validate import FIELDS, RowInvalid, map_columns

DOCUMENT_FORMATS = ("txt", "markdown", "pdf", "docx")

# A JSON line that does not parse, in words a person can act on (the parser's message follows as the detail).
UNREADABLE_LINE = "this line could not be read: check its quotes, commas and brackets"


def _decode_guard(rows: Iterator[RawRow], raw: BinaryIO, last_line: list[int]) -> Iterator[RawRow]:
    try:
        yield from rows
    except UnicodeDecodeError as exc:
        raw.seek(max(0, raw.tell() - CHUNK))
        sample = raw.read(CHUNK)
        raise IngestError(
            not_utf8_message(sample, where=f" (the first bad byte is after line {last_line[0]})")
            + f" Python said: {exc.reason}.",
            code="encoding",
        ) from None


def read_jsonl(raw: BinaryIO, *, row_max_chars: int, last_line: list[int]) -> Iterator[RawRow]:
    stream = _text_stream(raw)
    number = 0
    while True:
        line = stream.readline(row_max_chars + 1)
        if not line:
            return
        number += 1
        last_line[0] = number
        if len(line) > row_max_chars and not line.endswith("\n"):
            size = len(line)
            while line and not line.endswith("\n"):  # skip the rest of the over-long line without keeping it
                line = stream.readline(CHUNK)
                size += len(line)
            yield number, None, f"the line is {_fmt_size(size)} long; the limit per row is {_fmt_size(row_max_chars)}"
            continue
        if not line.strip():
            continue
        try:
            yield number, json.loads(line), None
        except ValueError as exc:
            yield number, None, f"{UNREADABLE_LINE} (technical detail: {exc.msg} at column {exc.pos + 1})"


def _count_newlines(text: str, start: int, end: int) -> int:
    # One place that scans for line ends, so that a test can check each character is scanned once.
    return text.count("\n", start, end)


def read_json_array(raw: BinaryIO, *, row_max_chars: int, last_line: list[int]) -> Iterator[RawRow]:
    """Streams the items of a top-level JSON array with json.JSONDecoder.raw_decode over a sliding buffer. Line
    numbers are counted as the reader advances (`counted` is the buffer offset whose line is `line`), so each
    character is scanned for newlines once, whatever the number of items in the buffer."""
    stream = _text_stream(raw)
    decoder = json.JSONDecoder()
    buf = ""
    pos = 0
    line = 1  # line number at buf[counted]
    counted = 0
    eof = False

    def line_at(offset: int) -> int:
        nonlocal line, counted
        line += _count_newlines(buf, counted, offset)
        counted = offset
        return line

    def fill() -> bool:
        nonlocal buf, pos, counted, eof
        if eof:
            return False
        chunk = stream.read(CHUNK)
        if not chunk:
            eof = True
            return False
        line_at(pos)
        buf = buf[pos:] + chunk
        pos = counted = 0
        return True

    def skip_ws() -> None:
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                pos += 1
            if pos < len(buf) or not fill():
                return

    skip_ws()
    if pos >= len(buf) or buf[pos] != "[":
        raise IngestError("The JSON file should be an array of rows: [{...}, {...}].", code="wrong_shape")
    pos += 1
    item = 0
    while True:
        skip_ws()
        if pos >= len(buf):
            raise IngestError("The JSON array is not closed with ']' (is the file cut off?).", code="invalid_json")
        if buf[pos] == "]":
            return
        if item and buf[pos] == ",":
            pos += 1
            skip_ws()
        elif item:
            raise IngestError(
                f"Line {line_at(pos)}: expected ',' or ']' between the array's items.", code="invalid_json"
            )
        item += 1
        start_line = line_at(pos)
        last_line[0] = start_line
        while True:
            try:
                value, end = decoder.raw_decode(buf, pos)
                if end >= len(buf) and fill():  # a number or literal may go on in the next chunk
                    continue
                break
            except ValueError as exc:
                if len(buf) - pos > row_max_chars + 16:
                    raise IngestError(
                        f"Line {start_line}: item {item} is longer than the limit of {_fmt_size(row_max_chars)} "
                        "per row, or is not valid JSON.",
                        code="row_too_large",
                    ) from None
                if not fill():
                    raise IngestError(
                        f"Line {start_line}: item {item} could not be read: check its quotes, commas and brackets "
                        f"(technical detail: {exc.msg}).",
                        code="invalid_json",
                    ) from None
        if end - pos > row_max_chars:
            yield (
                start_line,
                None,
                f"the item is {_fmt_size(end - pos)} long; the limit per row is {_fmt_size(row_max_chars)}",
            )
        else:
            yield start_line, value, None
        pos = end


def _tabular_rows(
    header: list[str], rows: Iterator[tuple[int, list]], *, kind: str, mapping: dict | None, notices: list[str]
) -> Iterator[RawRow]:
    try:
        fields = map_columns(kind, header, mapping)
    except RowInvalid as exc:
        raise IngestError(
            f"The columns do not match this datanet: {exc}. Choose which column holds each field.",
            code="columns",
            details={"columns": header, "fields": list(FIELDS[kind])},
        ) from None
    unused = [c for c in header if c not in fields.values()]
    if unused:
        notices.append("Columns not used: " + ", ".join(unused) + ".")
    index = {field: header.index(column) for field, column in fields.items()}
    width = len(header)
    for number, values in rows:
        if len(values) != width:
            what = "missing values" if len(values) < width else "extra values"
            yield number, None, f"this row has {len(values)} values but the header has {width} columns ({what})"
            continue
        row = {}
        for field, i in index.items():
            value = values[i]
            if field == "messages" and isinstance(value, str):
                try:
                    value = json.loads(value)
                except ValueError:
                    yield number, None, "the 'messages' column is not valid JSON"
                    break
            if value not in ("", None) or field != "input":
                row[field] = value
        else:
            yield number, row, None


def read_delimited(
    raw: BinaryIO, *, delimiter: str, kind: str, mapping: dict | None, row_max_chars: int, notices, last_line
) -> Iterator[RawRow]:
    stream = _text_stream(raw)
    csv.field_size_limit(row_max_chars)
    reader = csv.reader(stream, delimiter=delimiter)

    def rows():
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                where = reader.line_num
                if "field larger than field limit" in str(exc):
                    raise IngestError(
                        f"Line {where}: a value is longer than the limit of {_fmt_size(row_max_chars)} per row.",
                        code="row_too_large",
                    ) from None
                raise IngestError(f"Line {where}: the file is not valid CSV ({exc}).", code="invalid_csv") from None
            last_line[0] = reader.line_num
            if values:
                yield reader.line_num, values

    it = rows()
    first = next(it, None)
    if first is None:
        raise IngestError("The file has no header row.", code="empty_file")
    header = [h.strip() for h in first[1]]
    if len(set(header)) != len(header):
        raise IngestError("The header row repeats a column name: " + ", ".join(header) + ".", code="columns")
    yield from _tabular_rows(header, it, kind=kind, mapping=mapping, notices=notices)


def read_parquet(raw: BinaryIO, *, kind: str, mapping: dict | None, row_max_chars: int, notices) -> Iterator[RawRow]:
    import pyarrow.parquet as pq  # heavy, and needed only for Parquet uploads

    try:
        pf = pq.ParquetFile(raw)
    except Exception as exc:
        raise IngestError(f"The Parquet file could not be read ({exc}).", code="invalid_parquet") from None
    header = list(pf.schema_arrow.names)

    def rows():
        number = 0
        try:
            for batch in pf.iter_batches(batch_size=2048):
                for record in batch.to_pylist():
                    number += 1
                    yield number, [record[c] for c in header]
        except Exception as exc:
            raise IngestError(
                f"The Parquet file is damaged after row {number} ({exc}).", code="invalid_parquet"
            ) from None

    for number, row, error in _tabular_rows(header, rows(), kind=kind, mapping=mapping, notices=notices):
        if row is not None and len(json.dumps(row, default=str)) > row_max_chars:
            yield number, None, f"the row is longer than the limit of {_fmt_size(row_max_chars)} per row"
        else:
            yield number, row, error


def read_rows(
    raw: BinaryIO,
    fmt: str,
    *,
    kind: str,
    row_max_chars: int,
    column_mapping: dict | None = None,
    notices: list[str] | None = None,
    max_unpacked: int = 64 * 1024 * 1024,
    document_row_chars: int = 2000,
) -> Iterator[RawRow]:
    """All rows of an already detected format. Raises IngestError for problems with the file as a whole."""
    notices = notices if notices is not None else []
    if fmt in DOCUMENT_FORMATS and kind != "text":
        raise IngestError(
            f"Documents ({fmt.upper() if fmt != 'markdown' else 'Markdown'}) become plain text rows, but this datanet "
            f"takes {kind} rows. Upload the document to a text datanet, or upload a JSONL/CSV file with "
            + ", ".join(FIELDS[kind])
            + ".",
            code="wrong_kind",
        )
    last_line = [0]
    if fmt == "jsonl":
        return _decode_guard(read_jsonl(raw, row_max_chars=row_max_chars, last_line=last_line), raw, last_line)
    if fmt == "json":
        return _decode_guard(read_json_array(raw, row_max_chars=row_max_chars, last_line=last_line), raw, last_line)
    if fmt in ("csv", "tsv"):
        rows = read_delimited(
            raw,
            delimiter="," if fmt == "csv" else "\t",
            kind=kind,
            mapping=column_mapping,
            row_max_chars=row_max_chars,
            notices=notices,
            last_line=last_line,
        )
        return _decode_guard(rows, raw, last_line)
    if fmt == "parquet":
        return read_parquet(raw, kind=kind, mapping=column_mapping, row_max_chars=row_max_chars, notices=notices)
    if fmt in ("txt", "markdown"):
        return _decode_guard(
            read_plain(raw, markdown=fmt == "markdown", cap=document_row_chars, last_line=last_line), raw, last_line
        )
    if fmt == "pdf":
        return read_pdf(raw, cap=document_row_chars, max_text_chars=max_unpacked)
    if fmt == "docx":
        return read_docx(raw, cap=document_row_chars, max_unpacked=max_unpacked)
    raise IngestError(f"Unknown format {fmt!r}; upload {SUPPORTED}.", code="unknown_format")
