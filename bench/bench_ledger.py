"""Ledger settlements per second against local PostgreSQL (its own database, MF_BENCH_LEDGER_DB or
mf_ledger_bench, created and dropped here), each settlement paying 6 postings: payer, model owner, 3 contributors,
platform. Clients are processes (each with its own Django and connection), so the client's GIL is not measured.

Phases, all in this run (the machine is shared and noisy, so only ratios within one run mean much; the phases
take turns in MF_BENCH_LEDGER_ROUNDS rounds of MF_BENCH_LEDGER_SECONDS / rounds each, so a change in the load
weighs on all of them alike; the load average is printed before and after). For each phase the CPU spent per
settlement is printed too, by the clients (their process time) and by the PostgreSQL backends serving them (/proc
utime + stime; the WAL writer and checkpointer are not in it): on two cores, settlements/s can reach at most
2,000 / (client ms + server ms), whatever else runs.
  baseline      8 clients, the general path without early lock release (MF_LEDGER_FAST_SETTLEMENT=0,
                MF_LEDGER_EARLY_RELEASE=0): what settlement did before 0003: 5 round trips (BEGIN, key
                lookup, SELECT ... FOR UPDATE, one write statement, COMMIT) with every row lock, the chain head's
                included, held until the commit's disk flush was done. (Same database, so it has 0003's cheaper
                balance triggers too.)
  1 client      settlement_post, one client (one call of ledger_settlement_post per settlement)
  hot platform  8 clients, settlement_post, MF_LEDGER_SHARDS=1: every settlement credits the same platform row
  hot owner     8 clients, settlement_post, every settlement pays the same model owner (one popular model)
  batch 1       8 clients, settlement_post_many with one settlement per call: what the product's settlement step
                does when nothing else is waiting (attribution_settle; see below)
  batched       settlement_post_many with 16 (or 64) settlements per call, 1 or 8 clients, and 8 clients with a
                hot owner: one call of ledger_settlement_post_many (migrations/0005), one commit and one wait
                for the flush per 16 settlements, each still its own ledger transaction and link in the chain
  product       the product's settlement step (attribution.services.attribution_settle, which the attribution
                task ends with) in 8 worker processes, each calling it for its share of a backlog of answers whose
                attribution is stored and whose fee is held (MF_BENCH_LEDGER_BACKLOG per round), with
                MF_ATTRIBUTION_SETTLE_BATCH=1 (each answer alone) and 32 (each call takes along up to 31 answers
                waiting); counts the answers settled. This includes the step's own reads and writes (the answer,
                its datanets' labels, marking it settled, the contributors' amounts), not the attribution engine
                that runs before it.
  sharded       8 clients, settlement_post one at a time, MF_LEDGER_SHARDS=16 (the default)
  GOAL FIGURE   printed last: 8 clients, each calling settlement_post_many with 16 settlements (6 postings each)
                per call, MF_LEDGER_SHARDS=16: the ledger's settlement throughput through its batch API. The
                product's settlement step (attribution.services.attribution_settle) calls that API with its own
                answer plus up to MF_ATTRIBUTION_SETTLE_BATCH - 1 answers already waiting for settlement, so the
                product reaches batches of 16 only when settlements queue up (a backlog, a burst); when they do not,
                its batches are of one (the "batch 1" phase). The figure is the ledger's, not the product's:
                the product's settlement step is measured by the "product" phases, and is far slower (its
                own per-answer reads and writes through the ORM cost more CPU than the ledger's part).

The fast path (ledger/services.py `_settlement_post_fast`, migrations/0003) is one call of a PL/pgSQL function:
the service still computes the split, the metadata and the canonical JSON around the postings; the function
locks (hold, then accounts in id order), checks funds, writes postings (balances by the posting trigger), then
takes the chain head, hashes and inserts the transaction. Its commit does not wait for the WAL flush, so no lock is
held during the flush; the service waits for the flush afterwards, before it answers (a flushing commit that
comes after ours in the WAL), so a settlement is durable when settlement_post returns, as before.

Hot rows and how they are avoided:
  - the chain head (one row, every ledger write): it has to stay one row, since the hash chain is one total order
    (hash_n covers hash_n-1) and the chain is computed synchronously, at commit, so that every committed
    transaction is in the chain and ledger_verify is exact at any moment. It is locked last, for the UPDATE, the
    transaction INSERT and the commit only, and released before the disk flush (the flush used to be inside it,
    which capped every writer at the disk's flush rate).
  - platform revenue and fees clearing: sharded (MF_LEDGER_SHARDS rows per role, shard = hash of the key);
    balances shown for the platform are sums over the shards and ledger_verify checks every shard.
  - model owners' and contributors' wallets (a popular model's owner is credited by every settlement): not
    sharded, because a wallet must be debitable (withdrawals, fees) without spreading a debit over rows; their
    row lock is held only while the function runs (about a millisecond, no flush inside; a batch holds the locks
    of all its accounts for its one call, a few milliseconds for 16), which the hot-owner phases measure. Payer
    wallets: one per client here (one per user in the product).
ledger_verify must be clean afterwards (it runs, and the bench fails if it does not pass). Prints the goal figure
last; writes bench/results/ledger.json.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ADMIN_URL = os.environ.get("MF_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DB_NAME = os.environ.get("MF_BENCH_LEDGER_DB", "mf_ledger_bench")
CLIENTS = 8
SECONDS = float(os.environ.get("MF_BENCH_LEDGER_SECONDS", "9"))
ROUNDS = int(os.environ.get("MF_BENCH_LEDGER_ROUNDS", "3"))
# Answers waiting for settlement, made just before each product round with batches (half that for batches of one).
PRODUCT_BACKLOG = int(os.environ.get("MF_BENCH_LEDGER_BACKLOG", "3000"))


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
        conn.execute(sql)


def _settle_loop(
    client: int,
    seconds: float,
    shards: int,
    fast: bool,
    hot_owner: bool,
    batch: int,
    round_no: int,
    people: dict,
    start,
    counter,
) -> None:
    """One client: settlement_post one at a time (batch 0), or settlement_post_many with `batch` settlements per
    call, until `seconds` have passed."""
    from django.conf import settings
    from django.db import connection

    from ledger.services import SettlementRequest, settlement_post, settlement_post_many

    settings.MF_LEDGER_SHARDS = shards
    settings.MF_LEDGER_FAST_SETTLEMENT = fast
    settings.MF_LEDGER_EARLY_RELEASE = fast
    rng = random.Random(f"{client}:{round_no}")
    payer = people["payers"][client]

    def request(number: int) -> SettlementRequest:
        contributors = rng.sample(people["contributors"], 3)
        return SettlementRequest(
            key=f"bench:{shards}:{fast}:{hot_owner}:{batch}:{round_no}:{client}:{number}",
            payer_user_id=payer,
            fee_micro=rng.randint(1_000, 2_000_000),
            owner_user_id=people["owners"][0] if hot_owner else rng.choice(people["owners"]),
            contributor_shares={uid: rng.randint(1, 100) for uid in contributors},
            metadata={"model": "bench"},
        )

    backend = _backend_pid()
    start.wait()
    server_cpu, client_cpu = _proc_cpu(backend), time.process_time()
    deadline = time.perf_counter() + seconds
    done = 0
    while time.perf_counter() < deadline:
        if batch:
            outcomes = settlement_post_many(requests=[request(done + n) for n in range(batch)])
            failed = [o for o in outcomes if not hasattr(o, "hash")]
            if failed:
                raise SystemExit(f"a batched settlement failed: {failed[0]!r}")
            done += batch
        else:
            one = request(done)
            settlement_post(**{name: getattr(one, name) for name in one.__dataclass_fields__})
            done += 1
    _report(counter, done, time.process_time() - client_cpu, _proc_cpu(backend) - server_cpu)
    connection.close()


def _product_loop(client: int, seconds: float, batch: int, answers: list[int], start, counter) -> None:
    """One settlement worker of the product: attribution_settle on the answers of its share of the backlog, in
    order, as the attribution task does after storing an attribution (what is already settled returns at once).
    With batch > 1 each call also takes along up to batch - 1 other waiting answers. Reports its CPU; the parent
    counts the settled answers."""
    from django.conf import settings
    from django.db import connection

    from attribution.services import attribution_settle

    settings.MF_ATTRIBUTION_SETTLE_BATCH = batch
    settings.MF_LEDGER_SHARDS = 16
    mine = answers[client::CLIENTS]
    backend = _backend_pid()
    start.wait()
    server_cpu, client_cpu = _proc_cpu(backend), time.process_time()
    deadline = time.perf_counter() + seconds
    for attribution_id in mine:
        if time.perf_counter() >= deadline:
            break
        attribution_settle(attribution_id=attribution_id)
    _report(counter, 0, time.process_time() - client_cpu, _proc_cpu(backend) - server_cpu)
    connection.close()


def _product_backlog(people: dict, count: int, tag: str) -> list[int]:
    """`count` answers of a model whose fees are held and whose attribution is stored but not yet settled (as after
    a burst): each has a hold (ledger.hold_create, as serving makes it), a completed Inference and a finished
    Attribution with 3 contributors' shares. Returns the attribution ids, oldest first."""
    from django.db import connection
    from django.utils import timezone

    from attribution.models import Attribution, AttributionShare
    from ledger.services import hold_create
    from modelfactory.models import BaseModel, FineTuneJob, Inference, ModelVersion, TrainedModel

    rng = random.Random(tag)
    owner = people["owners"][0]
    base, _ = BaseModel.objects.get_or_create(
        slug="bench-base", defaults=dict(name="Bench", path="/nonexistent", parameters=1, context_length=512)
    )
    job = FineTuneJob.objects.create(
        owner_id=owner, name=f"bench {tag}", base_model=base, preset="quick", idempotency_key=f"bench-{tag}"
    )
    model = TrainedModel.objects.create(owner_id=owner, slug=f"bench-{tag}", name="Bench", base_model=base)
    version = ModelVersion.objects.create(
        model=model, number=1, job=job, adapter_path="-", zip_path="-", artifact_hash="0" * 64, model_card="-"
    )
    now = timezone.now()
    inferences = Inference.objects.bulk_create(
        [
            Inference(
                caller_id=people["payers"][i % CLIENTS],
                model=model,
                model_version=version,
                source=Inference.Source.API,
                messages=[],
                prompt_token_ids=[1],
                price_per_1k_tokens=0,
                fee_reserved_micro=2_000_000,
                status=Inference.Status.COMPLETED,
                output="-",
                output_token_ids=[2],
                fee_micro=rng.randint(1_000, 2_000_000),
                completed_at=now,
            )  # fmt: skip
            for i in range(count)
        ]
    )
    for inference in inferences:
        hold_create(key=f"inference:{inference.pk}", payer_user_id=inference.caller_id, amount_micro=2_000_000)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE modelfactory_inference SET hold_key = 'inference:' || id WHERE id = ANY (%s)",
            [[i.pk for i in inferences]],
        )
    attributions = Attribution.objects.bulk_create(
        [
            Attribution(
                inference=inference,
                status=Attribution.Status.DONE,
                method_version="bench",
                settlement_rule="settle-1",
                settlement_shares={
                    str(uid): rng.randint(1, 100) / 100 for uid in rng.sample(people["contributors"], 3)
                },
                finished_at=now,
            )  # fmt: skip
            for inference in inferences
        ]
    )
    AttributionShare.objects.bulk_create(
        [
            AttributionShare(
                attribution=a, contributor_id=int(uid), model=model, share=share, settled_share=share, created_at=now
            )
            for a in attributions
            for uid, share in a.settlement_shares.items()
        ]
    )
    return [a.pk for a in attributions]


def _backend_pid() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a local process has used so far: how the server's share is measured (the client
    connection's backend process; the WAL writer and checkpointer are not counted)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _report(counter, done: int, client_cpu: float, server_cpu: float) -> None:
    with counter.get_lock():
        counter[0] += done
        counter[1] += client_cpu
        counter[2] += server_cpu


def _phase(target, args_for, clients: int) -> tuple[int, float, float, float]:
    """Runs `clients` processes at once; returns (settlements, wall seconds, client CPU seconds, server CPU
    seconds), the CPU summed over the clients and their backends."""
    from django.db import connections

    connections.close_all()  # children open their own connections
    ctx = mp.get_context("fork")
    start = ctx.Barrier(clients + 1)
    counter = ctx.Array("d", 3)
    procs = [ctx.Process(target=target, args=(*args_for(i), start, counter)) for i in range(clients)]
    for p in procs:
        p.start()
    start.wait()
    began = time.perf_counter()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a benchmark client failed (exit {p.exitcode})")
    return int(counter[0]), time.perf_counter() - began, counter[1], counter[2]


def main() -> int:
    try:
        _admin(f"DROP DATABASE IF EXISTS {DB_NAME}")
        _admin(f"CREATE DATABASE {DB_NAME}")
    except Exception as exc:  # noqa: BLE001 (any connection problem means: no PostgreSQL here)
        print(f"skipped: PostgreSQL is not reachable at {ADMIN_URL} ({exc.__class__.__name__}: {exc})")
        return 0
    os.environ["DATABASE_URL"] = ADMIN_URL.rsplit("/", 1)[0] + "/" + DB_NAME
    os.environ["MF_LEDGER_CHECKPOINT_EVERY"] = "0"
    os.environ["MF_LEDGER_GRANT_MAX_CREDITS"] = str(10**9)  # the payers' funding grants below (10**15 micro each)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connections

    from attribution.models import Attribution
    from ledger.services import credit_grant
    from ledger.verification import ledger_verify

    try:
        call_command("migrate", verbosity=0)
        User = get_user_model()
        staff = User.objects.create(username="bench-staff", is_staff=True, is_superuser=True)  # may grant credit
        make = lambda prefix, n: [User.objects.create(username=f"{prefix}{i}").pk for i in range(n)]  # noqa: E731
        people = {"payers": make("payer", CLIENTS), "owners": make("owner", 16), "contributors": make("contrib", 48)}
        for payer in people["payers"]:
            credit_grant(user_id=payer, amount_micro=10**15, granted_by=staff)

        phases = {
            "baseline_general_path_8_clients_per_s": dict(clients=CLIENTS, fast=False),
            "fast_1_client_per_s": dict(clients=1),
            "hot_platform_row_8_clients_per_s": dict(clients=CLIENTS, shards=1),
            "hot_owner_row_8_clients_per_s": dict(clients=CLIENTS, hot_owner=True),
            "batch_1_8_clients_per_s": dict(clients=CLIENTS, batch=1),
            "batched_1_client_batch_16_per_s": dict(clients=1, batch=16),
            "batched_8_clients_batch_16_per_s": dict(clients=CLIENTS, batch=16),
            "batched_8_clients_batch_64_per_s": dict(clients=CLIENTS, batch=64),
            "batched_hot_owner_8_clients_batch_16_per_s": dict(clients=CLIENTS, hot_owner=True, batch=16),
            "product_settle_step_8_workers_batch_1_per_s": dict(clients=CLIENTS, product=True, batch=1),
            "product_settle_step_8_workers_batch_32_per_s": dict(clients=CLIENTS, product=True, batch=32),
            "sharded_8_clients_per_s": dict(clients=CLIENTS),
        }
        totals = {name: [0, 0.0, 0.0, 0.0] for name in phases}

        def settle(
            clients: int, round_no: int, seconds: float, shards=16, fast=True, hot_owner=False, batch=0, product=False
        ):
            if product:
                # made just before the phase, so that the only answers waiting are this phase's: a batch takes along
                # the oldest waiting answers, whoever's they are (backlogs made up front were settled by other phases)
                ids = _product_backlog(
                    people, PRODUCT_BACKLOG // 2 if batch == 1 else PRODUCT_BACKLOG, f"{batch}-{round_no}"
                )
                waiting = Attribution.objects.filter(settlement_status=Attribution.Settlement.PENDING).count()
                assert waiting == len(ids), f"{waiting} answers wait for settlement, {len(ids)} of them this phase's"
                _, elapsed, client_cpu, server_cpu = _phase(_product_loop, lambda i: (i, seconds, batch, ids), clients)
                done = Attribution.objects.filter(pk__in=ids, settlement_status=Attribution.Settlement.SETTLED).count()
                # out of the way of the next phase (their holds stay open: a valid ledger state)
                Attribution.objects.filter(pk__in=ids, settlement_status=Attribution.Settlement.PENDING).update(
                    settlement_status=Attribution.Settlement.SKIPPED
                )
                if done == len(ids):
                    print(f"warning: the backlog of {len(ids)} answers ran out", file=sys.stderr)
                return done, elapsed, client_cpu, server_cpu
            args = lambda i: (i, seconds, shards, fast, hot_owner, batch, round_no, people)  # noqa: E731
            return _phase(_settle_loop, args, clients)

        results = {"postings_per_settlement": 6, "clients": CLIENTS, "seconds_per_phase": SECONDS, "rounds": ROUNDS}
        results["load_average_before"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        settle(2, -1, 2.0)  # warm-up: creates the owners', contributors' and platform shards' accounts
        # Phases take turns in short rounds, so a change in the machine's load weighs on all of them alike.
        for round_no in range(ROUNDS):
            for name, config in phases.items():
                measured = settle(round_no=round_no, seconds=SECONDS / ROUNDS, **config)
                totals[name] = [total + part for total, part in zip(totals[name], measured, strict=True)]
            print(f"round {round_no + 1}/{ROUNDS} done", file=sys.stderr, flush=True)
        cpu = {}
        for name, (done, elapsed, client_cpu, server_cpu) in totals.items():
            results[name] = round(done / elapsed, 1)
            cpu[name.removesuffix("_per_s")] = {
                "client_ms": round(1000 * client_cpu / done, 3),
                "server_ms": round(1000 * server_cpu / done, 3),
            }
        results["cpu_ms_per_settlement"] = cpu
        results["load_average_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        report = ledger_verify()
        results["ledger_verify"] = f"clean: {report.transactions} transactions, {report.postings} postings"
        results["speedup_vs_baseline"] = round(
            results["sharded_8_clients_per_s"] / results["baseline_general_path_8_clients_per_s"], 2
        )
        results["batched_16_vs_one_at_a_time"] = round(
            results["batched_8_clients_batch_16_per_s"] / results["sharded_8_clients_per_s"], 2
        )
        results["speedup_8_clients_vs_1"] = round(
            results["sharded_8_clients_per_s"] / results["fast_1_client_per_s"], 2
        )
        results["hot_rows"] = (
            "chain head (1 row: locked last, released before the WAL flush), platform and fees clearing "
            "(sharded, 16 rows each), owner wallets (lock held only while the settlement function runs; a batch "
            "locks all its accounts once, in id order, for its one call)"
        )
    finally:
        connections.close_all()
        _admin(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "ledger.json").write_text(json.dumps(results, indent=2) + "\n")
    for key, value in results.items():
        print(f"{key}: {value}")
    print(
        "settlements/s (8 clients, 6 postings each, settlement_post_many with 16 per call; one at a time: "
        f"{results['sharded_8_clients_per_s']}): {results['batched_8_clients_batch_16_per_s']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
