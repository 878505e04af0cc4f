"""Extension points, so that apps "above" datanets (attribution, which also knows the ledger) can plug money into a
contribution's life without datanets importing them (see .importlinter). Apps register in AppConfig.ready().

- Upload handlers run inside the database transaction that stores a new upload (or queues a failed one again), after
  its row is saved: `handler(*, contribution)`. One may refuse the upload by raising DatanetError (e.g. a bond the
  wallet cannot cover); then nothing of it is kept.
- A reputation provider answers `provider(*, datanet) -> {user id: (score 0..100, low: bool)}` for the review
  queue, which lists the lowest first (attribution.reputation; none registered: no scores, newest first).
- A bond provider answers `provider(*, contribution_ids) -> {contribution id: micro-units held}` for the review
  pages, which say what each reject choice does to the upload's bond (attribution.services.bonds_held).
- A row-earnings provider answers `provider(*, user, contribution_id, record_ids) -> dict` with what the user's
  rows earned them (attribution.selectors.row_earnings: {"rows": {record id: micro-units}, "contribution",
  "paid", "tied", "untied"}); none registered: the rows page shows no earnings.
- Decided handlers run after the transaction that accepts, rejects or fails a contribution has committed:
  `handler(*, contribution_id)`. They must be safe to run twice (a recovery sweep may run them again).
"""

from __future__ import annotations

from collections.abc import Callable

from django.db import transaction

upload_handlers: list[Callable[..., None]] = []
decided_handlers: list[Callable[..., None]] = []
reputation_providers: list[Callable[..., dict]] = []
bond_providers: list[Callable[..., dict]] = []
row_earnings_providers: list[Callable[..., dict]] = []


def register_bonds(provider: Callable[..., dict]) -> None:
    if provider not in bond_providers:
        bond_providers.append(provider)


def bonds_held(contribution_ids) -> dict:
    """{contribution id: micro-units of its bond still held} from the registered provider, or {}."""
    ids = list(contribution_ids)
    return bond_providers[0](contribution_ids=ids) if bond_providers and ids else {}


def register_row_earnings(provider: Callable[..., dict]) -> None:
    if provider not in row_earnings_providers:
        row_earnings_providers.append(provider)


def row_earnings(*, user, contribution_id: int, record_ids) -> dict | None:
    """What `user`'s rows earned them, from the registered provider, or None."""
    if not row_earnings_providers:
        return None
    return row_earnings_providers[0](user=user, contribution_id=contribution_id, record_ids=record_ids)


def register_reputation(provider: Callable[..., dict]) -> None:
    if provider not in reputation_providers:
        reputation_providers.append(provider)


def reputations(datanet) -> dict:
    """{user id: (score, low)} from the registered provider, or {}."""
    return reputation_providers[0](datanet=datanet) if reputation_providers else {}


def register_upload(handler: Callable[..., None]) -> None:
    if handler not in upload_handlers:
        upload_handlers.append(handler)


def register_decided(handler: Callable[..., None]) -> None:
    if handler not in decided_handlers:
        decided_handlers.append(handler)


def run_upload_handlers(contribution) -> None:
    for handler in upload_handlers:
        handler(contribution=contribution)


def on_decided(contribution_id: int) -> None:
    """Call inside the deciding transaction: the handlers run once it commits."""
    for handler in decided_handlers:
        transaction.on_commit(lambda h=handler: h(contribution_id=contribution_id))
