"""Query budgets of every list page and list endpoint (Zulip's `assert_database_query_count`): each one is read
with N grown rows and again with 3N, and must take the same, pinned, number of queries both times. A page that
reads something once per row (an N+1) takes more queries with more rows and fails here; a page that gains a query
for good fails on the pinned number, which is then raised on purpose, in review.

The world (tests/world.py) is built once for the module; each test adds its rows (named `qb-<kind>-<i>` where the
page shows them, so the test also checks that they really are listed) inside the test's own savepoint. Counts are
taken after a first request, as in a running server: content types, the session and the caches keyed on the data
are warm. The pinned counts hold on SQLite and on PostgreSQL alike: the one write among these pages (the wizard
saves its state in the session) runs in a savepoint inside the test's transaction on both, and no list page opens a
transaction of its own.

The lists come from every urls.py and /api/schema/ (each paginated GET). Not here: the admin's change lists
(Django's own, select_related on their list_display) and detail pages that list nothing."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.services import api_token_create, api_token_revoke
from attribution.models import Attribution, AttributionShare, ContributionValue, ModelIndex
from datanets.models import Contribution, Datanet, DatanetVersion, Record, Tag, VersionRecord
from ledger.services import credit_grant, withdrawal_request
from modelfactory.models import (
    BaseModel,
    FineTuneEvent,
    FineTuneJob,
    Inference,
    ModelEvaluation,
    ModelVersion,
    TrainedModel,
)
from modelfactory.serializers import FineTuneJobSerializer, TrainedModelSerializer
from tests.factories import UserFactory
from tests.world import module_world

N = 2


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker, tmp_path_factory):
    yield from module_world(django_db_blocker, tmp_path_factory)


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


class Grow:
    """Adds rows for one list. `i` numbers every grown row of a test, so names and hashes never collide; `ctx` holds
    what a path names and the first growth makes (the answer whose attribution a page shows)."""

    def __init__(self, world, cast):
        self.world, self.cast = world, cast
        self.numbers = itertools.count()
        self.ctx: dict = {}

    def take(self, n: int) -> list[int]:
        return [next(self.numbers) for _ in range(n)]

    @property
    def base(self) -> BaseModel:
        return self.world.job.base_model

    @property
    def model_version(self) -> ModelVersion:
        return self.world.model.versions.get()


def _user(name: str):
    return UserFactory(username=name)


def _contribution(datanet, contributor, i: int, status=Contribution.Status.ACCEPTED, reviewed_by=None):
    return Contribution.objects.create(
        datanet=datanet, contributor=contributor, original_name=f"qb-upload-{i}.jsonl", size=100, sha256=f"{i:064x}",
        status=status, rows_total=1, rows_accepted=1, report={"flags": {"pii": 1}}, reviewed_by=reviewed_by,
    )  # fmt: skip


def _record(datanet, i: int, *, contribution=None, contributor=None, status=Record.Status.ACCEPTED, **extra):
    contributor = contributor or _user(f"qb-contributor-{i}")
    contribution = contribution or _contribution(datanet, contributor, i)
    # As the services do when rows change: the datanet's cached stats (and its page count) are keyed on updated_at.
    Datanet.objects.filter(pk=datanet.pk).update(updated_at=timezone.now())
    return Record.objects.create(
        datanet=datanet, contribution=contribution, contributor=contributor, line=i, status=status, token_count=3,
        content={"instruction": f"qb-row-{i}", "output": "a"}, text=f"qb-row-{i} a", content_hash=f"{i:064x}", **extra,
    )  # fmt: skip


def _datanet(i: int, *, owner, visibility=Datanet.Visibility.PUBLIC) -> Datanet:
    return Datanet.objects.create(
        slug=f"qb-datanet-{i}", name=f"qb-datanet-{i}", summary="Grown.", owner=owner, visibility=visibility
    )


def _job(g: Grow, name: str, *, owner=None, status=FineTuneJob.Status.QUEUED) -> FineTuneJob:
    job = FineTuneJob.objects.create(
        owner=owner or g.cast.owner, name=name, base_model=g.base, preset="balanced", idempotency_key=name,
        status=status, progress=1.0 if status == FineTuneJob.Status.SUCCEEDED else 0.0,
    )  # fmt: skip
    job.datanet_versions.add(g.world.version)
    return job


def _model_version(model: TrainedModel, number: int, job: FineTuneJob, loss: float) -> ModelVersion:
    return ModelVersion.objects.create(
        model=model, number=number, job=job, adapter_path="/nowhere", zip_path="/nowhere.zip", artifact_hash="0" * 64,
        model_card="# Grown", metrics={"eval_loss": loss, "base_eval_loss": 3.0},
    )  # fmt: skip


def _inference(g: Grow, i: int, *, caller) -> Inference:
    return Inference.objects.create(
        caller=caller, model=g.world.model, model_version=g.model_version, source=Inference.Source.API,
        status=Inference.Status.COMPLETED, messages=[{"role": "user", "content": "?"}],
        output=f"qb-answer-{i}: the sky on Zorb is green.", price_per_1k_tokens=0,
    )  # fmt: skip


def _share(attribution: Attribution, contributor, model, share: float) -> AttributionShare:
    return AttributionShare.objects.create(
        attribution=attribution, contributor=contributor, model=model, share=share, settled_share=share,
        amount_micro=1_000, created_at=timezone.now(),
    )  # fmt: skip


# --- What each list grows by ---------------------------------------------------------------------------------------


def public_datanets(g: Grow, n: int) -> None:
    """Public datanets of other owners, each with a tag and a curator (what the cards and the API show)."""
    for i in g.take(n):
        datanet = _datanet(i, owner=_user(f"qb-owner-{i}"))
        datanet.tags.add(Tag.objects.create(name=f"qb-tag-{i}"))
        datanet.curators.add(_user(f"qb-curator-{i}"))


def dashboard(g: Grow, n: int) -> None:
    """The owner's datanets (each with an upload to review), uploads, training jobs and models."""
    for i in g.take(n):
        datanet = _datanet(i, owner=g.cast.owner, visibility=Datanet.Visibility.PRIVATE)
        _contribution(datanet, g.cast.teammate, i, status=Contribution.Status.NEEDS_REVIEW)
        _contribution(g.world.public_datanet, g.cast.owner, i)
        _job(g, f"qb-job-{i}")
    for i in g.take(n):
        TrainedModel.objects.create(owner=g.cast.owner, slug=f"qb-model-{i}", name=f"qb-model-{i}", base_model=g.base)


def records(g: Grow, n: int) -> None:
    """Accepted rows of the private datanet, each by its own contributor from its own upload."""
    for i in g.take(n):
        _record(g.world.datanet, i)


def contributions(g: Grow, n: int) -> None:
    """Uploads to the private datanet by as many contributors, reviewed by the owner."""
    for i in g.take(n):
        _contribution(g.world.datanet, _user(f"qb-contributor-{i}"), i, reviewed_by=g.cast.owner)


def review_queue(g: Grow, n: int) -> None:
    for i in g.take(n):
        _contribution(g.world.datanet, _user(f"qb-contributor-{i}"), i, status=Contribution.Status.NEEDS_REVIEW)


def flagged_rows(g: Grow, n: int) -> None:
    """Rows of the teammate's upload flagged for review (its page lists them)."""
    for i in g.take(n):
        _record(
            g.world.datanet, i, contribution=g.world.contribution, contributor=g.cast.teammate,
            status=Record.Status.PENDING, flags=["pii"], flag_details={"near_duplicate": {"of_line": 1}},
        )  # fmt: skip


def versions(g: Grow, n: int) -> None:
    """Versions of the private datanet, each published by its own curator."""
    for i in g.take(n):
        number = g.world.datanet.versions.order_by("-number").values_list("number", flat=True).first() + 1
        DatanetVersion.objects.create(
            datanet=g.world.datanet, number=number, manifest_hash=f"qb-version-{i}", row_count=1, contributor_count=1,
            created_by=_user(f"qb-publisher-{i}"),
        )  # fmt: skip


def version_rows(g: Grow, n: int) -> None:
    """Rows in the world's version by as many contributors (its page lists what each added)."""
    for i in g.take(n):
        VersionRecord.objects.create(version=g.world.version, record=_record(g.world.datanet, i))


def usable_versions(g: Grow, n: int) -> None:
    """Public datanets with a version each: what the wizard's second step offers."""
    for i in g.take(n):
        datanet = _datanet(i, owner=_user(f"qb-owner-{i}"))
        DatanetVersion.objects.create(
            datanet=datanet, number=1, manifest_hash=f"{i:064x}", row_count=1, contributor_count=1,
            created_by=datanet.owner,
        )  # fmt: skip


def base_models(g: Grow, n: int) -> None:
    for i in g.take(n):
        BaseModel.objects.create(
            slug=f"qb-base-{i}", name=f"qb-base-{i}", path="/nowhere", parameters=10**6 * (i + 1), context_length=512
        )


def jobs(g: Grow, n: int) -> None:
    """The owner's jobs: every other one waiting in line (a queue position), the others finished with a model."""
    for i in g.take(n):
        if i % 2:
            _job(g, f"qb-job-{i}")
            continue
        job = _job(g, f"qb-job-{i}", status=FineTuneJob.Status.SUCCEEDED)
        model = TrainedModel.objects.create(
            owner=g.cast.owner, slug=f"qb-trained-{i}", name=f"qb-trained-{i}", base_model=g.base
        )
        _model_version(model, 1, job, loss=2.0)


def models(g: Grow, n: int) -> None:
    """Published public models of other owners, each with two versions (the newest one is listed)."""
    for i in g.take(n):
        owner = _user(f"qb-modeller-{i}")
        model = TrainedModel.objects.create(
            owner=owner, slug=f"qb-model-{i}", name=f"qb-model-{i}", base_model=g.base, published_at=timezone.now(),
            visibility=TrainedModel.Visibility.PUBLIC, status=TrainedModel.Status.PUBLISHED,
        )  # fmt: skip
        for number in (1, 2):
            job = _job(g, f"qb-run-{i}-{number}", owner=owner, status=FineTuneJob.Status.SUCCEEDED)
            _model_version(model, number, job, loss=number + i / 100)


def chart_points(g: Grow, n: int) -> None:
    FineTuneEvent.objects.bulk_create(
        [FineTuneEvent(job=g.world.job, kind=FineTuneEvent.Kind.TRAIN, step=100 + i, loss=1.0) for i in g.take(n)]
    )


def evaluations(g: Grow, n: int) -> None:
    """ "Evaluate again" runs of the world's model, finished, each on a datanet version or a file."""
    version = g.world.job.model_version
    for i in g.take(n):
        evaluation = ModelEvaluation.objects.create(
            version=version, requested_by=g.cast.owner, upload_name=f"qb-eval-{i}.jsonl" if i % 2 else "", rows=3,
            status=ModelEvaluation.Status.SUCCEEDED, progress=1.0, message=f"qb-eval-{i}",
            metrics={"answers_scored": 3, "base_token_f1": 0.1, "token_f1": 0.5, "base_exact_match": 0.0,
                     "exact_match": 0.33},
        )  # fmt: skip
        if not i % 2:
            evaluation.test_versions.add(g.world.version)


def answers(g: Grow, n: int) -> None:
    """Attributed answers of the owner's model, each asked by someone else."""
    for i in g.take(n):
        Attribution.objects.create(inference=_inference(g, i, caller=_user(f"qb-caller-{i}")), status="done")


def model_shares(g: Grow, n: int) -> None:
    """One more attributed answer of the owner's model, shaped by n contributors."""
    numbers = g.take(n)
    attribution = Attribution.objects.create(inference=_inference(g, numbers[0], caller=g.cast.outsider))
    for i in numbers:
        _share(attribution, _user(f"qb-contributor-{i}"), g.world.model, 1 / n)


INDEX = {"folder": "/nowhere", "index_path": "/nowhere", "spans_path": "/nowhere", "owners_path": "/nowhere"}
INDEX |= {"method_version": "qb", "k": 1, "seed": 0, "rows": 1, "bytes": 1, "build_seconds": 0.1}


def datanet_shares(g: Grow, n: int) -> None:
    """Contributors of the private datanet whose rows shaped an answer of a model trained on it, and the curators'
    valuation of each one's upload."""
    numbers = g.take(n)
    attribution = Attribution.objects.create(inference=_inference(g, numbers[0], caller=g.cast.outsider))
    index, _ = ModelIndex.objects.get_or_create(job=g.world.job, defaults=INDEX)
    for i in numbers:
        record = _record(g.world.datanet, i)
        _share(attribution, record.contributor, g.world.model, 1 / n)
        ContributionValue.objects.create(
            index=index, contribution=record.contribution, contributor=record.contributor, datanet=g.world.datanet,
            value=-i, rows=1, z=-i, p=0.5, harmful=i % 2 == 0,
        )  # fmt: skip


def answer_detail(g: Grow, n: int) -> None:
    """One answer of the owner's model (made on the first growth) shaped by n more contributors' rows: shares, top
    rows and verbatim spans."""
    numbers = g.take(n)
    attribution = g.ctx.get("attribution")
    if attribution is None:
        inference = _inference(g, numbers[0], caller=g.cast.owner)
        attribution = Attribution.objects.create(inference=inference, status="done")
        g.ctx.update(attribution=attribution, inference=inference.pk)
    for i in numbers:
        record = _record(g.world.datanet, i)
        _share(attribution, record.contributor, g.world.model, 0.1)
        attribution.top_rows.append({"record_id": record.pk, "contributor_id": record.contributor_id, "score": 1.0})
        attribution.spans.append({"start": 0, "end": 1, "record_id": record.pk, "char_start": 0, "char_end": 9})
    attribution.save(update_fields=["top_rows", "spans"])


def grants(g: Grow, n: int) -> None:
    for i in g.take(n):
        credit_grant(user_id=g.cast.owner.pk, amount_micro=1_000_000, granted_by=g.cast.staff, memo=f"qb-tx-{i}")


def withdrawals(g: Grow, n: int) -> None:
    for i in g.take(n):
        withdrawal_request(
            user=g.cast.owner, amount_micro=django_settings.MF_LEDGER_WITHDRAWAL_MIN_MICRO, key=f"qb-withdrawal-{i}"
        )


def wallet(g: Grow, n: int) -> None:
    """Statement lines (grants) and withdrawals (which also post a line each)."""
    grants(g, n)
    withdrawals(g, n)


def tokens(g: Grow, n: int) -> None:
    """The owner's API keys, every other one revoked."""
    for i in g.take(n):
        token, _ = api_token_create(user=g.cast.owner, name=f"qb-token-{i}")
        if i % 2:
            api_token_revoke(user=g.cast.owner, token_id=token.pk)


# --- The lists -----------------------------------------------------------------------------------------------------


def results(response) -> int:
    return len(response.json()["results"])


def train_points_grown(response) -> int:
    return sum(1 for point in response.json()["train"] if point["x"] >= 100)


@dataclass(frozen=True)
class Case:
    path: str  # formatted with {datanet}, {public}, {version}, {model}, {job} and what the growth put in ctx
    grow: Callable[[Grow, int], None]
    shown: str | Callable  # regex of a grown row's name (distinct matches are counted), or a counter
    queries: int  # pinned: the same with N and 3N rows
    shows: tuple[int, int] = (N, 3 * N)  # grown rows listed with N and with 3N
    session: dict = field(default_factory=dict)


WIZARD_STEP_2 = {
    "finetune_wizard": {
        "step": 2, "reached": 2, "base_model": "tiny-base", "versions": [], "preset": "balanced", "advanced": {},
        "name": "", "key": "qb",
    }
}  # fmt: skip

PAGES = {
    "dashboard": Case("/", dashboard, r"qb-(?:datanet|upload|job|model)-\d+", 6, shows=(4 * N, 4 * 5)),  # 5 each
    "datanets": Case("/datanets/", public_datanets, r"qb-datanet-\d+", 5),
    "datanet rows": Case("/datanets/{datanet}/", records, r"qb-row-\d+", 6),  # 6: the datanet pool, shown to its owner
    "contributions": Case("/datanets/{datanet}/contributions/", contributions, r"qb-upload-\d+", 5),
    # + the contributors' reputation (rows, answers credited, flags, findings: 4 queries, whatever the queue's length)
    # + the bonds still held, for what each reject choice does (1 query)
    "review queue": Case("/datanets/{datanet}/review/", review_queue, r"qb-upload-\d+", 9),
    "versions": Case("/datanets/{datanet}/versions/", versions, r"qb-version-\d+", 4),
    "version diff": Case("/datanets/{datanet}/versions/{version}/", version_rows, r"qb-contributor-\d+", 6),
    "contributors": Case("/datanets/{datanet}/contributors/", records, r"qb-contributor-\d+", 6),
    "flagged rows": Case("/datanets/contributions/{contribution}/", flagged_rows, r"qb-row-\d+", 3),
    "upload rows": Case("/datanets/contributions/{contribution}/rows/", flagged_rows, r"qb-row-\d+", 5),
    "datanet export": Case("/datanets/{datanet}/export.csv", records, r"qb-row-\d+", 4),
    "jobs": Case("/train/", jobs, r"qb-job-\d+", 2),
    "wizard base models": Case("/train/new/?step=1", base_models, r"qb-base-\d+", 6),
    "wizard versions": Case("/train/new/?step=2", usable_versions, r"qb-datanet-\d+", 6, session=WIZARD_STEP_2),
    "job chart": Case("/train/jobs/{job}/chart/", chart_points, train_points_grown, 3),
    "job evaluations": Case("/train/jobs/{job}/", evaluations, r"/evaluations/\d+/", 12),
    "models": Case("/models/", models, r"qb-model-\d+", 3),
    # + your reputation: the datanets you have rows in, then 4 queries per datanet (here one); + your rows that
    # earned the most (1)
    "attribution answers": Case("/attribution/", answers, r"qb-answer-\d+", 14),
    "attribution model": Case("/attribution/models/{model}/", model_shares, r"qb-contributor-\d+", 5),
    # + reputation (4) and the curators' findings (1)
    "attribution datanet": Case("/attribution/datanets/{datanet}/", datanet_shares, r"qb-contributor-\d+", 11),
    "attribution answer": Case("/attribution/inferences/{inference}/", answer_detail, r"qb-contributor-\d+", 7),
    "wallet": Case("/wallet/", wallet, r"qb-tx-\d+", 9),  # earnings under review: +1; the summary: -1 (one query)
    "statement csv": Case("/wallet/statement.csv", grants, r"qb-tx-\d+", 2),
    "api tokens": Case("/accounts/tokens/", tokens, r"qb-token-\d+", 2),
}
ENDPOINTS = {
    "base models": Case("/api/v1/base-models/", base_models, r"qb-base-\d+", 3),
    "datanets": Case("/api/v1/datanets/", public_datanets, r"qb-datanet-\d+", 5),
    "datanet versions": Case("/api/v1/datanets/{datanet}/versions/", versions, r"qb-version-\d+", 5),
    "datanet records": Case("/api/v1/datanets/{datanet}/records/", records, r"qb-row-\d+", 5),
    "upload rows": Case("/api/v1/contributions/{contribution}/rows/", flagged_rows, r"qb-row-\d+", 5),
    "finetunes": Case("/api/v1/finetunes/", jobs, r"qb-job-\d+", 5),
    "finetune evaluations": Case("/api/v1/finetunes/{job}/evaluations/", evaluations, r"qb-eval-\d+", 6),
    "models": Case("/api/v1/models/", models, r"qb-model-\d+", 4),
    "transactions": Case("/api/v1/ledger/transactions/", grants, r"qb-tx-\d+", 4),  # a cursor page: no count
    "withdrawals": Case("/api/v1/ledger/withdrawals/", withdrawals, results, 3),
    "answer attribution": Case("/api/v1/inferences/{inference}/attribution/", answer_detail, r"qb-contributor-\d+", 7),
    "openai models": Case("/v1/models", models, r"qb-model-\d+", 2),
}


def _count(shown, response, body: bytes) -> int:
    if callable(shown):
        return shown(response)
    return len(set(re.findall(shown, body.decode())))


def _shapes(sql: list[str]) -> Counter:
    """The queries with their numbers taken out: a query made once per row shows up as one shape many times."""
    return Counter(re.sub(r"\d+", "N", q)[:300] for q in sql)


def _read(client, path: str, shown) -> tuple[int, int, list[str]]:
    """(queries, grown rows shown, their SQL) of a request made after a first one, as in a warm server."""
    client.get(path)
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path)
        body = b"".join(response.streaming_content) if response.streaming else response.content
    assert response.status_code == 200, body[:500]
    return len(captured), _count(shown, response, body), [q["sql"] for q in captured.captured_queries]


def _run(case: Case, client, cast, world) -> None:
    client.force_login(cast.owner)
    if case.session:
        session = client.session
        session.update(case.session)
        session.save()
    grow = Grow(world, cast)
    case.grow(grow, N)
    path = case.path.format(
        datanet=world.datanet.slug, public=world.public_datanet.slug, version=world.version.number,
        model=world.model.slug, job=world.job.pk, contribution=world.contribution.pk, **grow.ctx,
    )  # fmt: skip
    few, shown_few, sql_few = _read(client, path, case.shown)
    case.grow(grow, 2 * N)
    many, shown_many, sql_many = _read(client, path, case.shown)
    assert (shown_few, shown_many) == case.shows, "the grown rows are not all listed"
    assert many == few, f"{few} queries with {N} rows, {many} with {3 * N}; repeated per row:\n" + "\n".join(
        (_shapes(sql_many) - _shapes(sql_few)).elements()
    )
    assert few == case.queries, f"{few} queries, pinned {case.queries}:\n" + "\n".join(q[:200] for q in sql_few)


@pytest.mark.parametrize("name", PAGES)
def test_list_page_query_budget(name, client, cast, world):
    _run(PAGES[name], client, cast, world)


@pytest.mark.parametrize("name", ENDPOINTS)
def test_list_endpoint_query_budget(name, client, cast, world):
    _run(ENDPOINTS[name], client, cast, world)


# --- What the lists read with the rows is what a lone object reads by itself -----------------------------------------


def test_model_lists_show_each_models_newest_version(client, cast, world):
    models(Grow(world, cast), 3)
    client.force_login(cast.owner)
    listed = {m["slug"]: m for m in client.get("/api/v1/models/").json()["results"]}
    for model in TrainedModel.objects.all():
        assert listed[model.slug] == TrainedModelSerializer(TrainedModel.objects.get(pk=model.pk)).data
    newest = [(listed[f"qb-model-{i}"]["version"], listed[f"qb-model-{i}"]["metrics"]["eval_loss"]) for i in range(3)]
    assert newest == [(2, 2.0), (2, 2.01), (2, 2.02)]
    page = client.get("/models/").content.decode()
    assert re.findall(r"3\.000 → (2\.\d+)", page) == ["2.020", "2.010", "2.000"]  # newest model first


def test_finetune_list_reads_queue_positions_and_models_as_a_lone_job_does(client, cast, world):
    grow = Grow(world, cast)
    jobs(grow, 6)  # qb-job-1, 3 and 5 wait in line; 0, 2 and 4 made a model each
    others = [_job(grow, f"qb-other-{i}", owner=cast.teammate) for i in range(3)]
    first = FineTuneJob.objects.order_by("created_at").first().created_at
    FineTuneJob.objects.filter(pk=others[0].pk).update(created_at=first - timedelta(seconds=1))  # first in line
    job_3 = FineTuneJob.objects.get(name="qb-job-3")
    FineTuneJob.objects.filter(name="qb-job-5").update(created_at=job_3.created_at)  # a tie: the lower id goes first
    client.force_login(cast.owner)
    listed = client.get("/api/v1/finetunes/").json()["results"]
    for job in listed:
        assert job == FineTuneJobSerializer(FineTuneJob.objects.get(pk=job["id"])).data  # each read by itself
    assert {j["name"]: (j["queue_position"], j["model"]) for j in listed} == {
        world.job.name: (None, "zorb-model"),
        "qb-job-0": (None, "qb-trained-0"),
        "qb-job-1": (2, None),
        "qb-job-2": (None, "qb-trained-2"),
        "qb-job-3": (3, None),
        "qb-job-4": (None, "qb-trained-4"),
        "qb-job-5": (4, None),
    }
