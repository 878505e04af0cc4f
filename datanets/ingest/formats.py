"""Format detection from the file's first bytes (the extension is only used to explain a mismatch)."""

from __future__ import annotations

import codecs
import csv
import json
from pathlib import PurePath

FORMATS = ("jsonl", "json", "csv", "tsv", "parquet", "pdf", "docx", "txt", "markdown")
LABELS = {
    "jsonl": "JSON lines",
    "json": "a JSON array",
    "csv": "CSV",
    "tsv": "TSV (tab-separated)",
    "parquet": "Parquet",
    "pdf": "PDF",
    "docx": "a Word document (DOCX)",
    "txt": "plain text",
    "markdown": "Markdown",
}
EXPECTED = {
    ".jsonl": {"jsonl"},
    ".ndjson": {"jsonl"},
    ".json": {"json", "jsonl"},
    ".csv": {"csv"},
    ".tsv": {"tsv"},
    ".tab": {"tsv"},
    ".parquet": {"parquet"},
    ".pdf": {"pdf"},
    ".docx": {"docx"},
    ".txt": {"txt", "markdown"},
    ".text": {"txt", "markdown"},
    ".md": {"markdown", "txt"},
    ".markdown": {"markdown", "txt"},
}
HEAD_BYTES = 64 * 1024
SUPPORTED = "JSONL, JSON, CSV, TSV, Parquet, TXT, Markdown, PDF or DOCX"


def guess_encoding(data: bytes) -> str:
    """Best guess of a non-UTF-8 text's encoding, for the error message."""
    from charset_normalizer import from_bytes

    best = from_bytes(data[:HEAD_BYTES]).best()
    if best is None:
        return "an unknown encoding"
    languages = [lang for lang in best.languages if lang != "Unknown"]
    return best.encoding + (f" ({languages[0]})" if languages else "")


def not_utf8_message(data: bytes, where: str = "") -> str:
    return (
        f"The file is not UTF-8 text{where}. It looks like {guess_encoding(data)}. "
        "Open it in a text editor, save it as UTF-8, and upload it again."
    )


def _head_text(head: bytes) -> str:
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    return decoder.decode(head, final=False)


def _looks_tabular(lines: list[str], delimiter: str) -> bool:
    if len(lines) < 1 or delimiter not in lines[0]:
        return False
    rows = list(csv.reader(lines, delimiter=delimiter))
    widths = {len(r) for r in rows if r}
    header = rows[0]
    return len(widths) == 1 and widths.pop() >= 2 and all(0 < len(c) <= 64 for c in header)


def detect_format(head: bytes, filename: str, *, total_size: int) -> tuple[str, list[str]]:
    """Returns (format, notices) from the first bytes of a file, or raises IngestError saying why it cannot be read.

    `head` is up to HEAD_BYTES from the start; `total_size` is the whole file's size."""
    from datanets.ingest.errors import IngestError

    notices = []
    if total_size == 0 or not head:
        raise IngestError("The file is empty.", code="empty_file")
    if head.startswith(b"PAR1"):
        fmt = "parquet"
    elif head.lstrip()[:5] == b"%PDF-":
        fmt = "pdf"
    elif head.startswith(b"PK\x03\x04"):
        fmt = "docx"  # confirmed (or refused as another kind of zip) when the archive is opened
    elif head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)) or head.startswith(
        (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
    ):
        raise IngestError("The file is UTF-16 or UTF-32 text. Save it as UTF-8 and upload it again.", code="encoding")
    else:
        if head.startswith(codecs.BOM_UTF8):
            notices.append("The file starts with a byte-order mark (BOM); it was ignored.")
            head = head[len(codecs.BOM_UTF8) :]
        if b"\x00" in head:
            raise IngestError(
                f"The file looks like binary data, not a format we can read ({SUPPORTED}).", code="unknown_format"
            )
        try:
            text = _head_text(head)
        except UnicodeDecodeError:
            raise IngestError(not_utf8_message(head), code="encoding") from None
        stripped = text.lstrip()
        if not stripped:
            raise IngestError("The file contains only blank space.", code="empty_file")
        ext = PurePath(filename).suffix.lower()
        lines = [ln for ln in text.splitlines()[:6] if ln.strip()]
        if len(text) == len(head) and len(head) < total_size and lines:
            lines = lines[:-1] or lines  # the last line may be cut off by the head limit
        if stripped.startswith("["):
            fmt = "json"
        elif stripped.startswith("{"):
            fmt = "jsonl"
            first = stripped.splitlines()[0]
            try:
                json.loads(first)
            except ValueError:
                if ext == ".json":
                    fmt = "json_object"
        elif _looks_tabular(lines, "\t"):
            fmt = "tsv"
        elif _looks_tabular(lines, ",") or (ext == ".csv" and "," in lines[0]):
            fmt = "csv"
        elif ext in (".md", ".markdown") or any(ln.startswith(("# ", "## ", "### ")) for ln in lines):
            fmt = "markdown"
        else:
            fmt = "txt"
        if fmt == "json_object":
            raise IngestError(
                "The file holds one JSON object. Put the rows in a JSON array ([{...}, {...}]) or write one "
                "object per line (JSONL).",
                code="wrong_shape",
            )
    ext = PurePath(filename).suffix.lower()
    if ext in EXPECTED and fmt not in EXPECTED[ext]:
        notices.append(f"The file is named '{ext}' but its content is {LABELS[fmt]}; it was read as {LABELS[fmt]}.")
    return fmt, notices


# What a file that is not one of ours usually is, by its first bytes (the message names it).
SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Microsoft Office file (DOC, XLS or PPT)"),
    (b"\x1f\x8b", "a compressed (gzip) file"),
    (b"Rar!", "a RAR archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"ID3", "an MP3 audio file"),
)
ZIP_KINDS = (
    ("xl/workbook.xml", "an Excel workbook (XLSX)", " Save the sheet as CSV and upload that."),
    ("ppt/presentation.xml", "a PowerPoint presentation (PPTX)", ""),
    ("content.xml", "an OpenDocument file", " Save it as DOCX or CSV and upload that."),
)


def unreadable_reason(head: bytes, filename: str, *, total_size: int, zip_names=None) -> tuple[str, str] | None:
    """Why a file cannot be read at all, as (code, message), from its first bytes (and, for a zip, the names it
    holds: `zip_names()`), or None. What this refuses, the ingest would refuse too, later and with a "Try again"
    that fails the same way: an upload is refused at once instead."""
    from datanets.ingest.errors import IngestError

    for signature, what in SIGNATURES:
        if head.startswith(signature):
            return "unknown_format", f"This file is {what}, which cannot be read as rows. Upload {SUPPORTED}."
    if head.startswith(b"PK\x03\x04") and zip_names is not None:
        names = zip_names()
        if names is None:
            return (
                "unknown_format",
                f"This file looks like a zip archive or Word document, but it is damaged. Upload {SUPPORTED}.",
            )
        if "word/document.xml" not in names:
            for marker, what, hint in ZIP_KINDS:
                if marker in names:
                    return (
                        "unknown_format",
                        f"This file is {what}, which cannot be read as rows.{hint} Accepted: {SUPPORTED}.",
                    )
            return "unknown_format", f"This file is a zip archive, not a Word document. Upload {SUPPORTED}."
        return None
    try:
        detect_format(head, filename, total_size=total_size)
    except IngestError as exc:
        if exc.code == "unknown_format":
            return exc.code, f"This file is not in a format that can be read as rows. Upload {SUPPORTED}."
        return exc.code, exc.message
    return None
