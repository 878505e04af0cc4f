import re

import markdown as md
import nh3
from django import template
from django.utils.safestring import mark_safe

from datanets.ingest.screen import FLAG_KINDS, empty_field_names

register = template.Library()


@register.filter
def markdown_safe(text: str) -> str:
    """Markdown to HTML, then sanitised with nh3 (scripts, event handlers and javascript: links removed)."""
    html = md.markdown(text or "", extensions=["extra", "sane_lists"], output_format="html")
    return mark_safe(nh3.clean(html, link_rel="noopener noreferrer nofollow"))  # noqa: S308 (sanitised by nh3)


_HASH_CODE = re.compile(r"<code>([0-9a-fA-F]{40,})</code>")


@register.filter
def fold_hashes(html: str) -> str:
    """Rendered Markdown with each bare hash (a <code> of 40 or more hex digits: a SHA-256 fingerprint) folded
    behind a "Fingerprint" disclosure: people read the document, and whoever checks files opens it."""
    folded = _HASH_CODE.sub(
        r'<details class="fingerprint"><summary>Fingerprint</summary><code class="wrap">\1</code></details>', str(html)
    )
    return mark_safe(folded)  # noqa: S308 (the input is safe HTML; only hex digits are moved)


@register.filter
def percent(value) -> str:
    try:
        return f"{float(value) * 100:.1f}%"
    except (TypeError, ValueError):
        return ""


@register.filter
def flag_words(flags) -> str:
    """Screening flags in plain words: ["too_short", "email"] -> "very short; an e-mail address"."""
    return "; ".join(FLAG_KINDS.get(flag, (flag.replace("_", " "),))[0] for flag in flags or [])


@register.filter
def row_flag_words(record) -> str:
    """A row's flags in plain words, naming its empty fields: "an empty field (output); very short"."""
    words = []
    for flag in record.flags or []:
        label = FLAG_KINDS.get(flag, (flag.replace("_", " "),))[0]
        names = empty_field_names(record.content or {}) if flag == "empty" else []
        words.append(f"{label} ({', '.join(names)})" if names else label)
    return "; ".join(words)
