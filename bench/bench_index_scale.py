"""Index at scale (CPU, 1 thread unless --threads): format poa-index-3 (float16 features, read whole on load, scored
against a dense float32 copy: the previous code path) against poa-index-4 (int8 features memory-mapped, scored in
chunks), measured in the same run on the tiny Llama of attribution/engine/validation.py.

    python bench/bench_index_scale.py                          # 100,000 rows, LDS over 32 subsets, RSS of 20 indexes
    python bench/bench_index_scale.py --rows 20000 --lds-subsets 2 --rss-indexes 3 --old-rss-indexes 1   # smoke

Prints, each with its ratio to the old path in the same run:
- storage: bytes per row of the two index files at --rows rows (the planted-fact index tiled, as bench_attribution's
  tiled_index does: scoring and storage depend only on the row count and k);
- query scoring + aggregation latency at --rows rows (attribute_features, no spans): the old index as loaded before
  (float16 read into memory, its float32 copy made once), the new one loaded from its file (mapped) scored by the
  float path over every row, and the same with the integer screen (attribution/engine/screen.py: what
  attribute_features does since) for a planted-fact answer and an unrelated one, with how many rows the screen sent
  to the float path (the tiling repeats each row ~900 times, so a row that counts counts ~900 times); best of
  --repeats, and the first query after load (its pages come from the page cache, mapped on first touch, and the
  screen's compiled code from numba's cache);
- LDS (attribution/engine/validation.py, the same retrained half-subsets) with float16 and with int8 features;
- RSS of a child process holding --rss-indexes indexes of --rows rows each, per variant: after load and after one
  query on each (VmRSS, and its private part RssAnon apart from RssFile, the mapped file pages the kernel can drop).
  The old variant holds ~2.4 GB per 100k-row index (float16 + float32 copy), so it loads --old-rss-indexes of them
  (default 2) and its figure for --rss-indexes indexes is that per-index growth times --rss-indexes, marked as such.
Writes bench/results/index_scale.json (or --output)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from attribution.engine import (  # noqa: E402
    AttributionIndex,
    attribute_features,
    build_index,
    screen,  # noqa: E402
)
from attribution.engine import validation as V  # noqa: E402
from attribution.engine.index import _matmul  # noqa: E402
from bench.bench_attribution import best_of  # noqa: E402

TRAIN = V.TrainConfig(epochs=40, lr=1e-2)


class DenseIndex(AttributionIndex):
    """The scoring of formats 2 and 3 before format 4: one (N, k) float32 copy of the features, made on first use
    and kept, multiplied whole against the query."""

    _dense: np.ndarray | None = None

    def features32(self) -> np.ndarray:
        if self._dense is None:
            self._dense = self.features.astype(np.float32) * self.row_scale[:, None]
        return self._dense

    def rows32(self, start: int, stop: int) -> np.ndarray:
        return self.features32()[start:stop]

    def _against_rows(self, phi: np.ndarray) -> np.ndarray:
        out = _matmul(self.features32(), np.atleast_2d(phi).T).T
        return out[0] if phi.ndim == 1 else out


def as_old(index: AttributionIndex) -> DenseIndex:
    """A loaded float16 index as the previous load gave it: features read into memory, scored densely."""
    fields = {f: getattr(index, f) for f in index.__dataclass_fields__}
    fields["features"] = np.array(index.features)  # the previous load read every tensor (safetensors load_file)
    fields["_norms"] = fields["_h_norms"] = None  # computed from the dense copy, as before
    return DenseIndex(**fields)


def tiled(index: AttributionIndex, rows: int) -> AttributionIndex:
    """The index's rows repeated to `rows` rows (its calibration and Fisher blocks kept)."""
    reps = -(-rows // index.size)
    fields = {f: getattr(index, f) for f in index.__dataclass_fields__}
    fields.update(
        row_ids=np.arange(1, rows + 1, dtype=np.int64),
        features=np.tile(index.features, (reps, 1))[:rows],
        row_scale=np.tile(index.row_scale, reps)[:rows],
        _norms=np.tile(index.norms(), reps)[:rows],
        _h_norms=np.tile(index.h_norms(), reps)[:rows],
    )
    return AttributionIndex(**fields)


@contextlib.contextmanager
def float_path_only():
    """attribute_features as before the screen: the float path over every row."""
    saved, screen.MIN_ROWS = screen.MIN_ROWS, 2**62
    try:
        yield
    finally:
        screen.MIN_ROWS = saved


def memory() -> dict:
    status = Path("/proc/self/status").read_text().splitlines()
    values = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in status if line.startswith(("VmRSS", "Rss"))}
    return {"rss": values["VmRSS"], "anon": values.get("RssAnon", 0), "file": values.get("RssFile", 0)}


def rss_child(variant: str, paths: list[str], query: str) -> None:
    """Loads every index (as the variant's code path does), then scores one query on each; prints JSON."""
    phi = np.load(query)
    started = memory()
    held = []
    for path in paths:
        index = AttributionIndex.load(path)
        if variant == "old":
            index = as_old(index)
            index.features32()  # the float32 copy, made once per loaded index (as bench_attribution did)
        held.append(index)
    loaded = memory()
    for index in held:
        index.h_norms()
        index.scores(phi, "fisher")
    queried = memory()
    print(json.dumps({"start": started, "loaded": loaded, "queried": queried, "indexes": len(paths)}))


def run_child(variant: str, paths: list[Path], query: Path, threads: int) -> dict:
    argv = [sys.executable, __file__, "--threads", str(threads), "--rss-child", variant, "--query", str(query)]
    done = subprocess.run(argv + [str(p) for p in paths], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"RSS child ({variant}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="indexed rows (the planted-fact index tiled)")
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lds-subsets", type=int, default=32, help="0: no LDS")
    parser.add_argument("--rss-indexes", type=int, default=20, help="0: no RSS figure")
    parser.add_argument("--old-rss-indexes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "index_scale.json"))
    parser.add_argument("--rss-child", choices=["old", "new"], help=argparse.SUPPRESS)
    parser.add_argument("--query", help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(args.rss_child, args.paths, args.query)
        return 0

    from transformers import AutoTokenizer

    results: dict = {"threads": args.threads, "rows": args.rows, "k": args.k, "load_average": os.getloadavg()[0]}
    print(f"torch threads {args.threads}; load average {os.getloadavg()[0]:.2f} at start", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-index-scale-"))
    try:
        base = V.prepare_base(work / "base")
        tokenizer = AutoTokenizer.from_pretrained(base)
        pad = tokenizer.pad_token_id
        report, model, new_small, datanet = V.run_planted_facts(base, tokenizer, config=TRAIN, k=args.k)
        old_small = build_index(model, datanet.rows, k=args.k, batch_size=TRAIN.batch_size, pad_id=pad,
                                feature_dtype="float16")  # fmt: skip
        print(f"planted facts: {len(datanet.rows)} rows, k={new_small.k}, recall {report.recall:.2f}", flush=True)

        # -- storage -----------------------------------------------------------------------------------------------
        old_path = tiled(old_small, args.rows).save(work / "old.safetensors")
        new_path = tiled(new_small, args.rows).save(work / "new.safetensors")
        old_bytes, new_bytes = old_path.stat().st_size / args.rows, new_path.stat().st_size / args.rows
        results.update(storage_bytes_per_row_old=round(old_bytes, 1), storage_bytes_per_row_new=round(new_bytes, 1))
        print(
            f"storage at {args.rows} rows: poa-index-3 {old_bytes:,.1f} B/row, poa-index-4 {new_bytes:,.1f} B/row "
            f"({new_bytes / old_bytes:.3f}x; goal <= 4,500 B/row)",
            flush=True,
        )

        # -- latency -----------------------------------------------------------------------------------------------
        prompt, answer, _ = datanet.queries[0]
        phi = new_small.query_features(model, prompt, answer)
        forward_backward_s = best_of(lambda: new_small.query_features(model, prompt, answer), args.repeats)
        meta = {row_id: f"contributor-{row_id % 50}" for row_id in range(1, args.rows + 1)}
        started = time.perf_counter()
        old = as_old(AttributionIndex.load(old_path))
        old.h_norms()  # its float32 copy and norms, made once per loaded index (as bench_attribution did)
        old_load_s = time.perf_counter() - started
        started = time.perf_counter()
        new = AttributionIndex.load(new_path)
        new_load_s = time.perf_counter() - started
        started = time.perf_counter()
        attribute_features(new, None, phi, answer, meta)
        new_first_s = time.perf_counter() - started
        old_s, new_s, screened_s, unrelated_s = [], [], [], []
        unrelated = new_small.null_features[0]  # a permutation-null answer: related to no row
        for _ in range(args.repeats):  # alternated: the machine is shared, a ratio within a round holds up
            old_s.append(best_of(lambda: attribute_features(old, None, phi, answer, meta), 1))
            with float_path_only():
                new_s.append(best_of(lambda: attribute_features(new, None, phi, answer, meta), 1))
            screened_s.append(best_of(lambda: attribute_features(new, None, phi, answer, meta), 1))
            unrelated_s.append(best_of(lambda: attribute_features(new, None, unrelated, answer, meta), 1))
        old_ms, new_ms = min(old_s) * 1000, min(new_s) * 1000
        screened_ms, unrelated_ms = min(screened_s) * 1000, min(unrelated_s) * 1000
        floor = new.null_floor["fisher"]
        rescored = screen.screened_scores(new, phi, "fisher", floor, 10)[1]
        rescored_unrelated = screen.screened_scores(new, unrelated, "fisher", floor, 10)[1]
        results.update(
            latency_scoring_ms_screened=round(screened_ms, 1),
            latency_scoring_ms_screened_unrelated=round(unrelated_ms, 1),
            latency_rounds_ms_screened=[round(t * 1000, 1) for t in screened_s],
            rows_rescored=rescored,
            rows_rescored_unrelated=rescored_unrelated,
        )
        print(
            f"screened (int8 x int16 screen, float path for the rows that may count): planted-fact answer "
            f"{screened_ms:.1f} ms ({screened_ms / new_ms:.3f}x the float path over every row; {rescored:,} rows "
            f"scored exactly: the fact's rows, repeated by the tiling), unrelated answer {unrelated_ms:.1f} ms "
            f"({rescored_unrelated:,} rows scored exactly); goal <= 50 ms",
            flush=True,
        )
        results.update(
            forward_backward_ms_tiny=round(forward_backward_s * 1000, 2),
            latency_scoring_ms_old=round(old_ms, 1),
            latency_scoring_ms_new=round(new_ms, 1),
            latency_scoring_ms_new_first_query=round(new_first_s * 1000, 1),
            latency_rounds_ms_old=[round(t * 1000, 1) for t in old_s],
            latency_rounds_ms_new=[round(t * 1000, 1) for t in new_s],
            load_s_old=round(old_load_s, 2),
            load_s_new=round(new_load_s, 3),
        )
        print(
            f"load: old {old_load_s:.2f} s (read + float32 copy + norms), new {new_load_s * 1000:.1f} ms (mapped)\n"
            f"query scoring + aggregation at {args.rows} rows, k={new.k} (best of {args.repeats}, alternated): "
            f"old fp16 dense {old_ms:.1f} ms, new int8 chunked {new_ms:.1f} ms ({new_ms / old_ms:.2f}x); new first "
            f"query after load {new_first_s * 1000:.1f} ms; goal <= 50 ms (+ the model's forward+backward, "
            f"{forward_backward_s * 1000:.1f} ms on this tiny model)",
            flush=True,
        )
        old = new = None  # both released before the RSS children run

        # -- RSS of a worker holding many indexes -----------------------------------------------------------------
        if args.rss_indexes:
            query = work / "query.npy"
            np.save(query, phi)
            copies = [new_path]
            for n in range(1, args.rss_indexes):  # distinct files: no page is shared between two of them
                copies.append(Path(shutil.copyfile(new_path, work / f"new-{n}.safetensors")))
            new_rss = run_child("new", copies, query, args.threads)
            for path in copies[1:]:
                path.unlink()
            old_copies = [old_path] * args.old_rss_indexes
            old_rss = run_child("old", old_copies, query, args.threads)
            per_old = (old_rss["loaded"]["rss"] - old_rss["start"]["rss"]) / max(1, args.old_rss_indexes)
            old_total = per_old * args.rss_indexes
            new_loaded = new_rss["loaded"]["rss"] - new_rss["start"]["rss"]
            new_queried = new_rss["queried"]
            results.update(
                rss_indexes=args.rss_indexes,
                rss_old_indexes_loaded=args.old_rss_indexes,
                rss_old_per_index_bytes=int(per_old),
                rss_old_for_all_bytes_extrapolated=int(old_total),
                rss_new_after_load_bytes=int(new_loaded),
                rss_new_after_query_bytes=int(new_queried["rss"] - new_rss["start"]["rss"]),
                rss_new_after_query_anon_bytes=int(new_queried["anon"] - new_rss["start"]["anon"]),
                rss_new_after_query_file_bytes=int(new_queried["file"] - new_rss["start"]["file"]),
                rss_children={"old": old_rss, "new": new_rss},
            )
            print(
                f"RSS growth of a process holding {args.rss_indexes} indexes of {args.rows} rows:\n"
                f"  old: {mib(per_old)} per index (measured over {args.old_rss_indexes}), {mib(old_total)} for "
                f"{args.rss_indexes} (per-index growth x {args.rss_indexes})\n"
                f"  new: {mib(new_loaded)} after load ({new_loaded / old_total:.4f}x); after one query on each "
                f"{mib(results['rss_new_after_query_bytes'])}, of which private "
                f"{mib(results['rss_new_after_query_anon_bytes'])} and mapped file pages (the kernel's to drop) "
                f"{mib(results['rss_new_after_query_file_bytes'])}",
                flush=True,
            )

        # -- LDS: float16 vs int8 features of the same model, the same subsets -----------------------------------
        if args.lds_subsets:
            started = time.perf_counter()
            lds = V.linear_datamodeling_score(
                base, tokenizer, subsets=args.lds_subsets, config=TRAIN, k=2048, kappas=(), contributors=4,
                facts_each=4, filler_each=8, feature_dtypes=("int8", "float16"),
            )  # fmt: skip
            lds_s = time.perf_counter() - started
            for method, value in lds.lds.items():
                results[f"lds_{method}"] = round(value, 4)
            results.update(lds_subsets=lds.subsets, lds_queries=lds.queries, lds_recall=lds.recall,
                           lds_seconds=round(lds_s, 1))  # fmt: skip
            print(
                f"LDS over {lds.subsets} half-subsets ({lds.queries} queries, recall {lds.recall:.2f}, {lds_s:.0f} s): "
                + ", ".join(
                    f"{m} fp16 {lds.lds['float16:' + m]:.4f} int8 {lds.lds[m]:.4f} "
                    f"(diff {lds.lds[m] - lds.lds['float16:' + m]:+.4f})"
                    for m in ("fisher", "dot", "cosine")
                )
                + " (goal: int8 no more than 0.02 below fp16)",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
