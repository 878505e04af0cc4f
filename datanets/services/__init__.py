"""Datanet writes, one module per use case: create/update datanets (datanet), take uploads, retry and review them
(contributions), run the ingest and fail stale ones (ingestion), publish versions (versions), seed the demo (demo).
Everything callers use is re-exported here, so `from datanets import services; services.X` keeps working. Patch a
helper where it is looked up: `datanets.services.contributions._enqueue_ingest`."""

from datanets.services.common import DatanetError, NotAllowed
from datanets.services.contributions import (
    QUEUE_DOWN_MESSAGE,
    _too_large_message,
    clean_filename,
    contribution_approve,
    contribution_create,
    contribution_reject,
    contribution_retry,
    record_drop,
)
from datanets.services.datanet import RESERVED_SLUGS, UPDATABLE, datanet_create, datanet_update
from datanets.services.demo import demo_datanet_seed
from datanets.services.ingestion import contribution_fail_stale, contribution_ingest
from datanets.services.search import SearchHit, latest_version_ids, records_search, version_search_index
from datanets.services.versions import version_manifest_recompute, version_publish

__all__ = [
    "QUEUE_DOWN_MESSAGE",
    "SearchHit",
    "RESERVED_SLUGS",
    "UPDATABLE",
    "DatanetError",
    "NotAllowed",
    "_too_large_message",
    "clean_filename",
    "contribution_approve",
    "contribution_create",
    "contribution_fail_stale",
    "contribution_ingest",
    "contribution_reject",
    "contribution_retry",
    "datanet_create",
    "datanet_update",
    "demo_datanet_seed",
    "latest_version_ids",
    "record_drop",
    "records_search",
    "version_manifest_recompute",
    "version_publish",
    "version_search_index",
]
