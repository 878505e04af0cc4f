"""Tiny Llama-style models built from a config (a few layers, hidden size 64) with a small BPE tokenizer that has
SmolLM2's chat template and special tokens. Built in well under a second, no download: for tests and for
`manage.py demo --tiny`. Random weights: such a model runs the whole chain quickly but does not answer sensibly."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Question: what is a datanet? Answer: a community dataset where every row keeps its contributor.",
    "Contributors upload rows; curators review them; models are fine-tuned with LoRA adapters.",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"()[]{}-_/\\@#$%^&*+=<>|~`",
]


def build_tiny_tokenizer(vocab_size: int = 512, *, chat_template: str = CHAT_TEMPLATE):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    special = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>"}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=SPECIAL_TOKENS[0], **special)
    fast.chat_template = chat_template
    return fast


def tiny_config(family: str, *, vocab_size: int, layers: int, hidden: int, special: dict[str, int], context: int = 256):
    """A tiny random config of a family of modelfactory.training.families (by model_type): 4 query heads of 16, 2
    key/value heads, each family's own quirks left on (Gemma's scaled embeddings, Gemma 2's soft-capping and sliding
    window, Qwen2's q/k/v biases, Phi-3's fused layers)."""
    from transformers import AutoConfig

    common = dict(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context, tie_word_embeddings=True,
        **special,
    )  # fmt: skip
    extra = {
        "llama": {},
        "qwen2": {},
        "mistral": {"sliding_window": 128},
        "gemma": {"head_dim": hidden // 4},
        "gemma2": {"head_dim": hidden // 4, "query_pre_attn_scalar": hidden // 4, "sliding_window": 128},
        "phi3": {"tie_word_embeddings": False},  # Phi-3 checkpoints carry their own output layer
    }
    if family not in extra:
        raise ValueError(f"No tiny config for the family {family!r}; known: {', '.join(extra)}.")
    return AutoConfig.for_model(family, **{**common, **extra[family]})


def build_tiny_model_dir(
    folder: Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    seed: int = 0,
    family: str = "llama",
    chat_template: str = CHAT_TEMPLATE,
    context: int = 256,
) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    tokenizer = build_tiny_tokenizer(chat_template=chat_template)
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = tiny_config(
        family, vocab_size=len(tokenizer), layers=layers, hidden=hidden, special=special, context=context
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def colour_rows(n: int = 48, start: int = 0) -> list[dict]:
    """A learnable task: the answer depends only on the parity of the item number."""
    return [
        {
            "id": i,
            "kind": "instruction",
            "content": {"instruction": f"Colour of item {i}?", "output": ["red it is.", "blue it is."][i % 2]},
        }
        for i in range(start, start + n)
    ]
