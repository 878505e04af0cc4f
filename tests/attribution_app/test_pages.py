"""Who may see what: the answer page and API, the per-model, per-contributor and per-datanet pages, the admin."""

import pytest
from django.urls import reverse

from attribution.models import Attribution, ContributionValue, ModelIndex
from attribution.tasks import inference_attribute_task
from tests.attribution_app.conftest import LONG_ANSWER, LONG_QUESTION
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def answered(planted, make_inference, cast):
    inference = make_inference(planted, LONG_QUESTION, caller=cast.teammate)
    inference_attribute_task.apply(args=[inference.pk])
    return inference


@pytest.mark.parametrize("who", ["teammate", "owner", "staff"])
def test_caller_owner_and_staff_see_the_attribution(answered, cast, client, who):
    client.force_login(getattr(cast, who))
    body = client.get(f"/api/v1/inferences/{answered.pk}/attribution/").json()
    assert body["inference_id"] == answered.pk and body["status"] == "done"
    assert [c["username"] for c in body["contributors"]][0] == "alice"
    page = client.get(reverse("attribution:inference", args=[answered.pk]))
    assert page.status_code == 200 and LONG_ANSWER in page.content.decode()


def test_anyone_else_gets_404(answered, cast, client):
    client.force_login(cast.outsider)
    response = client.get(f"/api/v1/inferences/{answered.pk}/attribution/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert client.get(reverse("attribution:inference", args=[answered.pk])).status_code == 404
    assert client.get(f"/api/v1/inferences/{answered.pk + 100}/attribution/").status_code == 404
    client.logout()
    assert client.get(f"/api/v1/inferences/{answered.pk}/attribution/").status_code in (401, 403)
    assert client.get(reverse("attribution:inference", args=[answered.pk])).status_code == 302


def test_row_text_is_escaped(planted, make_inference, cast, client):
    from datanets.models import Record

    Record.objects.filter(content__output=LONG_ANSWER).update(text="<script>alert(1)</script>")
    inference = make_inference(planted, LONG_QUESTION, caller=cast.teammate)
    inference_attribute_task.apply(args=[inference.pk])
    client.force_login(cast.teammate)
    page = client.get(reverse("attribution:inference", args=[inference.pk])).content.decode()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_a_pending_attribution_says_so(planted, make_inference, cast, client):
    inference = make_inference(planted, LONG_QUESTION, caller=cast.teammate)
    client.force_login(cast.teammate)
    body = client.get(f"/api/v1/inferences/{inference.pk}/attribution/").json()
    assert (body["status"], body["contributors"], body["rows"], body["settlement"]["status"]) == (
        "pending",
        [],
        [],
        "pending",
    )
    url = reverse("attribution:inference", args=[inference.pk])
    page = client.get(url).content.decode()
    assert "We are still working out which training rows shaped this answer" in page
    assert "This page updates by itself." in page
    # The page asks for its detail part again every 2 s (htmx), and gets only that part back.
    poll = f'<div id="attribution-detail" hx-get="{url}" hx-trigger="every 2s" hx-swap="outerHTML">'
    assert poll in page
    part = client.get(url, headers={"HX-Request": "true"}).content.decode()
    assert part.lstrip().startswith(poll) and "<html" not in part


def test_a_settled_attribution_stops_polling(answered, cast, client):
    client.force_login(cast.teammate)
    url = reverse("attribution:inference", args=[answered.pk])
    attribution = Attribution.objects.get(inference=answered)
    assert (attribution.status, attribution.settlement_status) == ("done", "settled")
    page = client.get(url).content.decode()
    assert '<div id="attribution-detail">' in page and "hx-trigger" not in page
    part = client.get(url, headers={"HX-Request": "true"}).content.decode()
    assert part.lstrip().startswith('<div id="attribution-detail">') and "hx-trigger" not in part


def test_model_contributor_and_index_pages(answered, planted, cast, client):
    alice = planted.people["alice"]
    model = answered.model
    client.force_login(cast.owner)
    page = client.get(reverse("attribution:model", args=[model.slug])).content.decode()
    assert "Over 1 attributed answer" in page and "alice" in page and 'id="attribution-chart"' in page
    client.force_login(alice)
    page = client.get(reverse("attribution:index")).content.decode()
    assert "Your data was used in <strong>1</strong> answer of <strong>1</strong> model" in page
    paid = Attribution.objects.get().shares.get(contributor=alice).amount_micro
    assert paid > 0 and f"{paid / 1_000_000:.6f}" in page
    assert f'<a href="{reverse("attribution:datanet", args=[planted.datanet.slug])}">Codes</a>' in page
    # alice is neither the caller nor the owner: the answer itself stays hidden from her.
    assert reverse("attribution:inference", args=[answered.pk]) not in page
    client.force_login(UserFactory())
    assert client.get(reverse("attribution:model", args=[model.slug])).status_code == 404  # a private model


def test_datanet_page_shows_the_valuation_to_curators_only(planted, cast, client):
    index = ModelIndex.objects.get()
    value = ContributionValue.objects.filter(index=index).first()
    ContributionValue.objects.filter(pk=value.pk).update(harmful=True)
    url = reverse("attribution:datanet", args=[planted.datanet.slug])
    client.force_login(cast.owner)
    page = client.get(url).content.decode()
    assert "1 contribution flagged for review." in page and "Review: made the model worse" in page
    assert f"{value.value:.4f}" not in page  # effects relative to the strongest one, never raw scores
    strongest = max(abs(v) for v in ContributionValue.objects.filter(index=index).values_list("value", flat=True))
    assert f"({int(abs(value.value) / strongest * 100 + 0.5)}% of the strongest effect)" in page
    client.force_login(cast.outsider)
    page = client.get(url).content.decode()
    assert "Which contributions help the models" not in page and "flagged" not in page


def test_admin_lists_every_model(answered, cast, client):
    client.force_login(cast.staff)
    for name in ("modelindex", "contributionvalue", "attribution", "attributionshare"):
        assert client.get(reverse(f"admin:attribution_{name}_changelist")).status_code == 200
    attribution = Attribution.objects.get()
    assert client.get(reverse("admin:attribution_attribution_change", args=[attribution.pk])).status_code == 200


def test_every_contributor_gets_a_sentence_and_no_raw_score_is_shown(answered, cast, client):
    from attribution.models import AttributionShare

    client.force_login(cast.teammate)
    response = client.get(reverse("attribution:inference", args=[answered.pk]))
    page = response.content.decode()
    contributors = response.context["d"]["contributors"]
    assert [c["username"] for c in contributors] == ["alice"]
    for c in contributors:
        share = AttributionShare.objects.get(attribution__inference=answered, contributor_id=c["user_id"])
        assert c["why"].startswith(f"{c['username']} was paid ")
        assert f'<td class="why-paid">{c["why"]}</td>' in page.replace("&#x27;", "'")
        assert share.amount_micro == c["amount"]
    assert "influence 0." not in page and "influence 1" not in page and "Share 0%" not in page
    assert "of the influence of the rows listed here" in page
    influences = [row["influence"] for row in response.context["d"]["rows"]]
    assert sum(influences) == pytest.approx(1.0)
    assert '<details id="how-computed"><summary>How this was computed</summary>' in page
    details = page.split('<details id="how-computed">')[1]
    rule = AttributionShare.objects.filter(attribution__inference=answered).first().attribution.settlement_rule
    assert "poa-3" in details and f"(settlement rule {rule})" in details and rule == "settle-2"


def test_the_overview_counts_answers_that_paid_for_untraced_data(answered, cast, client):
    """A contributor paid only for the untraced part (by rows given) sees that answer, and the wallet's sum."""
    from attribution.models import AttributionShare
    from ledger.selectors import earnings

    paid = AttributionShare.objects.filter(attribution__inference=answered, amount_micro__gt=0).order_by("id").last()
    AttributionShare.objects.filter(pk=paid.pk).update(share=0.0)
    client.force_login(paid.contributor)
    page = client.get(reverse("attribution:index")).content.decode()
    assert "No answer has been traced to your data yet" not in page
    assert "Your data was used in <strong>1</strong> answer of <strong>1</strong> model" in page
    wallet = sum(earnings(user=paid.contributor, days=365)["by_day"].values())
    assert wallet == paid.amount_micro
    assert f'title="{paid.amount_micro / 1_000_000:.6f} credits"' in page
