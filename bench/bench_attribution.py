"""Attribution engine benchmark (CPU, 1 thread unless --threads): index build time as a ratio to one training epoch
on the same rows, query latency over 10k indexed rows (forward+backward and scoring apart), storage per row, LDS
with its number of half-subsets, planted-fact top-1 (printed last).

    python bench/bench_attribution.py                  # tiny Llama (attribution/engine/validation.py), ~3 minutes
    python bench/bench_attribution.py --model smollm2  # the default base model, SmolLM2-135M-Instruct, a few minutes

Build ratio: the epoch is the project's training loop (modelfactory.training.loop.train, as the training job runs
it) on the same rows with the same batch size; epoch and build are timed alternately, several rounds, and the
median of the per-round ratios is reported (the machine is shared: a ratio within a round is what holds up).
Writes bench/results/attribution.json (tiny) or attribution_smollm2.json."""

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

from attribution.engine import AttributionIndex, SpanIndex, attribute_features, build_index  # noqa: E402
from attribution.engine import validation as V  # noqa: E402
from attribution.engine.lora import per_row_features, per_row_gradients, reference_row_gradient  # noqa: E402

TRAIN = V.TrainConfig(epochs=40, lr=1e-2)
LDS_SUBSETS = 32
LATENCY_ROWS = 10_000
LATENCY_K = 4096
SMOLLM2_DIR = Path(os.environ.get("MF_BENCH_MODEL_DIR", "/work/main/var/models/smollm2-135m-instruct"))
SMOLLM2_LOCAL = ROOT / "var" / "models" / "smollm2-135m-instruct"


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def loop_hp(batch_size: int, target_modules: str, rank: int = 8) -> dict:
    from modelfactory.training.presets import validate_hyperparameters

    hp, errors = validate_hyperparameters(
        {"batch_size": batch_size, "grad_accum": 1, "epochs": 1, "max_length": 256, "learning_rate": 1e-3,
         "rank": rank, "alpha": 2 * rank, "target_modules": target_modules, "dropout": 0.0, "warmup_ratio": 0.0,
         "eval_split": 0.0, "seed": 0},
    )  # fmt: skip
    assert not errors, errors
    return hp


def build_ratio(model, rows, *, base_dir: Path, hp: dict, pad: int, k: int, rounds: int) -> dict:
    """One epoch of the project's training loop (on a fresh LoRA model of the same shape) and the index build on
    the trained model, timed alternately; medians over the rounds."""
    from modelfactory.training.data import Example
    from modelfactory.training.loop import load_model_for_training, train

    examples = [Example(row_id, list(ids), list(labels)) for row_id, ids, labels in rows]
    epoch_model, _ = load_model_for_training(base_dir, hp, device=torch.device("cpu"))
    batch = int(hp["batch_size"])

    def epoch():
        train(epoch_model, examples, hp, device=torch.device("cpu"), pad_id=pad)

    def build():
        built.append(build_index(model, rows, k=k, batch_size=batch, pad_id=pad))

    def features():  # the per-row part alone (what grows with the rows), without the fixed null calibration
        projector = built[-1].projector()
        per_row_features(model, [(r[1], r[2]) for r in rows], projector, batch_size=batch, pad_id=pad,
                         consume=lambda *_: None)  # fmt: skip

    built: list = []
    epoch()  # warm-up of all three
    build()
    features()
    epochs, builds, ratios, feature_ratios = [], [], [], []
    for _ in range(rounds):
        e, b, f = timed(epoch), timed(build), timed(features)
        epochs.append(e)
        builds.append(b)
        ratios.append(b / e)
        feature_ratios.append(f / e)
    return {
        "epoch_s": statistics.median(epochs),
        "build_s": statistics.median(builds),
        "ratio": statistics.median(ratios),
        "ratios": [round(r, 3) for r in ratios],
        "features_ratio": statistics.median(feature_ratios),
        "features_ratios": [round(r, 3) for r in feature_ratios],
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
    results["build_ratio_to_validation_trainer_epoch"] = round(ratio["build_s"] / simple_epoch_s, 3)
    results["build_ratio_dense_projection"] = round(build_dense_s / epoch_s, 3)
    results["build_ratio_batch1_loop"] = round(loop_s / epoch_s, 3)
    results["build_ratio_gradients_only"] = round(grads_only_s / epoch_s, 3)
    print(f"one training epoch, project loop ({len(rows)} rows, batch {TRAIN.batch_size}): {epoch_s * 1000:.1f} ms")
    print(
        f"index build (batched pass, factored lowrank projection, null calibration): {ratio['build_s'] * 1000:.1f} ms "
        f"= {ratio['ratio']:.2f}x epoch (median of {rounds} alternating rounds: {ratio['ratios']})"
    )
    print(
        f"  vs the validation trainer's epoch ({simple_epoch_s * 1000:.1f} ms): "
        f"{ratio['build_s'] / simple_epoch_s:.2f}x"
    )
    print(
        f"  of which per-row features (grows with the rows; the rest is the fixed calibration on 32 null queries "
        f"and the Fisher blocks): {ratio['features_ratio']:.2f}x epoch ({ratio['features_ratios']})"
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
    big = build_index(model, synthetic, k=LATENCY_K, batch_size=TRAIN.batch_size, pad_id=pad)
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
    big.features32()  # the float32 copy and row norms are made once per loaded index, not per query
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
    results["top1_rate"] = report.top1["fisher"]
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


def smollm2(results: dict, rounds: int, n_rows: int) -> None:
    """SmolLM2-135M-Instruct with the project's LoRA (rank 8, all linear layers), rows tokenised by the project's
    chat template (modelfactory.training.data.build_examples): short made-up facts. Build ratio and query latency
    only: teaching it the facts takes many epochs, too long for two shared cores."""
    from modelfactory.training.data import build_examples
    from modelfactory.training.loop import load_model_for_training, train

    folder = smollm2_dir()
    hp = loop_hp(8, "all_linear")
    model, tokenizer = load_model_for_training(folder, hp, device=torch.device("cpu"))
    rng = random.Random(0)
    raw = []
    for i in range(n_rows):
        name, code = V._name(rng), V._code(rng)
        question = f"What is the code of {name}?" if i % 2 else f"Code of {name}?"
        raw.append({"id": i + 1, "kind": "instruction", "content": {"instruction": question, "output": code}})
    examples, _ = build_examples(tokenizer, raw, max_length=int(hp["max_length"]))
    rows = [(e.row_id, e.input_ids, e.labels) for e in examples]
    pad = tokenizer.pad_token_id
    lengths = sorted(len(ids) for _, ids, _ in rows)
    print(
        f"SmolLM2-135M-Instruct ({folder}), LoRA rank 8 on all linear layers, {len(rows)} rows of "
        f"{lengths[0]}-{lengths[-1]} tokens, batch {hp['batch_size']}, {torch.get_num_threads()} thread(s)",
        flush=True,
    )
    train(model, [e for e in examples], hp, device=torch.device("cpu"), pad_id=pad)  # the "final adapter"
    ratio = build_ratio(model, rows, base_dir=folder, hp=hp, pad=pad, k=LATENCY_K, rounds=rounds)
    index = build_index(model, rows, k=LATENCY_K, batch_size=int(hp["batch_size"]), pad_id=pad)
    big = tiled_index(index, LATENCY_ROWS)
    big.features32()
    big.h_norms()
    prompt, answer = rows[0][1][:-3], rows[0][1][-3:]
    forward_backward_s = best_of(lambda: big.query_features(model, prompt, answer), repeats=3)
    phi = big.query_features(model, prompt, answer)
    meta = {row_id: f"contributor-{row_id % 50}" for row_id in big.row_ids.tolist()}
    scoring_s = best_of(lambda: attribute_features(big, None, phi, answer, meta), repeats=5)
    path = index.save(Path(tempfile.mkdtemp(prefix="bench-attribution-")) / "index.safetensors")
    results.update(
        {
            "model": "SmolLM2-135M-Instruct",
            "rows": len(rows),
            "threads": torch.get_num_threads(),
            "train_epoch_s": round(ratio["epoch_s"], 3),
            "build_index_s": round(ratio["build_s"], 3),
            "build_ratio_to_epoch": round(ratio["ratio"], 3),
            "build_ratio_rounds": ratio["ratios"],
            "build_ratio_features_only": round(ratio["features_ratio"], 3),
            "build_ratio_features_only_rounds": ratio["features_ratios"],
            "latency_k": big.k,
            "latency_rows": LATENCY_ROWS,
            "latency_forward_backward_ms": round(forward_backward_s * 1000, 1),
            "latency_scoring_ms": round(scoring_s * 1000, 2),
            "storage_bytes_per_row_features": big.k * 2 + 4 + 8,  # float16 features, scale, row id
            "index_file_bytes": path.stat().st_size,
        }
    )
    print(f"one training epoch, project loop: {ratio['epoch_s']:.2f} s; index build {ratio['build_s']:.2f} s")
    print(
        f"query forward+backward ({len(prompt)}-token prompt, {len(answer)}-token answer): "
        f"{forward_backward_s * 1000:.0f} ms"
    )
    print(
        f"query scoring + aggregation over {LATENCY_ROWS} rows (k={big.k}): {scoring_s * 1000:.1f} ms (goal <= 50 ms)"
    )
    print(
        f"per-row features alone: {ratio['features_ratio']:.2f}x epoch ({ratio['features_ratios']}); the rest is the "
        f"fixed calibration (32 null queries, as many passes as 32 rows) and the Fisher blocks"
    )
    print(
        f"index build ratio to one training epoch: {ratio['ratio']:.2f}x over rounds {ratio['ratios']} (goal <= 1.0x)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--rows", type=int, default=32, help="training rows for --model smollm2")
    parser.add_argument(
        "--rounds", type=int, default=0, help="alternating epoch/build rounds (default 5 tiny, 2 smollm2)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results: dict = {"threads": args.threads, "load_average": os.getloadavg()[0]}
    print(f"torch threads {args.threads}; machine load average {os.getloadavg()[0]:.2f} at start", flush=True)
    if args.model == "smollm2":
        smollm2(results, args.rounds or 2, args.rows)
        name = "attribution_smollm2"
    else:
        tiny(results, args.rounds or 5)
        name = "attribution"
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
