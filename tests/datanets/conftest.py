import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from datanets import services
from datanets.models import Datanet


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MF_TOKEN_COUNT_MODEL_DIR = tmp_path / "no-tokenizer"  # estimates, whatever this machine has converted
    # The cast's users are created with the password hasher in force; a fast one keeps these tests quick.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _no_broker(monkeypatch):
    """Ingests run in tests by calling the service directly; record what would have been queued."""
    queued = []
    monkeypatch.setattr("datanets.services.contributions._enqueue_ingest", queued.append)
    return queued


def jsonl(rows) -> bytes:
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


def upload(name: str, data: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="application/octet-stream")


@pytest.fixture
def datanet(cast):
    return services.datanet_create(
        owner=cast.owner,
        name="Home gardening",
        kind="instruction",
        summary="Questions and answers about growing food at home.",
        tags=["gardening", "Vegetables"],
        policy=Datanet.Policy.APPROVAL,
    )


def ingest(datanet, user, name, data, **kwargs):
    contribution = services.contribution_create(datanet=datanet, contributor=user, upload=upload(name, data), **kwargs)
    return services.contribution_ingest(contribution_id=contribution.pk)


QA = [
    {
        "instruction": "When should I plant garlic?",
        "output": "Plant garlic cloves in autumn, a few weeks before the ground freezes.",
    },
    {
        "instruction": "How deep should I plant potatoes?",
        "output": "Plant seed potatoes about 10 cm deep and earth them up as they grow.",
    },
    {
        "instruction": "Why are my tomato leaves turning yellow?",
        "input": "Lower leaves first.",
        "output": "Yellow lower leaves usually mean a lack of nitrogen or too much water.",
    },
    {
        "instruction": "How often should I water basil?",
        "output": "Water basil when the top centimetre of soil feels dry, usually every two days in summer.",
    },
]
