"""Peak memory (resident set size) of each stage of a training job, by number and length of rows (CPU).

The default base model (SmolLM2-135M-Instruct) with the Thorough preset (LoRA rank 32 on all linear layers, batch 8,
max length 1024). Short rows (about 65 tokens at every size: the worst case for packing passes by tokens) at 100 and
1,000 rows (and 10,000 with --huge), and 1,000 long rows (about --long-tokens tokens). Each size runs in its own
process; the stages run one after the other in it and each one's peak is read from the kernel (VmHWM, reset between
stages through /proc/self/clear_refs), so a figure is the process's whole resident memory (model included) at its
worst moment in that stage.

    python bench/bench_memory.py                       # 100 and 1,000 short rows, 1,000 long rows; new and old
    python bench/bench_memory.py --huge                # adds 10,000 short rows (slow on 2 cores)
    python bench/bench_memory.py --sizes 100 --no-long --old-rows 0
    python bench/bench_memory.py --sizes 1000 10000 --no-long --old-rows 0 --budget-gb 5.5   # growth with rows

Each stage's budget is --fraction of the memory free when it starts, as in a job, so figures of runs made at
different times (or side by side) differ by their budgets too: --budget-gb gives every stage the same budget.
--preload runs the stages under another memory allocator (LD_PRELOAD), to compare it with glibc's.

Stages, as the training job runs them: "training" (the project's loop, --train-steps optimizer steps: each step's
memory is bounded by its batch, not by the number of rows), "evaluation" (held-out loss of base and tuned, greedy
answers of up to --new-tokens tokens to up to --answers held-out rows, in passes that fit --fraction of the memory
free when the stage starts, as a job's evaluation does; --long-prompts puts the long rows' text in their prompts, so
that the answers read long prompts too), "index" (attribution/services/indexing.py's build: the memory budget and
the largest training micro-batch bound each pass; the features go to a file, as in the job), "valuation" (the
held-out rows scored against the index) and "saving" (the index file written, its features copied from that file).
Up to --old-rows short rows (default 0: it held 20.9 GB at 100 rows on this 23 GB machine, more rows can take all
of its memory), the index is also built as it was before (passes of batch size x max length tokens, no memory
budget), in a process of its own: the before/after figures then come from the same run. The LoRA weights are the
fresh adapter with lora_B drawn small (not zero) so that every gradient is non-zero; memory does not depend on what
the adapter learned.
Writes bench/results/memory.json (or --output)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SMOLLM2_DIR = Path(os.environ.get("MF_BENCH_MODEL_DIR", "/work/main/var/models/smollm2-135m-instruct"))
GB = 2**30
WORDS = ("river", "copper", "lantern", "meadow", "signal", "harbor", "orchid", "granite", "violet", "engine",
         "falcon", "willow", "quartz", "ember", "canyon", "maple")  # fmt: skip


def make_rows(n: int, *, long_tokens: int = 0, long_prompts: bool = False) -> list[dict]:
    """Instruction rows with made-up facts; long rows repeat varied sentences to about `long_tokens` tokens, in the
    answer (or, with `long_prompts`, in the prompt's input: then the greedy answers read long prompts). Numbers are
    written with a fixed number of digits, so that rows are as long at 10,000 rows as at 1,000 (unpadded, the
    10,000 rows were 2 tokens longer: a bigger figure there was then partly longer rows, not more of them)."""
    rows = []
    for i in range(n):
        a, b, c = WORDS[i % 16], WORDS[(i // 16) % 16], WORDS[(i // 256) % 16]
        output = f"The {a} code of {b} house {i:05d} is {i * 37 % 1000:03d}."
        content = {"instruction": f"What is the {a} code of {b} house {i:05d}?"}
        if long_tokens:
            sentences = " ".join(f"Near the {WORDS[(i + j) % 16]} {c}, item {j} of {i} weighs {(i * j) % 97} grams."
                                 for j in range(long_tokens // 18))  # fmt: skip
            if long_prompts:
                content["input"] = sentences
            else:
                output = output + " " + sentences
        rows.append({"id": i + 1, "kind": "instruction", "content": {**content, "output": output}})
    return rows


def _peak_since(reset: bool = True) -> int:
    """The process's peak resident memory since the last reset. Then what the stage freed goes back to the system, as
    the job does between stages (finetune.release_memory), before the peak is reset: reset first, the next stage's
    figure would start from this stage's untrimmed heap, memory the job never carries into that stage."""
    from modelfactory.training.memory import peak_rss_bytes, release_freed, reset_peak_rss

    peak = peak_rss_bytes()
    if reset:
        release_freed()
        reset_peak_rss()
    return peak


def child(args) -> dict:
    """One size, every stage, in this process."""
    import torch

    from attribution.engine import RowOwner, build_index, data_valuation
    from modelfactory.training.data import build_examples
    from modelfactory.training.evaluate import compare_base_and_tuned, loss_passes
    from modelfactory.training.finetune import split_rows
    from modelfactory.training.loop import load_model_for_training, train
    from modelfactory.training.memory import free_bytes, rss_bytes
    from modelfactory.training.presets import validate_hyperparameters

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hp, errors = validate_hyperparameters({"min_steps": 0, "epochs": 1}, preset="thorough")
    assert not errors, errors
    device = torch.device("cpu")
    figures: dict = {"rows": args.rows, "long_tokens": args.long_tokens, "long_prompts": args.long_prompts}
    _peak_since()
    model, tokenizer = load_model_for_training(SMOLLM2_DIR, hp, device=device)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 1e-3)
    rows = make_rows(args.rows, long_tokens=args.long_tokens, long_prompts=args.long_prompts)
    examples, _ = build_examples(tokenizer, rows, max_length=int(hp["max_length"]))
    train_ids, eval_ids = split_rows([e.row_id for e in examples], eval_split=float(hp["eval_split"]), seed=0)
    train_examples = [e for e in examples if e.row_id in train_ids]
    eval_examples = [e for e in examples if e.row_id in eval_ids]
    eval_rows = [r for r in rows if r["id"] in eval_ids]
    figures["tokens_per_row"] = round(sum(e.n_tokens for e in examples) / len(examples), 1)
    figures["loading"] = _peak_since()

    steps = {"n": 0}

    def control():
        return "stop" if steps["n"] >= args.train_steps else None

    def count(event):
        if event.get("type") == "train":
            steps["n"] = event["step"]

    started = time.perf_counter()
    if args.old:
        train_rows = [(e.row_id, e.input_ids, e.labels) for e in train_examples]
        batch = int(hp["batch_size"])
        build_index(model, train_rows, k=4096, batch_size=batch, max_tokens=batch * int(hp["max_length"]),
                    pad_id=tokenizer.pad_token_id)  # fmt: skip
        return {**figures, "index_old": _peak_since(), "seconds": round(time.perf_counter() - started, 1)}
    budget = _budget(args)  # as finetune.run_finetune gives the loop its budget
    train(model, train_examples, hp, device=device, pad_id=tokenizer.pad_token_id, on_event=count, control=control,
          memory_budget=budget)  # fmt: skip
    figures["training"] = _peak_since()
    figures["training_budget"] = budget
    mark = time.perf_counter()
    figures["training_steps"] = steps["n"]
    free = int(args.budget_gb * GB / args.fraction) if args.budget_gb else free_bytes()
    passes = []
    compare_base_and_tuned(model, tokenizer, eval_examples, eval_rows, device=device, max_answers=args.answers,
                           max_new_tokens=args.new_tokens, batch_size=int(hp["batch_size"]),
                           memory_budget=int(args.fraction * free), memory_free=free,
                           on_plan=passes.append)  # fmt: skip
    figures["evaluation"] = _peak_since()
    figures["evaluation_budget"] = int(args.fraction * free)
    figures["evaluation_passes"] = passes[0]  # loss passes and answer batches, base and tuned
    batches = len(loss_passes([e.n_tokens for e in eval_examples], batch_size=int(hp["batch_size"])))
    figures["evaluation_loss_batches"] = 2 * batches  # the loss passes without the budget, for comparison
    figures["evaluation_seconds"], mark = round(time.perf_counter() - mark, 1), time.perf_counter()
    train_rows = [(e.row_id, e.input_ids, e.labels) for e in train_examples]
    batch = int(hp["batch_size"])
    budget = _budget(args)
    figures["budget"] = budget
    longest = max(len(ids) for _, ids, _ in train_rows)
    figures["index_start"] = rss_bytes()  # what the process holds as the stage starts (its peak's floor)
    folder = Path(tempfile.mkdtemp(prefix="mf-bench-memory-"))  # as the job: features to a file, then saved
    index = build_index(model, train_rows, k=4096, batch_size=batch, max_tokens=batch * longest,
                        memory_budget=budget, pad_id=tokenizer.pad_token_id,
                        features_file=folder / "features.building")  # fmt: skip
    figures["index"] = _peak_since()
    figures["index_seconds"], mark = round(time.perf_counter() - mark, 1), time.perf_counter()
    evals = []
    for e in eval_examples:  # (prompt, answer) as attribution/services/indexing.py splits them
        trained = [i for i, label in enumerate(e.labels) if label != -100]
        evals.append((e.input_ids[: trained[0]], e.input_ids[trained[0] : trained[-1] + 1]))
    owners = {row_id: RowOwner(row_id % 5 + 1, row_id % 5 + 1) for row_id, _, _ in train_rows}
    figures["valuation_start"] = rss_bytes()
    data_valuation(index, model, evals, owners, seed=0)
    figures["valuation"] = _peak_since()
    figures["valuation_seconds"] = round(time.perf_counter() - mark, 1)
    index.save(folder / "attribution.safetensors")  # the job then saves the index (its features copied from the file)
    figures["saving"] = _peak_since()
    shutil.rmtree(folder)
    figures["seconds"] = round(time.perf_counter() - started, 1)
    return figures


def _budget(args) -> int:
    """A stage's memory budget: --budget-gb, or --fraction of the memory free now, as the job computes it."""
    from modelfactory.training.memory import budget_bytes

    return int(args.budget_gb * GB) if args.budget_gb else budget_bytes(fraction=args.fraction)


def _child(args, rows: int, long_tokens: int, *, old: bool) -> dict:
    command = [sys.executable, __file__, "--child", "--rows", str(rows), "--long-tokens", str(long_tokens),
               "--threads", str(args.threads), "--train-steps", str(args.train_steps), "--answers", str(args.answers),
               "--fraction", str(args.fraction), "--budget-gb", str(args.budget_gb),
               "--new-tokens", str(args.new_tokens)]  # fmt: skip
    command += (["--old"] if old else []) + (["--long-prompts"] if long_tokens and args.long_prompts else [])
    env = {**os.environ, "LD_PRELOAD": args.preload} if args.preload else None
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"rows": rows, "long_tokens": long_tokens, "error": done.stderr[-2000:] or f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_size(args, rows: int, long_tokens: int) -> dict:
    figures = {**_child(args, rows, long_tokens, old=False), "allocator": args.preload or "glibc"}
    if args.old_rows and rows <= args.old_rows and not long_tokens and "error" not in figures:
        old = _child(args, rows, long_tokens, old=True)
        figures["index_old"] = old.get("index_old")
        figures["index_old_seconds"] = old.get("seconds")
    return figures


STAGES = ("loading", "training", "evaluation", "index_old", "index", "valuation", "saving")


def table(results: list[dict]) -> str:
    lines = ["| rows | tokens/row | " + " | ".join(STAGES) + " |", "|---|---|" + "---|" * len(STAGES)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['rows']} | failed: {r['error'].splitlines()[-1]} |")
            continue
        cells = [f"{r[s] / GB:.2f} GB" if r.get(s) else "-" for s in STAGES]
        lines.append(f"| {r['rows']}{' long' if r['long_tokens'] else ''} | {r['tokens_per_row']} | "
                     + " | ".join(cells) + " |")  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[100, 1000])
    parser.add_argument("--huge", action="store_true", help="also 10,000 short rows")
    parser.add_argument("--long-rows", type=int, default=1000)
    parser.add_argument("--long-tokens", type=int, default=512)
    parser.add_argument("--no-long", action="store_true")
    parser.add_argument(
        "--old-rows",
        type=int,
        default=100,
        help="the old index packing up to this many short rows "
        "(it held ~21 GB at 100 rows: more can take the machine's memory; 0: never)",
    )
    parser.add_argument("--old", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--answers", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=96, help="the most tokens a greedy answer may have")
    parser.add_argument("--long-prompts", action="store_true", help="long rows carry their long text in the prompt")
    parser.add_argument("--fraction", type=float, default=0.25, help="MF_MEMORY_BUDGET_FRACTION (its default)")
    parser.add_argument(
        "--budget-gb",
        type=float,
        default=0.0,
        help="each stage's memory budget in GiB (default: --fraction of the memory free when it "
        "starts, as the job does; give one to compare sizes run at different times or side by side)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--preload",
        default="",
        help="a memory allocator for the stages' processes (LD_PRELOAD), "
        "e.g. /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 (Debian's libjemalloc2)",
    )
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "memory.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=100, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    plan = [(n, 0) for n in args.sizes + ([10_000] if args.huge else [])]
    if not args.no_long:
        plan.append((args.long_rows, args.long_tokens))
    results = []
    for rows, long_tokens in plan:
        print(f"-- {rows} rows{f' of ~{long_tokens} tokens' if long_tokens else ''} ...", flush=True)
        results.append(run_size(args, rows, long_tokens))
        print(json.dumps(results[-1]), flush=True)
    print(table(results))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"results": results, "table": table(results)}, indent=2) + "\n")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
