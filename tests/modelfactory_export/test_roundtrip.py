"""Each export loaded back by an independent reader answers as the served model does: the merged zip with
transformers' from_pretrained, the GGUF files with transformers' own GGUF loader (which de-quantises through the
gguf package). Greedy tokens to fixed prompts: merged and F16 identical for the first 16, Q8_0 for the first 8."""

from __future__ import annotations

import hashlib
import zipfile

import gguf
import pytest
import torch

from modelfactory.models import ModelExport
from modelfactory.services import export_request, export_run
from tests.inference.conftest import make_model
from tests.modelfactory_export.conftest import PROMPTS


@pytest.fixture
def model(cast, trained_dirs):
    return make_model(owner=cast.owner, tiny_dirs=trained_dirs, slug="zorb-expert", publish=False)


def _made(owner, fmt: str) -> ModelExport:
    export, created = export_request(user=owner, slug="zorb-expert", format=fmt)
    assert created
    done = export_run(export_id=export.pk)
    assert (done.status, done.message) == (ModelExport.Status.SUCCEEDED, "Ready to download.")
    return done


def _greedy(model, tokenizer, prompt: str) -> list[int]:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1] :].tolist()


def _common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def test_the_merged_model_loads_with_from_pretrained_and_answers_as_served(cast, model, served_tokens, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = _made(cast.owner, "merged")
    with zipfile.ZipFile(export.path) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "merged")
    assert {"config.json", "model.safetensors", "tokenizer.json", "HOW_TO_USE.md", "MODEL_CARD.md"} <= set(names)
    assert not any("lora" in name for name in names)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    for prompt in PROMPTS:
        assert _greedy(merged, tokenizer, prompt) == served_tokens[prompt][:16], prompt


@pytest.mark.parametrize(("fmt", "same_tokens", "tensor_type"), [("gguf-f16", 16, "F16"), ("gguf-q8_0", 8, "Q8_0")])
def test_the_gguf_file_read_back_by_transformers_answers_as_served(
    cast, model, served_tokens, fmt, same_tokens, tensor_type
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = _made(cast.owner, fmt)
    path = export.folder / export.filename
    assert export.path == str(path) and export.filename == f"zorb-expert-v1-{fmt}.gguf"
    reader = gguf.GGUFReader(path)
    assert reader.get_field("general.architecture").contents() == "llama"
    assert reader.get_field("tokenizer.ggml.model").contents() == "gpt2"
    assert reader.get_field("tokenizer.ggml.pre").contents() == "gpt-2"
    assert "<|im_start|>" in reader.get_field("tokenizer.chat_template").contents()
    assert reader.get_field("tokenizer.ggml.eos_token_id").contents() == 2
    assert len(reader.get_field("tokenizer.ggml.merges").contents()) > 0
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == tensor_type and types["blk.0.attn_norm.weight"] == "F32"
    assert "output.weight" not in types  # tied to token_embd, as llama.cpp writes it
    assert len(types) == 1 + 2 * 9 + 1  # token_embd, 9 tensors per block, output_norm

    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for prompt in PROMPTS:
        tokens = _greedy(loaded, tokenizer, prompt)
        assert _common_prefix(tokens, served_tokens[prompt]) >= same_tokens, (prompt, tokens, served_tokens[prompt])

    modelfile = (export.folder / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./zorb-expert-v1-{fmt}.gguf\n")
    assert 'SYSTEM "You are a helpful AI assistant."' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile


def test_the_q_and_k_rows_are_permuted_as_llama_cpp_expects(cast, model, trained_dirs):
    """llama.cpp's convert_hf_to_gguf.py permutes attn_q with the head count and attn_k with the key-value head
    count; read back, the F16 file's rows are the merged weights in that order (checked against the formula)."""
    from modelfactory.export import merge
    from modelfactory.export.gguf_file import _permute

    export = _made(cast.owner, "gguf-f16")
    reader = gguf.GGUFReader(export.path)
    tensors = {t.name: t for t in reader.tensors}
    merged, _ = merge.merge_adapter(*trained_dirs)
    layer = merged.model.layers[1].self_attn
    q = torch.from_numpy(gguf.quants.dequantize(tensors["blk.1.attn_q.weight"].data, gguf.GGMLQuantizationType.F16))
    k = torch.from_numpy(gguf.quants.dequantize(tensors["blk.1.attn_k.weight"].data, gguf.GGMLQuantizationType.F16))
    expected_q = _permute(layer.q_proj.weight.numpy(), 4)
    expected_k = _permute(layer.k_proj.weight.numpy(), 2)
    assert torch.allclose(q.float(), torch.from_numpy(expected_q), atol=2e-3)
    assert torch.allclose(k.float(), torch.from_numpy(expected_k), atol=2e-3)
    assert not torch.allclose(k.float(), layer.k_proj.weight, atol=2e-3)  # the permutation did move rows


def test_the_adapter_export_holds_the_adapter_and_the_instructions(cast, model, trained_dirs):
    export = _made(cast.owner, "adapter")
    with zipfile.ZipFile(export.path) as archive:
        assert sorted(archive.namelist()) == [
            "HOW_TO_USE.md", "MODEL_CARD.md", "adapter_config.json", "adapter_model.safetensors",
        ]  # fmt: skip
        assert archive.read("adapter_model.safetensors") == (trained_dirs[1] / "adapter_model.safetensors").read_bytes()
        how_to = archive.read("HOW_TO_USE.md").decode()
    assert "PeftModel.from_pretrained" in how_to and "convert_lora_to_gguf.py" in how_to and "ollama create" in how_to
    data = open(export.path, "rb").read()  # noqa: SIM115
    assert export.sha256 == hashlib.sha256(data).hexdigest() and export.bytes == len(data)
    assert sorted(p.name for p in export.folder.iterdir()) == ["zorb-expert-v1-adapter.zip"]
