"""A model trained on a private datanet and published: its card, name and address name the private datanet only to
people who may see that datanet. Others read "a private datanet" with its version number and fingerprint."""

from types import SimpleNamespace

import pytest

from datanets.models import Datanet
from modelfactory import services
from modelfactory.models import FineTuneJob
from modelfactory.training.artifacts import model_card
from tests.finetune.conftest import launch_job, publish_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def published(cast, tiny_base, version):
    """A public model trained on a public datanet (Zorb facts) and a private one (Secret garden: the owner's, the
    teammate curates), named by default; its card written as the training worker writes it."""
    secret = publish_version(
        owner=cast.owner, contributors=[cast.owner], name="Secret garden", visibility=Datanet.Visibility.PRIVATE
    )
    secret.datanet.curators.add(cast.teammate)
    job, _ = launch_job(
        cast.owner,
        base_model_slug="tiny-base",
        version_ids=[version.pk, secret.pk],
        preset="quick",
        idempotency_key="card",
    )
    versions = list(job.datanet_versions.select_related("datanet").order_by("pk"))
    card = model_card(
        name=job.name, base_model="Tiny base",
        datanet_versions=[{"name": v.datanet.name, "version": v.number, "manifest_hash": v.manifest_hash} for v in versions],
        hyperparameters={}, metrics={}, contributors=2, artifact_sha256="0" * 64, rows_used=15, rows_dropped=0,
    )  # fmt: skip
    FineTuneJob.objects.filter(pk=job.pk).update(status=FineTuneJob.Status.SUCCEEDED)
    result = SimpleNamespace(adapter_dir="-", zip_path="-", artifact_hash="0" * 64, model_card=card, metrics={})
    model = services.trained_model_create_from_job(job=job, result=result)
    services.trained_model_publish(user=cast.owner, slug=model.slug, price_per_1k_tokens=1000, visibility="public")
    return SimpleNamespace(model=model, public=version, secret=secret)


def test_the_default_name_does_not_name_a_private_datanet(published):
    assert published.model.name == "Tiny base on Zorb facts v1, a private datanet v1"
    assert published.model.slug == "tiny-base-on-zorb-facts-v1-a-private-datanet-v1"


def _card_rows(html: str) -> list[str]:
    return [line for line in html.splitlines() if line.startswith("| ") and line.endswith(" |")][1:3]


def test_the_model_page_names_a_private_datanet_only_to_those_who_may_see_it(client, cast, published):
    secret_hash, public_hash = published.secret.manifest_hash, published.public.manifest_hash
    url = f"/models/{published.model.slug}/"
    for user, secret_name in ((None, "a private datanet"), (cast.outsider, "a private datanet"),
                              (cast.teammate, "Secret garden"), (cast.owner, "Secret garden"),
                              (cast.staff, "Secret garden")):  # fmt: skip
        client.logout()
        if user is not None:
            client.force_login(user)
        page = client.get(url)
        assert page.status_code == 200
        assert _card_rows(page.content.decode()) == [
            f"| Zorb facts | 1 | `{public_hash}` |",
            f"| {secret_name} | 1 | `{secret_hash}` |",
        ], user
        assert ("Secret garden" in page.content.decode()) is (secret_name == "Secret garden")


def test_a_renamed_private_datanet_is_still_hidden(client, cast, published):
    Datanet.objects.filter(pk=published.secret.datanet_id).update(name="Renamed garden")
    client.force_login(cast.outsider)
    page = client.get(f"/models/{published.model.slug}/").content.decode()
    assert "Secret garden" not in page
    assert f"| a private datanet | 1 | `{published.secret.manifest_hash}` |" in page


def test_the_model_apis_do_not_name_a_private_datanet(cast, published):
    from rest_framework.test import APIClient

    api = APIClient()
    api.force_authenticate(cast.outsider)
    listed = api.get("/api/v1/models/").json()["results"]
    detail = api.get(f"/api/v1/models/{published.model.slug}/").json()
    openai = api.get("/v1/models").json()["data"]
    for body in (listed, detail, openai):
        assert "Secret garden" not in str(body) and "secret-garden" not in str(body)
    assert [m["name"] for m in listed] == ["Tiny base on Zorb facts v1, a private datanet v1"]
    assert [m["id"] for m in openai] == ["tiny-base-on-zorb-facts-v1-a-private-datanet-v1"]


def test_the_card_is_shown_rendered_and_raw_html_in_it_never_runs(client, cast, published):
    client.force_login(cast.outsider)
    page = client.get(f"/models/{published.model.slug}/").content.decode()
    card = page[page.index('<article class="model-card" id="model-card">') :]
    card = card[: card.index("</article>")]
    assert f"<h1>{published.model.name}</h1>" in card and "<h2>Training data</h2>" in card
    assert "<td>Zorb facts</td>" in card and "<td>a private datanet</td>" in card
    assert "Secret garden" not in card

    version = published.model.latest_version
    type(version).objects.filter(pk=version.pk).update(
        model_card="# Card\n\n<script>alert(1)</script>\n\n[click](javascript:alert(2)) <img src=x onerror=alert(3)>"
    )
    page = client.get(f"/models/{published.model.slug}/").content.decode()
    card = page[page.index('<article class="model-card" id="model-card">') :]
    card = card[: card.index("</article>")]
    assert "<script" not in card and "javascript:" not in card and "onerror" not in card
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the Markdown source, shown as text
