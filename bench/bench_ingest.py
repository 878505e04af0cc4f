"""Ingest throughput: the same 100k rows as JSONL, as a JSON array and as CSV, each through validate + normalise +
hash + exact dedup + screening (the pure pipeline in datanets/ingest, streaming from a file on disk; database writes
are not included).

Baselines in the same run: json.loads + sha256 per line over the JSONL file, and one json.loads of the whole JSON
array (what reading the array costs with no streaming and no pipeline). Each format is timed twice: reading only
(read_rows, the streaming reader) and the whole pipeline. The JSON array and CSV are compared with JSONL (time per
format / JSONL's time), and reading the array with one json.loads of it, so a reader that is slower than its format
needs shows up as a ratio well above 1. Near-duplicate detection (MinHash LSH) is measured separately. Peak memory
is the Python heap peak (tracemalloc) in a second, untimed pass over the JSONL file and over the JSON array
(streaming: it must not grow with the file).

    python bench/bench_ingest.py [--rows N]   (default 100000; a smaller N for a quick run on a busy machine)"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from datanets.ingest.dedup import NearDuplicateIndex  # noqa: E402
from datanets.ingest.formats import HEAD_BYTES, detect_format  # noqa: E402
from datanets.ingest.pipeline import RowProcessor  # noqa: E402
from datanets.ingest.readers import read_rows  # noqa: E402

ROWS = 100_000
NEAR_DUP_ROWS = 20_000
PLANTS = ["tomatoes", "basil", "garlic", "potatoes", "carrots", "lettuce", "peas", "beans", "mint", "onions"]
VERBS = ["water", "feed", "prune", "plant", "harvest", "mulch", "stake", "thin", "sow", "protect"]
FORMATS = ("jsonl", "json", "csv")


def make_rows(count: int) -> list[dict]:
    rng = random.Random(7)
    rows = []
    for i in range(count):
        plant, verb = rng.choice(PLANTS), rng.choice(VERBS)
        answer = (
            f"You should {verb} {plant} about {rng.randint(1, 9)} times in {rng.randint(2, 30)} days; "
            f"watch the soil at {rng.randint(2, 40)} cm depth, keep it moist but not wet, and add "
            f"{rng.randint(1, 5)} cm of compost in spring. Row {i}."
        )
        if i % 50 == 0:
            answer += f" Ask me at grower{i}@example.org or +44 20 7946 {i % 10000:04d}."
        row = {"instruction": f"How do I {verb} my {plant} (case {i})?", "output": answer}
        if i % 100 == 1:
            row = {"instruction": "How do I water my tomatoes (case 0)?", "output": "Deeply, twice a week."}
        rows.append(row)
    return rows


def write_files(rows: list[dict], folder: Path) -> dict[str, Path]:
    """The same rows in each format: JSONL; a JSON array with one item per line, as json.dump(indent=...) and most
    exporters write it (so line numbers move as the reader goes); CSV with a header."""
    paths = {fmt: folder / f"rows.{fmt}" for fmt in FORMATS}
    with paths["jsonl"].open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with paths["json"].open("w", encoding="utf-8") as f:
        f.write("[\n" + ",\n".join("  " + json.dumps(row, ensure_ascii=False) for row in rows) + "\n]\n")
    with paths["csv"].open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["instruction", "output"])
        writer.writerows([row["instruction"], row["output"]] for row in rows)
    return paths


def baseline(path: Path) -> float:
    start = time.perf_counter()
    seen = set()
    with path.open("rb") as f:
        for line in f:
            json.loads(line)
            seen.add(hashlib.sha256(line).digest())
    return time.perf_counter() - start


def json_loads_whole(path: Path) -> float:
    start = time.perf_counter()
    json.loads(path.read_bytes())
    return time.perf_counter() - start


def read_only(path: Path) -> float:
    start = time.perf_counter()
    with path.open("rb") as raw:
        fmt, _ = detect_format(raw.read(HEAD_BYTES), path.name, total_size=path.stat().st_size)
        raw.seek(0)
        for _ in read_rows(raw, fmt, kind="instruction", row_max_chars=100_000):
            pass
    return time.perf_counter() - start


def pipeline(path: Path, near: bool = False, limit: int | None = None) -> tuple[float, RowProcessor]:
    start = time.perf_counter()
    processor = RowProcessor(kind="instruction", near_index=NearDuplicateIndex() if near else None)
    with path.open("rb") as raw:
        fmt, _ = detect_format(raw.read(HEAD_BYTES), path.name, total_size=path.stat().st_size)
        raw.seek(0)
        for n, (line, row, error) in enumerate(read_rows(raw, fmt, kind="instruction", row_max_chars=100_000), 1):
            processor.process(line, row, error)
            if limit and n >= limit:
                break
    return time.perf_counter() - start, processor


def peak_heap(path: Path) -> int:
    tracemalloc.start()
    pipeline(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS, help=f"rows per file (default {ROWS})")
    rows_n = parser.parse_args().rows
    near_n = min(NEAR_DUP_ROWS, rows_n)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_files(make_rows(rows_n), Path(tmp))
        size_mb = {fmt: path.stat().st_size / 1e6 for fmt, path in paths.items()}
        base_s = min(baseline(paths["jsonl"]) for _ in range(2))
        loads_s = min(json_loads_whole(paths["json"]) for _ in range(2))
        read_s = {fmt: min(read_only(path) for _ in range(2)) for fmt, path in paths.items()}
        timed = {fmt: min((pipeline(path) for _ in range(2)), key=lambda r: r[0]) for fmt, path in paths.items()}
        peak = {fmt: peak_heap(paths[fmt]) for fmt in ("jsonl", "json")}
        near_s, near_proc = pipeline(paths["jsonl"], near=True, limit=near_n)
    seconds = {fmt: s for fmt, (s, _) in timed.items()}
    report = timed["jsonl"][1].report
    accepted = {fmt: proc.report.rows_accepted for fmt, (_, proc) in timed.items()}
    assert len(set(accepted.values())) == 1, f"the formats should accept the same rows: {accepted}"
    results = {
        "rows": rows_n,
        "file_mb": round(size_mb["jsonl"], 1),
        "json_array_file_mb": round(size_mb["json"], 1),
        "csv_file_mb": round(size_mb["csv"], 1),
        "baseline_rows_per_s": round(rows_n / base_s),
        "ingest_rows_per_s": round(rows_n / seconds["jsonl"]),
        "ingest_vs_baseline": round(base_s / seconds["jsonl"], 3),
        "json_array_rows_per_s": round(rows_n / seconds["json"]),
        "csv_rows_per_s": round(rows_n / seconds["csv"]),
        "json_array_time_vs_jsonl": round(seconds["json"] / seconds["jsonl"], 2),
        "csv_time_vs_jsonl": round(seconds["csv"] / seconds["jsonl"], 2),
        "json_loads_whole_array_s": round(loads_s, 3),
        "read_jsonl_rows_per_s": round(rows_n / read_s["jsonl"]),
        "read_json_array_rows_per_s": round(rows_n / read_s["json"]),
        "read_csv_rows_per_s": round(rows_n / read_s["csv"]),
        "read_json_array_time_vs_jsonl": round(read_s["json"] / read_s["jsonl"], 2),
        "read_csv_time_vs_jsonl": round(read_s["csv"] / read_s["jsonl"], 2),
        "read_json_array_time_vs_json_loads": round(read_s["json"] / loads_s, 1),
        "json_array_time_vs_json_loads": round(seconds["json"] / loads_s, 1),
        "ingest_peak_python_heap_mb": round(peak["jsonl"] / 1e6, 1),
        "json_array_peak_python_heap_mb": round(peak["json"] / 1e6, 1),
        "rows_accepted": report.rows_accepted,
        "exact_duplicates": report.duplicates_total,
        "redacted": dict(report.redacted),
        "near_dup_rows": near_n,
        "near_dup_rows_per_s": round(near_n / near_s),
        "near_duplicates_flagged": near_proc.report.flags.get("near_duplicate", 0),
    }
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "ingest.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"file: {rows_n} rows, {size_mb['jsonl']:.1f} MB as JSONL")
    print(f"baseline json.loads+sha256 per JSONL line: {results['baseline_rows_per_s']:,} rows/s")
    print(f"ingest is {results['ingest_vs_baseline']:.2f}x the baseline's speed")
    print(f"peak Python heap during ingest: {results['ingest_peak_python_heap_mb']} MB")
    print(f"near-dup (MinHash LSH, {near_n} rows, alongside the rest): {results['near_dup_rows_per_s']:,} rows/s")
    print(f"ingest (validate+normalise+hash+exact dedup+screening): {results['ingest_rows_per_s']:,} rows/s")
    print(
        f"  JSON array: {results['json_array_rows_per_s']:,} rows/s, "
        f"{results['json_array_time_vs_jsonl']:.2f}x JSONL's time, "
        f"{results['json_array_time_vs_json_loads']:.1f}x the time of one json.loads of the whole array "
        f"({results['json_loads_whole_array_s']} s); peak heap {results['json_array_peak_python_heap_mb']} MB"
    )
    print(f"  CSV: {results['csv_rows_per_s']:,} rows/s, {results['csv_time_vs_jsonl']:.2f}x JSONL's time")
    print(
        f"reading only (read_rows): JSONL {results['read_jsonl_rows_per_s']:,} rows/s; "
        f"JSON array {results['read_json_array_rows_per_s']:,} rows/s, {results['read_json_array_time_vs_jsonl']:.2f}x "
        f"JSONL's time, {results['read_json_array_time_vs_json_loads']:.1f}x one json.loads of the whole array; "
        f"CSV {results['read_csv_rows_per_s']:,} rows/s, {results['read_csv_time_vs_jsonl']:.2f}x JSONL's time"
    )


if __name__ == "__main__":
    main()
