"""Streaming readers: each yields (number, row, error) one row at a time, never holding the whole file.

`number` is the line (JSONL, CSV, TSV, JSON array, TXT/Markdown), the row (Parquet), the page (PDF) or the
paragraph (DOCX) where the row starts; `error` is a plain-language reason when the row could not be read."""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from collections.abc import Iterator
from typing import BinaryIO

from datanets.ingest.errors import IngestError
from datanets.ingest.formats import not_utf8_message
from datanets.ingest.validate import FIELDS, RowInvalid, map_columns

RawRow = tuple[int, object, str | None]
DOCUMENT_FORMATS = ("txt", "markdown", "pdf", "docx")
CHUNK = 64 * 1024


def _text_stream(raw: BinaryIO) -> io.TextIOWrapper:
    # utf-8-sig drops a leading BOM; newline="" keeps \r\n so that CSV and line counting see the real lines.
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="strict", newline="")


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


def _fmt_size(n: int) -> str:
    return f"{n:,} characters"


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
            yield number, None, f"this line is not valid JSON ({exc.msg} at column {exc.pos + 1})"


def read_json_array(raw: BinaryIO, *, row_max_chars: int, last_line: list[int]) -> Iterator[RawRow]:
    """Streams the items of a top-level JSON array with json.JSONDecoder.raw_decode over a sliding buffer."""
    stream = _text_stream(raw)
    decoder = json.JSONDecoder()
    buf = ""
    pos = 0
    line = 1  # line number at buf[0]
    eof = False

    def fill() -> bool:
        nonlocal buf, pos, line, eof
        if eof:
            return False
        chunk = stream.read(CHUNK)
        if not chunk:
            eof = True
            return False
        line += buf.count("\n", 0, pos)
        buf = buf[pos:] + chunk
        pos = 0
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
            at = line + buf.count("\n", 0, pos)
            raise IngestError(f"Line {at}: expected ',' or ']' between the array's items.", code="invalid_json")
        item += 1
        start_line = line + buf.count("\n", 0, pos)
        last_line[0] = start_line
        while True:
            try:
                value, end = decoder.raw_decode(buf, pos)
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
                        f"Line {start_line}: item {item} is not valid JSON ({exc.msg}).", code="invalid_json"
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
    import pyarrow.parquet as pq

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


# --- Documents -> text rows ---------------------------------------------------------------------------------------
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _split_long(text: str, cap: int) -> list[str]:
    """Pieces of at most `cap` characters, cut after a sentence, else at a space, else hard."""
    pieces = []
    while len(text) > cap:
        window = text[:cap]
        cut = max((m.end() for m in _SENTENCE_END.finditer(window)), default=0)
        if cut < cap // 2:
            cut = window.rfind(" ") + 1 if window.rfind(" ") > cap // 2 else cap
        pieces.append(text[:cut].strip())
        text = text[cut:]
    if text.strip():
        pieces.append(text.strip())
    return pieces


class DocumentSplitter:
    """Turns headings and paragraphs into text rows of at most `cap` characters: a heading starts a new row;
    paragraphs are added to the current row while they fit; a paragraph longer than the cap is cut."""

    def __init__(self, cap: int):
        self.cap = cap
        self.parts: list[str] = []
        self.size = 0
        self.start = 0

    def _flush(self) -> Iterator[tuple[int, str]]:
        if self.parts:
            text = "\n\n".join(self.parts)
            self.parts, self.size = [], 0
            yield self.start, text

    def heading(self, number: int, text: str) -> Iterator[tuple[int, str]]:
        yield from self._flush()
        self.parts, self.size, self.start = [text], len(text), number

    def paragraph(self, number: int, text: str) -> Iterator[tuple[int, str]]:
        text = text.strip()
        if not text:
            return
        if self.parts and self.size + 2 + len(text) > self.cap:
            yield from self._flush()
        if not self.parts:
            self.start = number
        if len(text) + (self.size + 2 if self.parts else 0) <= self.cap:
            self.parts.append(text)
            self.size += len(text) + 2
            return
        for piece in _split_long(text, self.cap):
            self.start = number
            self.parts, self.size = [piece], len(piece)
            yield from self._flush()

    def finish(self) -> Iterator[tuple[int, str]]:
        yield from self._flush()


def _doc_rows(pieces: Iterator[tuple[int, str]]) -> Iterator[RawRow]:
    for number, text in pieces:
        yield number, {"text": text}, None


def read_plain(raw: BinaryIO, *, markdown: bool, cap: int, last_line) -> Iterator[RawRow]:
    stream = _text_stream(raw)
    splitter = DocumentSplitter(cap)
    para: list[str] = []
    para_size = 0
    para_start = 0
    in_fence = False

    def end_para():
        nonlocal para, para_size
        if para:
            yield from splitter.paragraph(para_start, "\n".join(para))
        para, para_size = [], 0

    def gen():
        nonlocal para, para_size, para_start, in_fence
        for number, line in enumerate(stream, 1):
            last_line[0] = number
            line = line.rstrip("\r\n")
            if markdown and line.lstrip().startswith("```"):
                in_fence = not in_fence
            if not in_fence and markdown and re.match(r"#{1,6}\s", line):
                yield from end_para()
                yield from splitter.heading(number, line)
                continue
            if not line.strip() and not in_fence:
                yield from end_para()
                continue
            if not para:
                para_start = number
            para.append(line)
            para_size += len(line) + 1
            if para_size > cap:  # a paragraph with no blank line for a long stretch: cut it now
                yield from end_para()
        yield from end_para()
        yield from splitter.finish()

    yield from _doc_rows(gen())


def read_pdf(raw: BinaryIO, *, cap: int, max_text_chars: int) -> Iterator[RawRow]:
    from pypdf import PdfReader

    try:
        reader = PdfReader(raw)
        if reader.is_encrypted:
            raise IngestError("The PDF is password-protected; upload an unprotected copy.", code="invalid_pdf")
        pages = reader.pages
        count = len(pages)
    except IngestError:
        raise
    except Exception as exc:
        raise IngestError(f"The PDF could not be read ({exc}).", code="invalid_pdf") from None
    splitter = DocumentSplitter(cap)
    total = 0

    def gen():
        nonlocal total
        for number in range(1, count + 1):
            try:
                text = pages[number - 1].extract_text() or ""
            except Exception as exc:
                raise IngestError(f"Page {number} of the PDF could not be read ({exc}).", code="invalid_pdf") from None
            total += len(text)
            if total > max_text_chars:
                raise IngestError(
                    f"The PDF unpacks to more than {_fmt_size(max_text_chars)} of text; split it into smaller files.",
                    code="too_large",
                )
            for paragraph in re.split(r"\n\s*\n", text):
                yield from splitter.paragraph(number, " ".join(paragraph.split()))
        yield from splitter.finish()

    yield from _doc_rows(gen())


def check_zip(raw: BinaryIO, *, max_unpacked: int) -> zipfile.ZipFile:
    """Opens a DOCX as a zip and refuses archives that unpack to more than `max_unpacked` bytes (zip bombs),
    counting the bytes really produced rather than trusting the sizes the archive declares."""
    try:
        archive = zipfile.ZipFile(raw)
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise IngestError(f"The zip/DOCX file is damaged ({exc}).", code="invalid_docx") from None
    if "word/document.xml" not in names:
        raise IngestError(f"This is a zip archive, not a Word document; upload {_supported()}.", code="unknown_format")
    declared = sum(i.file_size for i in archive.infolist())
    too_big = IngestError(
        f"The Word document unpacks to more than {max_unpacked // (1024 * 1024)} MB, which looks like a zip bomb; "
        "it was not opened.",
        code="zip_bomb",
    )
    if declared > max_unpacked:
        raise too_big
    produced = 0
    for info in archive.infolist():
        try:
            with archive.open(info) as member:
                while chunk := member.read(CHUNK):
                    produced += len(chunk)
                    if produced > max_unpacked:
                        raise too_big
        except IngestError:
            raise
        except Exception as exc:
            raise IngestError(f"The Word document is damaged ({exc}).", code="invalid_docx") from None
    return archive


def _supported() -> str:
    from datanets.ingest.formats import SUPPORTED

    return SUPPORTED


def read_docx(raw: BinaryIO, *, cap: int, max_unpacked: int) -> Iterator[RawRow]:
    import docx

    check_zip(raw, max_unpacked=max_unpacked)
    raw.seek(0)
    try:
        document = docx.Document(raw)
    except Exception as exc:
        raise IngestError(f"The Word document could not be read ({exc}).", code="invalid_docx") from None
    splitter = DocumentSplitter(cap)

    def gen():
        for number, paragraph in enumerate(document.paragraphs, 1):
            text = paragraph.text.strip()
            style = (paragraph.style.name if paragraph.style is not None else "") or ""
            if text and (style.startswith("Heading") or style == "Title"):
                yield from splitter.heading(number, text)
            else:
                yield from splitter.paragraph(number, text)
        yield from splitter.finish()

    yield from _doc_rows(gen())


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
    raise IngestError(f"Unknown format {fmt!r}; upload {_supported()}.", code="unknown_format")
