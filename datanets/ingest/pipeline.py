"""Row processing: validate -> normalise -> hash -> exact dedup -> screen -> keep/redact/drop -> near-dup."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from datanets.ingest.dedup import CopySources, NearDuplicateIndex
from datanets.ingest.normalise import canonical_json, content_hash
from datanets.ingest.screen import DEFAULT_ACTIONS, DROP, FLAG_KINDS, REDACT, Limits, redact, screen_fields
from datanets.ingest.validate import RowInvalid, answer_text, row_text, validate_row

REPORT_LIST_LIMIT = 500  # per list in the stored report; totals are always exact


@dataclass(slots=True)
class ProcessedRow:
    line: int
    content: dict
    text: str
    hash: str
    flags: list[str]
    details: dict


@dataclass
class Report:
    format: str = ""
    notices: list[str] = field(default_factory=list)
    rows_total: int = 0
    rows_accepted: int = 0
    errors: list[dict] = field(default_factory=list)
    errors_total: int = 0
    duplicates: list[dict] = field(default_factory=list)
    duplicates_total: int = 0
    dropped: list[dict] = field(default_factory=list)
    dropped_total: int = 0
    flags: Counter = field(default_factory=Counter)
    redacted: Counter = field(default_factory=Counter)
    ignored_fields: set[str] = field(default_factory=set)

    def _add(self, items: list, entry: dict) -> None:
        if len(items) < REPORT_LIST_LIMIT:
            items.append(entry)

    def error(self, line: int, reason: str) -> None:
        self.errors_total += 1
        self._add(self.errors, {"line": line, "reason": reason})

    def as_dict(self) -> dict:
        notices = list(self.notices)
        if self.ignored_fields:
            notices.append(
                "Fields not used by this datanet were ignored: " + ", ".join(sorted(self.ignored_fields)) + "."
            )
        return {
            "format": self.format,
            "notices": notices,
            "rows_total": self.rows_total,
            "rows_accepted": self.rows_accepted,
            "errors": self.errors,
            "errors_total": self.errors_total,
            "duplicates": self.duplicates,
            "duplicates_total": self.duplicates_total,
            "dropped": self.dropped,
            "dropped_total": self.dropped_total,
            "flags": dict(sorted(self.flags.items())),
            "redacted": dict(sorted(self.redacted.items())),
        }


def _text_fields(kind: str, content: dict) -> list[str]:
    if kind == "instruction":
        return [content["instruction"], content["output"]]
    if kind == "chat":
        return [m["content"] for m in content["messages"]]
    return [content["text"]]


def _redact_content(kind: str, content: dict, kinds: set[str]) -> dict:
    if kind == "chat":
        return {"messages": [{"role": m["role"], "content": redact(m["content"], kinds)} for m in content["messages"]]}
    return {k: redact(v, kinds) for k, v in content.items()}


class RowProcessor:
    """Processes rows one at a time, keeping only the row hashes seen (and the near-dup index when enabled).

    `existing_hashes` are the hashes of rows already in the datanet; `near_index` (optional) already holds the
    datanet's rows under keys ("record", id)."""

    def __init__(
        self,
        *,
        kind: str,
        flag_actions: dict[str, str] | None = None,
        existing_hashes: set[str] | frozenset = frozenset(),
        limits: Limits | None = None,
        row_max_chars: int = 100_000,
        near_index: NearDuplicateIndex | None = None,
        report: Report | None = None,
        copy_sources: CopySources | None = None,
        contributor_id: int | None = None,
    ):
        self.kind = kind
        self.actions = {**DEFAULT_ACTIONS, **(flag_actions or {})}
        self.existing = existing_hashes
        self.seen: dict[str, int] = {}
        self.limits = limits or Limits()
        self.row_max_chars = row_max_chars
        self.near_index = near_index
        self.report = report or Report()
        self.copy_sources = copy_sources
        self.contributor_id = contributor_id

    def _duplicate(self, line: int, digest: str) -> bool:
        report = self.report
        if digest in self.seen:
            report.duplicates_total += 1
            report._add(report.duplicates, {"line": line, "kind": "exact", "of_line": self.seen[digest]})
            return True
        if digest in self.existing:
            report.duplicates_total += 1
            report._add(report.duplicates, {"line": line, "kind": "exact", "in_datanet": True})
            return True
        return False

    def _drop(self, line: int, flags: set[str]) -> None:
        report = self.report
        report.dropped_total += 1
        reason = "dropped: " + ", ".join(FLAG_KINDS[f][0] for f in sorted(flags))
        report._add(report.dropped, {"line": line, "flags": sorted(flags), "reason": reason})

    def _copied(self, line: int, text: str, answer: str, found: set, details: dict) -> bool:
        """Flags a row that copies another contributor's earlier row (details["copied"] names it); True when the
        datanet drops such rows."""
        copied = self.copy_sources.find(text, self.contributor_id, answer) if self.copy_sources is not None else None
        if copied is None:
            return False
        self.report.flags["copied"] += 1
        if self.actions.get("copied") == DROP:
            self._drop(line, {"copied"})
            return True
        found.add("copied")
        details["copied"] = copied
        return False

    def process(self, line: int, raw, error: str | None = None) -> ProcessedRow | None:
        report = self.report
        report.rows_total += 1
        if error is not None:
            report.error(line, error)
            return None
        try:
            content, ignored = validate_row(self.kind, raw)
        except RowInvalid as exc:
            report.error(line, str(exc))
            return None
        if ignored:
            report.ignored_fields.update(ignored[:20])
        canonical = canonical_json(content)
        if len(canonical) > self.row_max_chars:
            report.error(line, f"the row is {len(canonical):,} characters; the limit per row is {self.row_max_chars:,}")
            return None
        digest = content_hash(content, canonical)
        if self._duplicate(line, digest):
            return None
        text = row_text(self.kind, content)
        found = screen_fields(_text_fields(self.kind, content), text, limits=self.limits)
        if found:
            report.flags.update(found)
            drop = {f for f in found if self.actions.get(f) == DROP}
            if drop:
                self._drop(line, drop)
                return None
            to_redact = {f for f in found if self.actions.get(f) == REDACT and FLAG_KINDS[f][1]}
            if to_redact:
                content = _redact_content(self.kind, content, to_redact)
                text = row_text(self.kind, content)
                report.redacted.update(to_redact)
                found -= to_redact
                digest = content_hash(content)
                if self._duplicate(line, digest):
                    return None
        details: dict = {}
        near = self.near_index.similar_and_add(("line", line), text) if self.near_index is not None else []
        if self._copied(line, text, answer_text(self.kind, content), found, details):
            return None
        if near:
            (where, ref), score = near[0]
            report.flags["near_duplicate"] += 1
            if self.actions.get("near_duplicate") == DROP:
                self._drop(line, {"near_duplicate"})
                return None
            found.add("near_duplicate")
            details["near_duplicate"] = {("of_line" if where == "line" else "record_id"): ref, "similarity": score}
            report.duplicates_total += 1
            report._add(report.duplicates, {"line": line, "kind": "near", **details["near_duplicate"]})
        self.seen[digest] = line
        report.rows_accepted += 1
        return ProcessedRow(line, content, text, digest, sorted(found), details)
