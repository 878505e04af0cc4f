"""A tiny base model and several distinct LoRA adapters saved as peft folders, built once per test session."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import build_tiny_model_dir

# name -> (rank, target modules); different ranks and targets exercise padding and partial coverage
ADAPTER_SPECS = {
    "qv8": (8, ["q_proj", "v_proj"]),
    "qv4": (4, ["q_proj", "v_proj"]),
    "all8": (8, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "mlp2": (2, ["gate_proj", "up_proj", "down_proj"]),
    "qv8b": (8, ["q_proj", "v_proj"]),
}


def save_random_adapter(base_dir, folder, *, rank: int, targets: list[str], seed: int):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, lora_dropout=0.0)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # lora_B starts at zero: perturb it so each adapter changes the outputs
                param.normal_(0.0, 0.5)
    peft_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    return build_tiny_model_dir(tmp_path_factory.mktemp("serving") / "base")


@pytest.fixture(scope="session")
def adapter_dirs(tiny_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {
        name: save_random_adapter(tiny_base, root / name, rank=rank, targets=targets, seed=seed)
        for seed, (name, (rank, targets)) in enumerate(ADAPTER_SPECS.items(), start=1)
    }


@pytest.fixture(scope="session")
def warm(tiny_base):
    from modelfactory.serving import WarmModel

    return WarmModel(tiny_base)


@pytest.fixture
def adapters(warm):
    """A fresh cache per test; adapters left by the previous test are deleted from the shared peft model."""
    from modelfactory.serving import AdapterCache

    cache = AdapterCache(warm, max_adapters=8)
    yield cache
    cache.clear()
