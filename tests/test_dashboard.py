"""The signed-in home page: a dashboard of the user's wallet, datanets, uploads, training jobs and models."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from datanets import services as datanet_services
from ledger.calc.money import format_credits
from ledger.selectors import wallet_summary
from tests.world import build_world


@pytest.fixture
def world(cast, tmp_path, monkeypatch, settings):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return build_world(cast, tmp_path, monkeypatch)


def test_owner_sees_wallet_datanets_uploads_jobs_and_models(client, cast, world):
    upload = SimpleUploadedFile("mine.jsonl", b'{"instruction": "Rhubarb?", "output": "In spring."}\n')
    pending = datanet_services.contribution_create(
        datanet=world.public_datanet, contributor=cast.outsider, upload=upload
    )
    datanet_services.contribution_ingest(contribution_id=pending.pk)
    client.force_login(cast.owner)
    page = client.get("/").content.decode()
    assert "Welcome back, owner." in page
    available = wallet_summary(user=cast.owner)["available"]
    assert available > 0
    assert f"{format_credits(available)} credits" in page
    assert f'href="/datanets/{world.datanet.slug}/">Zorb facts</a>' in page
    assert f'href="/datanets/{world.public_datanet.slug}/review/">1 upload to review</a>' in page
    assert 'href="/datanets/contributions/' in page and "rows.jsonl</a> to Zorb facts" in page
    assert f'href="/train/jobs/{world.job.pk}/">{world.job.name}</a>' in page
    assert 'href="/models/zorb-model/">Zorb model</a> (draft)' in page


def test_outsider_sees_only_their_own_things(client, cast, world):
    client.force_login(cast.outsider)
    page = client.get("/").content.decode()
    assert "Zorb facts" not in page and "Zorb model" not in page and world.job.name not in page
    assert "You have not uploaded data yet." in page
    assert "No training jobs yet." in page


def test_anonymous_visitors_get_the_introduction(client, world):
    page = client.get("/").content.decode()
    assert "Create an account" in page and 'id="dash-wallet"' not in page
