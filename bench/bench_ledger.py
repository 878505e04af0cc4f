"""Ledger settlements per second against local PostgreSQL (its own database, mf_ledger_bench, created and dropped
here), each settlement paying 6 postings: payer, model owner, 3 contributors, platform.

Phases, all in this run (the machine is shared and noisy, so only ratios within one run mean much):
  baseline      1 client
  hot platform  8 clients, MF_LEDGER_SHARDS=1: every settlement credits the same platform row
  sharded       8 clients, MF_LEDGER_SHARDS=16 (the default): the platform row is one of 16 shards
  chain alone   8 clients doing only the chain-head step (UPDATE of one row + COMMIT) on a scratch table: the
                ceiling that the hash chain's single ordering point puts on any write rate

Hot rows and how they are avoided: the platform revenue and fees-clearing accounts (sharded by a hash of the
idempotency key); the chain head (one row, but locked only for the last statement + COMMIT, and its hash is
computed inside PostgreSQL by that statement); payer wallets are per client. Owners and contributors come from
a pool (16 owners, 48 contributors), as with many models. ledger_verify must be clean afterwards.
Prints settlements/s (8 clients, sharded) last; writes bench/results/ledger.json.
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
DB_NAME = "mf_ledger_bench"
CLIENTS = 8
SECONDS = float(os.environ.get("MF_BENCH_LEDGER_SECONDS", "8"))


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
        conn.execute(sql)


def _settle_loop(client: int, seconds: float, shards: int, people: dict, start, counter) -> None:
    from django.conf import settings
    from django.db import connection

    from ledger.services import settlement_post

    settings.MF_LEDGER_SHARDS = shards
    rng = random.Random(client)
    payer = people["payers"][client]
    start.wait()
    deadline = time.perf_counter() + seconds
    done = 0
    while time.perf_counter() < deadline:
        contributors = rng.sample(people["contributors"], 3)
        settlement_post(
            key=f"bench:{shards}:{client}:{done}:{rng.random()}",
            payer_user_id=payer,
            fee_micro=rng.randint(1_000, 2_000_000),
            owner_user_id=rng.choice(people["owners"]),
            contributor_shares={uid: rng.randint(1, 100) for uid in contributors},
            metadata={"model": "bench"},
        )
        done += 1
    with counter.get_lock():
        counter.value += done
    connection.close()


def _chain_loop(seconds: float, start, counter) -> None:
    import psycopg

    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + DB_NAME
    done = 0
    with psycopg.connect(url) as conn:
        start.wait()
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            conn.execute(
                "UPDATE bench_chain SET seq = seq + 1, hash = encode(sha256(decode(hash, 'hex') || %s::bytea), 'hex')",
                [b"x" * 300],
            )
            conn.commit()
            done += 1
    with counter.get_lock():
        counter.value += done


def _phase(target, args_for, clients: int, seconds: float) -> float:
    from django.db import connections

    connections.close_all()  # children open their own connections
    ctx = mp.get_context("fork")
    start = ctx.Barrier(clients + 1)
    counter = ctx.Value("q", 0)
    procs = [ctx.Process(target=target, args=(*args_for(i), start, counter)) for i in range(clients)]
    for p in procs:
        p.start()
    start.wait()
    began = time.perf_counter()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a benchmark client failed (exit {p.exitcode})")
    return counter.value / (time.perf_counter() - began)


def main() -> int:
    try:
        _admin(f"DROP DATABASE IF EXISTS {DB_NAME}")
        _admin(f"CREATE DATABASE {DB_NAME}")
    except Exception as exc:  # noqa: BLE001 (any connection problem means: no PostgreSQL here)
        print(f"skipped: PostgreSQL is not reachable at {ADMIN_URL} ({exc.__class__.__name__}: {exc})")
        return 0
    os.environ["DATABASE_URL"] = ADMIN_URL.rsplit("/", 1)[0] + "/" + DB_NAME
    os.environ["MF_LEDGER_CHECKPOINT_EVERY"] = "0"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "modelfactory.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection, connections

    from ledger.services import credit_grant
    from ledger.verification import ledger_verify

    try:
        call_command("migrate", verbosity=0)
        User = get_user_model()
        staff = User.objects.create(username="bench-staff", is_staff=True)
        make = lambda prefix, n: [User.objects.create(username=f"{prefix}{i}").pk for i in range(n)]  # noqa: E731
        people = {"payers": make("payer", CLIENTS), "owners": make("owner", 16), "contributors": make("contrib", 48)}
        for payer in people["payers"]:
            credit_grant(user_id=payer, amount_micro=10**15, granted_by=staff)

        settle = lambda shards, clients: _phase(  # noqa: E731
            _settle_loop, lambda i: (i, SECONDS, shards, people), clients, SECONDS
        )
        results = {"postings_per_settlement": 6, "clients": CLIENTS, "seconds_per_phase": SECONDS}
        results["baseline_1_client_per_s"] = round(settle(16, 1), 1)
        results["hot_platform_row_8_clients_per_s"] = round(settle(1, CLIENTS), 1)
        results["sharded_8_clients_per_s"] = round(settle(16, CLIENTS), 1)
        with connection.cursor() as cursor:
            cursor.execute("CREATE TABLE bench_chain (seq bigint, hash text)")
            cursor.execute("INSERT INTO bench_chain VALUES (0, repeat('0', 64))")
        connections.close_all()
        results["chain_head_step_alone_8_clients_per_s"] = round(
            _phase(_chain_loop, lambda i: (SECONDS,), CLIENTS, SECONDS), 1
        )
        report = ledger_verify()
        results["ledger_verify"] = f"clean: {report.transactions} transactions, {report.postings} postings"
        results["speedup_8_clients_vs_1"] = round(
            results["sharded_8_clients_per_s"] / results["baseline_1_client_per_s"], 2
        )
        results["sharded_vs_hot_platform"] = round(
            results["sharded_8_clients_per_s"] / results["hot_platform_row_8_clients_per_s"], 2
        )
        results["chain_head_share_of_ceiling"] = round(
            results["sharded_8_clients_per_s"] / results["chain_head_step_alone_8_clients_per_s"], 2
        )
    finally:
        connections.close_all()
        _admin(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "ledger.json").write_text(json.dumps(results, indent=2) + "\n")
    for key, value in results.items():
        print(f"{key}: {value}")
    print(f"settlements/s (8 clients, 6 postings each): {results['sharded_8_clients_per_s']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
