"""Signed anchors outside the database: each checkpoint appends one; `ledger_verify --anchors` catches what the
database alone cannot (the newest anchored transactions dropped, history rewritten with every hash recomputed, the
anchors file edited), and statements and proofs carry the newest signed root."""

import json
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import CommandError, call_command
from django.db.models import F

from ledger.calc.anchors import anchor_hash, anchor_message, anchor_sign, key_id, load_public_key
from ledger.calc.canonical import GENESIS_HASH, canonical_json, chain_hash
from ledger.models import Account, ChainHead, Checkpoint, Posting, Transaction
from ledger.services import account_for_user, checkpoint_create, transfer
from ledger.verification import _tx_content, ledger_verify
from tests.ledger.test_verify import triggers_off

pytestmark = pytest.mark.django_db

LEDGER_TABLES = ("ledger_posting", "ledger_transaction", "ledger_account", "ledger_chainhead")


@pytest.fixture
def anchored(cast, fund, settings):
    """Three checkpoints, so three anchors: after the grant and t1, after t2, after t3."""
    fund(cast.owner, 5)
    a, b = account_for_user(user_id=cast.owner.pk), account_for_user(user_id=cast.teammate.pk)
    transfer(key="t1", legs=[(a.pk, -1_000_000), (b.pk, 1_000_000)])
    checkpoint_create()
    transfer(key="t2", legs=[(b.pk, -250_000), (a.pk, 250_000)])
    checkpoint_create()
    transfer(key="t3", legs=[(a.pk, -100_000), (b.pk, 100_000)])
    checkpoint_create()
    return settings.MF_LEDGER_ANCHORS_PATH


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def verify_anchors(*extra) -> str:
    with pytest.raises(CommandError) as info:
        call_command("ledger_verify", "--no-checkpoint", "--anchors", *extra)
    return str(info.value)


def test_each_checkpoint_appends_a_signed_linked_anchor(anchored, settings, capsys):
    anchors = lines(anchored)
    assert [a["sequence"] for a in anchors] == [1, 2, 3]
    assert [(a["last_seq"], a["tx_count"]) for a in anchors] == [(2, 2), (3, 3), (4, 4)]
    assert [a["checkpoint_first_seq"] for a in anchors] == [1, 3, 4]
    assert anchors[0]["prev_anchor"] == GENESIS_HASH
    assert anchors[1]["prev_anchor"] == anchor_hash(anchors[0]) and anchors[2]["prev_anchor"] == anchor_hash(anchors[1])
    head = Transaction.objects.get(seq=4)
    assert (anchors[2]["root"], anchors[2]["last_tx_id"]) == (head.hash, head.pk)
    assert anchors[2]["merkle_root"] == Checkpoint.objects.get(last_seq=4).merkle_root
    key = load_public_key(settings.MF_LEDGER_ANCHOR_KEY)
    for anchor in anchors:
        key.verify(bytes.fromhex(anchor["signature"]), anchor_message(anchor))  # raises if it does not match
    assert stat.S_IMODE(settings.MF_LEDGER_ANCHOR_KEY.stat().st_mode) == 0o600


def test_clean_ledger_verifies_against_its_anchors(anchored, capsys, tmp_path):
    call_command("ledger_verify", "--no-checkpoint", "--anchors")
    assert f"Anchors OK: 3 signed anchors in {anchored} match the chain" in capsys.readouterr().out
    # With the public key alone (what an auditor holds), from the file given.
    public = tmp_path / "anchor.pub"
    call_command("ledger_checkpoint", "--print-public-key", stdout=public.open("w"))
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    call_command("ledger_verify", "--anchors", str(anchored), "--public-key", str(public))
    assert "Anchors OK: 3 signed anchors" in capsys.readouterr().out


def test_dropping_the_newest_anchored_transactions_is_caught(anchored):
    """Delete t3 and repair everything the database checks (balances, chain head, checkpoints): only the anchor
    knows."""
    last = Transaction.objects.get(seq=4)
    with triggers_off(*LEDGER_TABLES):
        for account, amount in Posting.objects.filter(transaction=last).values_list("account_id", "amount"):
            Account.objects.filter(pk=account).update(balance=F("balance") - amount)
        Posting.objects.filter(transaction=last).delete()
        last.delete()
        Checkpoint.objects.filter(last_seq=4).delete()
        previous = Transaction.objects.get(seq=3)
        ChainHead.objects.filter(pk=1).update(seq=3, prev_hash=previous.prev_hash, hash=previous.hash)
    ledger_verify()  # the database alone sees nothing wrong
    assert verify_anchors() == (
        "Ledger breach: anchor 3 signed the chain up to transaction seq 4, but the database's chain ends at seq 3: "
        "anchored transactions were removed"
    )


def test_history_rewritten_with_every_hash_recomputed_is_caught(anchored):
    """Double t1's amounts, then recompute every hash, the chain head and the checkpoints: the database is
    consistent again, but the first anchor's root no longer comes out."""
    t1 = Transaction.objects.get(idempotency_key="t1")
    with triggers_off(*LEDGER_TABLES, "ledger_checkpoint"):
        for account, amount in Posting.objects.filter(transaction=t1).values_list("account_id", "amount"):
            Account.objects.filter(pk=account).update(balance=F("balance") + amount)
        Posting.objects.filter(transaction=t1).update(amount=F("amount") * 2)
        previous = GENESIS_HASH
        for tx in Transaction.objects.order_by("seq").values():
            postings = list(Posting.objects.filter(transaction_id=tx["id"]).values_list("account_id", "amount"))
            digest = chain_hash(previous, _tx_content(tx, postings))
            Transaction.objects.filter(pk=tx["id"]).update(prev_hash=previous, hash=digest)
            previous = digest
        ChainHead.objects.filter(pk=1).update(hash=previous, prev_hash=Transaction.objects.get(seq=4).prev_hash)
        Checkpoint.objects.all().delete()
    ledger_verify()  # the database alone sees nothing wrong
    root = lines(anchored)[0]["root"]
    assert verify_anchors() == (
        f"Ledger breach: anchor 1: the database's chain at seq 2 no longer gives the signed root {root}: "
        "history before it was rewritten"
    )


def test_an_edited_anchor_line_is_caught(anchored):
    anchors = lines(anchored)
    anchors[1]["root"] = "0" * 64
    anchored.write_bytes(b"".join(canonical_json(a) + b"\n" for a in anchors))
    assert verify_anchors() == (
        "Ledger breach: anchors: anchor 2 (line 2): the signature does not match its content (edited)"
    )


def test_a_removed_anchor_line_is_caught(anchored):
    anchors = lines(anchored)
    anchored.write_bytes(b"".join(canonical_json(a) + b"\n" for a in (anchors[0], anchors[2])))
    assert verify_anchors() == (
        "Ledger breach: anchors: anchor 3 (line 2): expected sequence 2; an anchor was removed or inserted"
    )


def test_a_removed_line_renumbered_is_caught_by_the_link(anchored):
    anchors = lines(anchored)
    anchors[2]["sequence"] = 2  # the signature breaks too, but the missing link is found first
    anchored.write_bytes(b"".join(canonical_json(a) + b"\n" for a in (anchors[0], anchors[2])))
    assert verify_anchors() == (
        "Ledger breach: anchors: anchor 2 (line 2): does not link to the anchor before it; a line was edited or removed"
    )


def test_anchors_re_signed_with_another_key_are_refused(anchored, settings):
    """Whoever rewrites the file can sign it, but not with the trusted key."""
    forger = Ed25519PrivateKey.generate()
    forged, previous = [], None
    for anchor in lines(anchored):
        fields = {k: v for k, v in anchor.items() if k not in ("signature", "key_id", "public_key")}
        fields["prev_anchor"] = anchor_hash(previous) if previous else GENESIS_HASH
        previous = anchor_sign(fields, forger)
        forged.append(previous)
    anchored.write_bytes(b"".join(canonical_json(a) + b"\n" for a in forged))
    trusted = key_id(load_public_key(settings.MF_LEDGER_ANCHOR_KEY))
    assert verify_anchors() == (
        f"Ledger breach: anchors: anchor 1 (line 1): signed by key {key_id(forger.public_key())!r}, "
        f"not the trusted key {trusted}"
    )


def test_a_line_that_is_not_json_is_named(anchored):
    text = anchored.read_text().splitlines()
    anchored.write_text("\n".join([text[0], "{not json", text[2]]) + "\n")
    assert verify_anchors() == f"Ledger breach: anchors: line 2 of {anchored} is not a JSON anchor (edited?)"


def test_no_key_to_check_with_is_a_clear_error(anchored, settings):
    settings.MF_LEDGER_ANCHOR_KEY.unlink()
    assert verify_anchors() == (
        f"Ledger breach: anchors: no signing key at {settings.MF_LEDGER_ANCHOR_KEY} (MF_LEDGER_ANCHOR_KEY) to check "
        "the anchors with; give the public key with --public-key"
    )


def test_no_anchors_file_is_a_clear_error(db, settings):
    assert verify_anchors() == f"Ledger breach: anchors: there is no anchors file at {settings.MF_LEDGER_ANCHORS_PATH}"


ANCHOR_FIELDS = {
    "sequence",
    "prev_anchor",
    "checkpoint_first_seq",
    "last_seq",
    "last_tx_id",
    "tx_count",
    "root",
    "merkle_root",
    "created_at",
    "key_id",
    "public_key",
    "signature",
    "signature_algorithm",
}


def _check_signed(anchor: dict, settings) -> None:
    """The anchor a user received is the newest line of the file, and its signature checks with the trusted key."""
    newest = lines(settings.MF_LEDGER_ANCHORS_PATH)[-1]
    assert set(anchor) == ANCHOR_FIELDS
    assert {k: v for k, v in anchor.items() if k != "signature_algorithm"} == newest
    trusted = load_public_key(settings.MF_LEDGER_ANCHOR_KEY)
    signed = {k: v for k, v in anchor.items() if k != "signature_algorithm"}
    trusted.verify(bytes.fromhex(anchor["signature"]), anchor_message(signed))


def test_a_proof_carries_the_newest_signed_root(anchored, api_client, cast, settings):
    t1 = Transaction.objects.get(idempotency_key="t1")
    api_client.force_authenticate(cast.teammate)
    anchor = api_client.get(f"/api/v1/ledger/proofs/{t1.pk}/").json()["anchor"]
    _check_signed(anchor, settings)
    assert (anchor["sequence"], anchor["last_seq"], anchor["root"]) == (3, 4, Transaction.objects.get(seq=4).hash)


def test_a_statement_carries_the_newest_signed_root(anchored, api_client, cast, settings):
    api_client.force_authenticate(cast.owner)
    body = api_client.get("/api/v1/ledger/transactions/").json()
    assert len(body["results"]) == 4
    _check_signed(body["anchor"], settings)
    assert body["anchor"]["sequence"] == 3


def test_statement_and_proof_before_any_anchor_say_null(api_client, cast, fund):
    tx = fund(cast.owner, 1)
    api_client.force_authenticate(cast.owner)
    assert api_client.get("/api/v1/ledger/transactions/").json()["anchor"] is None
    assert api_client.get(f"/api/v1/ledger/proofs/{tx.pk}/").json()["anchor"] is None


def test_the_wallet_page_shows_the_newest_signed_root(anchored, client, cast):
    newest = lines(anchored)[-1]
    client.force_login(cast.owner)
    body = client.get("/wallet/").content.decode()
    assert "Every transaction up to #4 is fixed by a signed record of the ledger" in body
    assert (
        f"Root <code>{newest['root']}</code>, signature <code>{newest['signature']}</code> by key\n"
        f"  <code>{newest['public_key']}</code>." in body
    )
