"""The pure ingest package, on plain data."""

import io
import json
import zipfile

import pytest

from datanets.ingest import IngestError
from datanets.ingest.dedup import NearDuplicateIndex
from datanets.ingest.documents import DocumentSplitter, check_zip
from datanets.ingest.formats import detect_format
from datanets.ingest.manifest import merkle_root
from datanets.ingest.normalise import content_hash, normalise_text
from datanets.ingest.pipeline import RowProcessor
from datanets.ingest.readers import read_rows
from datanets.ingest.screen import Limits, find_sensitive, luhn_valid, redact, screen_fields
from datanets.ingest.validate import RowInvalid, validate_row


def rows_of(data: bytes, fmt: str, kind="instruction", **kw):
    return list(read_rows(io.BytesIO(data), fmt, kind=kind, row_max_chars=kw.pop("row_max_chars", 1000), **kw))


def test_normalise_nfc_whitespace_and_line_endings():
    assert normalise_text("  Cafe\u0301\r\nnext   word \t\r\n\n\n\nend\u200b  ") == "Caf\u00e9\nnext word\n\nend"
    assert normalise_text("def f():\n    return 1") == "def f():\n    return 1"  # indentation kept


def test_hash_is_of_normalised_canonical_content():
    a, _ = validate_row("instruction", {"output": "B", "instruction": "A\r\n"})
    b, _ = validate_row("instruction", {"instruction": "A", "output": "B "})
    assert content_hash(a) == content_hash(b)


@pytest.mark.parametrize(
    ("kind", "row", "reason"),
    [
        ("instruction", {"instruction": "x"}, "the field 'output' is missing"),
        ("instruction", {"instruction": ["x"], "output": "y"}, "'instruction' should be text but is a list"),
        ("text", "just a string", "each row should be an object with text, but this one is text"),
        ("chat", {"messages": "hi"}, "'messages' should be a list of {role, content} but is text"),
        (
            "chat",
            {"messages": [{"role": "bot", "content": "x"}]},
            "message 1 has role 'bot'; use one of system, user, assistant",
        ),
        (
            "chat",
            {"messages": [{"role": "user", "content": "x"}]},
            "the conversation has no assistant message to learn from",
        ),
    ],
)
def test_validation_reasons(kind, row, reason):
    with pytest.raises(RowInvalid) as exc:
        validate_row(kind, row)
    assert str(exc.value) == reason


@pytest.mark.parametrize(
    ("head", "name", "fmt", "notices"),
    [
        (b'{"a": 1}\n{"a": 2}\n', "x.jsonl", "jsonl", []),
        (b'[{"a": 1}]', "x.json", "json", []),
        (b"instruction,output\nq,a\n", "x.csv", "csv", []),
        (b"instruction\toutput\nq\ta\n", "x.tsv", "tsv", []),
        (b"# Title\n\nSome text.\n", "notes.md", "markdown", []),
        (b"Plain words here.\n", "notes.txt", "txt", []),
        (b"%PDF-1.4\n...", "x.pdf", "pdf", []),
        (b"PAR1....", "x.parquet", "parquet", []),
        (
            b'{"a": 1}\n',
            "data.csv",
            "jsonl",
            ["The file is named '.csv' but its content is JSON lines; it was read as JSON lines."],
        ),
        (
            b"\xef\xbb\xbf" + b'{"a": 1}\n',
            "x.jsonl",
            "jsonl",
            ["The file starts with a byte-order mark (BOM); it was ignored."],
        ),
    ],
)
def test_format_is_detected_from_content(head, name, fmt, notices):
    assert detect_format(head, name, total_size=len(head)) == (fmt, notices)


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (b"", "The file is empty."),
        (b"   \n\n", "The file contains only blank space."),
        (
            b"\x00\x01\x02binary",
            "The file looks like binary data, not a format we can read (JSONL, JSON, CSV, TSV, Parquet, TXT, Markdown, PDF or DOCX).",
        ),
        (b"\xff\xfe{\x00", "The file is UTF-16 or UTF-32 text. Save it as UTF-8 and upload it again."),
        (
            b'{\n  "instruction": "x"\n}\n',
            "The file holds one JSON object. Put the rows in a JSON array ([{...}, {...}]) or write one object per line (JSONL).",
        ),
    ],
)
def test_unreadable_files_say_why(head, message):
    with pytest.raises(IngestError) as exc:
        detect_format(head, "x.json", total_size=len(head))
    assert exc.value.message == message


def test_non_utf8_names_the_guessed_encoding():
    data = (
        "Les tomates aiment le soleil et l'été chaud; arrosez-les à la base, jamais sur les feuilles.\n".encode(
            "cp1252"
        )
        * 5
    )
    with pytest.raises(IngestError) as exc:
        detect_format(data, "x.txt", total_size=len(data))
    assert exc.value.message.startswith("The file is not UTF-8 text. It looks like cp1252")
    assert exc.value.message.endswith("save it as UTF-8, and upload it again.")


def test_jsonl_rows_keep_their_line_numbers_and_cap_long_lines():
    data = b'{"a": 1}\n\n{bad\n' + b'{"a": "' + b"x" * 2000 + b'"}\n{"a": 4}\n'
    rows = rows_of(data, "jsonl")
    assert rows == [
        (1, {"a": 1}, None),
        (
            3,
            None,
            "this line could not be read: check its quotes, commas and brackets (technical detail: Expecting property name "
            "enclosed in double quotes at column 2)",
        ),
        (4, None, "the line is 2,010 characters long; the limit per row is 1,000 characters"),
        (5, {"a": 4}, None),
    ]


def test_json_array_streams_items_with_lines():
    items = [{"instruction": f"q{i}", "output": "a"} for i in range(3)]
    data = ("[\n" + ",\n".join(json.dumps(i) for i in items) + "\n]").encode()
    assert [(n, r) for n, r, _ in rows_of(data, "json")] == [(2, items[0]), (3, items[1]), (4, items[2])]
    with pytest.raises(IngestError) as exc:
        rows_of(b'[{"a": 1}, {"a": ', "json")
    assert exc.value.message == (
        "Line 1: item 2 could not be read: check its quotes, commas and brackets (technical detail: Expecting value)."
    )


def test_csv_maps_alias_columns_and_reports_bad_rows():
    data = b"Question,Answer,notes\nq1,a1,n\nq2,a2\nq3,a3,n,extra\n"
    notices = []
    rows = rows_of(data, "csv", notices=notices)
    assert rows == [
        (2, {"instruction": "q1", "output": "a1"}, None),
        (3, None, "this row has 2 values but the header has 3 columns (missing values)"),
        (4, None, "this row has 4 values but the header has 3 columns (extra values)"),
    ]
    assert notices == ["Columns not used: notes."]


def test_csv_missing_column_asks_for_a_mapping_and_mapping_works():
    data = b"prompt_text,reply_text\nq,a\n"
    with pytest.raises(IngestError) as exc:
        rows_of(data, "csv")
    assert exc.value.code == "columns"
    assert exc.value.details == {"columns": ["prompt_text", "reply_text"], "fields": ["instruction", "input", "output"]}
    assert "the file has no column for 'instruction', 'output'" in exc.value.message
    rows = rows_of(data, "csv", column_mapping={"instruction": "prompt_text", "output": "reply_text"})
    assert rows == [(2, {"instruction": "q", "output": "a"}, None)]


def test_parquet_rows():
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(pa.table({"instruction": ["q1", "q2"], "output": ["a1", "a2"]}), out)
    assert rows_of(out.getvalue(), "parquet") == [
        (1, {"instruction": "q1", "output": "a1"}, None),
        (2, {"instruction": "q2", "output": "a2"}, None),
    ]


def test_documents_split_by_headings_and_paragraphs_with_a_cap():
    text = "# Soil\n\nLoam holds water.\n\nAdd compost.\n\n## Pests\n\n" + "Slugs eat leaves. " * 30 + "\n"
    rows = rows_of(text.encode(), "markdown", kind="text", document_row_chars=200)
    assert rows[0] == (1, {"text": "# Soil\n\nLoam holds water.\n\nAdd compost."}, None)
    assert rows[1] == (7, {"text": "## Pests"}, None)
    assert all(len(r[1]["text"]) <= 200 for r in rows)
    assert "".join(r[1]["text"] for r in rows[2:]).replace(" ", "") == ("Slugs eat leaves. " * 30).replace(" ", "")


def test_document_splitter_cuts_a_long_paragraph_at_sentences():
    splitter = DocumentSplitter(50)
    pieces = [t for _, t in splitter.paragraph(1, "One two three. " * 10)] + [t for _, t in splitter.finish()]
    assert all(len(p) <= 50 for p in pieces)
    assert pieces[0] == "One two three. One two three. One two three."


def test_documents_need_a_text_datanet():
    with pytest.raises(IngestError) as exc:
        rows_of(b"Hello there.\n", "txt", kind="instruction")
    assert exc.value.code == "wrong_kind"


def test_docx_bomb_is_refused_by_bytes_really_unpacked():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("word/document.xml", " " * (3 * 1024 * 1024))
    assert len(out.getvalue()) < 20_000
    with pytest.raises(IngestError) as exc:
        check_zip(io.BytesIO(out.getvalue()), max_unpacked=1024 * 1024)
    assert exc.value.code == "zip_bomb"
    assert (
        exc.value.message
        == "The Word document unpacks to more than 1 MB, which looks like a zip bomb; it was not opened."
    )


def test_docx_paragraphs_and_headings():
    import docx

    document = docx.Document()
    document.add_heading("Watering", level=1)
    document.add_paragraph("Water in the morning.")
    document.add_paragraph("Water the soil, not the leaves.")
    out = io.BytesIO()
    document.save(out)
    rows = rows_of(out.getvalue(), "docx", kind="text")
    assert rows == [(1, {"text": "Watering\n\nWater in the morning.\n\nWater the soil, not the leaves."}, None)]


def test_screening_finds_personal_data_and_secrets():
    text = (
        "Mail jo@example.org or call +44 20 7946 0958. Card 4111 1111 1111 1111. "
        "Key sk-proj-abcdefghijklmnopqrstuvwx and AKIAABCDEFGHIJKLMNOP. api_key = 'q8w7e6r5t4y3u2i1o0p9'"
    )
    kinds = [k for k, _, _ in find_sensitive(text)]
    assert kinds == ["email", "phone", "card_number", "api_key", "api_key", "api_key"]
    assert redact(text, {"email", "card_number"}).startswith(
        "Mail [email removed] or call +44 20 7946 0958. Card [card number removed]."
    )
    assert find_sensitive("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----")[0][0] == "private_key"
    # Not flagged: years, a card-length number that fails Luhn, prices.
    assert find_sensitive("From 1990-2020 we paid 4111 1111 1111 1112 and 1,250.00 euros.") == []
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")


def test_quality_flags():
    limits = Limits(min_chars=8, max_chars=100)
    assert screen_fields(["", "x"], "x", limits=limits) == {"empty", "too_short"}
    assert screen_fields(["a" * 200], "a" * 200, limits=limits) == {"too_long", "repeated_chars"}
    assert screen_fields(["buy " * 12], "buy " * 12, limits=limits) == {"repeated_chars"}
    assert screen_fields(["A" + "-" * 40 + "B"], "A" + "-" * 40 + "B", limits=limits) == set()


def test_processor_applies_keep_redact_drop_and_dedups():
    p = RowProcessor(
        kind="instruction",
        flag_actions={"email": "redact", "phone": "drop", "too_short": "keep"},
        existing_hashes={content_hash({"instruction": "old question", "output": "old answer"})},
    )
    kept = p.process(1, {"instruction": "Who can help?", "output": "Write to help@example.org please."})
    assert kept.content == {"instruction": "Who can help?", "output": "Write to [email removed] please."}
    assert kept.flags == []
    assert p.process(2, {"instruction": "Call?", "output": "Call +1 415 555 0100 today."}) is None
    assert p.process(3, {"instruction": "old question", "output": "old answer"}) is None
    assert p.process(4, {"instruction": "Who can help?", "output": "Write to bob@example.org please."}) is None
    short = p.process(5, {"instruction": "Hi", "output": "Yo"})
    assert short.flags == ["too_short"]
    report = p.report.as_dict()
    assert report["duplicates"] == [
        {"line": 3, "kind": "exact", "in_datanet": True},
        {"line": 4, "kind": "exact", "of_line": 1},
    ]
    assert report["dropped"] == [{"line": 2, "flags": ["phone"], "reason": "dropped: a phone number"}]
    assert report["redacted"] == {"email": 2}
    assert (report["rows_total"], report["rows_accepted"]) == (5, 2)


def test_near_duplicates_name_the_row_they_resemble():
    index = NearDuplicateIndex(threshold=0.5)
    index.add(("record", 7), "Water tomatoes deeply twice a week in the morning so the roots grow down")
    base = "Water tomatoes deeply twice a week in the morning so the roots grow down deep"
    p = RowProcessor(kind="text", near_index=index)
    row = p.process(1, {"text": base})
    assert row.flags == ["near_duplicate"]
    assert row.details["near_duplicate"]["record_id"] == 7
    assert p.process(2, {"text": "Garlic goes in the ground in autumn before the frost arrives"}).flags == []


def test_merkle_root_construction():
    import hashlib

    h = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(3)]
    leaves = [hashlib.sha256(b"\x00" + bytes.fromhex(x)).digest() for x in sorted(h)]
    expected = hashlib.sha256(
        b"\x01" + hashlib.sha256(b"\x01" + leaves[0] + leaves[1]).digest() + leaves[2]
    ).hexdigest()
    assert merkle_root(h) == expected
    assert merkle_root(reversed(h)) == expected
    assert merkle_root(h + h[:1]) == expected  # a set: repeats do not change it
    assert merkle_root([]) == hashlib.sha256(b"").hexdigest()
    assert merkle_root(h[:2]) != expected


@pytest.mark.parametrize(
    "content",
    [
        {"output": 'b "quoted" \\ back\nslash \u00e9\u4e2d \U0001f600', "instruction": "a\t\x7f"},
        {"messages": [{"role": "user", "content": "hi"}]},
        {"text": "</script>"},
    ],
)
def test_canonical_json_fast_path_matches_json_dumps(content):
    from datanets.ingest.normalise import canonical_json

    assert canonical_json(content) == json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def test_common_other_key_names_are_understood():
    content, ignored = validate_row("instruction", {"question": "Q?", "answer": "A.", "id": 3})
    assert (content, ignored) == ({"instruction": "Q?", "output": "A."}, ["id"])
    content, _ = validate_row("instruction", {"prompt": "Q?", "context": "C", "response": "A."})
    assert content == {"instruction": "Q?", "input": "C", "output": "A."}
    assert validate_row("text", {"content": "Body"})[0] == {"text": "Body"}


def test_json_array_items_split_across_read_chunks(monkeypatch):
    from datanets.ingest import readers

    monkeypatch.setattr(readers, "CHUNK", 7)
    items = [{"text": f"row {i} with caf\u00e9"} for i in range(50)] + [12345, {"text": "last"}]
    data = json.dumps(items, ensure_ascii=False, indent=1).encode()
    rows = rows_of(data, "json", kind="text")
    assert [r for _, r, _ in rows] == items
    assert rows[1][0] == 5  # indent=1 puts each item's first line 4 lines after the previous one's


def _array_with_known_lines() -> tuple[bytes, list[tuple[int, object]]]:
    """A JSON array whose items start on irregular lines: blank lines, CRLF, commas on their own line, items that
    span several lines. Returns the file and each item's (line it starts on, value)."""
    text, expected = "[", []
    for i in range(60):
        value = {"text": f"row {i}", "n": list(range(i % 3))} if i % 5 else i * 7
        text += ("\n" * (i % 4)) + ("  " if i % 2 else "\r\n\t")
        expected.append((text.count("\n") + 1, value))
        text += json.dumps(value, indent=2 if i % 3 == 0 else None)
        text += "\n," if i % 7 == 0 else ","
    text = text[:-1] + "\n]\n"
    return text.encode(), expected


@pytest.mark.parametrize("chunk", [5, 64, 64 * 1024])
def test_json_array_reports_the_exact_line_each_item_starts_on(monkeypatch, chunk):
    from datanets.ingest import readers

    monkeypatch.setattr(readers, "CHUNK", chunk)
    data, expected = _array_with_known_lines()
    assert [(n, r) for n, r, _ in rows_of(data, "json", kind="text")] == expected
    cut = data.index(b"]},", data.index(b'"row 41"')) + 2  # drop the comma after {"text": "row 41", "n": [0, 1]}
    with pytest.raises(IngestError) as exc:
        rows_of(data[:cut] + data[cut + 1 :], "json", kind="text")
    assert exc.value.message == f"Line {expected[42][0]}: expected ',' or ']' between the array's items."


def test_json_array_line_counting_scans_each_character_once(monkeypatch):
    """Linear, not items x buffer: the newline count covers each character of the file at most once."""
    from datanets.ingest import readers

    scanned = []
    count = readers._count_newlines
    monkeypatch.setattr(
        readers, "_count_newlines", lambda text, start, end: scanned.append(end - start) or count(text, start, end)
    )
    data = ("[\n" + ",\n".join(json.dumps({"text": f"row {i}"}) for i in range(5000)) + "\n]").encode()
    rows = rows_of(data, "json", kind="text")
    assert [n for n, _, _ in rows] == list(range(2, 5002))
    assert 0 < sum(scanned) <= len(data)


def test_empty_fields_are_named_for_a_person():
    from datanets.ingest.screen import empty_field_names

    assert empty_field_names({"instruction": "q", "input": "", "output": " "}) == ["input", "output"]
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]
    assert empty_field_names({"messages": messages}) == ["message 2"]
    assert empty_field_names({"text": "fine"}) == []
