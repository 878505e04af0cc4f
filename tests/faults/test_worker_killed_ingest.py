"""The worker killed during an ingest: a real Celery worker (solo pool, the `default` queue) is SIGKILLed while it
streams an uploaded file. The upload is detected as abandoned from the worker's stale heartbeat by the restarted
worker's recovery sweep (every MF_WORKER_SWEEP_SECONDS; nobody needs to open its page, and reading it writes
nothing), is marked failed with a plain message, keeps none of its rows, and "Try again" checks it in full."""

import json
import random

from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from rest_framework.test import APIClient

from datanets import services
from datanets.models import Contribution, Datanet, Record
from tests.factories import UserFactory
from tests.faults.conftest import wait_for

ROWS = 6_000  # staged in batches of 1,000: the first batch appears long before the end


def _rows() -> bytes:
    """Distinct questions and answers (random syllable words), so no row is a near-duplicate of another."""
    rng = random.Random(8)
    syllables = ["ka", "lo", "mi", "ren", "tu", "sa", "vor", "pe", "dim", "ul", "zo", "bra", "fen", "gi", "hox"]

    def words(n: int) -> str:
        return " ".join("".join(rng.choice(syllables) for _ in range(3)) for _ in range(n))

    lines = (
        json.dumps({"instruction": f"Where does the {words(3)} grow?", "output": f"It grows near {words(6)}."})
        for _ in range(ROWS)
    )
    return ("\n".join(lines) + "\n").encode()


def test_worker_killed_mid_ingest_is_failed_plainly_keeps_no_rows_and_can_be_retried(start_worker, client):
    owner = UserFactory(username="owner")
    datanet = services.datanet_create(
        owner=owner, name="Sunflowers", kind="instruction", summary="Heights.", policy=Datanet.Policy.OPEN
    )
    worker = start_worker("default")
    worker.wait_ready()
    api = APIClient()
    api.force_authenticate(owner)
    response = api.post(
        f"/api/v1/datanets/{datanet.slug}/contributions/",
        {"file": SimpleUploadedFile("sunflowers.jsonl", _rows())},
        format="multipart",
    )
    assert response.status_code == 201, response.content
    cid = response.json()["id"]
    staged = Record.objects.filter(contribution_id=cid, status=Record.Status.STAGED)
    wait_for(staged.exists, timeout=60, what="the worker to stage the first rows")

    # Hold the contribution (PostgreSQL: its row; SQLite: the write lock), so the worker cannot finish while we look;
    # it is mid-ingest for certain when it is killed.
    with transaction.atomic():
        contribution = Contribution.objects.select_for_update().get(pk=cid)
        assert contribution.status == Contribution.Status.VALIDATING
        assert 0 < staged.count() < ROWS
        worker.kill()
    # The worker is restarted (by an operator or a supervisor); its sweep runs every second here.
    second = start_worker("default", MF_WORKER_SWEEP_SECONDS="1", MF_WORKER_STALE_SECONDS="3")

    # Nothing beats for the dead worker any more: the restarted worker's sweep notices and fails it.
    def failed():
        body = api.get(f"/api/v1/contributions/{cid}/").json()
        return body if body["status"] == "failed" else None

    body = wait_for(failed, timeout=30, what="the abandoned ingest to be marked failed", every=0.5)
    assert body["message"] == (
        "The worker checking this file stopped before it finished (it may have been restarted). "
        "None of its rows were kept. Press “Try again” to check it again."
    )
    assert not Record.objects.filter(contribution_id=cid).exists()
    assert api.get(f"/api/v1/datanets/{datanet.slug}/records/").json()["count"] == 0

    # The user presses "Try again" on the contribution page; a new worker checks the stored file in full.
    second.wait_ready()
    client.force_login(owner)
    page = client.post(f"/datanets/contributions/{cid}/retry/")
    assert page.status_code == 302
    done = wait_for(
        lambda: Contribution.objects.filter(pk=cid, status=Contribution.Status.ACCEPTED).first(),
        timeout=90,
        what="the retried ingest to finish",
        every=0.25,
    )
    assert done.rows_accepted == ROWS
    assert done.message == ""
    assert Record.objects.filter(contribution_id=cid, status=Record.Status.ACCEPTED).count() == ROWS
    assert not Record.objects.filter(contribution_id=cid).exclude(status=Record.Status.ACCEPTED).exists()
