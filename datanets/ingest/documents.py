"""Documents -> text rows: TXT/Markdown, PDF and DOCX become rows of plain text of at most `cap` characters, cut at
headings and paragraphs. Each reader yields (number, {"text": ...}, None), where `number` is the line (TXT/Markdown),
the page (PDF) or the paragraph (DOCX) where the row starts."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from typing import BinaryIO

from datanets.ingest.errors import IngestError
from datanets.ingest.formats import SUPPORTED
from datanets.ingest.streaming import CHUNK, RawRow, _fmt_size, _text_stream

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
    from pypdf import PdfReader  # heavy, and needed only for PDF uploads

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
        raise IngestError(f"This is a zip archive, not a Word document; upload {SUPPORTED}.", code="unknown_format")
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


def read_docx(raw: BinaryIO, *, cap: int, max_unpacked: int) -> Iterator[RawRow]:
    import docx  # heavy, and needed only for DOCX uploads

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
