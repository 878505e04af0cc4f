"""Retrieval-augmented answers: a model's retrieval settings (chosen at publish), the rows a question retrieves,
the prompt that puts them in a delimited data block (modelfactory.training.retrieval_prompt), and the citations a
caller is shown.

Rules:
- The versions searched are the ones chosen at publish (default: those the model's latest version was trained on),
  or with `live` each of their datanets' latest version, so new accepted rows are answerable without retraining.
- Only rows the model's owner may use: every version is checked against the owner when chosen, and again at each
  question (a datanet that turned private and is no longer the owner's is not searched).
- A row taken out of its datanet's newer version is not retrieved from then on (datanets.services.search); the
  citations an answer was given are stored with it and stay as they were.
- A citation's `text` is shown only to whoever may see the row's datanet, and to the row's own contributor (the
  same rule as attribution's row texts); anyone else gets null.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model

from datanets.models import Datanet, Record
from datanets.selectors import VersionNotUsable, datanet_ids_visible, version_get_usable
from datanets.services import latest_version_ids, records_search, version_search_index
from modelfactory.models import TrainedModel
from modelfactory.services.errors import ServingRefused
from modelfactory.training.retrieval_prompt import augment

TOP_K_MAX = 10
TOP_K_DEFAULT = 4
NO_SOURCES = "Nothing in this model's data matched the question, so the answer comes from the model alone (no sources)."


def _refuse(message: str) -> ServingRefused:
    return ServingRefused(message, code="invalid_retrieval", param="retrieval")


def retrieval_settings_clean(*, model: TrainedModel, retrieval) -> dict | None:
    """The publish request's `retrieval` checked against the model's owner: {enabled, top_k, live, version_ids}, or
    None when it was left out (the settings stay as they are). Raises ServingRefused (code invalid_retrieval)."""
    if retrieval is None:
        return None
    if not isinstance(retrieval, dict):
        raise _refuse("retrieval must be an object: {enabled, top_k?, datanet_versions?, live?}.")
    unknown = sorted(set(retrieval) - {"enabled", "top_k", "datanet_versions", "live"})
    if unknown:
        raise _refuse(f"retrieval has no setting {', '.join(unknown)}; use enabled, top_k, datanet_versions, live.")
    enabled, live = retrieval.get("enabled"), retrieval.get("live", False)
    if not isinstance(enabled, bool) or not isinstance(live, bool):
        raise _refuse("retrieval.enabled (and retrieval.live, if given) must be true or false.")
    top_k = retrieval.get("top_k", TOP_K_DEFAULT)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= TOP_K_MAX:
        raise _refuse(f"retrieval.top_k must be a whole number from 1 to {TOP_K_MAX} (got {top_k!r}).")
    version_ids = retrieval.get("datanet_versions")
    if version_ids is None:
        version_ids = trained_version_ids(model=model)
    if not isinstance(version_ids, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in version_ids
    ):
        raise _refuse("retrieval.datanet_versions must be a list of datanet version ids.")
    if enabled and not version_ids:
        raise _refuse("Name at least one datanet version to answer from (this model was trained on none).")
    for version_id in version_ids:
        try:
            version_get_usable(user=model.owner, version_id=version_id)
        except VersionNotUsable as exc:
            raise _refuse(f"{exc} The model's owner may answer only from datanets they may use.") from None
    return {"enabled": enabled, "top_k": top_k, "live": live, "version_ids": sorted(set(version_ids))}


def trained_version_ids(*, model: TrainedModel) -> list[int]:
    """The datanet versions the model's latest version was trained on (the default to answer from)."""
    version = model.latest_version
    if version is None:
        return []
    return sorted(version.job.datanet_versions.values_list("pk", flat=True))


def retrieval_settings_apply(*, model: TrainedModel, clean: dict) -> None:
    """Stores checked settings (inside the publish transaction)."""
    model.retrieval_enabled = clean["enabled"]
    model.retrieval_top_k = clean["top_k"]
    model.retrieval_live = clean["live"]
    model.save(update_fields=["retrieval_enabled", "retrieval_top_k", "retrieval_live"])
    model.retrieval_versions.set(clean["version_ids"])


def retrieval_searched_version_ids(*, model: TrainedModel) -> list[int]:
    """The versions a question to this model searches now: the chosen ones (or, live, their datanets' latest),
    limited to datanets the owner may still use."""
    chosen = list(model.retrieval_versions.values_list("pk", "datanet_id"))
    usable = datanet_ids_visible(user=model.owner, datanet_ids={d for _, d in chosen})
    if model.retrieval_live:
        return sorted(latest_version_ids(datanet_ids=usable).values())
    return sorted(pk for pk, datanet in chosen if datanet in usable)


def retrieval_prepare(*, model: TrainedModel, messages: list[dict]) -> dict | None:
    """None when the model answers without retrieval; else {citations, prompt_messages}: the rows the caller's last
    question retrieves, as stored citations, and the conversation with them in the data block."""
    if not model.retrieval_enabled:
        return None
    question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    hits = records_search(
        question=question, version_ids=retrieval_searched_version_ids(model=model), limit=model.retrieval_top_k
    )
    records = Record.objects.in_bulk([hit.record_id for hit in hits])
    citations = [
        {
            "index": index,
            "record_id": hit.record_id,
            "contributor_id": records[hit.record_id].contributor_id,
            "datanet_id": hit.datanet_id,
            "score": round(hit.score, 6),
        }
        for index, hit in enumerate(hits, start=1)
    ]
    rows = [records[hit.record_id].text for hit in hits]
    return {"citations": citations, "prompt_messages": augment(messages, rows)}


def citations_for(*, inference, user) -> list[dict] | None:
    """The answer's citations as `user` may see them ({index, record_id, contributor, datanet, score, text}), or
    None when the model answered without retrieval."""
    if inference.retrieval is None:
        return None
    stored = inference.retrieval.get("citations", [])
    records = Record.objects.in_bulk([c["record_id"] for c in stored])
    datanet_ids = {c["datanet_id"] for c in stored}
    readable = datanet_ids_visible(user=user, datanet_ids=datanet_ids)
    slugs = dict(Datanet.objects.filter(pk__in=datanet_ids).values_list("pk", "slug"))
    names = dict(
        get_user_model().objects.filter(pk__in={c["contributor_id"] for c in stored}).values_list("pk", "username")
    )
    out = []
    for c in stored:
        record = records.get(c["record_id"])
        visible = record is not None and (c["datanet_id"] in readable or c["contributor_id"] == user.pk)
        out.append(
            {
                "index": c["index"],
                "record_id": c["record_id"],
                "contributor": names.get(c["contributor_id"], ""),
                "datanet": slugs.get(c["datanet_id"], ""),
                "score": c["score"],
                "text": record.text if visible else None,
            }
        )
    return out


def retrieval_index_build(*, model: TrainedModel) -> int:
    """Indexes the versions the model searches (incremental: rows already indexed are skipped); rows added."""
    return sum(version_search_index(version_id=v) for v in retrieval_searched_version_ids(model=model))
