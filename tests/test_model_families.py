"""Every family in modelfactory.training.families works end to end before a user can pick it: a tiny random model of
the family is registered through the service, trained a few steps with the fine-tuning entry point, served (its
adapter alone, and in a mixed batch with a second adapter and the base model), and one answer attributed from an
index over its training rows. Seconds per family (hidden size 64, 2 layers, 24 rows)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from attribution import runtime
from attribution.engine import RowOwner, SpanIndex, attribute, build_index, lora
from modelfactory.export import ExportError, gguf_file, merge
from modelfactory.models import BaseModel
from modelfactory.services import base_model_register
from modelfactory.serving import AdapterCache, Engine, GenerationRequest, WarmModel
from modelfactory.training.data import build_examples
from modelfactory.training.families import FAMILIES
from modelfactory.training.finetune import FinetuneSpec, run_finetune
from modelfactory.training.tiny import build_tiny_model_dir, colour_rows

pytestmark = pytest.mark.django_db

SETTINGS = {
    "min_steps": 0,
    "batch_size": 4,
    "grad_accum": 1,
    "epochs": 1,
    "learning_rate": 5e-3,
    "max_length": 128,
    "eval_split": 0.1,
    "target_modules": "all_linear",
    "rank": 4,
    "alpha": 8,
}
PROMPTS = [[{"role": "user", "content": "Colour of item 3?"}], [{"role": "user", "content": "Colour of item 8?"}]]


def _second_adapter(adapter_dir, target):
    """A copy of the trained adapter with its lora_B weights changed: a second, different adapter to mix with."""
    shutil.copytree(adapter_dir, target)
    weights = load_file(str(target / "adapter_model.safetensors"))
    generator = torch.Generator().manual_seed(3)
    for name, value in weights.items():
        if "lora_B" in name:
            weights[name] = torch.randn(value.shape, generator=generator, dtype=value.dtype) * 0.5
    save_file(weights, str(target / "adapter_model.safetensors"))
    return target


@pytest.mark.parametrize("family", FAMILIES, ids=[f.model_type for f in FAMILIES])
def test_family_registers_trains_serves_and_attributes(family, tmp_path):
    folder = build_tiny_model_dir(tmp_path / family.model_type, family=family.model_type)

    # registered through the service, with the family's architecture recorded
    base = base_model_register(path=folder, name=f"Tiny {family.name}")
    assert BaseModel.objects.get().architecture == family.architecture
    assert base.parameters > 0 and base.context_length == 256

    # trained a few steps: the family's own layer names are adapted
    rows = colour_rows(24)
    result = run_finetune(
        FinetuneSpec(
            base_model_dir=base.path, rows=rows, hyperparameters=SETTINGS, base_model_name=base.slug,
            max_answers=1, max_new_tokens=4, checkpoint_every=0, device="cpu",
        ),
        workdir=tmp_path / "run",
    )  # fmt: skip
    assert result.metrics["steps"] == 6  # 22 training rows in batches of 4
    assert math.isfinite(result.metrics["eval_loss"]) and math.isfinite(result.metrics["train_loss"])
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == sorted(family.all_linear)
    trained = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert any(float(t.abs().sum()) > 0 for name, t in trained.items() if "lora_B" in name)

    # served: the adapter alone, then a mixed batch (base, adapter, second adapter) equals each row run alone
    other = _second_adapter(result.adapter_dir, tmp_path / "other")
    warm = WarmModel(base.path)
    cache = AdapterCache(warm, max_adapters=4)
    alone_engine = Engine(warm, cache, lora_mode="switch")
    names = [None, result.adapter_dir, other, result.adapter_dir]
    requests = [GenerationRequest(prompt=PROMPTS[i % 2], adapter=a, max_new_tokens=6) for i, a in enumerate(names)]
    alone = [alone_engine.generate([r])[0] for r in requests]
    assert all(r.completion_tokens >= 1 for r in alone)
    mixed = Engine(warm, cache).generate(requests)
    assert [r.token_ids for r in mixed] == [r.token_ids for r in alone]
    assert alone[2].token_ids != alone[0].token_ids  # same prompt: the second adapter changes the answer

    # attributed: the index's fast path equals plain autograd for this family, and one answer is attributed
    model, tokenizer = runtime.load_peft_model(base_dir=base.path, adapter_dir=result.adapter_dir)
    examples, _ = build_examples(tokenizer, rows, max_length=128)
    train = [(e.row_id, e.input_ids, e.labels) for e in examples if e.row_id in set(result.train_row_ids)]
    got = []
    lora.per_row_gradients(model, [(ids, labels) for _, ids, labels in train[:2]], batch_size=2, pad_id=tokenizer.pad_token_id,
                           consume=lambda idx, grads: got.append((idx, grads)))  # fmt: skip
    for indices, grads in got:
        for position, row in enumerate(indices):
            expected = lora.reference_row_gradient(model, train[row][1], train[row][2])
            for batched, single in zip(grads, expected, strict=True):
                torch.testing.assert_close(batched[position], single, rtol=1e-3, atol=1e-5)
    index = build_index(model, train, k=256, batch_size=8, pad_id=tokenizer.pad_token_id)
    owners = {row_id: RowOwner(row_id % 3 + 1, row_id % 3 + 10) for row_id, _, _ in train}
    prompt_ids = mixed[1].prompt_tokens
    answer = tokenizer(" blue it is.", add_special_tokens=False)["input_ids"]
    prompt = tokenizer.apply_chat_template(PROMPTS[1], add_generation_prompt=True, tokenize=True)
    prompt = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    assert len(prompt) == prompt_ids
    attributed = attribute(index, SpanIndex.build(train), model, prompt, answer, owners)
    assert index.size == len(train) == 22
    assert sum(attributed.contributor_shares.values()) + attributed.unattributed == pytest.approx(1.0)
    assert set(attributed.contributor_shares) <= {1, 2, 3}

    # exported: the merged model answers as the served adapter does
    merged, _ = merge.merge_adapter(folder, result.adapter_dir)
    merged_ids = merged.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False)[0, len(prompt) :]
    served = Engine(warm, cache).generate([GenerationRequest(prompt=PROMPTS[1], adapter=result.adapter_dir,
                                                             max_new_tokens=6)])[0]  # fmt: skip
    assert merged_ids.tolist()[: len(served.token_ids)] == list(served.token_ids)

    # GGUF for the families its writer handles; a clear refusal, before any work, for the others
    base_config = json.loads((folder / "config.json").read_text())
    if family.gguf:
        gguf_file.check_writable(base_config)
    else:
        with pytest.raises(
            ExportError, match=f"only available for Llama-family models; this one is {family.architecture}"
        ):
            gguf_file.check_writable(base_config)
