"""Issue 16's scenario: no pay for volume. Four contributors: one teaches the facts callers ask about (20 rows), two
give 20 ordinary rows each, a farmer gives 200 distinct, clean rows that nobody asks about (77% of the rows). After
a fine-tune and questions mostly about the facts, under rule settle-2 the farmer earns at most a tenth of what the
contributors earn and the fact contributor earns the most; the same answers under the older settle-1 are printed
(and recomputed exactly) for comparison."""

import random

import pytest
from django.db.models import Sum

from attribution import services
from attribution.engine import validation as V
from attribution.models import Attribution
from attribution.tasks import inference_attribute_task
from ledger.models import Account, PendingEarning
from ledger.verification import ledger_verify

pytestmark = pytest.mark.django_db


def scenario_rows(seed: int = 16) -> dict[str, list[tuple[str, str]]]:
    """{username: [(question, answer)]}: 'teacher' 10 facts in two phrasings; 'ordinary1' and 'ordinary2' 5 facts
    in two phrasings and 10 copy-a-word rows each; 'farmer' 200 distinct copy-a-word rows."""
    rng = random.Random(seed)
    used: set[str] = set()

    def fresh() -> str:
        name = V._name(rng)
        while name in used:
            name = V._name(rng)
        used.add(name)
        return name

    def facts(n: int) -> list[tuple[str, str]]:
        rows = []
        for _ in range(n):
            name, code = fresh(), V._code(rng)
            rows += [(f"code of {name}?", code), (f"what is the code of {name}?", code)]
        return rows

    def words(n: int) -> list[tuple[str, str]]:
        return [(f"repeat {w}", w) for w in (fresh().lower() for _ in range(n))]

    return {
        "teacher": facts(10),
        "ordinary1": facts(5) + words(10),
        "ordinary2": facts(5) + words(10),
        "farmer": words(200),
    }


# Questions no contributor's rows are about: their answers come from the base model, not from the datanet.
OFF_TOPIC = [
    ("Hello, how are you today?", "I am well, thank you for asking."),
    ("Tell me a short joke.", "Why did the tomato blush? It saw the salad dressing."),
    ("What colour is the sky?", "The sky is blue on a clear day."),
]


def questions(rows: dict) -> list[tuple[str, str | None]]:
    """(question, answer or None for the row's own) for every fact the teacher taught, one fact of each ordinary
    contributor, and three questions about nothing in the datanet (15 answers, 10 about the teacher's facts)."""
    asked = [(q, None) for q, _ in rows["teacher"] if q.startswith("code of ")]
    asked += [(next(q for q, _ in rows[name] if q.startswith("code of ")), None) for name in ("ordinary1", "ordinary2")]
    return asked + OFF_TOPIC


def test_rows_nobody_asks_about_earn_nothing_however_many(planted_factory, make_inference, cast):
    rows = scenario_rows()
    assert [len(rows[n]) for n in ("teacher", "ordinary1", "ordinary2", "farmer")] == [20, 20, 20, 200]
    planted = planted_factory(rows=rows)
    people = planted.people
    for question, answer in questions(rows):
        inference = make_inference(planted, question, caller=cast.teammate, answer=answer)
        inference_attribute_task.apply(args=[inference.pk])
    answers = list(Attribution.objects.select_related("inference__model_version__job").order_by("pk"))
    assert len(answers) == 15 and {a.settlement_status for a in answers} == {"settled"}
    assert {a.settlement_rule for a in answers} == {"settle-2"}

    # What each was paid: the wallet, plus earnings the settlement paid into the pending shard (a contribution that
    # valuation flagged harmful waits MF_FLAGGED_HOLD_DAYS for a curator, whatever the datanet's holding period).
    new = {
        name: (Account.objects.filter(owner=user).values_list("balance", flat=True).first() or 0)
        + (PendingEarning.objects.filter(user=user, status="pending").aggregate(t=Sum("amount"))["t"] or 0)
        for name, user in people.items()
    }  # a contributor paid nothing has no wallet yet
    held = {
        name: PendingEarning.objects.filter(user=user, status="pending").aggregate(t=Sum("amount"))["t"] or 0
        for name, user in people.items()
    }
    recomputed = services.rule_payouts(attributions=answers, rule="settle-2")
    assert {name: recomputed.get(user.pk, 0) for name, user in people.items()} == new  # the ledger paid the rule
    old = {
        name: services.rule_payouts(attributions=answers, rule="settle-1").get(u.pk, 0) for name, u in people.items()
    }
    unattributed = sum(a.unattributed for a in answers) / len(answers)
    print(f"\nscenario payouts in micro-credits (15 answers of 1 credit; mean unattributed {unattributed:.3f})")
    print("  unattributed per answer: " + " ".join(f"{a.unattributed:.2f}" for a in answers))
    for name in ("teacher", "ordinary1", "ordinary2", "farmer"):
        print(f"  {name:10} rows {len(rows[name]):3}  settle-1 {old[name]:>9}  settle-2 {new[name]:>9}"
              f"  (of which pending {held[name]})")  # fmt: skip

    total = sum(new.values())
    assert total > 0
    assert old["farmer"] > sum(old.values()) // 10  # the older rule paid the farmer for volume
    assert new["farmer"] <= total // 10  # 77% of the rows, at most a tenth of the pay
    assert max(new, key=new.get) == "teacher"
    assert all(services.attribution_settlement_check(attribution=a) == [] for a in answers)
    ledger_verify()


def lightly_edited(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A copier's re-upload: case and punctuation changed, or a word added, answers kept."""
    edited = []
    for question, answer in rows:
        if question.startswith("code of "):
            edited.append((question.replace("code of", "Code Of").replace("?", " ?!"), answer))
        elif question.startswith("what is the code"):
            edited.append((question.replace("what is", "so what is"), answer))
    return edited


def test_a_copier_earns_nothing_for_rows_copied_from_another_contributor(planted_factory, make_inference, cast):
    from attribution.models import ModelIndex
    from attribution.runtime import read_owners
    from datanets.models import Record
    from tests.attribution_app.conftest import planted_rows

    copied = lightly_edited(planted_rows()["alice"])
    assert len(copied) == 12
    planted = planted_factory(extra={"copier": copied}, approve_flagged=True)
    alice, copier = planted.people["alice"], planted.people["copier"]
    copies = list(Record.objects.filter(contributor=copier, status="accepted"))
    assert len(copies) == 12 and all(r.copy_of.contributor_id == alice.pk and "copied" in r.flags for r in copies)
    owners = read_owners(ModelIndex.objects.get(job=planted.job).owners_path)
    trained = [r for r in copies if r.pk in owners]
    assert trained and all(owners[r.pk].contributor_id == alice.pk for r in trained)  # credit goes to alice

    for question, _ in planted.rows["alice"]:
        if question.startswith("code of "):
            inference = make_inference(planted, question, caller=cast.teammate)
            inference_attribute_task.apply(args=[inference.pk])
    answers = list(Attribution.objects.all())
    assert len(answers) == 6 and {a.settlement_status for a in answers} == {"settled"}
    assert all(str(copier.pk) not in a.contributor_shares for a in answers)
    assert not Account.objects.filter(owner=copier).exists()  # never paid, so no wallet
    paid = services.rule_payouts(attributions=answers, rule="settle-2")
    assert copier.pk not in paid and max(paid, key=paid.get) == alice.pk
    print(f"\ncopier scenario (settle-2): alice {paid.get(alice.pk, 0)}, copier {paid.get(copier.pk, 0)}")
    ledger_verify()
