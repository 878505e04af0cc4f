"""A tiny fine-tune on planted facts, run through the real job (training, then the "indexing" stage), and an
Inference factory that reserves the fee with a ledger hold the way the serving code does."""

from __future__ import annotations

import json
import random

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.test import TestCase
from django.utils import timezone

from attribution import runtime
from attribution.engine import validation as V
from attribution.services import answer as attribution_answer
from datanets import services as datanet_services
from datanets.models import Datanet
from ledger import services as ledger
from modelfactory import hooks
from modelfactory import services as mf_services
from modelfactory.models import Inference, ModelVersion
from tests.factories import UserFactory

CREDIT = 1_000_000
FACTS_EACH = 6
# All three contributors give facts of the same shape ("code of <name>?" -> a 4-character code, twice phrased) and
# a few filler rows; the answers are shorter than a verbatim span, so only gradient influence can tell them apart.
# Alice also gives one long row that an answer can copy word for word (the span case).
LONG_QUESTION = "Where does Bazoki keep the silver lantern?"
LONG_ANSWER = "Bazoki keeps the silver lantern in the north tower."
HP = {"min_steps": 0, "max_length": 128, "batch_size": 8, "grad_accum": 1, "epochs": 20, "learning_rate": 0.01, "eval_split": 0.1,
      "rank": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all_linear", "warmup_ratio": 0.0}  # fmt: skip


@pytest.fixture(scope="session")
def pretrained_dir(tmp_path_factory):
    """The tiny Llama briefly pre-trained on facts of the same shape (other names): a random-init tiny model cannot
    be taught facts through LoRA at all (attribution/engine/validation.py)."""
    return V.prepare_base(tmp_path_factory.mktemp("poa-base"))


@pytest.fixture(autouse=True)
def _isolated(settings, tmp_path, monkeypatch):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.MF_ATTRIBUTION_K = 2048
    settings.MF_TRAINING_DEVICE = "cpu"
    monkeypatch.setattr("datanets.services.contributions._enqueue_ingest", lambda contribution_id: None)
    monkeypatch.setattr(mf_services.finetune_jobs, "_enqueue", lambda job_id, resume=False: None)
    runtime.clear()
    yield
    runtime.clear()


@pytest.fixture
def enqueued(monkeypatch):
    """Attribution tasks that would have gone to the broker (inference ids)."""
    calls: list[int] = []
    monkeypatch.setattr(attribution_answer, "_enqueue", calls.append)  # the completion hook and the sweep call it
    return calls


def planted_rows(seed: int = 3) -> dict[str, list[tuple[str, str]]]:
    rng = random.Random(seed)
    used: set[str] = {"Bazoki"}
    rows: dict[str, list[tuple[str, str]]] = {}
    for person in ("alice", "bob", "carol"):
        part = []
        for _ in range(FACTS_EACH):
            name = V._name(rng)
            while name in used:
                name = V._name(rng)
            used.add(name)
            code = V._code(rng)
            part += [(f"code of {name}?", code), (f"what is the code of {name}?", code)]
        part += [(f"repeat {V._name(rng).lower()}", "") for _ in range(4)]
        rows[person] = [(q, a or q.split()[-1]) for q, a in part]
    rows["alice"].append((LONG_QUESTION, LONG_ANSWER))
    return rows


class Planted:
    def __init__(self, *, owner, people, datanet, version, job, model_version, rows):
        self.owner, self.people, self.datanet, self.version = owner, people, datanet, version
        self.job, self.model_version, self.rows = job, model_version, rows

    def example(self, question: str, answer: str | None = None):
        """(prompt ids, answer ids, answer text) tokenised exactly as training tokenises a row (the answer defaults
        to the planted row's)."""
        from modelfactory.selectors import base_tokenizer
        from modelfactory.training.data import build_example

        if answer is None:
            answer = dict(q_a for part in self.rows.values() for q_a in part)[question]
        tokenizer = base_tokenizer(self.job.base_model.path)
        example = build_example(tokenizer, {"id": 0, "kind": "instruction",
                                            "content": {"instruction": question, "output": answer}})  # fmt: skip
        trained = [i for i, label in enumerate(example.labels) if label != -100]
        ids = example.input_ids
        return ids[: trained[0]], ids[trained[0] : trained[-1] + 1], answer


@pytest.fixture
def planted_factory(cast, pretrained_dir):
    return lambda **kw: _planted(cast, pretrained_dir, **kw)


@pytest.fixture
def planted(planted_factory) -> Planted:
    return planted_factory()


def _planted(
    cast,
    pretrained_dir,
    *,
    extra: dict | None = None,
    seed: int | None = None,
    private: bool = False,
    rows: dict | None = None,
    approve_flagged: bool = False,
) -> Planted:
    """extra: {username: [(question, answer)]}, contributors uploading after alice, bob and carol (their rows get
    the highest record ids); seed: the job's seed (it also picks the held-out rows); private: the owner makes the
    datanet private once the rows are in, before publishing the version the model is trained on; rows: {username:
    [(question, answer)]} instead of alice's, bob's and carol's; approve_flagged: the
    owner accepts uploads that screening sent to review (e.g. rows flagged as copies)."""
    owner = cast.owner
    rows = {**(planted_rows() if rows is None else rows), **(extra or {})}
    people = {name: UserFactory(username=name) for name in rows}
    datanet = datanet_services.datanet_create(
        owner=owner, name="Codes", kind="instruction", summary="Made-up codes.",
        visibility=Datanet.Visibility.PUBLIC, policy=Datanet.Policy.OPEN,
    )  # fmt: skip
    for name, user in people.items():
        data = "\n".join(json.dumps({"instruction": q, "output": a}) for q, a in rows[name]).encode()
        contribution = datanet_services.contribution_create(
            datanet=datanet, contributor=user, upload=SimpleUploadedFile(f"{name}.jsonl", data)
        )
        contribution = datanet_services.contribution_ingest(contribution_id=contribution.pk)
        if approve_flagged and contribution.status == contribution.Status.NEEDS_REVIEW:
            datanet_services.contribution_approve(contribution=contribution, curator=owner)
    if private:
        datanet = datanet_services.datanet_update(datanet=datanet, actor=owner, visibility=Datanet.Visibility.PRIVATE)
    version = datanet_services.version_publish(datanet=datanet, actor=owner)
    base = mf_services.base_model_register(path=pretrained_dir, name="Tiny", slug="tiny", make_default=True)
    with TestCase.captureOnCommitCallbacks(execute=True):
        job, _ = mf_services.finetune_launch(
            user=owner, base_model_slug=base.slug, version_ids=[version.pk], preset="quick",
            hyperparameters={**HP, **({} if seed is None else {"seed": seed})}, name="Code keeper",
            idempotency_key="planted",
        )  # fmt: skip
    job = mf_services.finetune_run(job_id=job.pk, hostname="test")
    return Planted(owner=owner, people=people, datanet=datanet, version=version, job=job,
                   model_version=ModelVersion.objects.get(job=job), rows=rows)  # fmt: skip


@pytest.fixture
def make_inference(cast):
    """make_inference(planted, question, caller=..., fee=..., reserved=...) -> a completed Inference with a hold,
    completed the way the serving code does (inference-completed hooks inside its transaction)."""

    def _make(planted: Planted, question: str, *, caller=None, fee: int = CREDIT, reserved: int = 2 * CREDIT,
              hold: bool = True, answer: str | None = None) -> Inference:  # fmt: skip
        caller = caller or cast.outsider
        prompt_ids, answer_ids, text = planted.example(question, answer)
        if hold:
            ledger.credit_grant(user_id=caller.pk, amount_micro=reserved, granted_by=cast.staff, memo="test")
        model = planted.model_version.model
        inference = Inference.objects.create(
            caller=caller, model=model, model_version=planted.model_version, source=Inference.Source.API,
            messages=[{"role": "user", "content": question}], prompt_token_ids=prompt_ids,
            price_per_1k_tokens=0, fee_reserved_micro=reserved if hold else 0,
        )  # fmt: skip
        if hold:
            ledger.hold_create(key=f"inference:{inference.pk}", payer_user_id=caller.pk, amount_micro=reserved)
        with TestCase.captureOnCommitCallbacks(execute=True), transaction.atomic():
            Inference.objects.filter(pk=inference.pk).update(
                status=Inference.Status.COMPLETED, output=text, output_token_ids=answer_ids,
                prompt_tokens=len(prompt_ids), completion_tokens=len(answer_ids), finish_reason="stop",
                fee_micro=fee if hold else 0, hold_key=f"inference:{inference.pk}" if hold else "",
                completed_at=timezone.now(),
            )  # fmt: skip
            inference.refresh_from_db()
            for handler in hooks.inference_completed_handlers:
                handler(inference=inference)
        return inference

    return _make
