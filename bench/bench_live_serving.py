"""The live serving path under load: the whole stack as `make run` starts it (scripts/run.sh: web server, the
gpu/default/inference Celery workers, the embedded filesystem broker and file cache, SQLite), the default base model,
8 published adapters, and 1/4/8/16 concurrent streaming clients (the official `openai` client) asking short questions
for a fixed time. Prints aggregate tokens/s, time to first token p50/p95 and per-stream tokens/s for each level, as
ratios against the 1-stream baseline of the same run; then the same with attribution running.

    python bench/bench_live_serving.py                      # the full run: 60 s per level, 1/4/8/16 streams
    python bench/bench_live_serving.py --seconds 20 --streams 1,8   # a short check

Attribution phases: "serving only" runs with the default-queue worker (attribution and settlement) paused
(SIGSTOP), so the answers' attribution tasks wait in the broker; "with attribution" resumes it, so that backlog and
the attribution of every new answer run while the clients are served. At the end the bench waits for every answer's
attribution to finish and reports the longest time an answer waited for it (it must stay under
MF_ATTRIBUTION_SWEEP_MINUTES, after which the sweep would enqueue it again).

Adapters are random rank-8 LoRA adapters on every linear layer (as bench_serving.py makes them: no training), each a
model trained on the demo datanet that `make run` seeds, with a real attribution index over its rows (built with
attribution.services.index_build, as the training job's indexing stage does). Everything lives in a temporary
MF_VAR_DIR; the stack's torch threads are --threads (1 by default: these machines are shared)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUESTIONS = [
    "How often should I water tomatoes?", "What is compost?", "When do I plant garlic?", "Why are my leaves yellow?",
    "How deep should I plant carrots?", "What grows well in shade?", "How do I keep slugs away?",
    "When should I prune roses?", "Is mulch useful?", "How much sun do peppers need?", "What is a raised bed?",
    "How do I start seeds indoors?", "Which herbs are easy to grow?", "How do I know when soil is dry?",
    "What is crop rotation?", "Can I grow lettuce in summer?",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _base_models_dir() -> Path:
    for folder in (ROOT / "var" / "models", Path("/work/main/var/models")):
        if (folder / "smollm2-135m-instruct").exists():
            return folder
    return ROOT / "var" / "models"  # register_base_model converts the bundled GGUF there


def _manage(env: dict, *args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)


def _setup(adapters: int, rank: int, indexes: int, log) -> SimpleNamespace:
    """In this process (the same MF_VAR_DIR as the stack): 8 published models on the demo datanet, each with a
    random adapter and its attribution index; a caller with credit and an API token."""
    import django

    django.setup()
    import torch
    from django.contrib.auth import get_user_model

    from accounts.services import api_token_create
    from attribution.models import ModelIndex
    from attribution.services import index_build
    from datanets.models import DatanetVersion
    from ledger.services import credit_grant
    from modelfactory import services as mf
    from modelfactory.models import BaseModel, FineTuneJob
    from modelfactory.selectors import finetune_rows

    sys.path.insert(0, str(ROOT / "bench"))
    from bench_serving import make_adapters  # noqa: PLC0415 (a sibling script, importable only from here)

    torch.set_num_threads(1)
    User = get_user_model()
    owner = User.objects.get(username="demo")
    caller = User.objects.create_user(username="bench-caller")  # calls with an API token only
    version = DatanetVersion.objects.order_by("pk").first()
    base = BaseModel.objects.get(slug="smollm2-135m-instruct")
    credit_grant(user_id=caller.pk, amount_micro=1_000_000_000, granted_by=owner, key="bench-live-serving")
    folder = Path(os.environ["MF_VAR_DIR"]) / "bench-adapters"
    log(f"making {adapters} adapters and {indexes} attribution indexes")
    paths = make_adapters(Path(base.path), folder, adapters, rank)
    slugs, built = [], []
    for index, path in enumerate(paths):
        mf.finetune_jobs._enqueue = lambda job_id, resume=False: None  # no training: the adapter is made above
        job, _ = mf.finetune_launch(
            user=owner, base_model_slug=base.slug, version_ids=[version.pk], preset="quick",
            name=f"Garden helper {index + 1}", idempotency_key=f"bench-live-{index}",
        )  # fmt: skip
        FineTuneJob.objects.filter(pk=job.pk).update(status=FineTuneJob.Status.SUCCEEDED, progress=1)
        job.refresh_from_db()
        row_ids = [int(row["id"]) for row in finetune_rows(versions=[version])[0]]
        result = SimpleNamespace(
            adapter_dir=path, zip_path="", artifact_hash="0" * 64, model_card="Random adapter (benchmark).",
            metrics={}, train_row_ids=row_ids, eval_row_ids=[],
        )  # fmt: skip
        if index < indexes:
            built.append(index_build(job=job, result=result))
        else:  # the same index files as an earlier model: the same attribution work per answer, in less set-up time
            ModelIndex.objects.create(
                **{f.name: getattr(built[index % indexes], f.name) for f in ModelIndex._meta.concrete_fields
                   if f.name not in ("id", "job", "created_at")}, job=job,
            )  # fmt: skip
        model = mf.trained_model_create_from_job(job=job, result=result)
        mf.trained_model_publish(user=owner, slug=model.slug, price_per_1k_tokens=1000, visibility="public")
        slugs.append(model.slug)
    _, key = api_token_create(user=caller, name="bench")
    return SimpleNamespace(slugs=slugs, key=key)


class Stack:
    """scripts/run.sh in its own process group; the default-queue worker can be paused and resumed."""

    def __init__(self, env: dict, log_path: Path):
        self.log = open(log_path, "w")  # noqa: SIM115 (kept open while the stack runs)
        self.process = subprocess.Popen(
            ["bash", "scripts/run.sh"], cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def default_worker(self) -> list[int]:
        import psutil

        for child in psutil.Process(self.process.pid).children(recursive=True):
            command = child.cmdline()
            if "worker" in command and "default" in command and "-Q" in command:
                return [child.pid] + [c.pid for c in child.children(recursive=True)]
        raise RuntimeError("the default-queue worker is not running")

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) used so far by each part of the stack: web, inference, default, gpu."""
        import psutil

        used: dict[str, float] = {}
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                command, times = child.cmdline(), child.cpu_times()
            except psutil.Error:
                continue
            part = "web" if "runserver" in command else next(
                (q for q in ("inference", "default", "gpu") if "-Q" in command and q in command), "other"
            )  # fmt: skip
            used[part] = used.get(part, 0.0) + times.user + times.system
        return used

    def signal_default_worker(self, sig: int) -> None:
        for pid in self.default_worker():
            os.kill(pid, sig)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)  # run.sh's trap stops its children
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


def _wait_ready(url: str, timeout: float) -> None:
    from core.models import WorkerHeartbeat

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:  # noqa: S310 (our own server)
                beats = WorkerHeartbeat.objects.values_list("queues", flat=True)
                if response.status == 200 and any("inference" in queues for queues in beats):
                    return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError("the stack did not start in time (see the log)")


def _ask(client, slug: str, question: str, max_tokens: int) -> dict:
    started = time.perf_counter()
    first = None
    tokens = 0
    stream = client.chat.completions.create(
        model=slug, messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    ended = time.perf_counter()
    return {"ttft": (first or ended) - started, "tokens": tokens, "seconds": ended - started}


def run_level(url: str, key: str, slugs: list[str], streams: int, seconds: float, max_tokens: int) -> dict:
    """`streams` clients, each asking one question after another for `seconds`; tokens counted to the end of the
    last answers begun in time."""
    import openai

    answers: list[list[dict]] = [[] for _ in range(streams)]
    errors: list[str] = []
    begin = time.perf_counter()
    deadline = begin + seconds

    def client_loop(number: int) -> None:
        with openai.OpenAI(api_key=key, base_url=f"{url}/v1", max_retries=3, timeout=300) as client:
            asked = number
            while True:  # at least one question each
                try:
                    answers[number].append(
                        _ask(client, slugs[asked % len(slugs)], QUESTIONS[asked % len(QUESTIONS)], max_tokens)
                    )
                except openai.APIError as exc:
                    errors.append(f"{exc.__class__.__name__}: {exc}")
                asked += streams
                if time.perf_counter() >= deadline:
                    break

    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - begin
    flat = [a for per in answers for a in per]
    tokens = sum(a["tokens"] for a in flat)
    ttfts = [a["ttft"] for a in flat]
    return {
        "streams": streams,
        "answers": len(flat),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "tokens": tokens,
        "seconds": round(elapsed, 2),
        "tokens_per_s": tokens / elapsed,
        "ttft_p50": _percentile(ttfts, 0.5),
        "ttft_p95": _percentile(ttfts, 0.95),
        "per_stream_tokens_per_s": statistics.mean(sum(a["tokens"] for a in per) / elapsed for per in answers),
    }


def _timings(log_path: Path, offset: int) -> tuple[dict, int]:
    """Medians of the per-answer hop times the stack logged (logger modelfactory.timing) since `offset`."""
    with open(log_path, "rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
        end = log.tell()
    hops: dict[str, list[float]] = {}
    for line in text.splitlines():
        for side in ("worker ", "web "):
            at = line.find("modelfactory.timing")
            if at >= 0 and side in line[at:]:
                data = json.loads(line[line.index("{", at) :])
                for name, value in data.items():
                    if name.endswith("_ms") or name.endswith("_ms_mean"):
                        hops.setdefault(name, []).append(value)
    return {name: statistics.median(values) for name, values in hops.items()}, end


def _print_table(title: str, rows: list[dict], baseline: float) -> None:
    print(f"\n{title}")
    print("| streams | answers | tokens/s | vs 1 stream | TTFT p50 s | TTFT p95 s | per-stream tokens/s | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['streams']} | {r['answers']} | {r['tokens_per_s']:.2f} | {r['tokens_per_s'] / baseline:.2f}x | "
            f"{r['ttft_p50']:.2f} | {r['ttft_p95']:.2f} | {r['per_stream_tokens_per_s']:.2f} | {r['errors']} |"
        )


def _attribution_drain(timeout: float) -> dict:
    """Waits until every answer's attribution finished; the longest an answer waited for it (created -> finished)."""
    from django.db.models import F, Max

    from attribution.models import Attribution
    from modelfactory.models import Inference

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        completed = Inference.objects.filter(status=Inference.Status.COMPLETED).count()
        finished = Attribution.objects.filter(status__in=Attribution.FINISHED).count()
        if finished >= completed:
            break
        time.sleep(2)
    longest = Attribution.objects.filter(finished_at__isnull=False).aggregate(m=Max(F("finished_at") - F("created_at")))
    return {
        "answers": Inference.objects.filter(status=Inference.Status.COMPLETED).count(),
        "attributed": Attribution.objects.filter(status__in=Attribution.FINISHED).count(),
        "drain_seconds": round(time.monotonic() - started, 1),
        "longest_wait_seconds": round(longest["m"].total_seconds(), 1) if longest["m"] else None,
    }


def _flat(results: dict) -> dict:
    """One figure per key, for bench/run.py's table: per phase and level, and the ratios the goals are about."""
    flat = {"seconds_per_level": results["seconds"], "torch_threads": results["threads"],
            "load_average_start": round(results["load_average_start"][0], 2),
            "load_average_end": round(results["load_average_end"][0], 2)}  # fmt: skip
    baseline = None
    for phase in ("off", "on"):
        for row in results.get(phase, []):
            baseline = baseline or row["tokens_per_s"]
            prefix = f"{phase}_{row['streams']}"
            flat[f"{prefix}_tokens_per_s"] = round(row["tokens_per_s"], 2)
            flat[f"{prefix}_vs_1_stream"] = round(row["tokens_per_s"] / baseline, 2)
            flat[f"{prefix}_ttft_p50_s"] = round(row["ttft_p50"], 2)
            flat[f"{prefix}_ttft_p95_s"] = round(row["ttft_p95"], 2)
            flat[f"{prefix}_per_stream_tokens_per_s"] = round(row["per_stream_tokens_per_s"], 2)
            flat[f"{prefix}_errors"] = row["errors"]
            flat[f"{prefix}_hops_ms"] = json.dumps(row.get("hops_ms_median", {}))
            flat[f"{prefix}_cpu_cores"] = json.dumps(row.get("cpu_share", {}))
    for off, on in zip(results.get("off", []), results.get("on", []), strict=False):
        flat[f"attribution_ratio_{off['streams']}"] = round(on["tokens_per_s"] / off["tokens_per_s"], 2)
    for name, value in results.get("attribution", {}).items():
        flat[f"attribution_{name}"] = value
    return flat


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="how long each level runs (full run: 60)")
    parser.add_argument("--streams", default="1,4,8,16", help="concurrency levels; the first is the baseline")
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument(
        "--indexes",
        type=int,
        default=8,
        help="attribution indexes built (the other models share theirs; 1 for a "
        "quick check: building one takes about 20 s of CPU)",
    )
    parser.add_argument("--max-tokens", type=int, default=48, help="answer length asked for")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every process of the stack")
    parser.add_argument("--attribution", choices=["both", "off", "on"], default="both")
    parser.add_argument("--keep", action="store_true", help="keep the temporary MF_VAR_DIR (and its stack log)")
    parser.add_argument("--env", action="append", default=[], help="extra KEY=VALUE for the stack (repeatable)")
    args = parser.parse_args(argv)
    levels = [int(n) for n in args.streams.split(",")]
    var = Path(tempfile.mkdtemp(prefix="mf-live-bench-"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "MF_VAR_DIR": str(var),
        "MF_BASE_MODEL_DIR": str(_base_models_dir()),
        "MF_RUN_ADDR": f"127.0.0.1:{port}",
        "MF_THROTTLE_GENERATE": "100000/min",
        "MF_THROTTLE_USER": "100000/min",
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "PYTHONUNBUFFERED": "1",
    }
    for item in args.env:
        name, _, value = item.partition("=")
        env[name] = value
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CACHE_URL"):
        if name not in dict(item.partition("=")[::2] for item in args.env):
            env.pop(name, None)  # the embedded defaults, as `make run` has them
    os.environ.clear()
    os.environ.update(env)

    logging.getLogger("httpx2").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    log(f"stack in {var}, load average {os.getloadavg()}")
    _manage(env, "migrate", "--noinput")
    _manage(env, "register_base_model")
    _manage(env, "bootstrap")
    setup = _setup(args.adapters, args.rank, min(args.indexes, args.adapters), log)
    stack = Stack(env, var / "stack.log")
    results: dict = {"load_average_start": os.getloadavg(), "seconds": args.seconds, "threads": args.threads}
    try:
        _wait_ready(url, timeout=300)
        log("stack ready; warming every adapter up")
        run_level(url, setup.key, setup.slugs, len(setup.slugs), 0.001, 4)
        phases = {"off": "serving only (attribution paused)", "on": "with attribution running"}
        chosen = ["off", "on"] if args.attribution == "both" else [args.attribution]
        baseline = None
        for phase in chosen:
            stack.signal_default_worker(signal.SIGSTOP if phase == "off" else signal.SIGCONT)
            rows = []
            for streams in levels:
                log(f"{phases[phase]}: {streams} streams for {args.seconds:g} s")
                offset = (var / "stack.log").stat().st_size
                cpu_before = stack.cpu_seconds()
                row = run_level(url, setup.key, setup.slugs, streams, args.seconds, args.max_tokens)
                cpu_after = stack.cpu_seconds()
                row["cpu_share"] = {
                    part: round((cpu_after[part] - cpu_before.get(part, 0.0)) / row["seconds"], 2) for part in cpu_after
                }  # cores' worth of CPU each part used while the clients ran
                row["hops_ms_median"], _ = _timings(var / "stack.log", offset)
                log(f"  hop medians (ms): {json.dumps(row['hops_ms_median'])}; CPU (cores): {row['cpu_share']}")
                rows.append(row)
            baseline = baseline or rows[0]["tokens_per_s"]
            _print_table(f"{phases[phase]} (ratios vs {levels[0]} stream(s), serving only)", rows, baseline)
            results[phase] = rows
        if "off" in results and "on" in results:
            print("\nwith attribution / serving only, aggregate tokens/s:")
            for off, on in zip(results["off"], results["on"], strict=True):
                print(f"  {off['streams']} streams: {on['tokens_per_s'] / off['tokens_per_s']:.2f}")
        stack.signal_default_worker(signal.SIGCONT)
        log("waiting for every answer's attribution")
        results["attribution"] = _attribution_drain(timeout=1800)
        print("attribution:", json.dumps(results["attribution"]))
    finally:
        with contextlib.suppress(Exception):  # already gone
            stack.signal_default_worker(signal.SIGCONT)
        stack.stop()
    results["load_average_end"] = os.getloadavg()
    log(f"load average {results['load_average_end']}; stack log: {var / 'stack.log'}")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "live_serving.json").write_text(json.dumps(_flat(results), indent=2) + "\n")
    if not args.keep:
        import shutil

        shutil.rmtree(var, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
