"""Exports of a trained model for use outside ModelFactory: the adapter with instructions, the merged model (base +
adapter in one safetensors folder) and GGUF files for llama.cpp and Ollama. Plain Python + torch + gguf, no Django:
every function takes folders and paths and writes to a temporary name that the caller renames at the end.

- `merge.merge_adapter(base_dir, adapter_dir)` -> (model, tokenizer): the served model's weights, LoRA folded in.
- `merge.write_merged_zip(...)`, `merge.write_adapter_zip(...)`: the downloads of those two formats.
- `gguf_file.write_gguf(model, tokenizer_dir, path, outtype=...)`: a Llama-family model as GGUF (F16 or Q8_0),
  tensor names, the Q/K permutation and the tokenizer metadata as llama.cpp's convert_hf_to_gguf.py writes them.
- `gguf_file.modelfile(...)`: the Ollama Modelfile for a GGUF file.
"""

from .errors import ExportError

FORMATS = ("adapter", "merged", "gguf-f16", "gguf-q8_0")

__all__ = ["FORMATS", "ExportError"]
