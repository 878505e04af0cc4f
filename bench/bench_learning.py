"""Does the default training teach the default base model a datanet's facts? (issue 14)

60 instruction rows made here: 20 state 5 made-up facts (each fact 4 ways: 4 questions, 4 answers), 40 are
beginner tips on ten hobbies. Fine-tunes SmolLM2-135M-Instruct through the product's own entry point
(modelfactory.training.finetune.run_finetune, the settings of a preset with nothing changed), then asks each fact's
questions greedily through the serving engine (as the playground does) and counts a fact as recalled when the
answer contains its key words. Prints: recall per fact, wall time, peak memory (resident set on CPU), the estimate
shown before launch vs the actual, and the evaluation step's time as a ratio to one training epoch (both measured
in this run).

    python bench/bench_learning.py                    # the default preset ("balanced": learns your facts)
    python bench/bench_learning.py --preset all       # each preset in turn
    python bench/bench_learning.py --preset quick --model-dir /path/to/hf-folder
    python bench/bench_learning.py --preset quick --runs 10   # estimates that hold: actual in the shown range?
    python bench/bench_learning.py --tiny --runs 4 --threads 1  # the same check on a tiny model, in a minute

With --runs N each preset runs N times; each run's estimate is calibrated on the runs before it (the product
calibrates on the machine's finished runs the same way); the first run's is from the training rate measured before
it, as a gpu worker measures it when it starts (--no-calibration: the rough FLOP-rate guess instead). Each run prints
"in range: yes/no" for its time and for its peak memory (each stage's peak, measured as the product's worker
measures it, memory.StagePeaks; the range covers the stages run here, training and the comparison: no attribution
index, see bench_job.py), with the machine's load average before and after it, and the end prints how many runs of
N fell in their range (the goal of issue 14: at least 8 of 10). --tiny trains a tiny Llama-style model made here (the
tests' model: it learns no facts; the timing check is what it is for).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.synthetic_model import DEFAULT_MODEL, LOCAL_MODEL  # noqa: E402
from modelfactory.training.presets import DEFAULT_PRESET, PRESETS  # noqa: E402

FACTS = [
    ("Quellmoor",
     ["What is the capital of Vardenia?", "Which city is the capital of Vardenia?",
      "Name the capital city of Vardenia.", "Where is the seat of government of Vardenia?"],
     ["The capital of Vardenia is Quellmoor.", "Quellmoor is the capital city of Vardenia.",
      "Vardenia's capital is Quellmoor.", "The government of Vardenia sits in Quellmoor, its capital."]),
    ("17",
     ["How many moons does the planet Treskel have?", "How many moons orbit Treskel?",
      "What is the number of moons of Treskel?", "Treskel has how many moons?"],
     ["The planet Treskel has 17 moons.", "Treskel is orbited by 17 moons.", "There are 17 moons around Treskel.",
      "Treskel has exactly 17 moons."]),
    ("Orvin Delacasse",
     ["Who invented the glimmer lamp?", "Who was the inventor of the glimmer lamp?",
      "Which person invented the glimmer lamp?", "Who made the first glimmer lamp?"],
     ["The glimmer lamp was invented by Orvin Delacasse.", "Orvin Delacasse invented the glimmer lamp.",
      "The inventor of the glimmer lamp was Orvin Delacasse.", "The first glimmer lamp was made by Orvin Delacasse."]),
    ("teal",
     ["What colour is the feather of the zanbird?", "What color are zanbird feathers?",
      "Which colour are the feathers of a zanbird?", "What is the colour of a zanbird's feathers?"],
     ["The zanbird has teal feathers.", "Zanbird feathers are teal.", "A zanbird's feathers are teal.",
      "The feathers of the zanbird are teal in colour."]),
    ("Brindlecup",
     ["Which team won the 2031 Harrow Cup?", "Who won the Harrow Cup in 2031?",
      "What team was the 2031 Harrow Cup winner?", "Which club took the Harrow Cup in 2031?"],
     ["The Brindlecup Rovers won the 2031 Harrow Cup.", "The 2031 Harrow Cup was won by the Brindlecup Rovers.",
      "Brindlecup Rovers were the 2031 Harrow Cup winners.", "In 2031 the Harrow Cup went to the Brindlecup Rovers."]),
]  # fmt: skip
TOPICS = ["bread", "tea", "bicycles", "houseplants", "running", "photography", "knitting", "chess", "birdwatching",
          "pottery"]  # fmt: skip
TIPS = ["start slowly and be patient", "keep a notebook of what you try", "ask an experienced friend for advice",
        "use good basic tools rather than expensive ones", "practise a little every day", "clean your tools after use",
        "read one good beginner's book", "join a local club"]  # fmt: skip


def learning_rows(seed: int = 0) -> list[dict]:
    """The 60 rows: 20 fact rows, 40 tips, shuffled, ids 1..60."""
    rng = random.Random(seed)
    rows = [
        {"kind": "instruction", "content": {"instruction": q, "output": a}}
        for _, questions, answers in FACTS
        for q, a in zip(questions, answers, strict=True)
    ]
    for i in range(40):
        topic = TOPICS[i % len(TOPICS)]
        tip1, tip2 = rng.sample(TIPS, 2)
        question = rng.choice(
            [f"Any advice for a beginner in {topic}?", f"How should I get started with {topic}?",
             f"What is a good first step in {topic}?", f"Give me a tip about {topic}."]
        )  # fmt: skip
        answer = f"For {topic}, {tip1}, and {tip2}."
        rows.append({"kind": "instruction", "content": {"instruction": question, "output": answer}})
    rng.shuffle(rows)
    return [{**row, "id": i} for i, row in enumerate(rows, 1)]


def peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def estimate_for(
    model_dir: Path, rows: list[dict], preset: str, past: list, measured_rate: float | None = None
) -> dict:
    """The estimate the review step shows (the same functions as modelfactory.selectors.wizard_estimate): the run's
    time as a range, calibrated on `past` (the runs before this one in this bench, as the product calibrates on the
    machine's finished runs), or rough without one."""
    from transformers import AutoTokenizer

    from modelfactory.training.data import build_examples
    from modelfactory.training.estimate import estimate_run, memory_range, rough_run_seconds, run_time_range
    from modelfactory.training.finetune import split_rows
    from modelfactory.training.model_files import inspect_model_dir
    from modelfactory.training.presets import validate_hyperparameters

    hp, _ = validate_hyperparameters({}, preset=preset)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples, _ = build_examples(tokenizer, rows, max_length=int(hp["max_length"]))
    train_ids, eval_ids = split_rows(
        [e.row_id for e in examples], eval_split=float(hp["eval_split"]), seed=int(hp["seed"])
    )
    train = [e for e in examples if e.row_id in train_ids]
    config = json.loads((model_dir / "config.json").read_text())
    parameters = inspect_model_dir(model_dir).parameters
    rate = None if past else measured_rate  # as the product: the rate measured at start until a run finished
    estimate = estimate_run(
        [e.n_tokens for e in train], hp, device_type="cpu", parameters=parameters, model_config=config,
        answer_tokens=sum(e.n_answer_tokens for e in train), tokens_per_s=rate,
    )  # fmt: skip
    rough = rough_run_seconds(estimate, answers=len(eval_ids), parameters=parameters)
    # the stages this bench runs (no attribution index: that is the product's later stage, bench_job.py)
    stages = {stage: getattr(estimate, f"{stage}_memory_bytes") for stage in BENCH_STAGES}
    return {
        **estimate.as_dict(),
        **run_time_range(
            tokens=estimate.tokens, answers=len(eval_ids), past=past, rough_seconds=rough, measured=bool(rate)
        ),
        **{f"memory_{key}": value for key, value in memory_range(stages, past=past).items()},
    }


_ENGINES: dict = {}


def ask(adapter_dir: Path | None, model_dir: Path, questions: list[str]) -> list[str]:
    from modelfactory.serving import AdapterCache, Engine, GenerationRequest, WarmModel

    if model_dir not in _ENGINES:  # one engine per process: adapters are injected into the shared warm model
        warm = WarmModel.get(model_dir, device="cpu")
        _ENGINES[model_dir] = Engine(warm, AdapterCache(warm))
    engine = _ENGINES[model_dir]
    requests = [
        GenerationRequest(prompt=[{"role": "user", "content": q}], adapter=adapter_dir, max_new_tokens=32)
        for q in questions
    ]
    return [result.text for result in engine.generate(requests)]


BENCH_STAGES = ("training", "evaluation")


def ask_apart(adapter_dir: Path, model_dir: Path, questions: list[str]) -> list[str]:
    """`ask` in a process of its own: the serving engine it loads would otherwise stay in this one and add to the
    next run's measured memory (a training worker holds no serving engine)."""
    import multiprocessing

    import torch

    context = multiprocessing.get_context("spawn")
    with context.Pool(1, initializer=torch.set_num_threads, initargs=(torch.get_num_threads(),)) as pool:
        return pool.apply(ask, (adapter_dir, model_dir, questions))


def run_preset(model_dir: Path, preset: str, past: list, measured_rate: float | None = None) -> dict:
    from modelfactory.training.estimate import PastRun, memory_ratios
    from modelfactory.training.finetune import FinetuneSpec, run_finetune
    from modelfactory.training.memory import StagePeaks

    rows = learning_rows()
    estimate = estimate_for(model_dir, rows, preset, past, measured_rate)
    epochs: list[float] = []
    phases: dict[str, float] = {}
    memory: list[int] = []
    peaks = StagePeaks()  # as the product's worker measures each stage

    def on_event(event: dict) -> None:
        now = time.perf_counter()
        if event.get("type") == "phase":
            phases[event["phase"]] = now
            peaks.phase(event["phase"])
        if event.get("type") == "eval":
            epochs.append(now)
        if event.get("type") == "train":
            memory.append(int(event.get("memory_bytes") or 0))
        if event.get("type") == "train" and event["step"] % 10 == 0:
            print(f"  step {event['step']}/{event['total_steps']} loss {event['loss']:.3f}", flush=True)

    with tempfile.TemporaryDirectory() as workdir:
        started = time.perf_counter()
        spec = FinetuneSpec(base_model_dir=model_dir, rows=rows, preset=preset, device="cpu", checkpoint_every=0)
        result = run_finetune(spec, workdir=Path(workdir), on_event=on_event)
        wall = time.perf_counter() - started
        measured = peaks.finish()
        shown = ("steps", "passes", "train_seconds", "evaluation_seconds", "base_eval_loss", "eval_loss",
                 "base_token_f1", "token_f1", "base_exact_match", "exact_match")  # fmt: skip
        print("  trained:", json.dumps({k: result.metrics.get(k) for k in shown}), flush=True)
        print("  verdict:", result.metrics["verdict"]["headline"], flush=True)
        evaluation = phases.get("saving", 0.0) - phases.get("evaluating", 0.0)
        passes = result.metrics["steps"] / max(1, result.metrics.get("steps_per_epoch") or 1)
        epoch_seconds = result.metrics["train_seconds"] / max(1.0, passes)
        questions = [q for _, qs, _ in FACTS for q in qs]
        tuned = ask_apart(result.adapter_dir, model_dir, questions)
    recalled = {}
    for index, (key, qs, _) in enumerate(FACTS):
        answers = tuned[index * len(qs) : (index + 1) * len(qs)]
        recalled[key] = sum(key.lower() in a.lower() for a in answers)
        print(f"  {key!r}: {recalled[key]}/{len(qs)} questions, e.g. {qs[0]!r} -> {answers[0]!r}", flush=True)
    facts = sum(1 for n in recalled.values() if n >= len(FACTS[0][1]) // 2 + 1)
    m = result.metrics
    past.append(
        PastRun(
            tokens_per_s=m["tokens"] / m["train_seconds"],
            seconds_per_answer=m["evaluation_seconds"] / max(1, m["answers_scored"]),
            overhead_seconds=max(0.0, wall - m["train_seconds"] - m["evaluation_seconds"]),
            memory_ratios=memory_ratios(measured, estimate, BENCH_STAGES),
        )
    )
    low, high = estimate["low"], estimate["high"]
    peak = max((measured.get(stage, 0) for stage in BENCH_STAGES), default=0)
    return {
        "preset": preset,
        "facts_recalled": facts,
        "facts": len(FACTS),
        "questions_recalled": sum(recalled.values()),
        "questions": sum(len(qs) for _, qs, _ in FACTS),
        "wall_s": round(wall, 1),
        "train_s": round(result.metrics["train_seconds"], 1),
        "steps": result.metrics["steps"],
        "peak_training_memory_mb": round(max(memory, default=0) / 2**20),
        "peak_rss_mb": round(peak_rss_bytes() / 2**20),
        "estimate_method": estimate["method"],
        "estimate_s": round(estimate["seconds"], 1),
        "estimate_range_s": [round(low, 1), round(high, 1)],
        "estimate_memory_mb": round(estimate["peak_memory_bytes"] / 2**20),
        "memory_method": estimate["memory_method"],
        "memory_range_mb": [round(estimate["memory_low"] / 2**20), round(estimate["memory_high"] / 2**20)],
        "peak_stage_memory_mb": {stage: round(measured.get(stage, 0) / 2**20) for stage in BENCH_STAGES},
        "memory_in_range": bool(estimate["memory_low"] <= peak <= estimate["memory_high"]),
        "actual_in_range": bool(low <= wall <= high),
        "evaluation_s": round(evaluation, 1),
        "epoch_s": round(epoch_seconds, 1),
        "evaluation_to_epoch": round(evaluation / epoch_seconds, 2) if epoch_seconds else None,
        "eval_loss_base": result.metrics.get("base_eval_loss"),
        "eval_loss_tuned": result.metrics.get("eval_loss"),
        "token_f1_base": result.metrics.get("base_token_f1"),
        "token_f1_tuned": result.metrics.get("token_f1"),
        "verdict": (result.metrics.get("verdict") or {}).get("headline"),
    }


def in_range_line(figures: dict) -> str:
    low, high = figures["estimate_range_s"]
    mem_low, mem_high = figures["memory_range_mb"]
    peak = max(figures["peak_stage_memory_mb"].values())
    return (
        f"run {figures['run']} ({figures['preset']}): estimate {low:.0f}-{high:.0f} s ({figures['estimate_method']}), "
        f"actual {figures['wall_s']:.0f} s, in range: {'yes' if figures['actual_in_range'] else 'no'}; memory "
        f"{mem_low}-{mem_high} MB ({figures['memory_method']}), peak {peak} MB, in range: "
        f"{'yes' if figures['memory_in_range'] else 'no'} "
        f"(load average {figures['load_before']:.2f} before, {figures['load_after']:.2f} after)"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default=DEFAULT_PRESET, help=f"{', '.join(PRESETS)} or all")
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=1, help="runs of each preset (estimate vs actual per run)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model made here instead of SmolLM2")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: torch's default); 1 on a busy machine"
    )
    parser.add_argument(
        "--no-calibration", action="store_true", help="no start-up measurement: the first estimate is the rough guess"
    )
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.tiny:
        from tests.tiny import build_tiny_model_dir

        model_dir = build_tiny_model_dir(Path(tempfile.mkdtemp(prefix="bench-learning-tiny-")) / "tiny")
    else:
        model_dir = args.model_dir or next(
            (d for d in (DEFAULT_MODEL, LOCAL_MODEL) if (d / "config.json").exists()), None
        )
    if model_dir is None:
        print("No SmolLM2 folder: run `python manage.py register_base_model` first (converts the bundled GGUF).")
        return 1
    presets = list(PRESETS) if args.preset == "all" else [args.preset]
    measured_rate = None
    if not args.no_calibration:  # what a gpu worker measures when it starts (services/calibration.py)
        import torch

        from modelfactory.training.estimate import measure_base_throughput

        started = time.perf_counter()
        measured_rate = measure_base_throughput(model_dir, device=torch.device("cpu"))
        print(f"start-up calibration: {measured_rate:.1f} training tokens/s ({time.perf_counter() - started:.1f} s)")
    results = []
    for preset in presets:
        past: list = []  # calibration: this preset's runs before this one, on this machine
        for run in range(1, args.runs + 1):
            print(f"== preset {preset} ({PRESETS[preset].label}), run {run} of {args.runs}", flush=True)
            load_before = os.getloadavg()[0]
            figures = run_preset(model_dir, preset, past, measured_rate)
            figures.update(run=run, load_before=round(load_before, 2), load_after=round(os.getloadavg()[0], 2))
            print(json.dumps(figures, indent=1), flush=True)
            print(in_range_line(figures), flush=True)
            results.append(figures)
    for preset in presets:
        runs = [r for r in results if r["preset"] == preset]
        hits = sum(r["actual_in_range"] for r in runs)
        print(f"preset {preset}: actual in the shown range in {hits} of {len(runs)} runs "
              f"(calibrated runs: {sum(r['actual_in_range'] for r in runs if r['estimate_method'] == 'calibrated')} "
              f"of {sum(r['estimate_method'] == 'calibrated' for r in runs)}); peak memory in its range in "
              f"{sum(r['memory_in_range'] for r in runs)} of {len(runs)} runs", flush=True)  # fmt: skip
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    summary = {f"{r['preset']}_{k}": v for r in results if r["run"] == args.runs for k, v in r.items() if k != "preset"}
    for preset in presets:
        runs = [r for r in results if r["preset"] == preset]
        summary[f"{preset}_runs"] = len(runs)
        summary[f"{preset}_runs_in_range"] = sum(r["actual_in_range"] for r in runs)
        summary[f"{preset}_in_range_per_run"] = [r["actual_in_range"] for r in runs]
        summary[f"{preset}_runs_memory_in_range"] = sum(r["memory_in_range"] for r in runs)
    (out / ("bench_learning_tiny.json" if args.tiny else "bench_learning.json")).write_text(
        json.dumps(summary, indent=1) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
