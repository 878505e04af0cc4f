"""`manage.py demo`: the whole chain in the terminal, through the same services the pages and APIs use.

upload -> ingest -> review -> version -> fine-tune -> publish -> ask -> attribute -> settle -> verify.

Training and attribution run in this process (a running `make run` worker may claim the training job first: then
this waits for it); answers are generated in a thread of this process with the same code the inference worker
runs. Every run creates its own datanet and model, so it can be repeated on the same database."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.files.base import ContentFile
from django.core.management.base import CommandError
from django.test.utils import override_settings

from ledger.calc.money import format_credits as _credits

CONTRIBUTORS = {
    "demo_alice": [
        (
            "How often should I water basil?",
            "Water basil when the top centimetre of soil is dry, about every two days in summer.",
        ),
        (
            "When do I pinch basil?",
            "Pinch basil just above a pair of leaves once the plant has six leaves; it grows bushier.",
        ),
        (
            "Can basil grow indoors?",
            "Yes: give basil a sunny windowsill with six hours of light and keep it above 15 °C.",
        ),
        (
            "Why does my basil wilt at noon?",
            "Basil wilts in strong midday sun when the pot is small; move it to morning sun.",
        ),
    ],
    "demo_bob": [
        ("How deep should I sow carrots?", "Sow carrot seeds one centimetre deep in loose, stone-free soil."),
        (
            "When do I thin carrots?",
            "Thin carrots to five centimetres apart when the seedlings are about five centimetres tall.",
        ),
        (
            "Why are my carrots forked?",
            "Forked carrots come from stony or freshly manured soil; sow them in fine, plain soil.",
        ),
        ("How long do carrots take?", "Most carrots are ready ten to twelve weeks after sowing."),
    ],
    "demo_carol": [
        (
            "When should I plant garlic?",
            "Plant garlic cloves in autumn, a few weeks before the ground freezes, pointed end up.",
        ),
        (
            "How far apart is garlic planted?",
            "Plant garlic cloves fifteen centimetres apart in rows thirty centimetres apart.",
        ),
    ],
}
# Carol's upload also holds what a datanet must refuse: a broken line, a duplicate and a row with no answer.
CAROL_BAD_LINES = [
    '{"instruction": "Is this line JSON?", "output": "It is not, the closing brace is missing"',
    json.dumps(
        {
            "instruction": "When should I plant garlic?",
            "output": "Plant garlic cloves in autumn, a few weeks before the ground freezes, pointed end up.",
        }
    ),  # fmt: skip
    json.dumps({"instruction": "What about onions?", "output": ""}),
]
QUESTIONS = ["How often should I water basil?", "How deep should I sow carrots?", "When should I plant garlic?"]
PRICE_MICRO_PER_1K = 1_000_000  # 1 credit per 1,000 tokens: fees large enough to see in the wallets
CALLER_CREDIT_MICRO = 20_000_000


def _user(username: str, *, staff: bool = False):
    user, created = get_user_model().objects.get_or_create(
        username=username, defaults={"email": f"{username}@example.com", "is_staff": staff}
    )
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user


FARMER = "demo_farmer"
FARMER_ROWS = 200


def farmer_rows(n: int = FARMER_ROWS) -> list[tuple[str, str]]:
    """Distinct, clean rows that none of the demo's questions is about (a farmer uploading for volume)."""
    return [(f"What is entry {i} of the seed catalogue?", f"Entry {i} of the seed catalogue is lot {i * 7 + 3}.")
            for i in range(1, n + 1)]  # fmt: skip


# --farmer: the datanet's money terms, and two uploads a curator rejects, one on each ground.
FARMER_HOLDING_DAYS = 7
FARMER_BOND_MICRO = 500_000
BOND_CREDIT_MICRO = 1_000_000  # what each contributor is given to post the bond
REJECTED_UPLOADS = {
    "demo_spammer": (
        "spam",
        "Advertising, not gardening answers.",
        [
            ("Where can I buy cheap seeds?", "Visit the best seed shop online today for huge discounts on every seed."),
            ("What is the best seed shop?", "The best seed shop online has the lowest prices; order now and save."),
        ],
    ),
    "demo_dave": (
        "not_a_fit",
        "About cars, not the kitchen garden.",
        [
            ("How often do I check tyre pressure?", "Check tyre pressure once a month, with the tyres cold."),
            ("When do I change winter tyres?", "Fit winter tyres when it stays below 7 °C."),
        ],
    ),
}


def demo_run(*, tiny: bool, say: Callable[[str], None], farmer: bool = False) -> dict:
    """Runs the chain; returns the figures it printed (for tests). farmer: a fourth contributor uploads
    FARMER_ROWS rows nobody asks about, and the payouts under settle-1 and settle-2 are compared at the end; the
    datanet also holds earnings FARMER_HOLDING_DAYS days and asks a bond per upload, two more uploads are rejected
    (one as spam: its bond goes to the datanet's pool; one as not a fit: its bond goes back), and each contributor's
    pending and available credit, the bonds and the pool are shown."""
    from datanets import services as datanets
    from modelfactory.models import FineTuneJob

    run = uuid.uuid4().hex[:6]
    curator = _user("demo_curator", staff=True)
    # The curator also plays the member of staff who funds the caller (step 4): granting credit needs the permission.
    curator.user_permissions.add(Permission.objects.get(content_type__app_label="ledger", codename="grant_credit"))
    caller = _user("demo_caller")
    uploads = {**CONTRIBUTORS, **({FARMER: farmer_rows()} if farmer else {})}
    rejected = {name: rows for name, (_, _, rows) in REJECTED_UPLOADS.items()} if farmer else {}
    contributors = {name: _user(name) for name in uploads}
    uploaders = {**contributors, **{name: _user(name) for name in rejected}}

    say("1. A curator creates a datanet; three contributors upload (one file has bad rows).")
    datanet = datanets.datanet_create(
        owner=curator,
        name=f"Kitchen garden demo {run}",
        kind="instruction",
        summary="Short answers about herbs and vegetables, made by `manage.py demo`.",
        tags=["demo"],
        policy="approval",
    )
    if farmer:
        datanet = _money_terms(datanet=datanet, curator=curator, uploaders=uploaders, run=run, say=say)
    for name, pairs in {**uploads, **rejected}.items():
        lines = [json.dumps({"instruction": q, "output": a}, ensure_ascii=False) for q, a in pairs]
        if name == "demo_carol":
            lines += CAROL_BAD_LINES
        upload = ContentFile(("\n".join(lines) + "\n").encode(), name=f"{name}.jsonl")
        contribution = datanets.contribution_create(
            datanet=datanet, contributor=uploaders[name], upload=upload, enqueue=False
        )
        contribution = datanets.contribution_ingest(contribution_id=contribution.pk)
        report = contribution.report
        say(
            f"   {name}: {contribution.rows_accepted} rows kept, {contribution.rows_invalid} refused, "
            f"{contribution.duplicates} duplicate(s) — {contribution.get_status_display().lower()}"
        )
        for error in (report.get("errors") or [])[:3]:
            say(f"      line {error['line']}: {error['reason']}")

    say("2. The curator reviews the contributions and publishes version 1.")
    for name, (grounds, reason, _) in REJECTED_UPLOADS.items() if farmer else ():
        contribution = datanet.contributions.get(contributor=uploaders[name], status="needs_review")
        contribution = datanets.contribution_reject(
            contribution=contribution, curator=curator, reason=reason, grounds=grounds
        )
        say(f"   {name}: rejected as {contribution.get_rejected_as_display().lower()} ({reason})")
    for contribution in datanet.contributions.filter(status="needs_review"):
        datanets.contribution_approve(contribution=contribution, curator=curator, note="Checked by the demo.")
    version = datanets.version_publish(datanet=datanet, actor=curator, notes="Demo version")
    say(f"   version {version.number}: {version.row_count} rows from {version.contributor_count} contributors, "
        f"manifest {version.manifest_hash[:16]}…")  # fmt: skip

    say("3. A builder fine-tunes " + ("a tiny model (--tiny)" if tiny else "SmolLM2-135M-Instruct") + ".")
    base = _base_model(tiny=tiny, say=say)
    job = _train(base=base, version=version, owner=curator, run=run, tiny=tiny, say=say)
    if job.status != FineTuneJob.Status.SUCCEEDED:
        say(f"   The job ended {job.status}: {job.message}")
        return {"job": job.status}
    say(f"   {job.message}")
    trained = job.model_version.model

    say("4. The builder publishes the model at 1 credit per 1,000 tokens; a caller asks questions.")
    from ledger.services import credit_grant
    from modelfactory.services import trained_model_publish

    trained_model_publish(user=curator, slug=trained.slug, price_per_1k_tokens=PRICE_MICRO_PER_1K, visibility="public")
    credit_grant(user_id=caller.pk, amount_micro=CALLER_CREDIT_MICRO, granted_by=curator, key=f"demo-{run}-credit")
    answers = [_ask(caller=caller, slug=trained.slug, question=q, say=say) for q in QUESTIONS]

    say("5. Each answer is attributed to the rows that shaped it, and its fee is split.")
    from attribution.services import attribution_run

    for inference in answers:
        attribution = attribution_run(inference_id=inference.pk, final_attempt=True)
        _show_attribution(attribution, inference=inference, say=say)

    say("6. Wallets now:")
    from ledger.selectors import wallet_summary

    balances = {}
    for user in [caller, curator, *contributors.values()]:
        balances[user.username] = wallet_summary(user=user)["available"]
        say(f"   {user.username:<14} {_credits(balances[user.username]):>14} credits")

    money = {}
    if farmer:
        _compare_rules(answers=answers, contributors=contributors, say=say)
        money = _show_money(datanet=datanet, uploaders=uploaders, say=say)
    say("7. ledger_verify recomputes every sum, balance, hash and checkpoint:")
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("ledger_verify", stdout=out)
    for line in out.getvalue().strip().splitlines():
        say(f"   {line}")
    say("8. attribution_verify recomputes each answer's attribution from the stored index and checks what was paid:")
    from attribution.services import attribution_verify

    verified = 0
    for inference in answers:
        result = attribution_verify(inference_id=inference.pk)
        verified += result.ok
        failed = [f"{check.name} ({check.detail})" for check in result.checks if not check.ok]
        say(f"   answer {inference.pk}: " + ("verified" if result.ok else "DIFFERS: " + "; ".join(failed)))
    return {
        "job": job.status,
        "answers": [a.pk for a in answers],
        "balances": balances,
        "model": trained.slug,
        "verified": verified,
        **money,
    }


def _money_terms(*, datanet, curator, uploaders: dict, run: str, say):
    """--farmer: the datanet holds earnings and asks a bond; each uploader is given the credit to post it. Returns
    the datanet as updated (uploads read its bond from it)."""
    from datanets import services as datanets
    from ledger.services import credit_grant

    datanet = datanets.datanet_update(
        datanet=datanet, actor=curator, holding_days=FARMER_HOLDING_DAYS, bond_micro=FARMER_BOND_MICRO
    )
    for name, user in uploaders.items():
        credit_grant(user_id=user.pk, amount_micro=BOND_CREDIT_MICRO, granted_by=curator, key=f"demo-{run}-bond-{name}")
    say(
        f"   The datanet holds contributors' earnings for {FARMER_HOLDING_DAYS} days and asks a bond of "
        f"{_credits(FARMER_BOND_MICRO)} credits per upload; each uploader is given {_credits(BOND_CREDIT_MICRO)} "
        "credits to post it. Two more people upload: rows the curator will reject."
    )
    return datanet


def _show_money(*, datanet, uploaders: dict, say) -> dict:
    """--farmer: each uploader's available and pending credit, the bonds, and the datanet's pool."""
    from ledger.models import Bond
    from ledger.selectors import datanet_pool, wallet_summary

    say(f"   Earnings from this datanet wait {FARMER_HOLDING_DAYS} days (pending) before they can be withdrawn:")
    pending = {}
    for name, user in uploaders.items():
        wallet = wallet_summary(user=user)
        pending[name] = (wallet["available"], wallet["earnings_pending"])
        until = wallet["earnings_next_release_at"]
        when = f" (the first on {until:%d %b %Y})" if until else ""
        available, held = _credits(wallet["available"]), _credits(wallet["earnings_pending"])
        say(f"   {name:<14} available {available:>10}  pending {held:>10}{when}")
    say("   Bonds:")
    bonds = {}
    users = {user.pk: name for name, user in uploaders.items()}
    for bond in Bond.objects.filter(datanet_id=datanet.pk).order_by("pk"):
        name = users.get(bond.user_id, str(bond.user_id))
        bonds[name] = (bond.amount, bond.status)
        why = f": {bond.reason}" if bond.reason else ""
        say(f"   {name:<14} {_credits(bond.amount):>10}  {bond.get_status_display().lower()}{why}")
    pool = datanet_pool(datanet_id=datanet.pk)
    say(
        f"   The datanet's pool: {_credits(pool['balance'])} credits ({pool['forfeits']} forfeited earning(s), "
        f"{pool['slashes']} forfeited bond(s)); it is kept for the datanet's curation, nothing pays out of it yet."
    )
    return {"pending": pending, "bonds": bonds, "pool": pool["balance"]}


def _base_model(*, tiny: bool, say):
    from modelfactory.services import base_model_ensure_default, base_model_register

    if not tiny:
        return base_model_ensure_default(progress=lambda m: say(f"   {m}"))
    from modelfactory.training.tiny import build_tiny_model_dir

    folder = Path(settings.MF_BASE_MODEL_DIR) / "tiny-demo"
    if not (folder / "config.json").exists():
        build_tiny_model_dir(folder)
    return base_model_register(path=folder, name="Tiny demo model", slug="tiny-demo", licence="MIT")


def _train(*, base, version, owner, run: str, tiny: bool, say):
    """Runs the job in this process and prints its progress; if a running worker claimed it first, follows it."""
    from modelfactory.models import FineTuneJob
    from modelfactory.services import finetune_launch, finetune_run
    from modelfactory.training.presets import DEFAULT_PRESET

    # SmolLM2: the default preset, as a user who changes nothing gets it. The tiny model: a few brisk passes, so it
    # visibly learns in seconds (and attribution has signal).
    overrides = {"epochs": 3, "min_steps": 0, "learning_rate": 5e-3, "max_length": 192} if tiny else {}
    job, _ = finetune_launch(
        user=owner,
        base_model_slug=base.slug,
        version_ids=[version.pk],
        preset="quick" if tiny else DEFAULT_PRESET,
        hyperparameters=overrides,
        name=f"Kitchen garden demo {run}",
        idempotency_key=f"demo-{run}",
    )
    crashed: list[BaseException] = []

    def train() -> None:
        try:
            finetune_run(job_id=job.pk, hostname="demo")
        except BaseException as exc:  # the job cannot say it ended: this loop must, instead of waiting forever
            crashed.append(exc)

    worker = threading.Thread(target=train, daemon=True)
    worker.start()
    last = None
    while True:
        job.refresh_from_db()
        line = f"   {job.get_status_display()}: {job.message}"
        if job.status == FineTuneJob.Status.RUNNING and job.total_steps:
            line += f" (step {job.step} of {job.total_steps})"
        if line != last:
            say(line)
            last = line
        if not worker.is_alive():
            job.refresh_from_db()
            if not job.is_active:
                return FineTuneJob.objects.select_related("model_version__model").get(pk=job.pk)
            if crashed or job.worker == "demo":  # ours, and no longer running: nothing will end it
                reason = f"{type(crashed[0]).__name__}: {crashed[0]}" if crashed else "no error was given"
                raise CommandError(f"The training stopped in this process before the job ended ({reason}).")
        time.sleep(1.0)


def _ask(*, caller, slug: str, question: str, say):
    from modelfactory.services import inference_start, inference_wait

    with override_settings(MF_INFERENCE_INLINE=True):
        inference = inference_start(
            user=caller,
            slug=slug,
            source="api",
            messages=[{"role": "user", "content": question}],
            max_new_tokens=48,
            temperature=0.0,
        )
        inference = inference_wait(inference=inference)
    say(f"   Q: {question}")
    say(f"   A: {inference.output.strip()}")
    say(f"      {inference.prompt_tokens} + {inference.completion_tokens} tokens, fee {_credits(inference.fee_micro)}")
    return inference


def _compare_rules(*, answers, contributors, say) -> None:
    """The same answers paid under the older rule settle-1 (unattributed part by row count) and the current
    settle-2 (unattributed part to the model owner)."""
    from attribution.models import Attribution
    from attribution.services import rule_payouts

    attributions = list(Attribution.objects.filter(inference__in=answers).select_related("inference__model_version"))
    old, new = (rule_payouts(attributions=attributions, rule=rule) for rule in ("settle-1", "settle-2"))
    say("   The same answers under the older rule settle-1 (by row count) and the current settle-2:")
    for name, user in contributors.items():
        say(f"   {name:<14} settle-1 {_credits(old.get(user.pk, 0)):>10}  settle-2 {_credits(new.get(user.pk, 0)):>10}")


def _show_attribution(attribution, *, inference, say) -> None:
    spread = " (that part goes to the model owner)" if attribution.unattributed else ""
    say(
        f"   answer {inference.pk}: attribution {attribution.status}, {attribution.unattributed:.0%} unattributed"
        f"{spread}; settlement {attribution.settlement_status}"
    )
    for share in attribution.shares.select_related("contributor").order_by("-share")[:3]:
        say(
            f"      {share.contributor.username:<12} attribution {share.share:>5.0%}  paid "
            f"{_credits(share.amount_micro)} credits"
        )
    if attribution.settlement_note:
        say(f"      {attribution.settlement_note}")
