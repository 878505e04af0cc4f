"""GGUF files for llama.cpp and Ollama, written with the `gguf` package from a merged Llama-family model.

What llama.cpp's convert_hf_to_gguf.py does for `LlamaForCausalLM` with a BPE (tokenizer.json) vocabulary, and what
this module does the same way:
- tensor names through gguf's own TensorNameMap (model.layers.N.self_attn.q_proj -> blk.N.attn_q, ...); a tied
  lm_head is not written (llama.cpp reuses token_embd);
- q_proj and k_proj rows permuted from Hugging Face's rotary layout (halves) to GGML's (interleaved pairs), with
  the key-value head count for k_proj;
- 1-D tensors (norms) in F32; 2-D tensors in F16, or Q8_0 where the row length is a multiple of 32 (F16 otherwise);
- tokenizer.ggml.model "gpt2" with every token, its type (normal, control for special added tokens, user-defined,
  unused for gaps), the merges, the special token ids and the chat template (gguf.SpecialVocab reads those).
Tensors are converted one at a time and streamed to the file, so memory holds the model once plus one tensor.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import ExportError

Progress = Callable[[float, str], None]
OUTTYPES = ("f16", "q8_0")
Q8_BLOCK = 32


def _quiet(fraction: float, message: str) -> None:
    return None


def check_writable(config: dict) -> None:
    """ExportError naming the reason when this model cannot be written as GGUF here (before any work)."""
    model_type = config.get("model_type", "")
    if model_type != "llama":
        architecture = (config.get("architectures") or [model_type or "unknown"])[0]
        raise ExportError(
            f"GGUF export is only available for Llama-family models; this one is {architecture}. "
            "Download the merged model instead: llama.cpp's own convert_hf_to_gguf.py can convert it."
        )
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise ExportError("GGUF export does not handle Llama models with bias terms; download the merged model.")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type not in ("default", "linear"):
        raise ExportError(
            f"GGUF export does not handle the “{rope_type}” rotary scaling of this model; download the merged model."
        )


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face stores each head's rotary dimensions as two halves; GGML as interleaved pairs."""
    rows = weights.shape[0]
    return weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _tensor_type(gguf, shape: tuple[int, ...], outtype: str):
    if len(shape) <= 1:
        return gguf.GGMLQuantizationType.F32
    if outtype == "q8_0" and shape[-1] % Q8_BLOCK == 0:
        return gguf.GGMLQuantizationType.Q8_0
    return gguf.GGMLQuantizationType.F16


def _converted(gguf, array: np.ndarray, qtype) -> np.ndarray:
    if qtype == gguf.GGMLQuantizationType.F32:
        return array.astype(np.float32)
    if qtype == gguf.GGMLQuantizationType.F16:
        return array.astype(np.float16)
    return gguf.quants.quantize(array.astype(np.float32), qtype)


def _nbytes(gguf, shape: tuple[int, ...], qtype) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    count = int(np.prod(shape))
    return count // block * size


def _tensors(model, config: dict):
    """(GGUF name, float32 numpy array) for each tensor, in the model's order, Q/K permuted, tied head left out."""
    import gguf
    import torch

    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(config["num_hidden_layers"]))
    tied = bool(config.get("tie_word_embeddings"))
    for name, tensor in model.state_dict().items():
        if name.endswith(".rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
            continue
        new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ExportError(f"GGUF export does not know where the tensor {name} goes; download the merged model.")

        def array(tensor=tensor, name=name) -> np.ndarray:
            data = tensor.detach().to(torch.float32).cpu().numpy()
            if name.endswith("q_proj.weight"):
                data = _permute(data, n_head)
            elif name.endswith("k_proj.weight"):
                data = _permute(data, n_kv)
            return data

        yield new_name, tuple(tensor.shape), array


def tokenizer_pre(base_dir: Path) -> str:
    """llama.cpp's pre-tokenizer name: the one in the GGUF the base model was converted from (the bundled default
    model says "smollm"), "gpt-2" for a plain byte-level BPE (GPT-2's split rule), else "default"."""
    import gguf

    marker = Path(base_dir) / "modelfactory-converted.json"
    if marker.is_file():
        source = Path(json.loads(marker.read_text()).get("source", ""))
        if source.is_file():
            field = gguf.GGUFReader(source).get_field(gguf.Keys.Tokenizer.PRE)
            if field is not None:
                return str(field.contents())
    tokenizer_json = Path(base_dir) / "tokenizer.json"
    if tokenizer_json.is_file():
        pre = json.loads(tokenizer_json.read_text(encoding="utf-8")).get("pre_tokenizer") or {}
        if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
            return "gpt-2"
    return "default"


def _vocab(gguf, tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens and their types as llama.cpp's get_vocab_base() lists them."""
    reverse = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for index in range(vocab_size):
        token = reverse.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            special = decoder[index].special if index in decoder else False
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def write_gguf(
    model, tokenizer, *, tokenizer_dir: Path, path: Path, outtype: str, name: str, progress: Progress = _quiet
) -> Path:
    """Writes `model` (a merged transformers Llama model) with `tokenizer` (whose files are in `tokenizer_dir`) to
    `path` as GGUF F16 or Q8_0. ExportError for a model this cannot write."""
    import gguf

    if outtype not in OUTTYPES:
        raise ExportError(f"Unknown GGUF type “{outtype}”: choose one of {', '.join(OUTTYPES)}.")
    config = model.config.to_dict()
    check_writable(config)
    if not getattr(tokenizer, "is_fast", False) or (Path(tokenizer_dir) / "tokenizer.json").is_file() is False:
        raise ExportError("GGUF export needs a BPE tokenizer (tokenizer.json); download the merged model instead.")
    tokenizer_model = json.loads((Path(tokenizer_dir) / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    if tokenizer_model.get("type") != "BPE":
        raise ExportError("GGUF export needs a BPE tokenizer; download the merged model and convert it with llama.cpp.")

    n_head = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // n_head)
    rope = config.get("rope_parameters") or {}
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        writer.add_context_length(int(config.get("max_position_embeddings") or 2048))
        writer.add_embedding_length(hidden)
        writer.add_block_count(int(config["num_hidden_layers"]))
        writer.add_feed_forward_length(int(config["intermediate_size"]))
        writer.add_head_count(n_head)
        writer.add_head_count_kv(int(config.get("num_key_value_heads") or n_head))
        writer.add_rope_dimension_count(head_dim)
        if head_dim != hidden // n_head:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        writer.add_rope_freq_base(float(rope.get("rope_theta") or config.get("rope_theta") or 10000.0))
        if (rope.get("rope_type") or rope.get("type")) == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps") or 1e-5))
        writer.add_vocab_size(int(config["vocab_size"]))
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if outtype == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

        tokens, types = _vocab(gguf, tokenizer, int(config["vocab_size"]))
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(tokenizer_pre(Path(tokenizer_dir)))
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        special = gguf.SpecialVocab(Path(tokenizer_dir), load_merges=True, n_vocab=len(tokens))
        if special.chat_template is None and getattr(tokenizer, "chat_template", None):
            special.chat_template = tokenizer.chat_template
        if special.add_special_token.get("bos") is None:  # as the tokenizer behaves (llama.cpp may add one otherwise)
            bos = tokenizer.bos_token_id
            special.add_special_token["bos"] = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
        special.add_to_gguf(writer, quiet=True)
        writer.add_add_space_prefix(False)  # byte-level BPE marks spaces itself

        tensors = list(_tensors(model, config))
        for gguf_name, shape, _ in tensors:
            qtype = _tensor_type(gguf, shape, outtype)
            writer.add_tensor_info(gguf_name, shape, np.dtype(np.float32), _nbytes(gguf, shape, qtype), qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for done, (gguf_name, shape, array) in enumerate(tensors, start=1):
            writer.write_tensor_data(_converted(gguf, array(), _tensor_type(gguf, shape, outtype)))
            progress(done / len(tensors), f"Writing tensor {done} of {len(tensors)} ({gguf_name})")
    finally:
        writer.close()
    return Path(path)


def modelfile(*, gguf_name: str, chat_template: str | None, stop: list[str]) -> str:
    """An Ollama Modelfile next to the GGUF file. A ChatML template (the default model's) is spelled out in Ollama's
    template language; any other is left to Ollama, which reads tokenizer.chat_template from the file."""
    lines = [f"FROM ./{gguf_name}", ""]
    default_system = re.search(r"<\|im_start\|>system(?:\\n|\n)(.*?)<\|im_end\|>", chat_template or "")
    if default_system:  # the template's own system line when the conversation has none, as the served model does
        lines.append(f'SYSTEM "{default_system.group(1)}"')
    if chat_template and "<|im_start|>" in chat_template:
        lines += [
            'TEMPLATE """{{- if .System }}<|im_start|>system',
            "{{ .System }}<|im_end|>",
            "{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}",
            "{{ .Content }}<|im_end|>",
            "{{ end }}<|im_start|>assistant",
            '"""',
        ]
    lines += [f'PARAMETER stop "{token}"' for token in stop]
    lines += ["PARAMETER temperature 0.7", ""]
    return "\n".join(lines)
