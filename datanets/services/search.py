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
from datanets.models import DatanetVersion, SearchIndexedVersion, VersionRecord

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
    Empty when the question has no searchable word or nothing matches.

    The engine ranks the rows of the versions' datanets (an index scan plus a rank per matching row); the best
    CANDIDATES of them are then kept only if they are in one of the versions and in their datanet's latest version
    (two index lookups each). Only when too few candidates survive is a longer list ranked."""
    terms = search_terms(question)
    version_ids = sorted(set(version_ids))
    if not terms or not version_ids or limit < 1:
        return []
    # Every version of the datanets concerned, in one query: which datanets, and each one's latest version.
    versions = DatanetVersion.objects.filter(
        datanet_id__in=DatanetVersion.objects.filter(pk__in=version_ids).values("datanet_id")
    ).values_list("datanet_id", "number", "pk")
    latest: dict[int, tuple[int, int]] = {}
    for datanet_id, number, pk in versions:
        if datanet_id not in latest or number > latest[datanet_id][0]:
            latest[datanet_id] = (number, pk)
    latest_ids = sorted(pk for _, pk in latest.values())
    if not latest_ids:
        return []
    wanted = sorted(set(version_ids + latest_ids))
    indexed = set(SearchIndexedVersion.objects.filter(version_id__in=wanted).values_list("pk", flat=True))
    for version_id in sorted(set(wanted) - indexed):
        version_search_index(version_id=version_id)
    backend, datanet_ids = _backend(), sorted(latest)
    count = max(CANDIDATES, 4 * limit)
    while True:
        candidates = backend.rank(terms, datanet_ids, count)
        kept = _retrievable([c[0] for c in candidates], version_ids, latest_ids)
        hits = [SearchHit(r, d, score) for r, d, score in candidates if r in kept]
        if len(hits) >= limit or len(candidates) < count:
            return hits[:limit]
        count *= 8


CANDIDATES = 32
COMMON_TERM_ROWS = 1_000  # PostgreSQL: a word in more rows than this is matched only along with rarer ones


def _retrievable(record_ids: list[int], version_ids: list[int], latest_ids: list[int]) -> set[int]:
    """Those of the rows that are in one of the versions and in their datanet's latest version."""
    if not record_ids:
        return set()
    in_versions = VersionRecord.objects.filter(record_id__in=record_ids, version_id__in=version_ids)
    in_latest = VersionRecord.objects.filter(record_id__in=record_ids, version_id__in=latest_ids)
    return set(in_versions.values_list("record_id", flat=True)) & set(in_latest.values_list("record_id", flat=True))


def _backend():
    if connection.vendor == "postgresql":
        return _Postgres
    if connection.vendor == "sqlite":
        return _Sqlite
    raise NotImplementedError(f"No full-text retrieval for the {connection.vendor} database.")


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
            added = cursor.rowcount
            if added:
                # Rows inserted wait in the GIN index's pending list, which the planner prices so high that it
                # scans the whole table instead; merge them now, and refresh the statistics after a large batch.
                cursor.execute("SELECT gin_clean_pending_list('datanets_searchrow_document'::regclass)")
            if added >= 10_000:
                cursor.execute("ANALYZE datanets_searchrow")
            return added

    @staticmethod
    def rank(terms: list[str], datanet_ids: list[int], count: int) -> list[tuple[int, int, float]]:
        """Ranks by every term (ts_rank_cd of the OR-ed query) but matches by the question's rare terms only (those
        in at most COMMON_TERM_ROWS rows): ranking costs a read of each matching row's vector, and a common word
        ("capital", "founder") would make that every tenth row of a large datanet. Questions whose words are all
        common match rows holding all of them, then (too few) any of them."""
        rare = [
            term for term in terms if _Postgres._rows_upto(term, datanet_ids, COMMON_TERM_ROWS + 1) <= COMMON_TERM_ROWS
        ]
        if rare:
            return _Postgres._ranked(tsquery_text(rare), tsquery_text(terms), datanet_ids, count)
        every = _Postgres._ranked(" & ".join(f"({t})" for t in tsquery_text(terms).split(" | ")), tsquery_text(terms),
                                  datanet_ids, count)  # fmt: skip
        return every if len(every) >= count else _Postgres._ranked(tsquery_text(terms), tsquery_text(terms),
                                                                    datanet_ids, count)  # fmt: skip

    @staticmethod
    def _rows_upto(term: str, datanet_ids: list[int], cap: int) -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                f"""SELECT count(*) FROM (SELECT 1 FROM datanets_searchrow s
                    WHERE s.document @@ to_tsquery('english', %s) AND s.datanet_id IN ({_placeholders(datanet_ids)})
                    LIMIT %s) AS found""",  # noqa: S608 (only placeholders are formatted in)
                [tsquery_text([term]), *datanet_ids, cap],
            )
            return int(cursor.fetchone()[0])

    @staticmethod
    def _ranked(match: str, rank: str, datanet_ids: list[int], count: int) -> list[tuple[int, int, float]]:
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                SELECT s.record_id, s.datanet_id, ts_rank_cd(s.document, to_tsquery('english', %s)) AS score
                FROM datanets_searchrow s
                WHERE s.document @@ to_tsquery('english', %s) AND s.datanet_id IN ({_placeholders(datanet_ids)})
                ORDER BY score DESC, s.record_id
                LIMIT %s
                """,  # noqa: S608 (only placeholders are formatted in)
                [rank, match, *datanet_ids, count],
            )
            return [(int(r), int(d), float(score)) for r, d, score in cursor.fetchall()]


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
    def rank(terms: list[str], datanet_ids: list[int], count: int) -> list[tuple[int, int, float]]:
        with connection.cursor() as cursor:
            # bm25() is lower for better matches; the score returned is its negation (higher is better).
            cursor.execute(
                f"""
                SELECT s.record_id, s.datanet_id, -bm25(datanets_searchrow_fts) AS score
                FROM datanets_searchrow_fts JOIN datanets_searchrow s ON s.record_id = datanets_searchrow_fts.rowid
                WHERE datanets_searchrow_fts MATCH %s AND s.datanet_id IN ({_placeholders(datanet_ids)})
                ORDER BY score DESC, s.record_id
                LIMIT %s
                """,  # noqa: S608 (only placeholders are formatted in)
                [fts5_match(terms), *datanet_ids, count],
            )
            return [(int(r), int(d), float(score)) for r, d, score in cursor.fetchall()]
