"""One whole training job through the product, as a user with a big datanet gets it (issue 23): the datanet is made,
uploaded, reviewed and published by the product's services, and the job runs through `finetune_run` (what the gpu
worker's task calls): training, evaluation, the attribution index. Prints each phase's wall time and peak resident
memory (VmHWM, reset when the job's phase changes), the job's end state and message, and its figures.

    python bench/bench_job.py                                # 1,000 short rows, the Thorough preset, 1 thread
    python bench/bench_job.py --rows 200 --preset balanced --threads 2

The rows are bench_memory.py's short instruction rows (about 40 tokens each, the worst case for packing), uploaded
by 4 contributors. Runs in a temporary MF_VAR_DIR with its own SQLite database (or DATABASE_URL when set); the
default base model comes from MF_BASE_MODEL_DIR (var/models). Writes bench/results/job.json (or --output)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
GB = 2**30
CONTRIBUTORS = 4


def _models_dir() -> Path:
    for folder in (ROOT / "var" / "models", Path("/work/main/var/models")):
        if (folder / "smollm2-135m-instruct").exists():
            return folder
    return ROOT / "var" / "models"


def run(args) -> dict:
    import django

    django.setup()
    import torch
    from django.contrib.auth import get_user_model
    from django.core.files.base import ContentFile
    from django.db import connection

    from bench.bench_memory import make_rows
    from datanets import services as datanets
    from modelfactory.models import FineTuneJob
    from modelfactory.services import base_model_ensure_default, finetune_launch, finetune_run
    from modelfactory.training.memory import peak_rss_bytes, reset_peak_rss

    torch.set_num_threads(args.threads)
    User = get_user_model()
    curator = User.objects.create_user(username="bench-curator", is_staff=True)
    people = [User.objects.create_user(username=f"bench-contributor-{n}") for n in range(CONTRIBUTORS)]
    datanet = datanets.datanet_create(
        owner=curator, name="Bench job datanet", kind="instruction", summary="Rows made by bench_job.py.",
        tags=["bench"], policy="approval",
    )  # fmt: skip
    rows = make_rows(args.rows)
    share = -(-len(rows) // CONTRIBUTORS)
    for n, person in enumerate(people):
        lines = [json.dumps(r["content"]) for r in rows[n * share : (n + 1) * share]]
        upload = ContentFile(("\n".join(lines) + "\n").encode(), name=f"contributor-{n}.jsonl")
        contribution = datanets.contribution_create(datanet=datanet, contributor=person, upload=upload, enqueue=False)
        datanets.contribution_ingest(contribution_id=contribution.pk)
    for contribution in datanet.contributions.filter(status="needs_review"):
        datanets.contribution_approve(contribution=contribution, curator=curator, note="bench")
    version = datanets.version_publish(datanet=datanet, actor=curator, notes="bench")
    print(f"datanet version {version.number}: {version.row_count} rows from {version.contributor_count} contributors")
    base = base_model_ensure_default()
    job, _ = finetune_launch(
        user=curator, base_model_slug=base.slug, version_ids=[version.pk], preset=args.preset,
        name=f"bench job {args.rows} rows {args.preset}", idempotency_key="bench-job",
    )  # fmt: skip
    print(f"estimate shown before launch: {json.dumps(job.estimate)}")
    connection.close()  # the job runs in a thread with its own connection; this one is used again below

    worker = threading.Thread(target=finetune_run, kwargs={"job_id": job.pk, "hostname": "bench"}, daemon=True)
    phases: dict[str, dict] = {}
    current, since = "start", time.perf_counter()
    reset_peak_rss()
    started = time.perf_counter()
    worker.start()
    last_line = ""
    while True:
        time.sleep(0.5)
        job = FineTuneJob.objects.get(pk=job.pk)
        phase = job.phase or job.status
        if phase != current or not (job.is_active or worker.is_alive()):
            peak = peak_rss_bytes()
            reset_peak_rss()
            entry = phases.setdefault(current, {"seconds": 0.0, "peak_bytes": 0})
            entry["seconds"] = round(entry["seconds"] + time.perf_counter() - since, 1)
            entry["peak_bytes"] = max(entry["peak_bytes"], peak)
            current, since = phase, time.perf_counter()
        line = f"[{time.perf_counter() - started:7.0f} s] {job.status} {phase}: {job.message}"
        if job.total_steps:
            line += f" (step {job.step} of {job.total_steps})"
        if line.split("] ", 1)[1] != last_line:
            print(line, flush=True)
            last_line = line.split("] ", 1)[1]
        if not job.is_active and not worker.is_alive():
            break
    total = time.perf_counter() - started
    phases.pop("start", None)
    result = {
        "rows": args.rows,
        "preset": args.preset,
        "threads": args.threads,
        "status": job.status,
        "message": job.message,
        "seconds": round(total, 1),
        "estimate": job.estimate,
        "metrics": {k: v for k, v in (job.metrics or {}).items() if not isinstance(v, list | dict)},
        "phases": phases,
        "peak_bytes": max((p["peak_bytes"] for p in phases.values()), default=0),
    }
    print(f"\njob {job.status} in {total:.0f} s: {job.message}")
    print("| phase | seconds | peak RSS |\n|---|---|---|")
    for name, entry in phases.items():
        print(f"| {name} | {entry['seconds']:.0f} | {entry['peak_bytes'] / GB:.2f} GB |")
    print(f"metrics: {json.dumps(result['metrics'])}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--preset", default="thorough")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "job.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = run(args)
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2))
        return 0 if result["status"] == "succeeded" else 1
    var = Path(tempfile.mkdtemp(prefix="mf-bench-job-"))
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "MF_VAR_DIR": str(var),
        "MF_BASE_MODEL_DIR": str(_models_dir()),
        "OMP_NUM_THREADS": str(args.threads),
        "PYTHONUNBUFFERED": "1",
    }
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    return subprocess.run([sys.executable, __file__, "--child", *(argv if argv is not None else sys.argv[1:])],
                          cwd=ROOT, env=env).returncode  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
