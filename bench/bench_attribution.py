"""Attribution engine benchmark (CPU, 1 thread): index build time as a ratio to one training epoch on the same data
(batched hooks and a batch-size-1 loop), query latency over 10k indexed rows (forward+backward and scoring apart),
storage per row, LDS with its number of half-subsets, planted-fact top-1 (printed last).

Tiny Llama (attribution/engine/validation.py) for top-1/LDS/build ratio; a 10k-row synthetic index on the same
tiny LoRA model for latency and storage. Writes bench/results/attribution.json."""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
torch.set_num_threads(1)

from attribution.engine import SpanIndex, attribute_features, build_index  # noqa: E402
from attribution.engine import validation as V  # noqa: E402
from attribution.engine.lora import per_row_gradients, reference_row_gradient  # noqa: E402

TRAIN = V.TrainConfig(epochs=40, lr=1e-2)
LDS_SUBSETS = 32
LATENCY_ROWS = 10_000
LATENCY_K = 4096


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    from transformers import AutoTokenizer

    results: dict = {}
    work = Path(tempfile.mkdtemp(prefix="bench-attribution-"))
    base = V.prepare_base(work / "base")
    tokenizer = AutoTokenizer.from_pretrained(base)
    pad = tokenizer.pad_token_id

    # -- planted facts (and the model the build ratio is measured on) ------------------------------------------
    report, model, index, datanet = V.run_planted_facts(base, tokenizer, config=TRAIN, k=2048)
    rows = datanet.rows

    # -- build ratio: one training epoch vs building the index, same rows, same batch size, both warm ------------
    epoch_model = V.load_lora_model(base, TRAIN)
    one_epoch = V.TrainConfig(**{**TRAIN.__dict__, "epochs": 1})
    V.train_lora(epoch_model, rows, one_epoch, pad)  # warm-up
    epoch_s = best_of(lambda: V.train_lora(epoch_model, rows, one_epoch, pad))
    build_s = best_of(lambda: build_index(model, rows, k=2048, batch_size=TRAIN.batch_size, pad_id=pad))
    build_dense_s = best_of(
        lambda: build_index(model, rows, k=2048, projection="dense", batch_size=TRAIN.batch_size, pad_id=pad)
    )
    projector = index.projector()

    def loop_build():
        for _, ids, labels in rows:
            grads = reference_row_gradient(model, ids, labels)
            projector.project([g.unsqueeze(0) for g in grads])

    loop_s = best_of(loop_build, repeats=1)
    grads_only_s = best_of(
        lambda: per_row_gradients(
            model, [(r[1], r[2]) for r in rows], batch_size=TRAIN.batch_size, consume=lambda *_: 0
        )
    )
    results["train_epoch_s"] = round(epoch_s, 4)
    results["build_index_s"] = round(build_s, 4)
    results["build_ratio_to_epoch"] = round(build_s / epoch_s, 3)
    results["build_ratio_dense_projection"] = round(build_dense_s / epoch_s, 3)
    results["build_ratio_batch1_loop"] = round(loop_s / epoch_s, 3)
    results["build_ratio_gradients_only"] = round(grads_only_s / epoch_s, 3)
    print(f"one training epoch ({len(rows)} rows): {epoch_s * 1000:.1f} ms")
    print(f"index build (batched hooks, lowrank projection): {build_s * 1000:.1f} ms = {build_s / epoch_s:.2f}x epoch")
    print(f"index build (dense projection): {build_dense_s / epoch_s:.2f}x epoch")
    print(f"index build (batch-size-1 autograd loop): {loop_s / epoch_s:.2f}x epoch")
    print(f"of which per-row gradients alone: {grads_only_s / epoch_s:.2f}x epoch")

    # -- latency and storage over 10k rows ----------------------------------------------------------------------
    rng = random.Random(0)
    vocab = len(tokenizer)
    synthetic = []
    for row_id in range(1, LATENCY_ROWS + 1):
        prompt = [rng.randrange(3, vocab) for _ in range(rng.randrange(8, 20))]
        answer = [rng.randrange(3, vocab) for _ in range(rng.randrange(6, 24))]
        synthetic.append((row_id, prompt + answer, [-100] * len(prompt) + answer))
    started = time.perf_counter()
    big = build_index(model, synthetic, k=LATENCY_K, batch_size=32, pad_id=pad)
    big_build_s = time.perf_counter() - started
    path = big.save(work / "index.safetensors")
    spans = SpanIndex.build(synthetic)
    span_path = spans.save(work / "spans.npz")
    meta = {row_id: f"contributor-{row_id % 50}" for row_id in range(1, LATENCY_ROWS + 1)}
    big.features32()  # the float32 copy is made once per loaded index, not per query
    prompt, answer, _ = datanet.queries[0]
    answer_copy = synthetic[123][2][-12:]
    forward_backward_s = best_of(lambda: big.query_features(model, prompt, answer), repeats=5)
    phi = big.query_features(model, prompt, answer)
    scoring_s = best_of(lambda: attribute_features(big, None, phi, answer, meta), repeats=5)
    scoring_spans_s = best_of(lambda: attribute_features(big, spans, phi, answer_copy, meta), repeats=5)
    results["latency_rows"] = LATENCY_ROWS
    results["latency_k"] = big.k
    results["latency_forward_backward_ms"] = round(forward_backward_s * 1000, 2)
    results["latency_scoring_ms"] = round(scoring_s * 1000, 2)
    results["latency_scoring_with_spans_ms"] = round(scoring_spans_s * 1000, 2)
    results["storage_bytes_per_row"] = round(path.stat().st_size / LATENCY_ROWS, 1)
    results["span_index_bytes_per_row"] = round(span_path.stat().st_size / LATENCY_ROWS, 1)
    results["build_10k_rows_s"] = round(big_build_s, 2)
    print(f"10k-row index (k={big.k}) built in {big_build_s:.1f} s")
    print(f"query forward+backward: {forward_backward_s * 1000:.1f} ms")
    print(f"query scoring + aggregation over {LATENCY_ROWS} rows: {scoring_s * 1000:.1f} ms (goal <= 50 ms)")
    print(f"... with span matching (12-token copied answer): {scoring_spans_s * 1000:.1f} ms")
    print(
        f"storage: {results['storage_bytes_per_row']} bytes/row gradient index, "
        f"{results['span_index_bytes_per_row']} bytes/row span index"
    )

    # -- LDS --------------------------------------------------------------------------------------------------
    started = time.perf_counter()
    lds = V.linear_datamodeling_score(
        base,
        tokenizer,
        subsets=LDS_SUBSETS,
        config=TRAIN,
        k=2048,
        kappas=(0.01, 0.1, 0.3, 1.0),
        contributors=4,
        facts_each=4,
        filler_each=8,
    )
    results["lds_subsets"] = lds.subsets
    results["lds_queries"] = lds.queries
    results["lds_recall"] = lds.recall
    for method, value in lds.lds.items():
        results[f"lds_{method}"] = round(value, 4)
    print(
        f"LDS over {lds.subsets} half-subsets ({lds.queries} queries, recall {lds.recall:.2f}, "
        f"{time.perf_counter() - started:.0f} s): " + ", ".join(f"{m} {v:.3f}" for m, v in lds.lds.items())
    )

    # -- top-1 last ---------------------------------------------------------------------------------------------
    results["planted_facts"] = report.facts
    results["planted_recall"] = report.recall
    for method, value in report.top1.items():
        results[f"top1_{method}"] = value
    results["top1_rate"] = report.top1["fisher"]
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "attribution.json").write_text(json.dumps(results, indent=2) + "\n")
    print("top-1 by method: " + ", ".join(f"{m} {v:.2f}" for m, v in report.top1.items()))
    print(
        f"planted-fact top-1 rate (default 'fisher', {report.facts} facts, recall {report.recall:.2f}): "
        f"{report.top1['fisher']:.3f} (goal >= 0.95)"
    )


if __name__ == "__main__":
    main()
