"""Generated token ids to text deltas, never half a character. Plain Python, no Django."""

from __future__ import annotations


class IncrementalDecoder:
    """Turns generated token ids into text deltas. A delta is only released when the decoded text does not end in
    an incomplete UTF-8 sequence (U+FFFD), so a multi-byte character split over tokens arrives whole. A NUL
    character (tiny or badly tuned models babble any token) becomes U+FFFD here, so what is streamed, returned and
    stored is the same text: PostgreSQL text cannot hold NUL."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""  # what has been released so far

    def _decode(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return text.replace("\x00", "\ufffd")

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self._decode()
        if text.endswith("\ufffd") or not text.startswith(self.text):
            return ""
        delta, self.text = text[len(self.text) :], text
        return delta

    def flush(self) -> str:
        """The rest at the end of generation (including a trailing incomplete character, as U+FFFD)."""
        text = self._decode()
        if not text.startswith(self.text):
            return ""
        delta, self.text = text[len(self.text) :], text
        return delta
