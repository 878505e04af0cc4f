"""Full-text retrieval over datanet versions: one interface, two engines (PostgreSQL tsvector + GIN; SQLite FTS5).

- `version_search_index(version_id=)` puts a version's rows into the index: only rows not already there (a new
  version of a datanet adds only its new rows), idempotent, safe to run twice at once.
- `records_search(question=, version_ids=, limit=)` ranks the rows of those versions against a question. A row is
  retrievable only while it is still in its datanet's latest version: a row taken out of a newer version (a curator
  dropped it) is never returned again, whichever version is asked for. Versions not yet indexed are indexed first.

Which versions a caller may search is decided by the caller (modelfactory's retrieval settings check that the
model's owner may use them); this module never widens them.
"""

from __future__ import annotations

from typing import NamedTuple

from django.db import connection, transaction
from django.db.models import Max

from datanets.ingest.search_terms import fts5_match, search_terms, tsquery_text
from datanets.models import DatanetVersion, SearchIndexedVersion

TEXT_LIMIT = 20_000  # characters of a row that are indexed (a longer row is still found by its beginning)


class SearchHit(NamedTuple):
    record_id: int
    datanet_id: int
    score: float


def version_search_index(*, version_id: int) -> int:
    """Indexes the version's rows not yet in the index; returns how many it added (0 when already indexed)."""
    if SearchIndexedVersion.objects.filter(version_id=version_id).exists():
        return 0
    with transaction.atomic():
        added = _backend().index(version_id)
        SearchIndexedVersion.objects.bulk_create(
            [SearchIndexedVersion(version_id=version_id, rows_added=added)], ignore_conflicts=True
        )
    return added


def latest_version_ids(*, datanet_ids) -> dict[int, int]:
    """{datanet id: id of its latest version} for the datanets that have one."""
    numbers = dict(
        DatanetVersion.objects.filter(datanet_id__in=list(datanet_ids))
        .values_list("datanet_id")
        .annotate(n=Max("number"))
        .order_by()
    )
    latest = DatanetVersion.objects.filter(datanet_id__in=list(numbers)).values_list("datanet_id", "number", "pk")
    return {datanet: pk for datanet, number, pk in latest if numbers[datanet] == number}


def records_search(*, question: str, version_ids: list[int], limit: int) -> list[SearchHit]:
    """The `limit` best rows of the given versions for the question, best first (ties: lower record id first).
    Empty when the question has no searchable word or nothing matches."""
    terms = search_terms(question)
    version_ids = sorted(set(version_ids))
    if not terms or not version_ids or limit < 1:
        return []
    datanets = set(DatanetVersion.objects.filter(pk__in=version_ids).values_list("datanet_id", flat=True))
    latest = sorted(latest_version_ids(datanet_ids=datanets).values())
    indexed = set(SearchIndexedVersion.objects.filter(version_id__in=version_ids + latest).values_list("pk", flat=True))
    for version_id in sorted(set(version_ids + latest) - indexed):
        version_search_index(version_id=version_id)
    return _backend().search(terms, version_ids, latest, limit)


def _backend():
    if connection.vendor == "postgresql":
        return _Postgres
    if connection.vendor == "sqlite":
        return _Sqlite
    raise NotImplementedError(f"No full-text retrieval for the {connection.vendor} database.")


# A row is retrievable from version set V when it is in one of V and in its datanet's latest version (L).
_ALLOWED = """
    s.record_id IN (SELECT record_id FROM datanets_versionrecord WHERE version_id IN ({versions}))
    AND s.record_id IN (SELECT record_id FROM datanets_versionrecord WHERE version_id IN ({latest}))
"""


def _placeholders(values: list) -> str:
    return ", ".join(["%s"] * len(values))


class _Postgres:
    @staticmethod
    def index(version_id: int) -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                """
                INSERT INTO datanets_searchrow (record_id, datanet_id, document)
                SELECT r.id, r.datanet_id, to_tsvector('english', left(r.text, %s))
                FROM datanets_versionrecord vr JOIN datanets_record r ON r.id = vr.record_id
                WHERE vr.version_id = %s
                ON CONFLICT (record_id) DO NOTHING
                """,
                [TEXT_LIMIT, version_id],
            )
            return cursor.rowcount

    @staticmethod
    def search(terms: list[str], version_ids: list[int], latest: list[int], limit: int) -> list[SearchHit]:
        allowed = _ALLOWED.format(versions=_placeholders(version_ids), latest=_placeholders(latest))
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                SELECT s.record_id, s.datanet_id, ts_rank_cd(s.document, q.query) AS score
                FROM datanets_searchrow s, (SELECT to_tsquery('english', %s) AS query) q
                WHERE s.document @@ q.query AND {allowed}
                ORDER BY score DESC, s.record_id
                LIMIT %s
                """,  # noqa: S608 (only placeholders are formatted in)
                [tsquery_text(terms), *version_ids, *latest, limit],
            )
            return [SearchHit(int(r), int(d), float(score)) for r, d, score in cursor.fetchall()]


class _Sqlite:
    @staticmethod
    def index(version_id: int) -> int:
        with connection.cursor() as cursor:
            new = """SELECT vr.record_id FROM datanets_versionrecord vr
                     WHERE vr.version_id = %s
                     AND NOT EXISTS (SELECT 1 FROM datanets_searchrow s WHERE s.record_id = vr.record_id)"""
            # A text left behind by a row deleted since (e.g. a test database flushed) must not block its rowid.
            cursor.execute(f"DELETE FROM datanets_searchrow_fts WHERE rowid IN ({new})", [version_id])  # noqa: S608
            cursor.execute(
                f"""INSERT INTO datanets_searchrow_fts (rowid, text)
                    SELECT r.id, substr(r.text, 1, %s) FROM datanets_record r WHERE r.id IN ({new})""",  # noqa: S608
                [TEXT_LIMIT, version_id],
            )
            cursor.execute(
                f"""INSERT INTO datanets_searchrow (record_id, datanet_id)
                    SELECT r.id, r.datanet_id FROM datanets_record r WHERE r.id IN ({new})""",  # noqa: S608
                [version_id],
            )
            return cursor.rowcount

    @staticmethod
    def search(terms: list[str], version_ids: list[int], latest: list[int], limit: int) -> list[SearchHit]:
        allowed = _ALLOWED.format(versions=_placeholders(version_ids), latest=_placeholders(latest))
        with connection.cursor() as cursor:
            # bm25() is lower for better matches; the score returned is its negation (higher is better).
            cursor.execute(
                f"""
                SELECT s.record_id, s.datanet_id, -bm25(datanets_searchrow_fts) AS score
                FROM datanets_searchrow_fts JOIN datanets_searchrow s ON s.record_id = datanets_searchrow_fts.rowid
                WHERE datanets_searchrow_fts MATCH %s AND {allowed}
                ORDER BY score DESC, s.record_id
                LIMIT %s
                """,  # noqa: S608 (only placeholders are formatted in)
                [fts5_match(terms), *version_ids, *latest, limit],
            )
            return [SearchHit(int(r), int(d), float(score)) for r, d, score in cursor.fetchall()]
