"""A question as full-text search terms: plain Python, no Django. Both search backends (PostgreSQL tsquery, SQLite
FTS5) get the same words, OR-ed, so that a row matching more of the question's words ranks higher; punctuation and
query syntax of either engine never reach it (words are letters and digits only), so no question can be a syntax
error or an injection into the search expression."""

from __future__ import annotations

import re

MAX_TERMS = 32

# Words too common to tell rows apart; PostgreSQL's 'english' configuration drops them too, FTS5 does not.
STOPWORDS = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "him",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "me",
        "more",
        "most",
        "my",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "tell",
        "know",
        "please",
    ]
)

_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def search_terms(question: str) -> list[str]:
    """The question's distinct words, lower-cased, in order, stopwords and 1-letter words left out, at most
    MAX_TERMS. An empty list means there is nothing to search for."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(question.lower()):
        if len(word) > 1 and word not in STOPWORDS and word not in seen:
            seen[word] = None
            if len(seen) == MAX_TERMS:
                break
    return list(seen)


def fts5_match(terms: list[str]) -> str:
    """An FTS5 MATCH expression: each term quoted (so none is read as an operator), OR-ed."""
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)


def tsquery_text(terms: list[str]) -> str:
    """A to_tsquery expression: each term quoted as a lexeme, OR-ed (to_tsquery('english', ...) stems them)."""
    return " | ".join("'" + term.replace("'", "''").replace("\\", "\\\\") + "'" for term in terms)
