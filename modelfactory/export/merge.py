"""The merged model: the base model with the LoRA adapter folded into its weights (W + B·A·alpha/r), which is what
the served model computes on the fly, saved as one safetensors folder that `transformers` loads by itself."""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

from modelfactory.training.artifacts import ADAPTER_FILES, ZIP_DATE
from modelfactory.training.model_files import ModelFilesError, inspect_model_dir, load_causal_lm

from .errors import ExportError

Progress = Callable[[float, str], None]
# Files of a saved model folder that belong in the download (weights may be sharded: model-00001-of-00002...).
MODEL_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.json", "merges.txt", "tokenizer.model")  # fmt: skip


def _quiet(fraction: float, message: str) -> None:
    return None


def check_sources(base_dir: Path, adapter_dir: Path) -> None:
    """ExportError in plain words when the base model's or the adapter's files are missing (before anything is
    written)."""
    try:
        inspect_model_dir(Path(base_dir))
    except ModelFilesError as exc:
        raise ExportError(f"The base model's files are missing or broken, so nothing was exported: {exc}") from None
    missing = [name for name in ADAPTER_FILES if not (Path(adapter_dir) / name).is_file()]
    if missing:
        raise ExportError(
            f"This model version's adapter files are missing ({', '.join(missing)} in {adapter_dir}), "
            "so nothing was exported. Train the model again to make a new version."
        )


def merge_adapter(base_dir: Path, adapter_dir: Path, *, dtype=None, progress: Progress = _quiet):
    """(model, tokenizer): the base model in `dtype` (default: as stored) with the adapter merged in, LoRA layers
    gone. peft's merge_and_unload adds the same delta that serving adds per token, once into the weights."""
    from peft import PeftModel

    check_sources(base_dir, adapter_dir)
    progress(0.05, "Loading the base model")
    model, tokenizer = load_causal_lm(Path(base_dir), dtype=dtype)
    progress(0.3, "Merging the adapter into the weights")
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    merged = peft_model.merge_and_unload()
    merged.eval()
    merged.requires_grad_(False)
    return merged, tokenizer


def _zip(files: list[tuple[str, Path | str]], zip_path: Path, *, compress: bool) -> Path:
    """A zip of (name in archive, file path or text), with fixed timestamps. Weights are stored, not compressed:
    deflate gains little on floats and costs the most time of the whole export."""
    with zipfile.ZipFile(zip_path, "w", allowZip64=True) as archive:
        for name, source in files:
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            if isinstance(source, Path):
                with source.open("rb") as src, archive.open(info, "w", force_zip64=True) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            else:
                archive.writestr(info, source.encode("utf-8"))
    return zip_path


def write_adapter_zip(adapter_dir: Path, zip_path: Path, *, texts: dict[str, str]) -> Path:
    """The adapter's files plus the given text files (instructions, model card)."""
    files: list[tuple[str, Path | str]] = [(name, Path(adapter_dir) / name) for name in ADAPTER_FILES]
    files += sorted(texts.items())
    return _zip(files, Path(zip_path), compress=True)


def write_merged_zip(
    model, tokenizer, *, base_dir: Path, workdir: Path, zip_path: Path, texts: dict[str, str],
    progress: Progress = _quiet,
) -> Path:  # fmt: skip
    """Saves the merged model and tokenizer in `workdir` (a folder the caller removes) and zips it to `zip_path`."""
    workdir = Path(workdir)
    folder = workdir / "model"
    progress(0.5, "Writing the merged weights")
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    if (Path(base_dir) / "generation_config.json").is_file() and not (folder / "generation_config.json").exists():
        shutil.copy2(Path(base_dir) / "generation_config.json", folder / "generation_config.json")
    names = sorted({p.name for pattern in MODEL_PATTERNS for p in folder.glob(pattern)})
    names += [name for name in TOKENIZER_FILES if (folder / name).is_file() and name not in names]
    progress(0.75, "Packing the files")
    files: list[tuple[str, Path | str]] = [(name, folder / name) for name in names]
    files += sorted(texts.items())
    return _zip(files, Path(zip_path), compress=False)
