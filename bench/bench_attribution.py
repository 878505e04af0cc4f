"""Attribution engine benchmark (CPU, 1 thread unless --threads): index build time as a ratio to one training epoch
on the same rows, query latency over 10k indexed rows (forward+backward and scoring apart), storage per row, LDS
with its number of half-subsets, planted-fact top-1 (printed last).

    python bench/bench_attribution.py                  # tiny Llama (attribution/engine/validation.py), ~3 minutes
    python bench/bench_attribution.py --model smollm2  # the default base model, SmolLM2-135M-Instruct, a few minutes
    python bench/bench_attribution.py --device cuda --synthetic-config 135m --tokenizer-dir var/tokenizers/smollm2 \
        --rows 2000                                    # GPU: random-init model of SmolLM2-135M's shape, no weights
    python bench/bench_attribution.py --model smollm2 --lds-subsets 16 --lds-rows 64
                                                       # LDS of the product's method on SmolLM2 (CPU: ~1 hour)

LDS mode (`--lds-subsets N`, with --model smollm2 or --model-dir): the product's method end to end on planted facts
(`--lds-rows`, 16 rows per contributor: 4 made-up facts in 2 phrasings and 8 filler rows) in the product's chat
format (modelfactory.training.data.build_examples): the model is trained by the project's training loop at the
default preset's settings (LORA_PRESET: rank 16 on all linear layers, lr 1e-3 cosine, at least 80 steps of 4 rows;
every row trained, none held out), indexed as the training job indexes it (k=--lds-k, default 4096 as
MF_ATTRIBUTION_K; the preset's seed; passes of batch size x the longest row; no fluent calibration, which changes no
score), then retrained the same way on N random half-subsets (attribution/engine/validation.py). Prints a line per
retrain, then the LDS per score method, the facts' recall and the time per retrain; writes
attribution_smollm2_lds.json (or attribution_<model folder>_lds.json, `_<device>` on a GPU).

Build ratio: the epoch is the project's training loop (modelfactory.training.loop.train, as the training job runs
it) on the same rows with the same batch size; epoch and build are timed alternately, several rounds, and the
median of the per-round ratios is reported (the machine is shared: a ratio within a round is what holds up). The
build runs as the training job runs it: passes of at most batch size x max length tokens (the most one training
micro-batch may hold), the 32 calibration queries in the same passes as the rows.

`--synthetic-config` (bench/synthetic_model.py, shared with bench_training.py) needs torch, transformers and peft
only: no Django, no gguf, no weights; it measures the build ratio, query latency and storage (random weights learn
no planted facts quickly, so no top-1 or LDS). Writes bench/results/attribution.json (tiny),
attribution_smollm2.json or attribution_<device>_synthetic_<shape>.json (or --output).

`--record` merges the figures of the product's default score method into attribution/quality.json under the
method version, which the model pages show (attribution/quality.py): on the tiny run, planted-fact top-1 and LDS;
in the LDS mode (`--lds-subsets`), the LDS on the model it ran on (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from attribution.engine import DEFAULT_METHOD, AttributionIndex, SpanIndex, attribute_features, build_index  # noqa: E402
from attribution.engine import validation as V  # noqa: E402
from attribution.engine.combine import METHOD_VERSION, method_version_of  # noqa: E402
from attribution.engine.lora import per_row_features, per_row_gradients, reference_row_gradient  # noqa: E402
from attribution.quality import TINY, Measurement, quality_record, today  # noqa: E402
from bench.synthetic_model import bench_tokenizer, write_synthetic_model  # noqa: E402

TRAIN = V.TrainConfig(epochs=40, lr=1e-2)
LDS_SUBSETS = 32
LORA_PRESET = "balanced"  # the default preset (modelfactory.training.presets.DEFAULT_PRESET)
LDS_KAPPAS = (0.01, 0.1, 0.3, 1.0)
LDS_ROWS_PER_CONTRIBUTOR = 16  # 4 facts x 2 phrasings + 8 filler rows, as the tiny model's LDS datanet
LATENCY_ROWS = 10_000
LATENCY_K = 4096
MAX_LENGTH = 256  # the training max length of loop_hp: with the batch size, the build's token budget per pass
SMOLLM2_DIR = Path(os.environ.get("MF_BENCH_MODEL_DIR", "/work/main/var/models/smollm2-135m-instruct"))
SMOLLM2_LOCAL = ROOT / "var" / "models" / "smollm2-135m-instruct"


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn) -> float:
    _sync()
    started = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - started


def loop_hp(batch_size: int, target_modules: str, rank: int = 8) -> dict:
    from modelfactory.training.presets import validate_hyperparameters

    hp, errors = validate_hyperparameters(
        {"min_steps": 0, "batch_size": batch_size, "grad_accum": 1, "epochs": 1, "max_length": MAX_LENGTH,
         "learning_rate": 1e-3,
         "rank": rank, "alpha": 2 * rank, "target_modules": target_modules, "dropout": 0.0, "warmup_ratio": 0.0,
         "eval_split": 0.0, "seed": 0},
    )  # fmt: skip
    assert not errors, errors
    return hp


def token_budget(hp: dict) -> int:
    """What the training job passes to build_index as max_tokens (attribution/services/indexing.py)."""
    return int(hp["batch_size"]) * int(hp["max_length"])


def build_ratio(model, rows, *, base_dir: Path, hp: dict, pad: int, k: int, rounds: int, device=None) -> dict:
    """One epoch of the project's training loop (on a fresh LoRA model of the same shape) and the index build on
    the trained model, timed alternately; medians over the rounds. Also the build with `batch_size` rows per pass
    (the budget's default, for comparison) and the per-row part alone."""
    from modelfactory.training.data import Example
    from modelfactory.training.loop import load_model_for_training, train

    device = device or torch.device("cpu")
    examples = [Example(row_id, list(ids), list(labels)) for row_id, ids, labels in rows]
    epoch_model, _ = load_model_for_training(base_dir, hp, device=device)
    batch = int(hp["batch_size"])
    budget = token_budget(hp)

    def epoch():
        train(epoch_model, examples, hp, device=device, pad_id=pad)

    def build():
        built.append(build_index(model, rows, k=k, batch_size=batch, max_tokens=budget, pad_id=pad))

    def build_rows_of_batch():
        build_index(model, rows, k=k, batch_size=batch, pad_id=pad)

    def features():  # the per-row part alone (what grows with the rows), without the calibration queries
        projector = built[-1].projector()
        per_row_features(model, [(r[1], r[2]) for r in rows], projector, batch_size=batch, max_tokens=budget,
                         pad_id=pad, consume=lambda *_: None)  # fmt: skip

    built: list = []
    epoch()  # warm-up of all
    build()
    build_rows_of_batch()
    features()
    epochs, builds, ratios, batch_ratios, feature_ratios = [], [], [], [], []
    for _ in range(rounds):
        e, b, bb, f = timed(epoch), timed(build), timed(build_rows_of_batch), timed(features)
        epochs.append(e)
        builds.append(b)
        ratios.append(b / e)
        batch_ratios.append(bb / e)
        feature_ratios.append(f / e)
    built.clear()
    return {
        "epoch_s": statistics.median(epochs),
        "build_s": statistics.median(builds),
        "ratio": statistics.median(ratios),
        "ratios": [round(r, 3) for r in ratios],
        "batch_rows_ratio": statistics.median(batch_ratios),
        "batch_rows_ratios": [round(r, 3) for r in batch_ratios],
        "features_ratio": statistics.median(feature_ratios),
        "features_ratios": [round(r, 3) for r in feature_ratios],
        "max_tokens": budget,
    }


def tiled_index(index: AttributionIndex, rows: int) -> AttributionIndex:
    """The index's rows repeated to `rows` rows: scoring cost depends only on the row count and k."""
    reps = -(-rows // index.size)
    return AttributionIndex(
        row_ids=np.arange(1, rows + 1, dtype=np.int64),
        features=np.tile(index.features, (reps, 1))[:rows],
        row_scale=np.tile(index.row_scale, reps)[:rows],
        matrices=index.matrices,
        widths=index.widths,
        seed=index.seed,
        projection=index.projection,
        kappa=index.kappa,
        fisher_inverse=index.fisher_inverse,
        damping=index.damping,
        null_features=index.null_features,
        null_floor=index.null_floor,
        null_alpha=index.null_alpha,
        format=index.format,
        _norms=np.tile(index.norms(), reps)[:rows],  # as a saved index stores them (format 4)
        _h_norms=np.tile(index.h_norms(), reps)[:rows],
    )


def tiny(results: dict, rounds: int) -> None:
    from transformers import AutoTokenizer

    work = Path(tempfile.mkdtemp(prefix="bench-attribution-"))
    base = V.prepare_base(work / "base")
    tokenizer = AutoTokenizer.from_pretrained(base)
    pad = tokenizer.pad_token_id

    # -- planted facts (and the model the build ratio is measured on) ------------------------------------------
    report, model, index, datanet = V.run_planted_facts(base, tokenizer, config=TRAIN, k=2048)
    rows = datanet.rows
    results["method_version"] = method_version_of(index)
    results["score_method"] = DEFAULT_METHOD

    # -- build ratio -------------------------------------------------------------------------------------------
    hp = loop_hp(TRAIN.batch_size, "all_linear", TRAIN.rank)
    ratio = build_ratio(model, rows, base_dir=base, hp=hp, pad=pad, k=2048, rounds=rounds)
    validation_epoch = V.load_lora_model(base, TRAIN)
    one_epoch = V.TrainConfig(**{**TRAIN.__dict__, "epochs": 1})
    V.train_lora(validation_epoch, rows, one_epoch, pad)  # warm-up
    simple_epoch_s = best_of(lambda: V.train_lora(validation_epoch, rows, one_epoch, pad))
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
    epoch_s = ratio["epoch_s"]
    results["train_epoch_s"] = round(epoch_s, 4)
    results["build_index_s"] = round(ratio["build_s"], 4)
    results["build_ratio_to_epoch"] = round(ratio["ratio"], 3)
    results["build_ratio_rounds"] = ratio["ratios"]
    results["build_ratio_features_only"] = round(ratio["features_ratio"], 3)
    results["build_ratio_features_only_rounds"] = ratio["features_ratios"]
    results["build_max_tokens"] = ratio["max_tokens"]
    results["build_ratio_batch_size_rows_per_pass"] = round(ratio["batch_rows_ratio"], 3)
    results["build_ratio_batch_size_rows_per_pass_rounds"] = ratio["batch_rows_ratios"]
    results["build_ratio_to_validation_trainer_epoch"] = round(ratio["build_s"] / simple_epoch_s, 3)
    results["build_ratio_dense_projection"] = round(build_dense_s / epoch_s, 3)
    results["build_ratio_batch1_loop"] = round(loop_s / epoch_s, 3)
    results["build_ratio_gradients_only"] = round(grads_only_s / epoch_s, 3)
    print(f"one training epoch, project loop ({len(rows)} rows, batch {TRAIN.batch_size}): {epoch_s * 1000:.1f} ms")
    print(
        f"index build (passes of <= {ratio['max_tokens']} tokens, factored lowrank projection, null calibration): "
        f"{ratio['build_s'] * 1000:.1f} ms = {ratio['ratio']:.2f}x epoch (median of {rounds} alternating rounds: "
        f"{ratio['ratios']})"
    )
    print(
        f"  with {TRAIN.batch_size} rows per pass instead: {ratio['batch_rows_ratio']:.2f}x epoch "
        f"({ratio['batch_rows_ratios']})"
    )
    print(
        f"  vs the validation trainer's epoch ({simple_epoch_s * 1000:.1f} ms): "
        f"{ratio['build_s'] / simple_epoch_s:.2f}x"
    )
    print(
        f"  of which per-row features (grows with the rows; the rest is the 32 calibration queries, the Fisher "
        f"blocks and the noise floor): {ratio['features_ratio']:.2f}x epoch ({ratio['features_ratios']})"
    )
    print(f"index build (dense projection): {build_dense_s / epoch_s:.2f}x epoch")
    print(f"index build (batch-size-1 autograd loop): {loop_s / epoch_s:.2f}x epoch")
    print(f"per-row full gradients alone (no projection): {grads_only_s / epoch_s:.2f}x epoch")

    # -- latency and storage over 10k rows ----------------------------------------------------------------------
    rng = random.Random(0)
    vocab = len(tokenizer)
    synthetic = []
    for row_id in range(1, LATENCY_ROWS + 1):
        prompt = [rng.randrange(3, vocab) for _ in range(rng.randrange(8, 20))]
        answer = [rng.randrange(3, vocab) for _ in range(rng.randrange(6, 24))]
        synthetic.append((row_id, prompt + answer, [-100] * len(prompt) + answer))
    started = time.perf_counter()
    big = build_index(
        model, synthetic, k=LATENCY_K, batch_size=TRAIN.batch_size, max_tokens=token_budget(hp), pad_id=pad
    )
    big_build_s = time.perf_counter() - started
    from modelfactory.training.data import Example
    from modelfactory.training.loop import load_model_for_training, train

    big_epoch_model, _ = load_model_for_training(base, hp, device=torch.device("cpu"))
    big_examples = [Example(row_id, ids, labels) for row_id, ids, labels in synthetic]
    big_epoch_s = timed(lambda: train(big_epoch_model, big_examples, hp, device=torch.device("cpu"), pad_id=pad))
    results["build_10k_rows_ratio_to_epoch"] = round(big_build_s / big_epoch_s, 3)
    print(
        f"at {LATENCY_ROWS} rows: index build {big_build_s:.1f} s (k={big.k}, with its calibration) vs one epoch of "
        f"the project loop {big_epoch_s:.1f} s = {big_build_s / big_epoch_s:.2f}x (one round)"
    )
    path = big.save(work / "index.safetensors")
    spans = SpanIndex.build(synthetic)
    span_path = spans.save(work / "spans.npz")
    meta = {row_id: f"contributor-{row_id % 50}" for row_id in range(1, LATENCY_ROWS + 1)}
    big.norms()  # stored in the file (format 4): a loaded index has them without a pass over the features
    big.h_norms()
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
    results["top1_rate"] = report.top1[DEFAULT_METHOD]
    print("top-1 by method: " + ", ".join(f"{m} {v:.2f}" for m, v in report.top1.items()))
    print(
        f"index build ratio to one training epoch: {ratio['ratio']:.2f}x at {len(rows)} rows (per-row features "
        f"{ratio['features_ratio']:.2f}x), {results['build_10k_rows_ratio_to_epoch']:.2f}x at {LATENCY_ROWS} rows "
        f"(goal <= 1.0x)"
    )
    print(
        f"planted-fact top-1 rate (default 'fisher', {report.facts} facts, recall {report.recall:.2f}): "
        f"{report.top1['fisher']:.3f} (goal >= 0.95)"
    )


def smollm2_dir() -> Path:
    """The converted default base model, where the project keeps it (MF_BASE_MODEL_DIR), else converted once
    from the bundled GGUF into var/models, as `manage.py register_base_model` does."""
    if SMOLLM2_DIR.exists():
        return SMOLLM2_DIR
    from modelfactory.training.model_files import convert_gguf, find_default_gguf

    return convert_gguf(find_default_gguf(), SMOLLM2_LOCAL, progress=print)


def fact_rows(tokenizer, n_rows: int, max_length: int) -> list:
    """Short made-up facts tokenised by the project's chat template (modelfactory.training.data.build_examples)."""
    from modelfactory.training.data import build_examples

    rng = random.Random(0)
    raw = []
    for i in range(n_rows):
        name, code = V._name(rng), V._code(rng)
        question = f"What is the code of {name}?" if i % 2 else f"Code of {name}?"
        raw.append({"id": i + 1, "kind": "instruction", "content": {"instruction": question, "output": code}})
    examples, _ = build_examples(tokenizer, raw, max_length=max_length)
    return [(e.row_id, e.input_ids, e.labels) for e in examples]


def large_model(results: dict, args, *, folder: Path, label: str, device: torch.device) -> None:
    """A real-size model (SmolLM2-135M-Instruct, or a random-init model of a named shape) with the project's LoRA
    (rank 8, all linear layers) on short made-up facts. Build ratio, query latency and storage only: teaching it the
    facts takes many epochs (and random weights learn nothing quickly)."""
    from modelfactory.training.loop import load_model_for_training, train

    hp = loop_hp(args.batch_size, "all_linear")
    model, tokenizer = load_model_for_training(folder, hp, device=device)
    rows = fact_rows(tokenizer, args.rows, int(hp["max_length"]))
    pad = tokenizer.pad_token_id
    lengths = sorted(len(ids) for _, ids, _ in rows)
    threads = f", {torch.get_num_threads()} thread(s)" if device.type == "cpu" else ""
    print(
        f"{label} on {device_name(device)}, LoRA rank 8 on all linear layers, {len(rows)} rows of "
        f"{lengths[0]}-{lengths[-1]} tokens, batch {hp['batch_size']}{threads}",
        flush=True,
    )
    from modelfactory.training.data import Example

    train(model, [Example(*r) for r in rows], hp, device=device, pad_id=pad)  # the "final adapter"
    ratio = build_ratio(model, rows, base_dir=folder, hp=hp, pad=pad, k=LATENCY_K, rounds=args.rounds or 2,
                        device=device)  # fmt: skip
    index = build_index(model, rows, k=LATENCY_K, batch_size=int(hp["batch_size"]), max_tokens=ratio["max_tokens"],
                        pad_id=pad)  # fmt: skip
    big = tiled_index(index, args.latency_rows)
    big.norms()
    big.h_norms()
    prompt, answer = rows[0][1][:-3], rows[0][1][-3:]
    forward_backward_s = best_of(lambda: big.query_features(model, prompt, answer), repeats=3)
    phi = big.query_features(model, prompt, answer)
    meta = {row_id: f"contributor-{row_id % 50}" for row_id in big.row_ids.tolist()}
    scoring_s = best_of(lambda: attribute_features(big, None, phi, answer, meta), repeats=5)
    with tempfile.TemporaryDirectory(prefix="bench-attribution-") as tmp:
        path = index.save(Path(tmp) / "index.safetensors")
        file_bytes = path.stat().st_size
        spans_bytes = SpanIndex.build(rows).save(Path(tmp) / "spans.npz").stat().st_size
    results.update(
        {
            "model": label,
            "method_version": METHOD_VERSION,  # features built by the product's index build, scored as it scores
            "score_method": DEFAULT_METHOD,
            "device": device.type,
            "hardware": device_name(device),
            "rows": len(rows),
            "batch_size": int(hp["batch_size"]),
            "threads": torch.get_num_threads(),
            "train_epoch_s": round(ratio["epoch_s"], 3),
            "build_index_s": round(ratio["build_s"], 3),
            "build_ratio_to_epoch": round(ratio["ratio"], 3),
            "build_ratio_rounds": ratio["ratios"],
            "build_max_tokens": ratio["max_tokens"],
            "build_ratio_batch_size_rows_per_pass": round(ratio["batch_rows_ratio"], 3),
            "build_ratio_batch_size_rows_per_pass_rounds": ratio["batch_rows_ratios"],
            "build_ratio_features_only": round(ratio["features_ratio"], 3),
            "build_ratio_features_only_rounds": ratio["features_ratios"],
            "latency_k": big.k,
            "latency_rows": args.latency_rows,
            "latency_forward_backward_ms": round(forward_backward_s * 1000, 1),
            "latency_scoring_ms": round(scoring_s * 1000, 2),
            "storage_bytes_per_row_features": big.k + 4 + 8 + 8,  # int8 features, scale, two norms, row id
            "storage_bytes_per_row": round(file_bytes / len(rows), 1),
            "span_index_bytes_per_row": round(spans_bytes / len(rows), 1),
            "index_file_bytes": file_bytes,
        }
    )
    print(f"one training epoch, project loop: {ratio['epoch_s']:.2f} s; index build {ratio['build_s']:.2f} s")
    print(
        f"query forward+backward ({len(prompt)}-token prompt, {len(answer)}-token answer): "
        f"{forward_backward_s * 1000:.1f} ms"
    )
    print(
        f"query scoring + aggregation over {args.latency_rows} rows (k={big.k}): {scoring_s * 1000:.1f} ms "
        f"(goal <= 50 ms)"
    )
    print(
        f"storage: {results['storage_bytes_per_row']} bytes/row index file at {len(rows)} rows ({big.k + 20} "
        f"bytes/row of features; the rest is fixed), {results['span_index_bytes_per_row']} bytes/row span index"
    )
    print(
        f"per-row features alone: {ratio['features_ratio']:.2f}x epoch ({ratio['features_ratios']}); the rest is the "
        f"32 calibration queries (as many rows more), the Fisher blocks and the noise floor"
    )
    print(
        f"  with {hp['batch_size']} rows per pass instead of <= {ratio['max_tokens']} tokens: "
        f"{ratio['batch_rows_ratio']:.2f}x epoch ({ratio['batch_rows_ratios']})"
    )
    print(
        f"index build ratio to one training epoch: {ratio['ratio']:.2f}x over rounds {ratio['ratios']} (goal <= 1.0x)"
    )


def product_format(tokenizer, max_length: int) -> V.Encode:
    """A question and its answer as the product tokenises an instruction row (its chat template, the answer and the
    end-of-turn token trained)."""
    from modelfactory.training.data import build_examples

    def encode(question: str, answer: str) -> tuple[list[int], list[int], str]:
        raw = [{"id": 1, "kind": "instruction", "content": {"instruction": question, "output": answer}}]
        examples, report = build_examples(tokenizer, raw, max_length=max_length)
        if not examples:
            raise ValueError(f"The row {question!r} -> {answer!r} cannot be trained: {report}")
        return list(examples[0].input_ids), list(examples[0].labels), f"{question}\n{answer}"

    return encode


def preset_hp(preset: str = LORA_PRESET) -> dict:
    """The preset's settings, every row trained (the LDS compares models trained on exactly the chosen rows)."""
    from modelfactory.training.presets import validate_hyperparameters

    hp, errors = validate_hyperparameters({"eval_split": 0.0}, preset=preset)
    assert not errors, errors
    return hp


def preset_fit(folder: Path, hp: dict, *, device: torch.device, pad: int, steps: list[int]) -> V.Fit:
    """Trains a fresh LoRA as a training job does: the project's loop at the preset's settings (`steps` collects the
    optimizer steps of each run). Prints a line after the first run (the model on all rows, before the index)."""
    from modelfactory.training.data import Example
    from modelfactory.training.loop import load_model_for_training, train

    def fit(rows):
        wall, cpu = time.perf_counter(), time.process_time()
        model, _ = load_model_for_training(folder, hp, device=device)
        steps.append(train(model, [Example(*r) for r in rows], hp, device=device, pad_id=pad).steps)
        if len(steps) == 1:
            print(
                f"trained on all {len(rows)} rows: {steps[0]} steps in {time.perf_counter() - wall:.1f} s "
                f"({time.process_time() - cpu:.1f} s CPU); indexing them, then the half-subsets",
                flush=True,
            )
        return model

    return fit


def preset_lds(results: dict, args, *, folder: Path, label: str, device: torch.device) -> None:
    """LDS of the product's method (its row format, training loop at the default preset, index build) on `folder`."""
    from transformers import AutoTokenizer

    from modelfactory.training.schedule import plan_steps

    hp = preset_hp()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # as load_model_for_training does
    pad = tokenizer.pad_token_id
    datanet = V.planted_facts(
        tokenizer,
        contributors=args.lds_rows // LDS_ROWS_PER_CONTRIBUTOR,
        facts_each=4,
        filler_each=8,
        encode=product_format(tokenizer, int(hp["max_length"])),
    )
    rows = datanet.rows
    longest = max(len(ids) for _, ids, _ in rows)
    batch = int(hp["batch_size"])
    steps: list[int] = []
    half_steps = plan_steps(len(rows) // 2, hp)[1]
    threads = f", {torch.get_num_threads()} thread(s)" if device.type == "cpu" else ""
    print(
        f"LDS of the product's method on {label} ({device_name(device)}{threads}): preset '{LORA_PRESET}' (LoRA rank "
        f"{hp['rank']} alpha {hp['alpha']} on {hp['target_modules']}, lr {hp['learning_rate']:g} {hp['scheduler']}, "
        f"batch {batch}, at least {hp['min_steps']} steps: {plan_steps(len(rows), hp)[1]} on all {len(rows)} rows, "
        f"{half_steps} per half-subset), {len(datanet.queries)} planted facts, {len(rows)} rows of "
        f"{min(len(ids) for _, ids, _ in rows)}-{longest} tokens, k={args.lds_k}, {args.lds_subsets} half-subsets",
        flush=True,
    )
    started = time.perf_counter()

    def progress(done: int, total: int, report: V.LdsReport) -> None:
        wall, cpu = report.retrain_seconds[-1], report.retrain_cpu_seconds[-1]
        left = statistics.mean(report.retrain_seconds) * (total - done)
        print(
            f"subset {done}/{total}: retrained on {len(rows) // 2} rows ({steps[-1]} steps) in {wall:.1f} s "
            f"({cpu:.1f} s CPU), mean query loss {report.subset_query_loss[-1]:.3f}; "
            f"{time.perf_counter() - started:.0f} s so far, about {left:.0f} s left",
            flush=True,
        )

    lds = V.linear_datamodeling_score(
        folder,
        tokenizer,
        subsets=args.lds_subsets,
        k=args.lds_k,
        kappas=LDS_KAPPAS,
        on_subset=progress,
        datanet=datanet,
        fit=preset_fit(folder, hp, device=device, pad=pad, steps=steps),
        index_kw={"batch_size": batch, "max_tokens": batch * longest, "seed": int(hp["seed"])},
    )
    total_s = time.perf_counter() - started
    results.update(
        {
            "model": label,
            "method_version": METHOD_VERSION,  # features built by the product's index build, scored as it scores
            "score_method": DEFAULT_METHOD,
            "device": device.type,
            "hardware": device_name(device),
            "threads": torch.get_num_threads(),
            "preset": LORA_PRESET,
            "hyperparameters": {key: hp[key] for key in sorted(hp)},
            "rows": lds.rows,
            "contributors": len(set(datanet.row_meta.values())),
            "lds_queries": lds.queries,
            "lds_subsets": lds.subsets,
            "k": args.lds_k,
            "steps_full": steps[0],
            "steps_per_retrain": steps[1:],
            "lds_recall": lds.recall,
            "full_query_loss": round(lds.full_query_loss, 4),
            "subset_query_loss_mean": round(statistics.mean(lds.subset_query_loss), 4),
            "fit_s": round(lds.fit_seconds, 2),
            "index_s": round(lds.index_seconds, 2),
            "retrain_s": [round(x, 2) for x in lds.retrain_seconds],
            "retrain_cpu_s": [round(x, 2) for x in lds.retrain_cpu_seconds],
            "retrain_mean_s": round(statistics.mean(lds.retrain_seconds), 2),
            "retrain_cpu_mean_s": round(statistics.mean(lds.retrain_cpu_seconds), 2),
            "total_s": round(total_s, 1),
            "load_average_end": os.getloadavg()[0],
        }
    )
    for method, value in lds.lds.items():
        results[f"lds_{method}"] = round(value, 4)
    print(
        f"trained on all rows in {lds.fit_seconds:.1f} s ({steps[0]} steps), index built in {lds.index_seconds:.1f} s;"
        f" per retrain {results['retrain_mean_s']:.1f} s ({results['retrain_cpu_mean_s']:.1f} s CPU); total "
        f"{total_s:.0f} s"
    )
    print(
        f"recall of the {lds.queries} facts (model on all rows): {lds.recall:.2f}; mean query loss "
        f"{lds.full_query_loss:.3f} on all rows, {results['subset_query_loss_mean']:.3f} on half-subsets"
    )
    print(
        f"LDS over {lds.subsets} half-subsets ({lds.queries} queries): "
        + ", ".join(f"{m} {v:.3f}" for m, v in lds.lds.items())
        + " (goal >= 0.45)"
    )


def record(results: dict, argv: list[str]) -> dict:
    """The product's default score method's figures into attribution/quality.json: the tiny run's planted-fact
    top-1 and LDS, or the LDS mode's LDS on the model it ran on (e.g. SmolLM2-135M-Instruct)."""
    method = results["score_method"]
    command = " ".join(["python", "bench/bench_attribution.py", *argv])
    common = {"bench_model": results.get("model", TINY), "date": today(), "bench": "bench/bench_attribution.py",
              "command": command}  # fmt: skip
    lds = Measurement(metric="lds", value=results[f"lds_{method}"],
                      counts={"subsets": results["lds_subsets"], "queries": results["lds_queries"]},
                      details={"recall": results["lds_recall"], "score_method": method}
                      | {key: results[key] for key in ("rows", "hardware") if key in results}, **common)  # fmt: skip
    if "planted_facts" not in results:  # the LDS mode measures LDS alone
        return quality_record(method_version=results["method_version"], measurements=[lds])
    measurements = [
        Measurement(metric="planted_fact_top1", value=results[f"top1_{method}"],
                    counts={"queries": results["planted_facts"]},
                    details={"recall": results["planted_recall"], "score_method": method}, **common),
        lds,
    ]  # fmt: skip
    return quality_record(method_version=results["method_version"], measurements=measurements)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument(
        "--synthetic-config", default=None, help="random-init model: '135m', '1b' or a JSON file of LlamaConfig fields"
    )
    parser.add_argument("--tokenizer-dir", default=None, help="tokenizer for --synthetic-config (default: SmolLM2)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="smollm2 / synthetic only")
    parser.add_argument("--rows", type=int, default=32, help="training rows for smollm2 / synthetic")
    parser.add_argument("--batch-size", type=int, default=8, help="training batch for smollm2 / synthetic")
    parser.add_argument(
        "--latency-rows", type=int, default=LATENCY_ROWS, help="index rows the query is scored against (not tiny)"
    )
    parser.add_argument(
        "--rounds", type=int, default=0, help="alternating epoch/build rounds (default 5 tiny, 2 otherwise)"
    )
    parser.add_argument(
        "--lds-subsets", type=int, default=0, help="LDS mode: retrain on this many half-subsets (smollm2 / --model-dir)"
    )
    parser.add_argument(
        "--lds-rows",
        type=int,
        default=64,
        help=f"LDS mode: planted-facts rows, a multiple of {LDS_ROWS_PER_CONTRIBUTOR} (one contributor each)",
    )
    parser.add_argument("--lds-k", type=int, default=LATENCY_K, help="LDS mode: projection dimensions k")
    parser.add_argument("--model-dir", default=None, help="LDS mode: a converted model folder instead of SmolLM2")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--output", default=None, help="results JSON (default under bench/results/)")
    parser.add_argument(
        "--record",
        action="store_true",
        help="merge top-1 and LDS (tiny), or LDS (--lds-subsets), into attribution/quality.json",
    )
    args = parser.parse_args(argv)
    if args.record and not args.lds_subsets and (args.model != "tiny" or args.synthetic_config):
        print("--record: only the tiny run and the LDS mode (--lds-subsets) measure quality (nothing to record)")
        return 2
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU here")
        return 2
    if device.type == "cuda" and args.model == "tiny" and not (args.synthetic_config or args.model_dir):
        print("--device cuda needs --model smollm2 or --synthetic-config (the tiny validation runs on the CPU)")
        return 2
    if args.lds_subsets < 0 or (args.lds_subsets and args.lds_subsets < 2):
        print("--lds-subsets must be at least 2 (a Spearman correlation over subsets)")
        return 2
    if args.lds_rows < 2 * LDS_ROWS_PER_CONTRIBUTOR or args.lds_rows % LDS_ROWS_PER_CONTRIBUTOR:
        print(f"--lds-rows must be a multiple of {LDS_ROWS_PER_CONTRIBUTOR}, at least {2 * LDS_ROWS_PER_CONTRIBUTOR}")
        return 2
    if args.lds_subsets and (args.synthetic_config or (args.model == "tiny" and not args.model_dir)):
        print("--lds-subsets needs --model smollm2 or --model-dir (the tiny bench measures its own LDS)")
        return 2
    if args.model_dir and not args.lds_subsets:
        print("--model-dir is for the LDS mode: give --lds-subsets too")
        return 2
    results: dict = {"threads": args.threads, "load_average": os.getloadavg()[0]}
    print(f"torch threads {args.threads}; machine load average {os.getloadavg()[0]:.2f} at start", flush=True)
    if args.lds_subsets:
        folder = Path(args.model_dir) if args.model_dir else smollm2_dir()
        label = "SmolLM2-135M-Instruct" if not args.model_dir else folder.name
        preset_lds(results, args, folder=folder, label=label, device=device)
        stem = "smollm2" if not args.model_dir else folder.name
        name = f"attribution_{stem}_lds" + ("" if device.type == "cpu" else f"_{device.type}")
    elif args.synthetic_config:
        with tempfile.TemporaryDirectory(prefix="bench-attribution-") as tmp:
            tokenizer = bench_tokenizer(args.tokenizer_dir)
            dtype = torch.bfloat16 if device.type == "cuda" else None
            folder = write_synthetic_model(args.synthetic_config, Path(tmp) / "synthetic", tokenizer=tokenizer,
                                           dtype=dtype)  # fmt: skip
            label = f"synthetic-{args.synthetic_config}"
            large_model(results, args, folder=folder, label=label, device=device)
        name = f"attribution_{device.type}_synthetic_{Path(args.synthetic_config).stem}"
    elif args.model == "smollm2":
        large_model(results, args, folder=smollm2_dir(), label="SmolLM2-135M-Instruct", device=device)
        name = "attribution_smollm2" if device.type == "cpu" else f"attribution_smollm2_{device.type}"
    else:
        tiny(results, args.rounds or 5)
        name = "attribution"
    output = Path(args.output) if args.output else ROOT / "bench" / "results" / f"{name}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    if args.record:
        record(results, sys.argv[1:] if argv is None else argv)
        print(f"recorded in attribution/quality.json under {results['method_version']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
