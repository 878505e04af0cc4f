"""Publishing a datanet version: its accepted rows frozen under a Merkle-root manifest hash."""

from __future__ import annotations

from django.db import transaction

from core.jobs import enqueue_or_fail
from datanets.ingest.manifest import merkle_root
from datanets.models import Datanet, DatanetVersion, Record, VersionRecord
from datanets.services.common import DatanetError, _require_curator


def version_publish(*, datanet: Datanet, actor, notes: str = "") -> DatanetVersion:
    """Freezes the datanet's accepted rows into a new immutable version whose manifest hash is the Merkle root
    of their row hashes. Refuses an empty version and one identical to the previous version."""
    _require_curator(actor, datanet)
    with transaction.atomic(durable=True):
        Datanet.objects.select_for_update().get(pk=datanet.pk)
        rows = list(
            Record.objects.filter(datanet=datanet, status=Record.Status.ACCEPTED).values_list(
                "id", "content_hash", "contributor_id", "token_count"
            )
        )
        if not rows:
            raise DatanetError("There are no accepted rows to publish yet.", code="empty_version")
        manifest = merkle_root(h for _, h, _, _ in rows)
        previous = datanet.versions.order_by("-number").first()
        if previous is not None and previous.manifest_hash == manifest:
            raise DatanetError(
                f"Nothing changed since version {previous.number}; there is nothing new to publish.",
                code="unchanged",
            )
        version = DatanetVersion.objects.create(
            datanet=datanet,
            number=(previous.number + 1) if previous else 1,
            manifest_hash=manifest,
            row_count=len(rows),
            contributor_count=len({c for _, _, c, _ in rows}),
            token_count=sum(t for _, _, _, t in rows),
            created_by=actor,
            notes=notes.strip(),
        )
        VersionRecord.objects.bulk_create(
            [VersionRecord(version=version, record_id=pk) for pk, _, _, _ in rows], batch_size=5000
        )
        transaction.on_commit(lambda: _enqueue_search_index(version.pk))
    return version


def _enqueue_search_index(version_id: int) -> None:
    """Indexes the new version's new rows for retrieval in the background; if the broker is down, the first
    question that searches the version indexes it (datanets.services.search.records_search)."""
    enqueue_or_fail(
        "datanets.tasks.version_search_index_task", args=[version_id], what=f"the search index of version {version_id}"
    )


def version_manifest_recompute(*, version: DatanetVersion) -> str:
    """The manifest hash recomputed from the rows the version froze (equal to version.manifest_hash)."""
    hashes = Record.objects.filter(
        pk__in=VersionRecord.objects.filter(version=version).values("record_id")
    ).values_list("content_hash", flat=True)
    return merkle_root(hashes.iterator(chunk_size=5000))
