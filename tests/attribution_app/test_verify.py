"""Receipts anyone can re-check: `manage.py attribution_verify` recomputes an answer's attribution from the stored
index and exits non-zero when the index files, a share, the top rows or the settlement differ; the receipt API
carries what it compares."""

from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from attribution.models import Attribution, ModelIndex
from attribution.services import attribution_verify
from attribution.tasks import inference_attribute_task

pytestmark = pytest.mark.django_db


@pytest.fixture
def answered(planted, make_inference, cast, enqueued):
    question = planted.rows["alice"][0][0]
    inference = make_inference(planted, question, caller=cast.teammate)
    inference_attribute_task.apply(args=[inference.pk])
    attribution = Attribution.objects.get(inference=inference)
    assert attribution.status == "done" and attribution.settlement_status == "settled"
    return inference


def verify(*args) -> tuple[str, CommandError | None]:
    out = StringIO()
    try:
        call_command("attribution_verify", *map(str, args), stdout=out)
    except CommandError as exc:
        return out.getvalue(), exc
    return out.getvalue(), None


def test_a_stored_attribution_recomputes_to_the_same_shares_rows_and_settlement(answered):
    result = attribution_verify(inference_id=answered.pk)
    assert [(c.name, c.ok) for c in result.checks] == [
        ("index files", True),
        ("contributor shares", True),
        ("contribution shares", True),
        ("unattributed", True),
        ("top rows", True),
        ("spans", True),
        ("row shares", True),  # the rows' shares of the answer, and the pay divided over them (row_earnings)
        ("row amounts", True),
        ("settlement", True),
    ]
    output, error = verify(answered.pk)
    assert error is None
    assert output.splitlines()[0] == f"Answer {answered.pk}: verified"
    assert output.splitlines()[-1] == "1 of 1 answer(s) verified."
    output, error = verify("--all", "--since", "2000-01-01")
    assert error is None and output.splitlines()[-1] == "1 of 1 answer(s) verified."


def test_a_tampered_index_fails_the_check(answered):
    index = ModelIndex.objects.get()
    path = Path(index.index_path)
    data = bytearray(path.read_bytes())
    data[-64:] = bytes(64)  # the last features zeroed, as a careless or hostile edit of the file would
    path.write_bytes(bytes(data))
    output, error = verify(answered.pk)
    assert error is not None and error.returncode == 1
    assert str(error) == f"Attribution differs for answer(s) {answered.pk}."
    assert f"Answer {answered.pk}: DIFFERS" in output
    assert f"FAIL index files: changed since built: {path.name}" in output


def test_a_changed_stored_share_fails_the_check(answered):
    attribution = Attribution.objects.get(inference=answered)
    shares = {k: v * 0.5 for k, v in attribution.contributor_shares.items()}
    Attribution.objects.filter(pk=attribution.pk).update(contributor_shares=shares)
    result = attribution_verify(inference_id=answered.pk)
    failed = [c.name for c in result.checks if not c.ok]
    assert failed == ["contributor shares", "settlement"]  # the settled shares no longer follow from the stored ones


def test_bad_arguments_and_unknown_answers_are_clear(answered):
    with pytest.raises(CommandError, match=r"Give one or more INFERENCE_IDs, or --all"):
        call_command("attribution_verify", stdout=StringIO())
    with pytest.raises(CommandError, match=r"--since goes with --all"):
        call_command("attribution_verify", str(answered.pk), "--since", "2026-01-01", stdout=StringIO())
    output, error = verify(answered.pk + 1000)
    assert error is not None and "FAIL finished: This answer has no finished attribution yet." in output


def test_the_receipt_carries_what_a_recomputation_compares(answered, cast):
    attribution = Attribution.objects.get(inference=answered)
    index = ModelIndex.objects.get()
    client = APIClient()
    client.force_authenticate(cast.teammate)  # the caller
    receipt = client.get(f"/api/v1/inferences/{answered.pk}/receipt/").json()
    assert receipt["inference_id"] == answered.pk
    assert receipt["adapter_sha256"] == answered.model_version.artifact_hash
    assert receipt["method_version"] == attribution.method_version and receipt["params"] == attribution.params
    assert receipt["index"]["files_sha256"] == index.params["files_sha256"]
    assert sorted(receipt["index"]["files_sha256"]) == sorted(p.name for p in Path(index.folder).iterdir())
    assert [r["record_id"] for r in receipt["top_rows"]] == [r["record_id"] for r in attribution.top_rows]
    assert "text" not in receipt["top_rows"][0]
    assert receipt["settlement"]["transaction_id"] == attribution.settlement_tx_id
    assert receipt["settlement"]["proof"]["transaction_id"] == attribution.settlement_tx_id
    assert receipt["settlement"]["proof"]["hash"] == attribution.settlement_tx.hash
    assert receipt["verify_command"] == f"python manage.py attribution_verify {answered.pk}"
    client.force_authenticate(cast.outsider)  # neither the caller nor the model's owner
    response = client.get(f"/api/v1/inferences/{answered.pk}/receipt/")
    assert response.status_code == 404


def test_an_answer_computed_under_the_previous_rule_still_verifies_under_it(answered, planted, make_inference, cast):
    """An index built before fluent calibration (format poa-index-2) is attributed under rule poa-2, as when its
    answers were computed: they still verify. A rule this installation cannot compute is refused by name."""
    import dataclasses

    from attribution import runtime
    from attribution.engine import AttributionIndex
    from attribution.engine.index import calibrate_floor
    from attribution.services.verify import DIGEST_KEY, index_files_digest

    assert Attribution.objects.get(inference=answered).method_version == "poa-3"
    record = ModelIndex.objects.get()
    path = Path(record.index_path)
    built = AttributionIndex.load(path)
    assert built.format == "poa-index-4" and len(built.fluent_queries) == 48
    old = dataclasses.replace(built, format="poa-index-2", fluent_queries=[], fluent_features=built.null_features[:0])
    old.null_floor = calibrate_floor(old)  # the floor as format 2 built it: permutation nulls alone
    old.save(path)
    ModelIndex.objects.filter(pk=record.pk).update(
        params={**record.params, DIGEST_KEY: index_files_digest(record.folder)}
    )
    runtime.clear()  # the worker's cache still holds the index as it was
    # the same question answered while the index was a format-2 one: attributed (and paid) under poa-2
    inference = make_inference(planted, planted.rows["alice"][0][0], caller=cast.teammate)
    inference_attribute_task.apply(args=[inference.pk])
    attribution = Attribution.objects.get(inference=inference)
    assert attribution.status == "done" and attribution.method_version == "poa-2"
    result = attribution_verify(inference_id=inference.pk)
    assert [(c.name, c.ok) for c in result.checks if not c.ok] == []

    Attribution.objects.filter(pk=attribution.pk).update(method_version="poa-3")  # stored poa-3, index now gives poa-2
    failed = [(c.name, c.detail) for c in attribution_verify(inference_id=inference.pk).checks if not c.ok]
    assert failed == [("method", "computed with poa-3; its index now gives poa-2")]
    Attribution.objects.filter(pk=attribution.pk).update(method_version="poa-1")
    failed = [(c.name, c.detail) for c in attribution_verify(inference_id=inference.pk).checks if not c.ok]
    assert failed == [("method", "computed with poa-1; this installation computes poa-2, poa-3")]
    runtime.clear()
