from pathlib import Path

import pytest
import torch

from modelfactory.training.loop import load_model_for_training
from modelfactory.training.presets import validate_hyperparameters
from modelfactory.training.tiny import colour_rows  # noqa: F401  (used by the tests of this folder)
from tests.tiny import build_tiny_model_dir

CPU = torch.device("cpu")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


def hyperparameters(**overrides):
    base = {
        "min_steps": 0,
        "batch_size": 4,
        "grad_accum": 2,
        "epochs": 2,
        "learning_rate": 5e-3,
        "max_length": 128,
        "seed": 7,
    }
    clean, errors = validate_hyperparameters({**base, **overrides})
    assert errors == {}
    return clean


def fresh_model(tiny_dir, hp):
    return load_model_for_training(tiny_dir, hp, device=CPU)
