"""The check a base model folder passes before it is registered: files, a family known to work here, a chat
template, and a size this machine can train. Every problem is named in plain words, all of them at once.

No Django here: the caller passes the training device type and the memory it may use.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from modelfactory.training.estimate import estimate_run
from modelfactory.training.families import FAMILIES, Family, family_for
from modelfactory.training.model_files import ModelFilesError, ModelInfo, inspect_model_dir
from modelfactory.training.presets import preset_values

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
CHECK_PRESET = "quick"  # the smallest preset: a model that cannot train with it cannot train here at all


@dataclass(frozen=True)
class ModelCheck:
    folder: Path
    info: ModelInfo
    family: Family | None
    training_memory_bytes: int  # the Quick preset's training memory on this machine's device
    memory_bytes: int | None  # what this machine has for training (None: not known here, not checked)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def is_hub_id(text: str) -> bool:
    """`org/name` that is not a folder here: what a Hugging Face Hub id looks like."""
    text = text.strip()
    return bool(HUB_ID.match(text)) and not Path(text).expanduser().exists()


def hub_refusal(text: str) -> str:
    return (
        f"“{text.strip()}” looks like a Hugging Face Hub id. This deployment registers local folders only: it does "
        "not download models. Download the model to a folder on this machine (config.json, *.safetensors, the "
        "tokenizer files) and give that folder's path."
    )


def has_chat_template(folder: Path) -> bool:
    """A chat template in the folder: chat_template.jinja / chat_template.json (transformers 4.43+), or the
    `chat_template` entry of tokenizer_config.json (older folders)."""
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return False
    try:
        return bool(json.loads(config.read_text()).get("chat_template"))
    except (json.JSONDecodeError, AttributeError):
        return False


def parameters_label(count: int) -> str:
    return f"{count / 1e9:.1f} billion" if count >= 1_000_000_000 else f"{count / 1e6:.1f} million"


def gigabytes(size: int) -> str:
    return f"{size / 1e9:.1f} GB"


def check_model_dir(folder: Path | str, *, device_type: str, memory_bytes: int | None) -> ModelCheck:
    """Checks `folder` for registration. Raises ModelFilesError when it is not a model folder at all (a Hub id,
    missing files); otherwise returns a ModelCheck whose `problems` (empty when it may be registered) name each
    reason it may not."""
    text = str(folder)
    if is_hub_id(text):
        raise ModelFilesError(hub_refusal(text))
    folder = Path(text).expanduser().resolve()
    info = inspect_model_dir(folder)
    config = json.loads((folder / "config.json").read_text())
    problems = []
    family = family_for(info.architecture)
    if family is None:
        known = ", ".join(f"{f.name} ({f.architecture})" for f in FAMILIES)
        problems.append(
            f"Its architecture, {info.architecture}, is not one known to work here (training, serving and "
            f"attribution are tested for: {known})."
        )
    if not has_chat_template(folder):
        problems.append(
            "It has no chat template (chat_template.jinja, or chat_template in tokenizer_config.json): the wizard "
            "and the playground need one to turn rows and questions into the model's prompts. Use the instruct "
            "(chat) version of the model."
        )
    hp = preset_values(CHECK_PRESET)
    estimate = estimate_run(
        [int(hp["max_length"])] * int(hp["batch_size"]), hp, device_type=device_type, parameters=info.parameters,
        model_config=config,
    )  # fmt: skip
    needed = estimate.training_memory_bytes
    if memory_bytes is not None and needed > memory_bytes:
        where = "GPU" if device_type == "cuda" else "machine"
        problems.append(
            f"It is too big to train here: its {parameters_label(info.parameters)} parameters need about "
            f"{gigabytes(needed)} of memory to train with the Quick preset, and this {where} has "
            f"{gigabytes(memory_bytes)}."
        )
    return ModelCheck(folder, info, family, needed, memory_bytes, problems)
