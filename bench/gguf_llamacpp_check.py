"""Does llama.cpp run our GGUF files as the product serves the model? (issue 20)

Exports SmolLM2-135M-Instruct (the base alone, or merged with a small random adapter: --adapter) through the
product's own GGUF writer (modelfactory.export.gguf_file.write_gguf) as F16 and Q8_0, loads each in llama.cpp
through llama-cpp-python, and compares its greedy answers to three chat prompts with transformers' greedy answers on
the same weights: the prompt's tokens must be identical, and it prints how many of the first 16 answer tokens are.

llama-cpp-python is not a project dependency (it builds llama.cpp from source):
    python -m venv /tmp/llvenv && /tmp/llvenv/bin/pip install llama-cpp-python
    PYTHONPATH=/tmp/llvenv/lib/python3.11/site-packages python bench/gguf_llamacpp_check.py [--adapter]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.synthetic_model import DEFAULT_MODEL, LOCAL_MODEL  # noqa: E402

PROMPTS = ["What is the capital of France?", "Give me a tip for growing tomatoes.", "Write one sentence about the sea."]
TOKENS = 16


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", action="store_true", help="merge a small random adapter first")
    args = parser.parse_args(argv)
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.bench_export import _make_adapter
    from modelfactory.export import gguf_file, merge

    torch.set_num_threads(1)
    base = LOCAL_MODEL if LOCAL_MODEL.exists() else DEFAULT_MODEL
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.adapter:
            _make_adapter(base, tmp / "adapter")
            model, tokenizer = merge.merge_adapter(base, tmp / "adapter")
        else:
            model, tokenizer = AutoModelForCausalLM.from_pretrained(base), AutoTokenizer.from_pretrained(base)
        model.eval()
        for outtype in ("f16", "q8_0"):
            path = tmp / f"model-{outtype}.gguf"
            gguf_file.write_gguf(model, tokenizer, tokenizer_dir=base, path=path, outtype=outtype, name="check")
            llm = Llama(model_path=str(path), n_ctx=512, n_threads=1, verbose=False)
            identical = []
            for prompt in PROMPTS:
                text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                     add_generation_prompt=True)  # fmt: skip
                ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
                with torch.no_grad():
                    expected = model.generate(ids, max_new_tokens=TOKENS, do_sample=False)[0][ids.shape[1] :].tolist()
                tokens = llm.tokenize(text.encode(), add_bos=False, special=True)
                if tokens != ids[0].tolist():
                    print(f"{outtype}: llama.cpp tokenises the prompt differently: {tokens[:12]} ...")
                    return 1
                got: list[int] = []
                for token in llm.generate(tokens, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
                    got.append(token)
                    if len(got) == len(expected) or token == llm.token_eos():
                        break
                same = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), len(expected))
                identical.append(same)
                print(f"{outtype} {prompt!r}: {same} of {len(expected)} tokens identical; llama.cpp: "
                      f"{tokenizer.decode(got)!r}", flush=True)  # fmt: skip
            results[outtype] = identical
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
