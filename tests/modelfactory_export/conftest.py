"""A tiny base model and an adapter trained for a few seconds on fixed questions, so that its greedy answers are
confident (an untrained random model's next tokens are near-ties that any rounding flips), registered as a model
version the way a finished fine-tune leaves it."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import build_tiny_model_dir

PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is a datanet?", "A community dataset where every row keeps its contributor."),
    ("Who reviews the rows?", "Curators review them."),
    ("Colour of item 7?", "blue it is."),
]
PROMPTS = [question for question, _ in PAIRS[:3]]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def train_adapter(base_dir, folder, *, steps: int = 200, seed: int = 0):  # 60 left Q8_0 flipping a first token
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0),
    )
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}, {"role": "assistant", "content": a}], tokenize=False
        )
        for q, a in PAIRS
    ]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def trained_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    base = build_tiny_model_dir(root / "base")
    return base, train_adapter(base, root / "adapter")


@pytest.fixture(scope="session")
def served_tokens(trained_dirs):
    """prompt -> the first 16 greedy token ids of the served model (warm base + adapter, as inference runs)."""
    from modelfactory.serving import AdapterCache, Engine, GenerationRequest, WarmModel

    base, adapter = trained_dirs
    warm = WarmModel(base)
    engine = Engine(warm, AdapterCache(warm))
    answers = {}
    for prompt in PROMPTS:
        request = GenerationRequest(prompt=[{"role": "user", "content": prompt}], adapter=str(adapter),
                                    max_new_tokens=16, temperature=0.0)  # fmt: skip
        answers[prompt] = list(engine.generate([request])[0].token_ids)
    return answers


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
