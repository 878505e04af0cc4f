"""Shared, session-scoped tiny models for the attribution engine tests (trained once: a few seconds each)."""

from __future__ import annotations

import pytest

from attribution.engine import validation as V

TRAIN = V.TrainConfig(epochs=40, lr=1e-2)


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory):
    return V.prepare_base(tmp_path_factory.mktemp("tiny-base"))


@pytest.fixture(scope="session")
def tokenizer(base_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_dir)


@pytest.fixture(scope="session")
def planted(base_dir, tokenizer):
    """5 contributors x 5 made-up facts (25 facts), trained with LoRA, indexed at k=2048."""
    report, model, index, datanet = V.run_planted_facts(base_dir, tokenizer, config=TRAIN, k=2048)
    return report, model, index, datanet
