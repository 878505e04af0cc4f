"""End to end on the tiny model: a datanet's holding period makes its contributors' earnings from answers arrive
pending; a flag holds them longer; a contribution confirmed harmful has what it earns afterwards forfeited at once;
the sweep releases the rest on their date. The settlement still checks out under its rule."""

from datetime import timedelta

import pytest

from attribution.models import Attribution, ContributionValue
from attribution.services import attribution_settlement_check, contribution_decide
from attribution.tasks import inference_attribute_task
from datanets import services as datanets
from ledger import services as ledger
from ledger.models import PendingEarning, Posting, Transaction
from ledger.verification import ledger_verify

pytestmark = pytest.mark.django_db


def _ask(planted, make_inference, cast, person: str, n: int = 0) -> Attribution:
    question = [q for q, _ in planted.rows[person] if q.startswith("code of ")][n]
    inference = make_inference(planted, question, caller=cast.teammate)
    inference_attribute_task.apply(args=[inference.pk])
    attribution = Attribution.objects.get(inference=inference)
    assert attribution.settlement_status == "settled", attribution.settlement_note
    return attribution


def _contribution(planted, person: str):
    return planted.datanet.contributions.get(contributor=planted.people[person])


def test_earnings_wait_out_the_holding_period_flags_and_findings(planted, make_inference, cast, enqueued, settings):
    settings.MF_FLAGGED_HOLD_DAYS = 30
    alice, bob = planted.people["alice"], planted.people["bob"]
    datanets.datanet_update(datanet=planted.datanet, actor=cast.owner, holding_days=7)

    first = _ask(planted, make_inference, cast, "alice")
    tx = first.settlement_tx
    paid = tx.metadata["settlement"]["split"]["contributors"]
    assert paid.get(str(alice.pk), 0) > 0
    held = {(e.user_id, e.contribution_id): e for e in PendingEarning.objects.filter(pend_tx=tx)}
    assert sum(e.amount for e in held.values()) == sum(paid.values())  # every contributor's part is held
    earning = held[(alice.pk, _contribution(planted, "alice").pk)]
    assert earning.amount == paid[str(alice.pk)]
    assert earning.available_at == first.finished_at + timedelta(days=7)
    assert not Posting.objects.filter(transaction=tx, account__owner=alice).exists()
    assert attribution_settlement_check(attribution=first) == []

    # Bob's contribution is flagged: with no holding period left, his earnings still wait for a curator.
    datanets.datanet_update(datanet=planted.datanet, actor=cast.owner, holding_days=0)
    value = ContributionValue.objects.filter(contribution=_contribution(planted, "bob")).first()
    assert value is not None
    ContributionValue.objects.filter(pk=value.pk).update(harmful=True, p=0.01)
    second = _ask(planted, make_inference, cast, "bob")
    bob_held = PendingEarning.objects.get(pend_tx=second.settlement_tx, user=bob)
    assert bob_held.available_at == second.finished_at + timedelta(days=30)
    assert attribution_settlement_check(attribution=second) == []

    # Confirmed: his pending earnings are forfeited, and so is what he earns afterwards from models trained before.
    contribution_decide(
        contribution=_contribution(planted, "bob"), curator=cast.owner, verdict="confirmed", reason="Wrong codes"
    )
    bob_held.refresh_from_db()
    assert bob_held.status == PendingEarning.Status.FORFEITED
    third = _ask(planted, make_inference, cast, "bob")  # the same question, asked again
    later = PendingEarning.objects.get(pend_tx=third.settlement_tx, user=bob)
    assert later.status == PendingEarning.Status.FORFEITED
    assert "confirmed harmful: Wrong codes" in later.reason

    # The sweep releases alice's earnings on their date, not before.
    assert earning.pk not in ledger.earnings_release_due(now=first.finished_at + timedelta(days=6))
    assert earning.pk in ledger.earnings_release_due(now=first.finished_at + timedelta(days=7))
    release = Transaction.objects.get(kind=Transaction.Kind.EARNING_RELEASE, metadata__earning_key=earning.key)
    assert Posting.objects.get(transaction=release, account__owner=alice).amount == earning.amount
    ledger_verify()
