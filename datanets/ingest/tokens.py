"""Token counts: the default base model's tokenizer.json when there is one, otherwise an honest estimate."""

from __future__ import annotations

from pathlib import Path

CHARS_PER_TOKEN = 4  # a common rule of thumb for English text with BPE tokenizers


class TokenCounter:
    """Counts tokens of many texts at once. `estimated` says whether the counts are an estimate."""

    estimated = True

    def count(self, texts: list[str]) -> list[int]:
        return [max(1, -(-len(t) // CHARS_PER_TOKEN)) if t else 0 for t in texts]


class TokenizerCounter(TokenCounter):
    estimated = False

    def __init__(self, tokenizer_json: Path):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(tokenizer_json))

    def count(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]


def token_counter_for(model_dir: str | None) -> TokenCounter:
    """The tokenizer.json inside `model_dir` if it exists and loads, else the estimate."""
    if model_dir:
        path = Path(model_dir) / "tokenizer.json"
        if path.is_file():
            try:
                return TokenizerCounter(path)
            except Exception:  # a broken tokenizer file must not stop an upload; counts become estimates
                return TokenCounter()
    return TokenCounter()
