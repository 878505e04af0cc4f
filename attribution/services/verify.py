"""Re-checking an answer's attribution from what was stored: the index files (by the digest recorded when the index
was built), the attribution recomputed from the stored index, model and answer tokens (method version, shares,
unattributed part, top rows, spans), and the settlement under the rule it recorded. `manage.py attribution_verify`
runs it; the receipt (GET /api/v1/inferences/{id}/receipt/) carries what it compares."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from attribution.models import Attribution, AttributionRow, AttributionShare
from attribution.services.row_earnings import original_rows, row_amounts
from attribution.services.settlement_check import attribution_settlement_check
from common.files import file_sha256

# Shares are floats summed over thousands of rows: a recomputation on another machine may differ in the last bits.
SHARE_TOLERANCE = 1e-5
SCORE_RELATIVE_TOLERANCE = 1e-4
DIGEST_KEY = "files_sha256"  # in ModelIndex.params: {file name: sha256} of the index folder when it was built


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class Verification:
    inference_id: int
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    def add(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(name, ok, detail))


def index_files_digest(folder: str | Path) -> dict[str, str]:
    """{file name: sha256} of the files of an index folder (sorted by name)."""
    return {path.name: file_sha256(path)[0] for path in sorted(Path(folder).iterdir()) if path.is_file()}


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=0.0, abs_tol=SHARE_TOLERANCE)


def _compare_shares(name: str, stored: dict, recomputed: dict, out: Verification) -> None:
    keys = sorted(set(stored) | set(recomputed), key=str)
    differing = [
        f"{key}: stored {float(stored.get(key, 0.0)):.6f}, recomputed {float(recomputed.get(key, 0.0)):.6f}"
        for key in keys
        if not _close(float(stored.get(key, 0.0)), float(recomputed.get(key, 0.0)))
    ]
    out.add(name, not differing, "; ".join(differing[:5]) or f"{len(keys)} equal within {SHARE_TOLERANCE:g}")


def _check_rows(attribution: Attribution, fields: dict, out: Verification) -> None:
    """The rows recorded for what each row earned (services.row_earnings): their engine shares recomputed, and each
    contributor's pay divided over them again. Answers settled before rows were recorded have none to check."""
    stored = list(AttributionRow.objects.filter(attribution=attribution).order_by("pk"))
    if not stored:
        out.add("rows", True, "no rows recorded for this answer")
        return
    paid_to = {str(uid) for uid in attribution.settlement_shares}
    recomputed = original_rows(
        rows=[
            {**row, "settled_share": 0.0}
            for row in fields.get("row_shares", [])
            if str(row["contributor_id"]) in paid_to
        ]
    )
    _compare_shares(
        "row shares",
        {str(r.record_id): r.share for r in stored if r.share > 0},
        {str(r["record_id"]): r["share"] for r in recomputed},
        out,
    )
    if attribution.settlement_status != Attribution.Settlement.SETTLED:
        return
    paid = dict(AttributionShare.objects.filter(attribution=attribution).values_list("contributor_id", "amount_micro"))
    wrong = []
    for user_id in sorted({r.contributor_id for r in stored}):
        mine = [r for r in stored if r.contributor_id == user_id]
        expected = row_amounts(
            amount_micro=paid.get(user_id, 0),
            basis=attribution.settlement_shares.get(str(user_id), "0"),
            parts=[(r.pk, r.settled_share) for r in mine],
        )
        if {r.pk: r.amount_micro for r in mine} != expected or sum(expected.values()) > paid.get(user_id, 0):
            wrong.append(str(user_id))
    out.add("row amounts", not wrong, f"differ for contributors {', '.join(wrong)}" if wrong else f"{len(stored)} rows")


def attribution_verify(*, inference_id: int) -> Verification:
    """Every check of one answer's attribution (read-only). A fallback answer (no attribution could be computed) is
    checked for its settlement only."""
    from attribution.engine import METHOD_VERSIONS
    from attribution.models import ModelIndex
    from attribution.services.answer import attribution_compute

    out = Verification(inference_id)
    attribution = (
        Attribution.objects.select_related("inference__model", "inference__model_version__job__base_model")
        .filter(inference_id=inference_id)
        .first()
    )
    if attribution is None or not attribution.is_finished:
        out.add("finished", False, "This answer has no finished attribution yet.")
        return out
    if attribution.status == Attribution.Status.DONE:
        index = ModelIndex.objects.filter(job_id=attribution.inference.model_version.job_id).first()
        recorded = (index.params or {}).get(DIGEST_KEY) if index is not None else None
        if index is None:
            out.add("index", False, "The model version's attribution index is gone.")
            return out
        try:
            found = index_files_digest(index.folder)
        except OSError as exc:
            out.add("index files", False, f"The index files cannot be read: {exc}")
            return out
        if recorded is None:
            out.add("index files", True, "no digest was recorded when this index was built (older index); recomputed")
        else:
            changed = sorted(name for name in set(recorded) | set(found) if recorded.get(name) != found.get(name))
            out.add(
                "index files", not changed, "changed since built: " + ", ".join(changed) if changed else "unchanged"
            )
        if attribution.method_version not in METHOD_VERSIONS:
            versions = ", ".join(METHOD_VERSIONS)
            out.add(
                "method", False, f"computed with {attribution.method_version}; this installation computes {versions}"
            )
            return out
        try:
            fields = attribution_compute(attribution.inference)
        except Exception as exc:  # the engine's own refusal, a missing adapter: the answer cannot be re-checked
            out.add("recomputed", False, f"{exc.__class__.__name__}: {exc}")
            return out
        if fields["method_version"] != attribution.method_version:  # the index is of another format than it was
            out.add(
                "method",
                False,
                f"computed with {attribution.method_version}; its index now gives {fields['method_version']}",
            )
            return out
        _compare_shares("contributor shares", attribution.contributor_shares, fields["contributor_shares"], out)
        _compare_shares("contribution shares", attribution.contribution_shares, fields["contribution_shares"], out)
        out.add(
            "unattributed",
            _close(attribution.unattributed, fields["unattributed"]),
            f"stored {attribution.unattributed:.6f}, recomputed {fields['unattributed']:.6f}",
        )
        stored_rows = [(r["record_id"], float(r["score"])) for r in attribution.top_rows]
        new_rows = [(r["record_id"], float(r["score"])) for r in fields["top_rows"]]
        same_rows = [r for r, _ in stored_rows] == [r for r, _ in new_rows] and all(
            math.isclose(a, b, rel_tol=SCORE_RELATIVE_TOLERANCE, abs_tol=SHARE_TOLERANCE)
            for (_, a), (_, b) in zip(stored_rows, new_rows, strict=True)
        )
        out.add("top rows", same_rows, f"{len(stored_rows)} rows" if same_rows else f"recomputed {new_rows[:5]}")
        spans = [(s["start"], s["end"], s["record_id"]) for s in attribution.spans]
        new_spans = [(s["start"], s["end"], s["record_id"]) for s in fields["spans"]]
        out.add("spans", spans == new_spans, f"{len(spans)} spans" if spans == new_spans else f"recomputed {new_spans}")
        _check_rows(attribution, fields, out)
    else:
        out.add("attribution", True, "no attribution could be computed; the fee was settled as the fallback says")
    if attribution.settlement_status == Attribution.Settlement.SETTLED:
        problems = attribution_settlement_check(attribution=attribution)
        out.add("settlement", not problems, "; ".join(problems) or f"rule {attribution.settlement_rule}")
    else:
        out.add("settlement", True, f"not settled ({attribution.get_settlement_status_display().lower()})")
    return out
