"""Load: 50 concurrent users on the dashboard (home), a datanet with 100k rows and a wallet whose ledger holds 1M
postings, in PostgreSQL (its own database, mf_load_bench, created and dropped here), served by gunicorn on
127.0.0.1 with production settings (DEBUG off, collected static files).

Data (timed, reported as load_seconds): 100 contributors, 100 contributions of 1,000 accepted rows each in one
public datanet and a published version of all 100k; 500,000 balanced ledger transactions (1,000,000 postings),
written with set-based SQL. The ledger's row triggers are disabled only inside this bench database while loading
(1M per-row balance updates and deferred balance checks would dominate), and the invariants they guard are then
re-established and checked in SQL: every transaction sums to zero and every balance equals the sum of its postings.
Transaction hashes are unique stand-ins (sha256 of the sequence number), not the chain a real ledger would have.
The bench user owns the datanet and receives 100k of the postings (20k settlements with model/datanet labels).

gunicorn runs with --preload (the app, URL configuration included, loaded before the workers fork), and every page
gets WARMUP_SECONDS of 8 users before it is measured (not counted): steady-state latency, not cold workers.
Each page gets PHASE_SECONDS of 50 users, each fetching the page in a loop with a think time of 0.5-1.5 s
(users, not a flood), over persistent connections. Baseline in the same run: a static file through WhiteNoise.
Per page: p50/p95 latency, requests/s, and the number of SQL queries of one request (CaptureQueriesContext).
Prints p95 last; writes bench/results/load.json. Goal p95 <= 150 ms."""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ADMIN_URL = os.environ.get("MF_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DB_NAME = "mf_load_bench"
DB_URL = ADMIN_URL.rsplit("/", 1)[0] + "/" + DB_NAME
USERS = 50
PHASE_SECONDS = float(os.environ.get("MF_BENCH_LOAD_SECONDS", "20"))
WARMUP_SECONDS, WARMUP_USERS = 3.0, 8
WORKERS = int(os.environ.get("MF_BENCH_LOAD_WORKERS", "4"))
ROWS, CONTRIBUTIONS, TRANSACTIONS = 100_000, 100, 500_000
VAR = Path(tempfile.mkdtemp(prefix="mf-load-bench-"))
ENV = {
    **os.environ,
    "DATABASE_URL": DB_URL,
    "DJANGO_DEBUG": "false",
    "DJANGO_SECRET_KEY": "load-bench-secret-key-0123456789-abcdefghijklmnop",
    "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
    "DJANGO_SECURE_SSL_REDIRECT": "false",
    "MF_VAR_DIR": str(VAR),
    "CACHE_URL": "locmem://",
    "MF_LOG_LEVEL": "WARNING",
}


def admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
        conn.execute(sql)


def manage(*args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=ENV, check=True, stdout=subprocess.DEVNULL)


LEDGER_SQL = """
ALTER TABLE ledger_posting DISABLE TRIGGER USER;
ALTER TABLE ledger_transaction DISABLE TRIGGER USER;
ALTER TABLE ledger_account DISABLE TRIGGER USER;
ALTER TABLE ledger_chainhead DISABLE TRIGGER USER;
INSERT INTO ledger_transaction (id, idempotency_key, kind, status, memo, metadata, request_hash, seq, prev_hash, hash,
                                created_at)
SELECT n, 'bench:' || n,
       CASE WHEN n %% 5 = 0 THEN 'settlement' ELSE 'grant' END, 'posted', '',
       CASE WHEN n %% 5 = 0 THEN jsonb_build_object('model', 'Model ' || (n %% 7), 'datanet', 'Datanet ' || (n %% 3))
            ELSE '{}'::jsonb END,
       md5(n::text), n,
       encode(sha256(((n - 1)::text)::bytea), 'hex'), encode(sha256((n::text)::bytea), 'hex'),
       now() - ((%(tx)s - n) * interval '1 minute' * 0.7)
FROM generate_series(1, %(tx)s) AS n;
INSERT INTO ledger_posting (transaction_id, account_id, amount)
SELECT n, %(issuance)s, -(1000 + n %% 997) FROM generate_series(1, %(tx)s) AS n
UNION ALL
SELECT n, CASE WHEN n %% 5 = 0 THEN %(bench_account)s ELSE %(first_account)s + (n %% %(accounts)s) END, 1000 + n %% 997
FROM generate_series(1, %(tx)s) AS n;
UPDATE ledger_account a SET balance = s.total
FROM (SELECT account_id, sum(amount) AS total FROM ledger_posting GROUP BY account_id) s WHERE a.id = s.account_id;
UPDATE ledger_chainhead SET seq = %(tx)s, prev_hash = encode(sha256(((%(tx)s - 1)::text)::bytea), 'hex'),
       hash = encode(sha256((%(tx)s::text)::bytea), 'hex');
SELECT setval(pg_get_serial_sequence('ledger_transaction', 'id'), %(tx)s);
ALTER TABLE ledger_posting ENABLE TRIGGER USER;
ALTER TABLE ledger_transaction ENABLE TRIGGER USER;
ALTER TABLE ledger_account ENABLE TRIGGER USER;
ALTER TABLE ledger_chainhead ENABLE TRIGGER USER;
"""
CHECKS_SQL = {
    "unbalanced transactions": "SELECT count(*) FROM (SELECT transaction_id FROM ledger_posting GROUP BY 1 "
    "HAVING sum(amount) <> 0) t",
    "balances out of step": "SELECT count(*) FROM ledger_account a LEFT JOIN (SELECT account_id, sum(amount) s "
    "FROM ledger_posting GROUP BY 1) p ON p.account_id = a.id WHERE a.balance <> coalesce(p.s, 0)",
}


def load_data() -> dict:
    import django

    django.setup()
    from django.contrib.auth.hashers import make_password
    from django.db import connection

    from accounts.models import User
    from datanets import services as datanet_services
    from datanets.models import Contribution, Datanet
    from ledger.models import Account, ChainHead

    password = make_password("bench-password-123")
    bench = User.objects.create(username="bench", email="bench@example.com", password=password)
    people = User.objects.bulk_create(
        [User(username=f"contributor{i}", email=f"c{i}@example.com", password=password) for i in range(100)]
    )
    datanet = datanet_services.datanet_create(
        owner=bench, name="Load bench", kind="instruction", summary="100k rows.", policy=Datanet.Policy.OPEN
    )
    contributions = Contribution.objects.bulk_create(
        [
            Contribution(
                datanet=datanet,
                contributor=people[i],
                file=f"contributions/bench/{i}.upload",
                original_name=f"part{i}.jsonl",
                size=100_000,
                sha256=f"{i:064x}",
                detected_format="jsonl",
                status=Contribution.Status.ACCEPTED,
                rows_total=ROWS // CONTRIBUTIONS,
                rows_accepted=ROWS // CONTRIBUTIONS,
                tokens=20 * ROWS // CONTRIBUTIONS,
                tokens_estimated=False,
            )  # fmt: skip
            for i in range(CONTRIBUTIONS)
        ]
    )
    first_contribution, first_person = contributions[0].pk, people[0].pk
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO datanets_record (datanet_id, contribution_id, contributor_id, line, content, text,
                content_hash, token_count, flags, flag_details, status, drop_reason, created_at)
            SELECT %(datanet)s, %(c0)s + n %% %(nc)s, %(p0)s + n %% %(nc)s, n / %(nc)s + 1,
                   jsonb_build_object('instruction', 'Question number ' || n || ' about growing food?',
                                      'output', 'Answer ' || n || ': water in the morning and mulch the beds.'),
                   'Question number ' || n || ' about growing food? Answer ' || n
                       || ': water in the morning and mulch the beds.',
                   encode(sha256(('row' || n)::bytea), 'hex'), 20, '[]', '{}', 'accepted', '', now()
            FROM generate_series(0, %(rows)s - 1) AS n
            """,
            {"datanet": datanet.pk, "c0": first_contribution, "p0": first_person, "nc": CONTRIBUTIONS, "rows": ROWS},
        )
    datanet_services.version_publish(datanet=datanet, actor=bench)

    wallets = Account.objects.bulk_create([Account(owner=u, role=Account.Role.USER) for u in [bench, *people]])
    issuance = Account.objects.create(role=Account.Role.ISSUANCE, shard=0, allow_negative=True)
    ChainHead.objects.get_or_create(pk=1)
    with connection.cursor() as cursor:
        # Two legs per transaction: the issuance account pays, a wallet receives (every 5th: the bench user's).
        params = {"tx": TRANSACTIONS, "issuance": issuance.pk, "bench_account": wallets[0].pk,
                  "first_account": wallets[1].pk, "accounts": len(people)}  # fmt: skip
        for statement in LEDGER_SQL.split(";\n"):
            if statement.strip():
                cursor.execute(statement, params if "%(" in statement else None)
        problems = {}
        for name, sql in CHECKS_SQL.items():
            cursor.execute(sql)
            problems[name] = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM ledger_posting")
        postings = cursor.fetchone()[0]
        cursor.execute("VACUUM ANALYZE")  # as autovacuum would have by then: visibility map, statistics
    assert problems == {"unbalanced transactions": 0, "balances out of step": 0}, problems
    return {"user_id": bench.pk, "datanet": datanet.slug, "postings": postings}


def query_counts(paths: dict[str, str], user_id: int) -> dict[str, int]:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from accounts.models import User

    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(User.objects.get(pk=user_id))
    counts = {}
    for name, path in paths.items():
        client.get(path)  # warm caches (content types, sessions) as in a running server
        with CaptureQueriesContext(connection) as queries:
            response = client.get(path)
        assert response.status_code == 200, (path, response.status_code)
        counts[name] = len(queries)
    return counts


def session_cookie(user_id: int) -> str:
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    from accounts.models import User

    user = User.objects.get(pk=user_id)
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    return f"{settings.SESSION_COOKIE_NAME}={session.session_key}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def user_loop(port, path, cookie, deadline, latencies, errors, seed):
    rng = random.Random(seed)
    time.sleep(rng.uniform(0, 1.0))  # users arrive spread over the first second
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        try:
            conn.request("GET", path, headers={"Cookie": cookie, "Host": "127.0.0.1"})
            response = conn.getresponse()
            response.read()
            ok = response.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        elapsed = time.perf_counter() - start
        (latencies if ok else errors).append(elapsed)
        time.sleep(rng.uniform(0.5, 1.5))
    conn.close()


def run_phase(port: int, path: str, cookie: str, users: int = USERS, seconds: float = PHASE_SECONDS) -> dict:
    latencies: list[float] = []
    errors: list[float] = []
    started = time.perf_counter()
    deadline = started + seconds
    threads = [
        threading.Thread(target=user_loop, args=(port, path, cookie, deadline, latencies, errors, i))
        for i in range(users)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "p50_ms": round(q[49] * 1000, 1),
        "p95_ms": round(q[94] * 1000, 1),
        "req_per_s": round(len(latencies) / wall, 1),
    }


def main() -> int:
    admin(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
    admin(f"CREATE DATABASE {DB_NAME}")
    server = None
    try:
        t0 = time.perf_counter()
        manage("migrate", "--no-input")
        migrate_s = time.perf_counter() - t0
        os.environ.update(ENV)
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
        t0 = time.perf_counter()
        world = load_data()
        load_s = time.perf_counter() - t0
        print(f"data: migrate {migrate_s:.1f} s, load {load_s:.1f} s ({ROWS:,} rows, {world['postings']:,} postings)")
        manage("collectstatic", "--no-input")
        paths = {"home": "/", "datanet": f"/datanets/{world['datanet']}/", "wallet": "/wallet/"}
        queries = query_counts(paths, world["user_id"])
        cookie = session_cookie(world["user_id"])
        from django.db import connections

        connections.close_all()
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "config.wsgi", "-w", str(WORKERS), "-b", f"127.0.0.1:{port}",
             "--log-level", "warning", "--backlog", "256", "--preload"],
            cwd=ROOT, env=ENV, start_new_session=True,
        )  # fmt: skip
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        from django.conf import settings
        from django.contrib.staticfiles.storage import staticfiles_storage

        static_path = settings.STATIC_URL + staticfiles_storage.stored_name("favicon.svg")
        static_url = "/" + static_path.lstrip("/")
        for path in [static_url, *paths.values()]:  # warm-up, not counted
            run_phase(port, path, cookie, users=WARMUP_USERS, seconds=WARMUP_SECONDS)
        results = {"baseline_static": run_phase(port, static_url, cookie)}
        for name, path in paths.items():
            results[name] = {**run_phase(port, path, cookie), "queries": queries[name]}
        results["data"] = {"rows": ROWS, "postings": world["postings"], "migrate_s": round(migrate_s, 1),
                           "load_s": round(load_s, 1), "users": USERS, "gunicorn_workers": WORKERS,
                           "phase_s": PHASE_SECONDS}  # fmt: skip
        for name, r in results.items():
            if name != "data":
                extra = f", {r['queries']} queries" if "queries" in r else ""
                print(
                    f"{name:16s} p50 {r['p50_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms  {r['req_per_s']:6.1f} req/s"
                    f"  ({r['requests']} ok, {r['errors']} errors{extra})"
                )
        out = ROOT / "bench" / "results"
        out.mkdir(exist_ok=True)
        flat = {f"{page}_{k}": v for page, r in results.items() for k, v in r.items()}
        (out / "load.json").write_text(json.dumps(flat, indent=2) + "\n")
        worst = max(results[p]["p95_ms"] for p in paths)
        print(f"p95 (worst page, goal <= 150 ms): {worst:.1f} ms")
        return 0
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        from django.db import connections

        connections.close_all()
        if not os.environ.get("MF_BENCH_LOAD_KEEP"):  # keep the database to look at query plans
            admin(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        shutil.rmtree(VAR, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
