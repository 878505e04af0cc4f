"""Base models: registering a local model folder, and the bundled default converted once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils.text import slugify

from modelfactory.models import BaseModel
from modelfactory.training import model_files


def base_model_register(
    *,
    path: Path | str,
    name: str = "",
    slug: str = "",
    licence: str = "",
    source: str = "",
    make_default: bool = False,
) -> BaseModel:
    """Registers (or updates) a local model folder. Raises ModelFilesError, naming what is missing."""
    folder = Path(path).expanduser().resolve()
    info = model_files.inspect_model_dir(folder)
    name = name.strip() or folder.name
    slug = slug.strip() or slugify(name)[:100]
    with transaction.atomic():
        if make_default:
            BaseModel.objects.filter(is_default=True).exclude(slug=slug).update(is_default=False)
        model, _ = BaseModel.objects.update_or_create(
            slug=slug,
            defaults={
                "name": name,
                "path": str(folder),
                "parameters": info.parameters,
                "context_length": info.context_length,
                "architecture": info.architecture,
                "licence": licence,
                "source": source or str(folder),
                "is_default": make_default,
                "is_active": True,
            },
        )
    return model


def base_model_ensure_default(*, progress: Callable[[str], None] = print) -> BaseModel:
    """Converts the bundled SmolLM2 GGUF once under MF_BASE_MODEL_DIR and registers it as the default.

    Cheap when already done: the converted folder is found and the row is reused."""
    existing = BaseModel.objects.filter(slug=model_files.DEFAULT_SLUG).first()
    target = Path(settings.MF_BASE_MODEL_DIR) / model_files.DEFAULT_SLUG
    if existing and model_files.is_converted(Path(existing.path)):
        return existing
    gguf = model_files.find_default_gguf()
    model_files.convert_gguf(gguf, target, progress=progress)
    return base_model_register(
        path=target,
        name=model_files.DEFAULT_NAME,
        slug=model_files.DEFAULT_SLUG,
        licence=model_files.DEFAULT_LICENCE,
        source=f"{model_files.DEFAULT_PACKAGE}: {gguf.name}",
        make_default=True,
    )
