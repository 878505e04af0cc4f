"""Creating and editing a datanet: its name, tags, flag actions, visibility, policy and curators."""

from __future__ import annotations

import hashlib
import json

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils.text import slugify

from datanets.ingest.screen import ACTIONS, FLAG_KINDS
from datanets.models import Datanet, Tag
from datanets.selectors import datanet_can_curate
from datanets.services.common import DatanetError, NotAllowed


def _tag_names(names) -> list[str]:
    cleaned = []
    for name in names or []:
        slug = slugify(name)[:50]
        if slug and slug not in cleaned:
            cleaned.append(slug)
    return cleaned[:20]


def _tags(names) -> list[Tag]:
    return [Tag.objects.get_or_create(name=n)[0] for n in _tag_names(names)]


# Paths under /datanets/ that are not datanets.
RESERVED_SLUGS = {"new", "contributions", "rows"}


def _unique_slug(name: str) -> str:
    base = slugify(name)[:90] or "datanet"
    if base in RESERVED_SLUGS:
        base = f"{base}-datanet"
    slug, n = base, 2
    while Datanet.objects.filter(slug=slug).exists():
        slug, n = f"{base}-{n}", n + 1
    return slug


def _check_flag_actions(actions: dict | None) -> dict:
    actions = actions or {}
    for kind, action in actions.items():
        if kind not in FLAG_KINDS:
            raise DatanetError(f"Unknown flag kind '{kind}'; known: {', '.join(FLAG_KINDS)}.")
        if action not in ACTIONS:
            raise DatanetError(f"'{action}' is not an action for '{kind}'; use keep, redact or drop.")
        if action == "redact" and not FLAG_KINDS[kind][1]:
            raise DatanetError(f"'{kind}' cannot be redacted; choose keep or drop.")
    return actions


def datanet_create(
    *,
    owner,
    name: str,
    kind: str,
    summary: str,
    description: str = "",
    tags=(),
    licence: str = "CC-BY-4.0",
    visibility: str = Datanet.Visibility.PUBLIC,
    policy: str = Datanet.Policy.APPROVAL,
    slug: str | None = None,
    flag_actions: dict | None = None,
    idempotency_key: str = "",
) -> Datanet:
    """With an `idempotency_key`, the same key and the same request from the same owner give back the datanet
    created the first time (nothing new is written); the same key with a different request raises DatanetError
    (code "idempotency_conflict")."""
    if kind not in Datanet.Kind.values:
        raise DatanetError(f"Unknown kind '{kind}'; use instruction, chat or text.")
    request = dict(
        name=name.strip(), kind=kind, summary=summary.strip(), description=description, tags=sorted(_tag_names(tags)),
        licence=licence or "CC-BY-4.0", visibility=visibility, policy=policy, slug=slug or "",
        flag_actions=flag_actions or {},
    )  # fmt: skip
    fingerprint = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest() if idempotency_key else ""
    if idempotency_key:
        existing = _replayed(owner=owner, key=idempotency_key, fingerprint=fingerprint)
        if existing is not None:
            return existing
    try:
        return _datanet_insert(
            owner=owner, request=request, key=idempotency_key, fingerprint=fingerprint, flag_actions=flag_actions,
            tags=tags,
        )  # fmt: skip
    except IntegrityError:
        winner = _replayed(owner=owner, key=idempotency_key, fingerprint=fingerprint) if idempotency_key else None
        if winner is None:
            raise
        return winner  # a concurrent request with the same key won the race


def _replayed(*, owner, key: str, fingerprint: str) -> Datanet | None:
    existing = Datanet.objects.filter(owner=owner, idempotency_key=key).first()
    if existing is not None and existing.request_fingerprint != fingerprint:
        raise DatanetError(
            f"The idempotency key “{key}” was already used with a different request; send a new key, or the same "
            "request to get the first answer back.",
            code="idempotency_conflict",
        )
    return existing


def _datanet_insert(*, owner, request: dict, key: str, fingerprint: str, flag_actions, tags) -> Datanet:
    slug, name = request["slug"], request["name"]
    with transaction.atomic(durable=True):
        if slug:
            slug = slugify(slug)[:100]
            if slug in RESERVED_SLUGS or Datanet.objects.filter(slug=slug).exists():
                raise DatanetError(f"The address '{slug}' is taken; choose another.", code="slug_taken")
        datanet = Datanet.objects.create(
            slug=slug or _unique_slug(name),
            name=name,
            kind=request["kind"],
            summary=request["summary"],
            description=request["description"],
            licence=request["licence"],
            visibility=request["visibility"],
            policy=request["policy"],
            owner=owner,
            flag_actions={**Datanet._meta.get_field("flag_actions").default(), **_check_flag_actions(flag_actions)},
            idempotency_key=key,
            request_fingerprint=fingerprint,
        )
        datanet.tags.set(_tags(tags))
    return datanet


UPDATABLE = ("name", "summary", "description", "licence", "visibility", "policy", "holding_days", "bond_micro")


def datanet_update(
    *, datanet: Datanet, actor, tags=None, curators=None, flag_actions: dict | None = None, **fields
) -> Datanet:
    """Curators may edit; only the owner (or staff) changes the curators. `curators` is a list of usernames."""
    if not datanet_can_curate(user=actor, datanet=datanet):
        raise NotAllowed("Only the datanet's owner and curators can change it.")
    unknown = set(fields) - set(UPDATABLE)
    if unknown:
        raise DatanetError("These fields cannot be changed: " + ", ".join(sorted(unknown)) + ".")
    _check_money_terms(fields)
    with transaction.atomic(durable=True):
        datanet = Datanet.objects.select_for_update().get(pk=datanet.pk)
        for key, value in fields.items():
            setattr(datanet, key, value.strip() if isinstance(value, str) and key != "description" else value)
        if flag_actions is not None:
            datanet.flag_actions = {**datanet.flag_actions, **_check_flag_actions(flag_actions)}
        datanet.save()
        if tags is not None:
            datanet.tags.set(_tags(tags))
        if curators is not None:
            _set_curators(datanet, actor, curators)
    return datanet


def _check_money_terms(fields: dict) -> None:
    """The holding period (0..365 days) and the bond (whole micro-units, 0 or more), refused before any write."""
    for key, top, what in (("holding_days", 365, "The holding period in days"), ("bond_micro", None, "The bond")):
        if key not in fields:
            continue
        value = fields[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (top is not None and value > top):
            bound = f"from 0 to {top}" if top is not None else "0 or more micro-units"
            raise DatanetError(f"{what} must be a whole number {bound}.", code="invalid_money_terms")


def _set_curators(datanet: Datanet, actor, usernames) -> None:
    if not (actor.is_staff or actor.pk == datanet.owner_id):
        raise NotAllowed("Only the owner can choose the curators.")
    users = list(get_user_model().objects.filter(username__in=usernames))
    missing = set(usernames) - {u.username for u in users}
    if missing:
        raise DatanetError("No such user: " + ", ".join(sorted(missing)) + ".")
    datanet.curators.set(users)
