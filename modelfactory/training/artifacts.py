"""What a run leaves behind: the adapter (safetensors + adapter_config.json), a model card, a hash, a zip.

The artifact hash is SHA-256 over ADAPTER_FILES in that order, each fed as its name, a NUL byte, its size in
bytes as decimal text, a NUL byte, then its bytes, so a renamed or truncated file changes the hash. The model card
(README.md) is not hashed: it quotes the hash.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
CARD_NAME = "README.md"
ZIP_DATE = (2020, 1, 1, 0, 0, 0)  # fixed timestamps: the same files give the same zip bytes


def save_adapter(model, folder: Path, *, base_model_name: str) -> Path:
    """peft `save_pretrained` (safetensors). The config names the base model by `base_model_name` rather than a
    local path, so the same training gives the same files (and hash) on any machine."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.peft_config["default"]
    previous = config.base_model_name_or_path
    config.base_model_name_or_path = base_model_name
    try:
        model.save_pretrained(str(folder), safe_serialization=True)
    finally:
        config.base_model_name_or_path = previous
    missing = [name for name in ADAPTER_FILES if not (folder / name).is_file()]
    if missing:
        raise OSError(f"The adapter was not saved completely: {', '.join(missing)} missing in {folder}")
    return folder


def artifact_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        path = Path(folder) / name
        digest.update(name.encode() + b"\0" + str(path.stat().st_size).encode() + b"\0")
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _figure(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def model_card(
    *,
    name: str,
    base_model: str,
    datanet_versions: list[dict[str, Any]],
    hyperparameters: dict[str, Any],
    metrics: dict[str, Any],
    contributors: int,
    artifact_sha256: str,
    rows_used: int,
    rows_dropped: int,
) -> str:
    """Markdown model card. `datanet_versions`: [{"name", "version", "manifest_hash"}]."""
    lines = [
        f"# {name}",
        "",
        f"A LoRA adapter for **{base_model}**, fine-tuned with ModelFactory on community datanets.",
        "",
        "## Training data",
        "",
        "| datanet | version | manifest hash |",
        "|---|---|---|",
        *(
            f"| {v.get('name', '')} | {v.get('version', '')} | `{v.get('manifest_hash', '')}` |"
            for v in datanet_versions
        ),
        "",
        f"Rows used: {rows_used}; rows left out: {rows_dropped}; contributors: {contributors}.",
        "",
        "## Hyperparameters",
        "",
        "| setting | value |",
        "|---|---|",
        *(
            f"| {key} | {json.dumps(value) if isinstance(value, list) else value} |"
            for key, value in hyperparameters.items()
        ),
        "",
        "## Evaluation on held-out rows",
        "",
        "| | base model | fine-tuned |",
        "|---|---|---|",
        f"| loss | {_figure(metrics.get('base_eval_loss'))} | {_figure(metrics.get('eval_loss'))} |",
        f"| perplexity | {_figure(metrics.get('base_perplexity'))} | {_figure(metrics.get('perplexity'))} |",
        "",
        f"Training loss (last epoch): {_figure(metrics.get('train_loss'))}; steps: {_figure(metrics.get('steps'))}; "
        f"tokens: {_figure(metrics.get('tokens'))}.",
        "",
        "## Files",
        "",
        f"Artifact SHA-256 (over {', '.join(ADAPTER_FILES)}): `{artifact_sha256}`",
        "",
    ]
    return "\n".join(lines)


def write_model_card(folder: Path, text: str) -> Path:
    path = Path(folder) / CARD_NAME
    path.write_text(text, encoding="utf-8")
    return path


def build_zip(folder: Path, zip_path: Path) -> Path:
    """The download: adapter files and model card, in a fixed order with fixed timestamps."""
    zip_path = Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in (*ADAPTER_FILES, CARD_NAME):
            path = Path(folder) / name
            if path.is_file():
                info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                archive.writestr(info, path.read_bytes())
    return zip_path
