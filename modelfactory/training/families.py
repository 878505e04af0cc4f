"""The model families known to work end to end here (train a LoRA adapter, serve it in a mixed batch, attribute its
answers): one list, read by the registration check and by the family tests (tests/training/test_families.py builds a
tiny random model of every family below and runs the whole chain on it). A family is added here only with its test.

No Django here. `family_for(architecture)` finds a family by the `architectures` entry of a model's config.json.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str  # what an operator reads ("Llama")
    architecture: str  # config.json "architectures"[0]
    model_type: str  # config.json "model_type"
    attention: tuple[str, ...]  # the layers the "attention" target group adapts
    all_linear: tuple[str, ...]  # the layers the "all_linear" target group adapts
    gguf: bool = False  # the GGUF exporter writes this family's tensors (modelfactory/export/gguf_file.py)
    attention_implementation: str = "sdpa"  # what training loads it with


_LLAMA_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
_LLAMA_ALL = (*_LLAMA_ATTENTION, "gate_proj", "up_proj", "down_proj")

FAMILIES: tuple[Family, ...] = (
    Family("Llama", "LlamaForCausalLM", "llama", _LLAMA_ATTENTION, _LLAMA_ALL, gguf=True),
    Family("Qwen2", "Qwen2ForCausalLM", "qwen2", _LLAMA_ATTENTION, _LLAMA_ALL),
    Family("Mistral", "MistralForCausalLM", "mistral", _LLAMA_ATTENTION, _LLAMA_ALL),
    Family("Gemma", "GemmaForCausalLM", "gemma", _LLAMA_ATTENTION, _LLAMA_ALL),
    # Gemma 2 soft-caps its attention scores, which the fused sdpa kernel cannot do (transformers refuses it)
    Family("Gemma 2", "Gemma2ForCausalLM", "gemma2", _LLAMA_ATTENTION, _LLAMA_ALL, attention_implementation="eager"),
    # Phi-3 fuses q, k and v into one layer, and the MLP's gate and up projections into another
    Family(
        "Phi-3", "Phi3ForCausalLM", "phi3", ("qkv_proj", "o_proj"), ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
    ),
)
_BY_ARCHITECTURE = {family.architecture: family for family in FAMILIES}


def family_for(architecture: str | None) -> Family | None:
    return _BY_ARCHITECTURE.get(architecture or "")


def known_architectures() -> list[str]:
    return [family.architecture for family in FAMILIES]


def attention_implementation(architecture: str | None) -> str:
    family = family_for(architecture)
    return family.attention_implementation if family else "sdpa"


def target_group(group: str, architecture: str | None) -> list[str]:
    """The layer names of a target group ("attention" | "all_linear") for a model of `architecture`. An unknown
    architecture gets the Llama names (the loop then names what the model has when they are missing)."""
    family = family_for(architecture) or FAMILIES[0]
    return list(family.attention if group == "attention" else family.all_linear)
