"""Presets and the hyperparameter contract: types, ranges, defaults and plain-language help for the wizard.

`validate_hyperparameters(values, preset=...)` returns `(clean, errors)`: `clean` has every field filled (preset
defaults for what was not given), `errors` maps each bad field to a message such as "must be between 1 and 256".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

ATTENTION = "attention"
ALL_LINEAR = "all_linear"
TARGET_GROUPS = {
    ATTENTION: ["q_proj", "k_proj", "v_proj", "o_proj"],
    ALL_LINEAR: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,63}$")


@dataclass(frozen=True)
class Param:
    type: str  # "int" | "float" | "choice" | "modules"
    default: Any
    help: str
    label: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    advanced: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "default": self.default,
            "min": self.min,
            "max": self.max,
            "choices": list(self.choices),
            "label": self.label,
            "help": self.help,
        }


HYPERPARAMETERS: dict[str, Param] = {
    "rank": Param(
        "int",
        16,
        label="Adapter size (LoRA rank)",
        min=1,
        max=256,
        help="How much the model can change. Bigger learns more detail but trains slower and can memorise a small "
        "datanet; 8-16 suits most tasks.",
    ),
    "alpha": Param(
        "int",
        32,
        label="Adapter strength (LoRA alpha)",
        min=1,
        max=512,
        help="How strongly the adapter's changes count. Twice the adapter size is the usual choice.",
    ),
    "dropout": Param(
        "float",
        0.05,
        label="Dropout",
        min=0.0,
        max=0.5,
        help="Randomly ignores a share of the adapter while training so it does not just memorise the rows. "
        "0.05 is a safe default; raise it to 0.1 for very small datanets.",
    ),
    "target_modules": Param(
        "modules",
        ATTENTION,
        label="Which layers to adapt",
        choices=(ATTENTION, ALL_LINEAR),
        help="'attention' adapts the layers that decide what to look at (fast); 'all_linear' also adapts the "
        "feed-forward layers (learns more, about twice the adapter size). Experts can list layer names.",
    ),
    "learning_rate": Param(
        "float",
        2e-4,
        label="Learning rate",
        min=1e-6,
        max=1e-2,
        help="How big each learning step is. Too high makes training unstable (the loss jumps or becomes NaN); "
        "too low learns nothing. 1e-4 to 2e-4 suits LoRA.",
    ),
    "epochs": Param(
        "int",
        2,
        label="Epochs",
        min=1,
        max=20,
        help="How many times the model reads the whole datanet. More passes learn more but can memorise; watch "
        "the held-out loss.",
    ),
    "batch_size": Param(
        "int",
        8,
        label="Batch size",
        min=1,
        max=256,
        help="How many examples are processed together. Lower it if training runs out of memory.",
    ),
    "grad_accum": Param(
        "int",
        2,
        label="Gradient accumulation",
        min=1,
        max=128,
        help="Adds up several batches before each learning step, for the effect of a bigger batch without its "
        "memory. Effective batch = batch size x this.",
    ),
    "max_length": Param(
        "int",
        1024,
        label="Maximum length (tokens)",
        min=32,
        max=32768,
        help="Rows longer than this many tokens are left out. Longer allows longer rows but needs more memory.",
    ),
    "scheduler": Param(
        "choice",
        "cosine",
        label="Learning-rate schedule",
        choices=("cosine", "linear", "constant"),
        help="How the learning rate goes down during training. 'cosine' is a good default.",
    ),
    "warmup_ratio": Param(
        "float",
        0.05,
        label="Warm-up share",
        min=0.0,
        max=0.5,
        help="The share of steps at the start where the learning rate ramps up gently, which avoids early jumps.",
    ),
    "seed": Param(
        "int",
        42,
        label="Random seed",
        min=0,
        max=2**31 - 1,
        help="Fixes the randomness: the same seed, data and settings give the same model on the same hardware.",
    ),
    "eval_split": Param(
        "float",
        0.1,
        label="Held-out share",
        min=0.0,
        max=0.5,
        help="The share of rows kept aside (never trained on) to measure how well the model does on new rows.",
    ),
    "quantization": Param(
        "choice",
        "none",
        label="4-bit base model (QLoRA)",
        choices=("none", "4bit"),
        help="'4bit' stores the base model in 4 bits to fit larger models in GPU memory (needs a CUDA GPU); "
        "slightly slower and a little less accurate.",
    ),
}


@dataclass(frozen=True)
class Preset:
    name: str
    label: str
    why: str
    values: dict[str, Any]


PRESETS: dict[str, Preset] = {
    "quick": Preset(
        "quick",
        "Quick",
        "One pass with a small rank-8 adapter on the attention layers at lr 2e-4: enough to pick up format and "
        "tone on a 0.1B-1B model in minutes, with 5% held out to check it.",
        {"rank": 8, "alpha": 16, "target_modules": ATTENTION, "learning_rate": 2e-4, "epochs": 1, "eval_split": 0.05},
    ),
    "balanced": Preset(
        "balanced",
        "Balanced",
        "Rank 16 on attention for 2 passes at lr 2e-4 with cosine decay: the usual LoRA sweet spot for small models, "
        "learning content without memorising; 10% held out.",
        {"rank": 16, "alpha": 32, "target_modules": ATTENTION, "learning_rate": 2e-4, "epochs": 2, "eval_split": 0.1},
    ),
    "thorough": Preset(
        "thorough",
        "Thorough",
        "Rank 16 on all linear layers for 3 passes at the gentler lr 1e-4: more capacity and steps for detailed "
        "domain knowledge, and the lower rate keeps the longer run stable; 10% held out.",
        {"rank": 16, "alpha": 32, "target_modules": ALL_LINEAR, "learning_rate": 1e-4, "epochs": 3, "eval_split": 0.1},
    ),
}
DEFAULT_PRESET = "balanced"


def preset_values(name: str) -> dict[str, Any]:
    """All hyperparameters of a preset (field defaults overlaid by the preset's values)."""
    if name not in PRESETS:
        raise KeyError(f"Unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    values = {key: param.default for key, param in HYPERPARAMETERS.items()}
    values.update(PRESETS[name].values)
    return values


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    if float(value).is_integer() and abs(value) >= 1:
        return str(int(value))
    return f"{value:g}"


def _clean_one(param: Param, value: Any) -> tuple[Any, str | None]:
    between = f"must be between {_fmt(param.min)} and {_fmt(param.max)}"
    if param.type == "int":
        if isinstance(value, bool):
            return None, f"must be a whole number {between[8:]}"
        if isinstance(value, str):
            value = value.strip()
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None, f"must be a whole number {between[8:]}"
        if not math.isfinite(number) or not number.is_integer():
            return None, f"must be a whole number {between[8:]}"
        number = int(number)
        if not param.min <= number <= param.max:
            return None, between
        return number, None
    if param.type == "float":
        if isinstance(value, bool):
            return None, f"must be a number {between[8:]}"
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            return None, f"must be a number {between[8:]}"
        if not math.isfinite(number) or not param.min <= number <= param.max:
            return None, between
        return number, None
    if param.type == "choice":
        if value not in param.choices:
            return None, f"must be one of: {', '.join(param.choices)}"
        return value, None
    # modules: a group name, or a list / comma-separated string of layer names
    if isinstance(value, str) and value in param.choices:
        return value, None
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
    message = f"must be {' or '.join(param.choices)}, or a list of layer names such as q_proj, v_proj"
    if not isinstance(names, list | tuple) or not names:
        return None, message
    if not all(isinstance(n, str) and MODULE_NAME.match(n) for n in names):
        return None, message
    return sorted(set(names)), None


def validate_hyperparameters(
    values: dict[str, Any] | None, *, preset: str = DEFAULT_PRESET
) -> tuple[dict[str, Any], dict[str, str]]:
    """Fills missing fields from the preset and checks every field. Unknown fields are errors too."""
    errors: dict[str, str] = {}
    try:
        clean = preset_values(preset)
    except KeyError as exc:
        return {}, {"preset": str(exc.args[0])}
    for key, value in (values or {}).items():
        if key not in HYPERPARAMETERS:
            errors[key] = "is not a setting we know"
            continue
        if value is None or value == "":
            continue
        cleaned, error = _clean_one(HYPERPARAMETERS[key], value)
        if error:
            errors[key] = error
        else:
            clean[key] = cleaned
    return clean, errors


def resolve_target_modules(value: str | list[str]) -> list[str]:
    return list(TARGET_GROUPS[value]) if isinstance(value, str) else list(value)
