"""Ingest throughput: 100k-row JSONL through validate + normalise + hash + exact dedup + screening (the pure
pipeline in datanets/ingest, streaming from a file on disk; database writes are not included).

Baseline in the same run: json.loads + sha256 per line over the same file. Near-duplicate detection (MinHash LSH)
is measured separately. Peak memory is the Python heap peak (tracemalloc) in a second, untimed pass."""

from __future__ import annotations

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


def make_file(path: Path) -> None:
    rng = random.Random(7)
    with path.open("w", encoding="utf-8") as f:
        for i in range(ROWS):
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
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def baseline(path: Path) -> float:
    start = time.perf_counter()
    seen = set()
    with path.open("rb") as f:
        for line in f:
            json.loads(line)
            seen.add(hashlib.sha256(line).digest())
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


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl"
        make_file(path)
        size_mb = path.stat().st_size / 1e6
        base_s = min(baseline(path) for _ in range(2))
        ingest_s, processor = min((pipeline(path) for _ in range(2)), key=lambda r: r[0])
        report = processor.report
        tracemalloc.start()
        pipeline(path)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        near_s, near_proc = pipeline(path, near=True, limit=NEAR_DUP_ROWS)
    results = {
        "rows": ROWS,
        "file_mb": round(size_mb, 1),
        "baseline_rows_per_s": round(ROWS / base_s),
        "ingest_rows_per_s": round(ROWS / ingest_s),
        "ingest_vs_baseline": round(base_s / ingest_s, 3),
        "ingest_peak_python_heap_mb": round(peak / 1e6, 1),
        "rows_accepted": report.rows_accepted,
        "exact_duplicates": report.duplicates_total,
        "redacted": dict(report.redacted),
        "near_dup_rows": NEAR_DUP_ROWS,
        "near_dup_rows_per_s": round(NEAR_DUP_ROWS / near_s),
        "near_duplicates_flagged": near_proc.report.flags.get("near_duplicate", 0),
    }
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "ingest.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"file: {ROWS} rows, {size_mb:.1f} MB")
    print(f"baseline json.loads+sha256: {results['baseline_rows_per_s']:,} rows/s")
    print(f"ingest is {results['ingest_vs_baseline']:.2f}x the baseline's speed")
    print(f"peak Python heap during ingest: {results['ingest_peak_python_heap_mb']} MB")
    print(
        f"near-dup (MinHash LSH, {NEAR_DUP_ROWS} rows, alongside the rest): {results['near_dup_rows_per_s']:,} rows/s"
    )
    print(f"ingest (validate+normalise+hash+exact dedup+screening): {results['ingest_rows_per_s']:,} rows/s")


if __name__ == "__main__":
    main()
