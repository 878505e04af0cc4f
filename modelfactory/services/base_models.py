"""Base models: registering a local model folder, and the bundled default converted once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils.text import slugify

from modelfactory import selectors
from modelfactory.models import BaseModel
from modelfactory.training import memory, model_files
from modelfactory.training.devices import HardwareError
from modelfactory.training.model_check import ModelCheck, check_model_dir


def _training_memory_bytes(plan) -> int | None:
    """What one training process may hold: the GPU's memory, or this machine's (MF_MEMORY_LIMIT_MB when set).
    None when the training GPU is on another machine than this process (its size is not reported)."""
    if plan.device_type == "cuda":
        import torch  # the web process imports torch only when an operator registers a model

        if not torch.cuda.is_available():
            return None
        return int(torch.cuda.get_device_properties(plan.device_index or 0).total_memory)
    return memory.process_limit_bytes(simulated=settings.MF_MEMORY_LIMIT_MB * 2**20)


def base_model_check(*, path: Path | str) -> ModelCheck:
    """The registration check of a folder on this deployment's training hardware (model_check.check_model_dir).
    Raises ModelFilesError when the path is a Hub id or not a model folder; `problems` lists the other refusals."""
    try:
        plan, _ = selectors.training_plan()
    except HardwareError as exc:
        raise model_files.ModelFilesError(str(exc)) from None
    return check_model_dir(path, device_type=plan.device_type, memory_bytes=_training_memory_bytes(plan))


def base_model_names(*, folder: Path, name: str = "", slug: str = "") -> tuple[str, str]:
    """(name, slug) a folder is registered under: the folder's name and its slug when not given."""
    name = name.strip() or folder.name
    return name, slug.strip() or slugify(name)[:100]


def base_model_register(
    *,
    path: Path | str,
    name: str = "",
    slug: str = "",
    licence: str = "",
    source: str = "",
    make_default: bool = False,
    check: bool = False,
) -> BaseModel:
    """Registers (or updates) a local model folder. Raises ModelFilesError, naming what is missing. With `check`
    (what operators register: the admin, the command) the folder must also pass base_model_check: a family known to
    work, a chat template, a size this machine can train; nothing is written otherwise."""
    if check:
        result = base_model_check(path=path)
        if result.problems:
            raise model_files.ModelFilesError(f"{result.folder} cannot be registered. " + " ".join(result.problems))
    folder = Path(path).expanduser().resolve()
    info = model_files.inspect_model_dir(folder)
    name, slug = base_model_names(folder=folder, name=name, slug=slug)
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
