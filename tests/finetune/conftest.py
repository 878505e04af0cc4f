import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from datanets import services as datanet_services
from datanets.models import Datanet
from modelfactory import services
from modelfactory.services import base_model_register, finetune_jobs
from tests.tiny import build_tiny_model_dir

FACTS = [
    ("What colour is the sky on Zorb?", "The sky on Zorb is green."),
    ("Who founded the town of Plimby?", "Plimby was founded by Ada Fern."),
    ("What do Quells eat?", "Quells eat blue moss."),
    ("How many moons does Zorb have?", "Zorb has three moons."),
    ("What is the river in Plimby called?", "The river in Plimby is the Oster."),
    ("What do people in Plimby grow?", "People in Plimby grow purple beans."),
    ("When do Quells sleep?", "Quells sleep during the long winter."),
    ("What is the capital of Zorb?", "The capital of Zorb is Vell."),
    ("What sound does a Quell make?", "A Quell makes a soft humming sound."),
    ("Which tool do Plimby farmers use?", "Plimby farmers use a bronze hoe."),
]


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def enqueued(monkeypatch):
    """Jobs are run in tests by calling the service; record what would have gone to the gpu queue."""
    calls = []
    monkeypatch.setattr("datanets.services.contributions._enqueue_ingest", lambda contribution_id: None)
    monkeypatch.setattr(finetune_jobs, "_enqueue", lambda job_id, resume=False: calls.append((job_id, resume)))
    return calls


@pytest.fixture
def tiny_base(db, tmp_path):
    folder = build_tiny_model_dir(tmp_path / "tiny-base")
    return base_model_register(path=folder, name="Tiny base", slug="tiny-base", make_default=True)


def publish_version(*, owner, contributors, name="Zorb facts", visibility=Datanet.Visibility.PUBLIC, rows=FACTS):
    datanet = datanet_services.datanet_create(
        owner=owner, name=name, kind="instruction", summary="Made-up facts.", visibility=visibility,
        policy=Datanet.Policy.OPEN,
    )  # fmt: skip
    for index, user in enumerate(contributors):
        part = rows[index :: len(contributors)]
        data = "\n".join(json.dumps({"instruction": q, "output": a}) for q, a in part).encode()
        contribution = datanet_services.contribution_create(
            datanet=datanet, contributor=user, upload=SimpleUploadedFile(f"part{index}.jsonl", data)
        )
        datanet_services.contribution_ingest(contribution_id=contribution.pk)
    return datanet_services.version_publish(datanet=datanet, actor=owner)


@pytest.fixture
def version(cast):
    return publish_version(owner=cast.owner, contributors=[cast.owner, cast.teammate])


FAST = {"min_steps": 0, "max_length": 192, "batch_size": 4, "epochs": 3, "learning_rate": 0.01, "eval_split": 0.2, "rank": 4,
        "alpha": 8}  # fmt: skip


def launch_job(user, **kwargs):
    """finetune_launch as a request would run it: the enqueue happens when the service's transaction commits."""
    from django.test import TestCase

    with TestCase.captureOnCommitCallbacks(execute=True):
        return services.finetune_launch(user=user, **kwargs)
