"""Look-alike user names: a skeleton that two names share when a reader cannot tell them apart (plain helper).

After Unicode TR39's "skeleton": compatibility-decompose (NFKD, so "ｆｕｌｌ" and "ﬁ" become plain letters), drop
combining marks and invisible format characters, fold case (unlike TR39: "Alice" and "alice" are one name here), then
map look-alike letters and digits to the Latin letter they imitate, using the Cyrillic, Greek and digit rows of
TR39's confusables.txt that matter for names, and the two-letter look-alikes "rn" (m) and "vv" (w). "аlice"
(Cyrillic а), "ALICE", "alicе" and "a1ice" all have the skeleton "alice". Folding case first means a capital I is
read as an i, not as the l it also resembles."""

from __future__ import annotations

import unicodedata

_LOOKALIKES = str.maketrans(
    {
        # Cyrillic (lower case; upper case is folded to these first)
        "а": "a", "в": "b", "ԁ": "d", "е": "e", "ё": "e", "һ": "h", "н": "h", "і": "i", "ј": "j", "к": "k",
        "ӏ": "l", "м": "m", "о": "o", "р": "p", "ԛ": "q", "г": "r", "ѕ": "s", "т": "t", "у": "y", "ү": "y",
        "ѵ": "v", "ԝ": "w", "х": "x", "з": "3", "ь": "b", "п": "n",
        # Greek
        "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t",
        "υ": "u", "χ": "x", "γ": "y", "ζ": "z", "ω": "w", "μ": "u",
        # Digits and Latin look-alikes
        "0": "o", "1": "l", "ı": "i", "ɑ": "a", "ɡ": "g", "ⅼ": "l",
    }
)  # fmt: skip
_SEQUENCES = (("rn", "m"), ("vv", "w"))


def username_skeleton(name: str) -> str:
    decomposed = unicodedata.normalize("NFKD", name)
    kept = "".join(ch for ch in decomposed if unicodedata.category(ch) not in ("Mn", "Me", "Cf"))
    folded = kept.casefold().translate(_LOOKALIKES)
    for sequence, letter in _SEQUENCES:
        folded = folded.replace(sequence, letter)
    return folded
