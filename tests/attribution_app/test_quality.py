"""Issue 15, quality shown where people decide: the measured figures of a model version's attribution method
(attribution/quality.json, written only by the benches' --record), its answers' traced share, on the model page and
in the API detail."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from attribution import quality
from attribution.models import Attribution, ModelIndex
from attribution.quality import Measurement, QualityFileError, quality_read, quality_record
from attribution.selectors import model_quality
from modelfactory.models import Inference, TrainedModel
from modelfactory.serializers import QualityMeasurementSerializer
from tests.world import module_world

INDEX = {"folder": "/nowhere", "index_path": "/nowhere", "spans_path": "/nowhere", "owners_path": "/nowhere",
         "k": 1, "seed": 0, "rows": 1, "bytes": 1, "build_seconds": 0.1}  # fmt: skip


def measurement(metric="planted_fact_top1", value=0.95, bench_model="SmolLM2-135M-Instruct", date="2026-12-06",
                counts=None, command="python bench/bench_attribution_planted.py --record", **kw) -> Measurement:  # fmt: skip
    return Measurement(metric=metric, value=value, bench_model=bench_model, date=date, counts=counts or {"queries": 20},
                       bench="bench/bench_attribution_planted.py", command=command, **kw)  # fmt: skip


@pytest.fixture
def quality_file(tmp_path, monkeypatch):
    path = tmp_path / "quality.json"
    monkeypatch.setattr(quality, "QUALITY_FILE", path)
    return path


# -- the file: written by the benches' record function ---------------------------------------------------------------


def test_record_merges_and_keeps_other_entries(quality_file):
    quality_record(method_version="poa-2", measurements=[measurement(value=0.8)])
    quality_record(method_version="poa-3", measurements=[
        measurement(value=0.9), measurement(metric="lds", value=0.71, bench_model="tiny", counts={"subsets": 32, "queries": 16}),
    ])  # fmt: skip
    # a later run of the planted bench on poa-3: its top-1 replaces the old one, the tiny LDS and poa-2 stay
    data = quality_record(method_version="poa-3", measurements=[
        measurement(value=0.95, date="2026-12-07"), measurement(metric="unattributed_out_of_domain", value=0.97),
    ])  # fmt: skip
    assert json.loads(quality_file.read_text()) == data
    read = quality_read()
    assert [(m.metric, m.value, m.bench_model) for m in read["poa-2"]] == [
        ("planted_fact_top1", 0.8, "SmolLM2-135M-Instruct")
    ]
    assert [(m.metric, m.value, m.bench_model, m.date) for m in read["poa-3"]] == [
        ("lds", 0.71, "tiny", "2026-12-06"),
        ("planted_fact_top1", 0.95, "SmolLM2-135M-Instruct", "2026-12-07"),
        ("unattributed_out_of_domain", 0.97, "SmolLM2-135M-Instruct", "2026-12-06"),
    ]
    assert read["poa-3"][0].counts == {"subsets": 32, "queries": 16}
    # the same metric on another bench model is another entry, not a replacement
    quality_record(method_version="poa-3", measurements=[measurement(value=1.0, bench_model="tiny")])
    assert [(m.metric, m.bench_model) for m in quality_read()["poa-3"]] == [
        ("lds", "tiny"), ("planted_fact_top1", "SmolLM2-135M-Instruct"), ("planted_fact_top1", "tiny"),
        ("unattributed_out_of_domain", "SmolLM2-135M-Instruct"),
    ]  # fmt: skip


def test_nothing_recorded_reads_empty(quality_file):
    assert quality_read() == {}
    assert not quality_file.exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: measurement(metric="accuracy"), "unknown metric 'accuracy'"),
        (lambda: measurement(value=1.2), "planted_fact_top1: the value 1.2 is outside 0.0..1.0"),
        (lambda: measurement(value=float("nan")), "the value must be a finite number"),
        (lambda: measurement(value=True), "the value must be a finite number"),
        (lambda: measurement(metric="lds", value=-1.5), "lds: the value -1.5 is outside -1.0..1.0"),
        (lambda: measurement(date="6 Dec 2026"), "the date must be YYYY-MM-DD"),
        (lambda: measurement(bench_model=" "), "bench_model must be a non-empty string"),
        (lambda: measurement(command=""), "command must be a non-empty string"),
        (lambda: measurement(counts={"queries": 0}), "counts must map names to positive whole numbers"),
    ],
)
def test_a_bad_measurement_is_refused(make, message):
    with pytest.raises(QualityFileError, match=re.escape(message)):
        make()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method_version": "", "measurements": [measurement()]}, "method version '': expected a short name"),
        ({"method_version": "POA 3", "measurements": [measurement()]}, "method version 'POA 3'"),
        ({"method_version": "poa-3", "measurements": []}, "nothing to record"),
        ({"method_version": "poa-3", "measurements": [{"metric": "lds"}]}, "must be Measurement objects"),
        ({"method_version": "poa-3", "measurements": [measurement(), measurement(value=0.5)]}, "same metric twice"),
    ],
)
def test_a_bad_record_writes_nothing(quality_file, kwargs, message):
    quality_record(method_version="poa-2", measurements=[measurement(value=0.8)])
    before = quality_file.read_bytes()
    with pytest.raises(QualityFileError, match=re.escape(message)):
        quality_record(**kwargs)
    assert quality_file.read_bytes() == before
    assert [p.name for p in quality_file.parent.iterdir()] == ["quality.json"]  # no temporary file left


def test_a_broken_file_is_refused_and_left_as_it_is(quality_file):
    quality_file.write_text("{not json")
    with pytest.raises(QualityFileError, match="not readable JSON"):
        quality_record(method_version="poa-3", measurements=[measurement()])
    assert quality_file.read_text() == "{not json"
    quality_file.write_text(json.dumps({"poa-3": {"measurements": [{"metric": "lds"}]}}))
    with pytest.raises(QualityFileError, match="'poa-3' holds a malformed measurement"):
        quality_read()


def test_the_committed_file_reads_and_only_holds_bench_commands():
    """attribution/quality.json as committed: valid, every figure from a bench's own --record run."""
    recorded = quality_read(quality.QUALITY_FILE)
    for measurements in recorded.values():
        for m in measurements:
            assert m.command.startswith(f"python {m.bench} ") and "--record" in m.command.split()


def test_the_tiny_bench_records_its_top1_and_lds(quality_file):
    from bench import bench_attribution

    results = {"method_version": "poa-3", "score_method": "fisher", "top1_fisher": 0.96, "top1_dot": 0.5,
               "planted_facts": 25, "planted_recall": 0.96, "lds_fisher": 0.8489, "lds_dot": 0.7, "lds_subsets": 32,
               "lds_queries": 16, "lds_recall": 1.0}  # fmt: skip
    quality_record(method_version="poa-3", measurements=[measurement(metric="unattributed_in_domain", value=0.3)])
    bench_attribution.record(results, ["--threads", "1", "--record"])
    read = {(m.metric, m.bench_model): m for m in quality_read()["poa-3"]}
    assert sorted(read) == [("lds", "tiny"), ("planted_fact_top1", "tiny"),
                            ("unattributed_in_domain", "SmolLM2-135M-Instruct")]  # fmt: skip
    lds, top1 = read["lds", "tiny"], read["planted_fact_top1", "tiny"]
    assert (lds.value, lds.counts, lds.details) == (0.8489, {"subsets": 32, "queries": 16},
                                                    {"recall": 1.0, "score_method": "fisher"})  # fmt: skip
    assert (top1.value, top1.counts, top1.command, top1.date) == (
        0.96,
        {"queries": 25},
        "python bench/bench_attribution.py --threads 1 --record",
        quality.today(),
    )


def test_the_bench_refuses_to_record_a_run_that_measures_no_quality(quality_file, capsys):
    from bench import bench_attribution

    assert bench_attribution.main(["--model", "smollm2", "--record"]) == 2  # latency and storage only
    assert "--record: only the tiny run and the LDS mode (--lds-subsets) measure quality" in capsys.readouterr().out
    assert not quality_file.exists()


def test_the_lds_mode_records_its_lds_on_the_model_it_ran_on(quality_file):
    from bench import bench_attribution

    results = {"method_version": "poa-3", "score_method": "fisher", "model": "SmolLM2-135M-Instruct",
               "hardware": "cpu", "rows": 64, "lds_fisher": 0.7594, "lds_dot": 0.5, "lds_subsets": 16,
               "lds_queries": 16, "lds_recall": 0.875}  # fmt: skip
    argv = ["--model", "smollm2", "--lds-subsets", "16", "--record"]
    bench_attribution.record(results, argv)
    (lds,) = quality_read()["poa-3"]
    assert (lds.metric, lds.bench_model, lds.value, lds.counts) == (
        "lds", "SmolLM2-135M-Instruct", 0.7594, {"subsets": 16, "queries": 16}
    )  # fmt: skip
    assert lds.details == {"recall": 0.875, "score_method": "fisher", "rows": 64, "hardware": "cpu"}
    assert lds.command == "python bench/bench_attribution.py " + " ".join(argv)


def test_the_planted_bench_records_each_rule(quality_file):
    from bench import bench_attribution_planted

    def rule(top1, inside, outside, held_out):
        return {"top1_in_domain": top1, "top1_when_fact_stated": 1.0, "unattributed_in_domain_mean": inside,
                "unattributed_out_of_domain_mean": outside, "credited_out_of_domain": 1,
                "unattributed_out_of_domain_held_out_mean": held_out, "credited_out_of_domain_held_out": 2,
                "unattributed_out_of_domain_all_mean": round((outside + held_out) / 2, 3)}  # fmt: skip

    results = {"questions_in_domain": 20, "questions_out_of_domain": 10, "questions_out_of_domain_held_out": 10,
               "answers_stating_the_fact": 18, "by_rule": {"poa-3": rule(0.95, 0.2, 1.0, 0.85),
                                                           "poa-2": rule(0.95, 0.05, 0.1, 0.1)}}  # fmt: skip
    bench_attribution_planted.record(results, model_dir=Path("/m/smollm2-135m-instruct"), argv=["--record"])
    read = quality_read()
    assert {v: [(m.metric, m.value, m.counts) for m in ms] for v, ms in read.items()} == {
        "poa-2": [("planted_fact_top1", 0.95, {"queries": 20}), ("unattributed_in_domain", 0.05, {"queries": 20}),
                  ("unattributed_out_of_domain", 0.1, {"queries": 20})],
        "poa-3": [("planted_fact_top1", 0.95, {"queries": 20}), ("unattributed_in_domain", 0.2, {"queries": 20}),
                  ("unattributed_out_of_domain", 0.925, {"queries": 20})],
    }  # fmt: skip
    assert {m.bench_model for ms in read.values() for m in ms} == {"SmolLM2-135M-Instruct"}
    assert read["poa-3"][2].details == {"credited": 3}
    assert read["poa-3"][0].command == "python bench/bench_attribution_planted.py --record"


def test_the_api_lists_the_same_metrics_as_the_file():
    assert list(QualityMeasurementSerializer().fields["metric"].choices) == list(quality.METRICS)


# -- the selector, the page and the API ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker, tmp_path_factory):
    yield from module_world(django_db_blocker, tmp_path_factory)


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _answer(world, cast, *, status=Inference.Status.COMPLETED, attribution=None, unattributed=0.0):
    inference = Inference.objects.create(
        caller=cast.outsider, model=world.model, model_version=world.model.versions.get(), source=Inference.Source.API,
        status=status, messages=[{"role": "user", "content": "?"}], output="Zorb has three moons.",
        price_per_1k_tokens=0,
    )  # fmt: skip
    if attribution is not None:
        Attribution.objects.create(inference=inference, status=attribution, unattributed=unattributed)
    return inference


@pytest.fixture
def answered(world, cast):
    """Answers attributed fully, partly, not at all (the engine found nothing), one fallen back to row shares, two
    not traced yet (pending, retrying), one without its row yet, and two that do not count (failed, other version)."""
    done = Attribution.Status.DONE
    for unattributed in (0.0, 0.25, 1.0, 0.4):
        _answer(world, cast, attribution=done, unattributed=unattributed)
    _answer(world, cast, attribution=Attribution.Status.FALLBACK, unattributed=1.0)
    _answer(world, cast, attribution=Attribution.Status.PENDING)
    _answer(world, cast, attribution=Attribution.Status.FAILED)
    _answer(world, cast)
    _answer(world, cast, status=Inference.Status.FAILED)
    ModelIndex.objects.create(job=world.job, method_version="poa-3", **INDEX)


pytestmark = pytest.mark.django_db


def test_selector_counts_answers_and_the_mean_traced_share_exactly(world, cast, answered, quality_file):
    version = world.model.versions.get()
    with CaptureQueriesContext(connection) as captured:
        q = model_quality(version=version)
    assert len(captured) == 1
    # traced: 1.0, 0.75, 0.0, 0.6 -> mean 2.35 / 4
    assert q["answers"] == {"total": 8, "traced": 4, "fallback": 1, "pending": 3, "traced_share": pytest.approx(0.5875)}
    assert q["method_version"] == "poa-3" and q["measurements"] == []


def test_selector_takes_the_method_of_the_versions_index_and_puts_the_real_model_first(world, answered, quality_file):
    quality_record(method_version="poa-2", measurements=[measurement(value=0.1)])
    quality_record(method_version="poa-3", measurements=[
        measurement(value=0.85, bench_model="tiny", date="2026-12-07"), measurement(value=0.95),
        measurement(metric="lds", value=0.7, bench_model="tiny", counts={"subsets": 32, "queries": 16}),
    ])  # fmt: skip
    q = model_quality(version=world.model.versions.get())
    assert [(m["metric"], m["bench_model"], m["value"]) for m in q["measurements"]] == [
        ("planted_fact_top1", "SmolLM2-135M-Instruct", 0.95),
        ("planted_fact_top1", "tiny", 0.85),
        ("lds", "tiny", 0.7),
    ]


def test_no_answers_no_index(world, quality_file):
    quality_record(method_version="poa-3", measurements=[measurement()])
    q = model_quality(version=world.model.versions.get())
    assert q == {"method_version": None, "measurements": [],
                 "answers": {"total": 0, "traced": 0, "fallback": 0, "pending": 0, "traced_share": None}}  # fmt: skip


def _text(html: str) -> str:
    article = re.search(r'<article class="attribution-quality".*?</article>', html, re.S).group(0)
    return " ".join(re.sub(r"<[^>]+>", " ", article).split())


def test_page_states_the_figures_in_plain_words(client, world, cast, answered, quality_file):
    quality_record(method_version="poa-3", measurements=[
        measurement(value=0.95),
        measurement(metric="unattributed_out_of_domain", value=0.973),
        measurement(metric="lds", value=0.7123, bench_model="tiny", counts={"subsets": 32, "queries": 16},
                    command="python bench/bench_attribution.py --threads 1 --record"),
    ])  # fmt: skip
    client.force_login(cast.outsider)
    TrainedModel.objects.filter(pk=world.model.pk).update(status="published", visibility="public")
    text = _text(client.get(f"/models/{world.model.slug}/").content.decode())
    assert text.startswith(
        "How well payments follow the data "
        "On our test of made-up facts, the contributor who gave a fact got the largest share for 19 of 20 answers "
        "(SmolLM2-135M-Instruct, measured 6 Dec 2026). "
        "Asked about things that are not in the data, on average 97% of an answer was left untraced, so nobody was paid "
        "for rows the answer did not use (SmolLM2-135M-Instruct, measured 6 Dec 2026). "
        "Of the 8 answers this version has given so far, 4 have been traced: on average 59% of each was traced to "
        "training rows, and the rest could not be traced to anyone and was paid as the untraced part ( how each "
        "answer's fee is shared ). 3 are still being traced. 1 could not be traced and was paid by row shares instead. "
        "The figures behind this Attribution method poa-3 ,"
    )
    assert "Linear datamodeling score (LDS)" in text and "0.712 a small test model" not in text
    assert (
        ": 0.712 , on a small test model, measured 6 Dec 2026, 32 subsets, 16 queries. "
        "Command: python bench/bench_attribution.py --threads 1 --record"
    ) in text
    assert ": 19 of 20 , on SmolLM2-135M-Instruct, measured 6 Dec 2026, 20 queries." in text


def test_page_says_plainly_when_the_method_was_not_measured(client, world, cast, answered, quality_file):
    quality_record(method_version="poa-2", measurements=[measurement()])  # another method's figures
    client.force_login(cast.owner)
    text = _text(client.get(f"/models/{world.model.slug}/").content.decode())
    assert text.startswith(
        "How well payments follow the data The way this model's answers are traced to its training rows has not been "
        "measured on our test yet, so we cannot yet say how well its payments follow the data. Of the 8 answers"
    )
    assert "Nothing has been recorded for this method yet." in text


def test_page_of_a_version_without_index_or_answers(client, world, cast, quality_file):
    client.force_login(cast.owner)
    text = _text(client.get(f"/models/{world.model.slug}/").content.decode())
    assert text == (
        "How well payments follow the data This version has no attribution index, so its answers cannot be traced to "
        "the rows it was trained on. This version has not given any answers yet."
    )


def test_page_queries_do_not_grow_with_answers(client, world, cast, answered, quality_file):
    client.force_login(cast.owner)
    path = f"/models/{world.model.slug}/"
    client.get(path)
    with CaptureQueriesContext(connection) as before:
        client.get(path)
    for unattributed in (0.1, 0.2, 0.3):
        _answer(world, cast, attribution=Attribution.Status.DONE, unattributed=unattributed)
    with CaptureQueriesContext(connection) as after:
        page = client.get(path).content.decode()
    assert len(after) == len(before)
    assert "Of the 11 answers this version has given so far, 7 have been traced" in _text(page)


def test_api_detail_has_the_quality_and_the_list_does_not(client, world, cast, answered, quality_file):
    quality_record(method_version="poa-3", measurements=[measurement(value=0.95)])
    client.force_login(cast.owner)
    body = client.get(f"/api/v1/models/{world.model.slug}/").json()
    assert body["attribution_quality"] == {
        "method_version": "poa-3",
        "measurements": [{
            "metric": "planted_fact_top1", "value": 0.95, "bench_model": "SmolLM2-135M-Instruct", "date": "2026-12-06",
            "bench": "bench/bench_attribution_planted.py", "command": "python bench/bench_attribution_planted.py --record",
            "counts": {"queries": 20}, "details": {},
        }],
        "answers": {"total": 8, "traced": 4, "fallback": 1, "pending": 3, "traced_share": pytest.approx(0.5875)},
    }  # fmt: skip
    listed = client.get("/api/v1/models/").json()["results"]
    assert [m["slug"] for m in listed] == [world.model.slug] and "attribution_quality" not in listed[0]
