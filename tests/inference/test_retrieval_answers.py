"""Answers from the data: retrieval settings at publish (API and page), citations in the generate API, /v1 (whole
and the stream's last chunk) and the playground, the private-row rule for their text, and bad inputs."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from accounts.services import api_token_create
from datanets.models import Datanet, Record
from ledger.services import credit_grant
from modelfactory.models import Inference, TrainedModel
from modelfactory.training.retrieval_prompt import CLOSE, OPEN
from tests.inference.conftest import CREDIT
from tests.inference.retrieval_data import FACTS, add_row, make_datanet, publish_version, train_on

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def rag(cast, served):
    """The served model, trained on version 1 of the owner's private datanet: FACTS[0] and [1] by the teammate,
    [2] by the outsider (who calls the model), [3] by the owner."""
    datanet = make_datanet(owner=cast.owner, visibility=Datanet.Visibility.PRIVATE)
    authors = [cast.teammate, cast.teammate, cast.outsider, cast.owner]
    rows = [add_row(datanet, who, text) for who, text in zip(authors, FACTS, strict=True)]
    version = publish_version(datanet)
    train_on(served, version)
    return datanet, rows, version


def _publish(api_client, user, retrieval, slug="zorb-expert"):
    api_client.force_authenticate(user)
    body = {"price_per_1k_tokens": "0.002000", "visibility": "public", "retrieval": retrieval}
    return api_client.post(f"/api/v1/models/{slug}/publish/", body, format="json")


def _generate(api_client, user, prompt, slug="zorb-expert"):
    api_client.force_authenticate(user)
    return api_client.post(f"/api/v1/models/{slug}/generate/", {"prompt": prompt, "max_new_tokens": 4}, format="json")


def test_publish_defaults_to_the_versions_trained_on(api_client, cast, served, rag):
    response = _publish(api_client, cast.owner, {"enabled": True})
    assert response.status_code == 200, response.content
    assert response.json()["retrieval"] == {"enabled": True, "top_k": 4, "live": False, "datanet_versions": [rag[2].pk]}
    served.refresh_from_db()
    assert (served.retrieval_enabled, served.retrieval_top_k, served.retrieval_live) == (True, 4, False)


@pytest.mark.parametrize(
    ("retrieval", "field"),
    [
        ({"enabled": True, "top_k": 0}, "top_k"),
        ({"enabled": True, "top_k": 11}, "top_k"),
        ({"top_k": 2}, "enabled"),
        ({"enabled": "t"}, "enabled"),  # JSON booleans only: DRF took "t", "yes" or 1 as true
        ({"enabled": True, "live": 1}, "live"),
    ],
)
def test_publish_refuses_bad_settings_and_changes_nothing(api_client, cast, served, rag, retrieval, field):
    response = _publish(api_client, cast.owner, retrieval)
    assert response.status_code == 400
    assert field in json.dumps(response.json())
    served.refresh_from_db()
    assert not served.retrieval_enabled and not served.retrieval_versions.exists()


def test_publish_refuses_a_version_the_owner_may_not_use(api_client, cast, served, rag):
    secret = make_datanet(owner=cast.teammate, slug="teammate-secret", visibility=Datanet.Visibility.PRIVATE)
    add_row(secret, cast.teammate, "A secret fact about Zorbia.")
    version = publish_version(secret)
    response = _publish(api_client, cast.owner, {"enabled": True, "datanet_versions": [rag[2].pk, version.pk]})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_retrieval"
    assert response.json()["error"]["message"] == (
        f"There is no datanet version {version.pk}. The model's owner may answer only from datanets they may use."
    )
    served.refresh_from_db()
    assert not served.retrieval_enabled and served.price_per_1k_tokens == 2_000


def test_generate_cites_the_row_holding_the_fact_and_hides_private_text(api_client, cast, served, rag):
    _, rows, _ = rag
    assert _publish(api_client, cast.owner, {"enabled": True, "top_k": 2}).status_code == 200
    response = _generate(api_client, cast.outsider, "What is the capital of Zorbia?")
    assert response.status_code == 200, response.content
    citations = response.json()["citations"]
    first = citations[0]
    assert {k: first[k] for k in ("index", "record_id", "contributor", "datanet", "text")} == {
        "index": 1, "record_id": rows[0].pk, "contributor": "teammate", "datanet": "zorb-facts", "text": None,
    }  # fmt: skip
    assert first["score"] > 0 and len(citations) <= 2
    inference = Inference.objects.get()
    prompt = inference.retrieval["prompt_messages"][-1]["content"]
    assert f"{OPEN}\n[1] {FACTS[0]}\n" in prompt and prompt.endswith(
        f"{CLOSE}\nQuestion: What is the capital of Zorbia?"
    )
    assert inference.messages == [{"role": "user", "content": "What is the capital of Zorbia?"}]
    # The caller sees the text of their own row, and the owner (who may see the datanet) every row's text.
    own = _generate(api_client, cast.outsider, "What do Quells eat?").json()["citations"][0]
    assert (own["record_id"], own["text"]) == (rows[2].pk, FACTS[2])
    credit_grant(user_id=cast.owner.pk, amount_micro=CREDIT, granted_by=cast.staff, key="grant-owner")
    owners = _generate(api_client, cast.owner, "capital of Zorbia").json()["citations"][0]
    assert (owners["record_id"], owners["text"]) == (rows[0].pk, FACTS[0])


def test_the_retrieved_rows_are_prompt_tokens(api_client, cast, served, rag):
    _generate(api_client, cast.outsider, "What is the capital of Zorbia?")
    assert _publish(api_client, cast.owner, {"enabled": True}).status_code == 200
    _generate(api_client, cast.outsider, "What is the capital of Zorbia?")
    plain, augmented = Inference.objects.order_by("pk")
    assert plain.retrieval is None
    assert augmented.prompt_tokens > plain.prompt_tokens + 10
    assert len(augmented.prompt_token_ids) == augmented.prompt_tokens


def test_a_question_that_retrieves_nothing_has_no_sources(api_client, cast, served, rag):
    assert _publish(api_client, cast.owner, {"enabled": True}).status_code == 200
    response = _generate(api_client, cast.outsider, "How does photosynthesis work in cacti?")
    assert response.status_code == 200
    assert response.json()["citations"] == []
    inference = Inference.objects.get()
    assert inference.retrieval["prompt_messages"] == inference.messages


def test_a_model_without_retrieval_answers_without_citations(api_client, cast, served, rag):
    body = _generate(api_client, cast.outsider, "What is the capital of Zorbia?").json()
    assert "citations" not in body
    assert Inference.objects.get().retrieval is None


def test_a_dropped_row_is_no_longer_cited_and_old_citations_stay(api_client, cast, served, rag):
    datanet, rows, _ = rag
    assert _publish(api_client, cast.owner, {"enabled": True}).status_code == 200
    before = _generate(api_client, cast.outsider, "Vantor bridge painted").json()
    assert before["citations"][0]["record_id"] == rows[3].pk
    Record.objects.filter(pk=rows[3].pk).update(status=Record.Status.DROPPED)
    publish_version(datanet)
    after = _generate(api_client, cast.outsider, "Vantor bridge painted").json()
    assert rows[3].pk not in [c["record_id"] for c in after["citations"]]
    api_client.force_authenticate(cast.outsider)
    kept = api_client.get(f"/api/v1/inferences/{before['inference_id']}/").json()
    assert kept["citations"] == before["citations"]


def test_live_retrieval_answers_from_rows_accepted_after_training(api_client, cast, served, rag):
    datanet, _, _ = rag
    new = add_row(datanet, cast.teammate, "The Glimmer festival of Zorbia lasts nine days.")
    publish_version(datanet)
    assert _publish(api_client, cast.owner, {"enabled": True}).status_code == 200
    question = "How long is the Glimmer festival?"
    assert _generate(api_client, cast.outsider, question).json()["citations"] == []
    assert _publish(api_client, cast.owner, {"enabled": True, "live": True}).status_code == 200
    assert _generate(api_client, cast.outsider, question).json()["citations"][0]["record_id"] == new.pk


def test_openai_answer_and_the_streams_last_chunk_carry_citations(cast, served, rag):
    _, rows, _ = rag
    served.retrieval_enabled = True
    served.save()
    served.retrieval_versions.set([rag[2]])
    _, key = api_token_create(user=cast.outsider, name="rag")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    body = {"model": "zorb-expert", "messages": [{"role": "user", "content": "Who founded Plimby?"}], "max_tokens": 4}
    whole = client.post("/v1/chat/completions", body, content_type="application/json")
    assert whole.status_code == 200, whole.content
    assert whole.json()["citations"][0]["record_id"] == rows[1].pk
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    streamed = client.post("/v1/chat/completions", body, content_type="application/json")
    text = b"".join(streamed.streaming_content).decode()
    chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert chunks[-1]["choices"] == [] and chunks[-1]["citations"] == whole.json()["citations"]
    finishing = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finishing[0]["citations"] == whole.json()["citations"]
    assert all("citations" not in c for c in chunks if c["choices"] and not c["choices"][0]["finish_reason"])


def test_playground_shows_sources_under_the_answer(client, cast, served, rag):
    _, rows, _ = rag
    TrainedModel.objects.filter(pk=served.pk).update(retrieval_enabled=True)
    served.retrieval_versions.set([rag[2]])
    credit_grant(user_id=cast.owner.pk, amount_micro=CREDIT, granted_by=cast.staff, key="grant-owner")
    client.force_login(cast.owner)
    start = client.post(
        "/models/zorb-expert/playground/start/",
        json.dumps({"messages": [{"role": "user", "content": "capital of Zorbia"}], "max_new_tokens": 4}),
        content_type="application/json",
    ).json()
    b"".join(client.get(start["stream_url"]).streaming_content)
    footer = client.get(start["answer_url"]).content.decode()
    assert "<h3>Sources</h3>" in footer
    assert f"#row-{rows[0].pk}" in footer and FACTS[0] in footer
    client.force_login(cast.outsider)
    start = client.post(
        "/models/zorb-expert/playground/start/",
        json.dumps({"messages": [{"role": "user", "content": "photosynthesis in cacti"}], "max_new_tokens": 4}),
        content_type="application/json",
    ).json()
    b"".join(client.get(start["stream_url"]).streaming_content)
    footer = client.get(start["answer_url"]).content.decode()
    assert 'id="no-sources"' in footer and "no sources" in footer


def test_playground_hides_private_row_text_from_a_caller_who_may_not_see_it(client, cast, served, rag):
    TrainedModel.objects.filter(pk=served.pk).update(retrieval_enabled=True)
    served.retrieval_versions.set([rag[2]])
    client.force_login(cast.outsider)
    start = client.post(
        "/models/zorb-expert/playground/start/",
        json.dumps({"messages": [{"role": "user", "content": "capital of Zorbia"}], "max_new_tokens": 4}),
        content_type="application/json",
    ).json()
    b"".join(client.get(start["stream_url"]).streaming_content)
    footer = client.get(start["answer_url"]).content.decode()
    assert FACTS[0] not in footer and "its text is not shown to you" in footer


def test_the_model_page_publishes_with_retrieval(client, cast, served, rag):
    client.force_login(cast.owner)
    page = client.get("/models/zorb-expert/").content.decode()
    assert 'name="retrieval_enabled"' in page
    assert f'name="retrieval_versions" value="{rag[2].pk}" checked' in page
    response = client.post(
        "/models/zorb-expert/publish/",
        {"price": "0.002", "visibility": "public", "retrieval_enabled": "on", "retrieval_top_k": "3",
         "retrieval_versions": [str(rag[2].pk)]},
    )  # fmt: skip
    assert response.status_code == 302
    served.refresh_from_db()
    assert (served.retrieval_enabled, served.retrieval_top_k) == (True, 3)
    assert list(served.retrieval_versions.values_list("pk", flat=True)) == [rag[2].pk]
