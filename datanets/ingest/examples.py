"""An example file per datanet kind, offered on the upload page: three rows in the shape each kind expects (JSON Lines,
one row per line), so a contributor can start from something that works."""

from __future__ import annotations

import json

EXAMPLE_ROWS = {
    "instruction": [
        {"instruction": "How much salt goes into a sourdough loaf?", "output": "About 2% of the flour's weight."},
        {
            "instruction": "Translate into French.",
            "input": "Good morning",
            "output": "Bonjour",
        },
        {"instruction": "When should I sow tomatoes indoors?", "output": "Six to eight weeks before the last frost."},
    ],
    "chat": [
        {
            "messages": [
                {"role": "user", "content": "How much salt goes into a sourdough loaf?"},
                {"role": "assistant", "content": "About 2% of the flour's weight."},
            ]
        },
        {
            "messages": [
                {"role": "system", "content": "You answer gardening questions briefly."},
                {"role": "user", "content": "When should I sow tomatoes indoors?"},
                {"role": "assistant", "content": "Six to eight weeks before the last frost."},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "Is basil a perennial?"},
                {"role": "assistant", "content": "Usually not: most basil is grown as an annual."},
                {"role": "user", "content": "Can I keep it over winter?"},
                {"role": "assistant", "content": "Indoors on a sunny sill, often for a few months."},
            ]
        },
    ],
    "text": [
        {"text": "Sourdough uses a starter of wild yeast and bacteria instead of baker's yeast."},
        {"text": "Tomatoes need warm soil; sow them indoors six to eight weeks before the last frost."},
        {"text": "Most basil is grown as an annual and dies back in the first frost."},
    ],
}


def example_jsonl(kind: str) -> str:
    """The example file's text for a datanet kind (KeyError for an unknown kind)."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in EXAMPLE_ROWS[kind])
