"""The CUDA paths of training that CI (CPU only) never runs, executed on a real GPU: a check, not a benchmark.

    python bench/gpu_check.py [--output results.json]

Needs torch with CUDA, transformers, peft (bitsandbytes for the 4-bit check); no Django, no model weights (a tiny
model is built from a config, as the tests do). Each check prints one line "ok" / "FAILED" / "skipped" with what
it saw, and the script exits non-zero if any check failed:

  capabilities   detect_capabilities() on this machine (what a gpu worker reports on its heartbeat) and the plan
                 the wizard would make (precision, 4-bit offered or not)
  bf16           a fine-tune on cuda in one process: bf16 autocast chosen, held-out loss below the base model's,
                 adapter written, the LoRA weights kept in float32
  nccl           the same fine-tune through distributed.launch with an nccl process group (world size 1: the
                 subprocess launch, rendezvous, parameter broadcast and per-step all-reduce on a GPU)
  4bit           a fine-tune with quantization "4bit" (QLoRA: nf4 base via bitsandbytes) on cuda
  cpu-vs-cuda    per-step losses of the first steps on cuda (bf16) against the CPU (fp32) on the same rows/seed
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

from modelfactory.training.finetune import FinetuneSpec, run_finetune  # noqa: E402
from modelfactory.training.tiny import build_tiny_model_dir, colour_rows  # noqa: E402

SETTINGS = {"min_steps": 0, "batch_size": 4, "grad_accum": 2, "epochs": 3, "learning_rate": 5e-3, "max_length": 128,
            "eval_split": 0.1, "dropout": 0.0, "seed": 3}  # fmt: skip


def spec(model_dir: Path, device: str, **hp) -> FinetuneSpec:
    return FinetuneSpec(
        base_model_dir=model_dir,
        rows=colour_rows(60),
        hyperparameters={**SETTINGS, **hp},
        base_model_name="tiny-llama",
        max_answers=1,
        max_new_tokens=4,
        checkpoint_every=0,
        device=device,
    )


def finetune(model_dir: Path, device: str, **hp):
    events: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = run_finetune(spec(model_dir, device, **hp), workdir=Path(tmp), on_event=events.append)
        seconds = time.perf_counter() - started
        adapter = (Path(tmp) / "adapter" / "adapter_model.safetensors").is_file()
    losses = [e["loss"] for e in events if e.get("type") == "train"]
    return result, losses, adapter, seconds


def check_capabilities(report: dict) -> str:
    from modelfactory.training.devices import capabilities_report, detect_capabilities, plan_hardware

    caps = detect_capabilities()
    report["capabilities"] = capabilities_report()
    plan = plan_hardware(caps, preference="auto")
    report["plan"] = {"device_type": plan.device_type, "world_size": plan.world_size, "precision": plan.precision}
    assert caps.cuda and caps.device_count >= 1, f"no CUDA seen: {caps}"
    assert plan.device_type == "cuda", plan
    return f"{caps.device_count} x {', '.join(caps.device_names)}; bf16={caps.bf16}; bitsandbytes={caps.bitsandbytes}"


def check_bf16(report: dict, model_dir: Path) -> str:
    from modelfactory.training.loop import autocast_dtype

    assert autocast_dtype(torch.device("cuda")) == torch.bfloat16
    result, losses, adapter, seconds = finetune(model_dir, "cuda")
    m = result.metrics
    report["bf16"] = {"metrics": m, "seconds": round(seconds, 2), "first_losses": losses[:5]}
    assert adapter, "no adapter written"
    assert m["eval_loss"] < m["base_eval_loss"], (m["eval_loss"], m["base_eval_loss"])
    return f"eval loss {m['base_eval_loss']:.3f} -> {m['eval_loss']:.3f}, {m['steps']} steps, {seconds:.1f} s"


def check_nccl(report: dict, model_dir: Path) -> str:
    from modelfactory.training import distributed
    from modelfactory.training.presets import validate_hyperparameters

    clean, errors = validate_hyperparameters(SETTINGS)
    assert not errors, errors
    events: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = distributed.launch(
            "modelfactory.training.finetune:finetune_rank",
            {"spec": spec(model_dir, "cuda"), "hp": clean, "workdir": Path(tmp), "resume": False},
            world_size=1,
            device_type="cuda",
            on_event=events.append,
        )
        seconds = time.perf_counter() - started
        adapter = (Path(tmp) / "adapter" / "adapter_model.safetensors").is_file()
    m = result.metrics
    report["nccl"] = {"metrics": m, "seconds": round(seconds, 2), "events": len(events)}
    assert adapter, "no adapter written"
    assert m["eval_loss"] < m["base_eval_loss"], (m["eval_loss"], m["base_eval_loss"])
    return f"world size 1 over nccl: eval loss {m['base_eval_loss']:.3f} -> {m['eval_loss']:.3f}, {seconds:.1f} s"


def check_4bit(report: dict, model_dir: Path) -> str:
    from modelfactory.training.devices import detect_capabilities

    if not detect_capabilities().bitsandbytes:
        raise Skipped("bitsandbytes is not installed")
    result, losses, adapter, seconds = finetune(model_dir, "cuda", quantization="4bit")
    m = result.metrics
    report["4bit"] = {"metrics": m, "seconds": round(seconds, 2), "first_losses": losses[:5]}
    assert adapter, "no adapter written"
    assert m["eval_loss"] < m["base_eval_loss"], (m["eval_loss"], m["base_eval_loss"])
    return f"nf4 base: eval loss {m['base_eval_loss']:.3f} -> {m['eval_loss']:.3f}, {seconds:.1f} s"


def check_cpu_vs_cuda(report: dict, model_dir: Path) -> str:
    _, cpu, _, _ = finetune(model_dir, "cpu", epochs=1)
    _, gpu, _, _ = finetune(model_dir, "cuda", epochs=1)
    report["cpu_vs_cuda"] = {"cpu": cpu, "cuda": gpu}
    assert len(cpu) == len(gpu) and cpu, (len(cpu), len(gpu))
    worst = max(abs(a - b) / max(abs(a), 1e-6) for a, b in zip(cpu, gpu, strict=True))
    assert worst < 0.05, f"per-step losses differ by up to {worst:.1%}"
    return f"{len(cpu)} steps, per-step losses within {worst:.2%} (bf16 autocast vs fp32)"


class Skipped(Exception):
    pass


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to check")
        return 2
    import peft
    import transformers

    report: dict = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}", flush=True)
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model_dir(Path(tmp) / "tiny")
        checks = [
            ("capabilities", lambda: check_capabilities(report)),
            ("bf16", lambda: check_bf16(report, model_dir)),
            ("nccl", lambda: check_nccl(report, model_dir)),
            ("4bit", lambda: check_4bit(report, model_dir)),
            ("cpu-vs-cuda", lambda: check_cpu_vs_cuda(report, model_dir)),
        ]
        for name, check in checks:
            try:
                line = check()
                status = "ok"
            except Skipped as exc:
                status, line = "skipped", str(exc)
            except Exception as exc:  # a check's failure is reported, the others still run
                failed += 1
                status, line = "FAILED", f"{type(exc).__name__}: {exc}"
                report.setdefault("tracebacks", {})[name] = traceback.format_exc()
                traceback.print_exc()
            report.setdefault("checks", {})[name] = {"status": status, "detail": line}
            print(f"{name:13} {status:8} {line}", flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
