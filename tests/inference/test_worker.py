"""One real round trip: a Celery worker process on the `inference` queue (thread pool, as `make run` starts it),
the embedded filesystem broker, a SQLite file and the file cache shared by both processes. Nothing inline."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CELERY = str(Path(sys.executable).with_name("celery"))

SETUP = """
import django; django.setup()
from pathlib import Path
from accounts.models import User
from ledger.services import credit_grant
from tests.inference.conftest import make_model
from tests.serving.conftest import save_random_adapter
from tests.tiny import build_tiny_model_dir
root = Path({root!r})
base = build_tiny_model_dir(root / "base")
adapter = save_random_adapter(base, root / "adapter", rank=4, targets=["q_proj", "v_proj"], seed=7)
owner = User.objects.create_user("owner", password="x")
caller = User.objects.create_user("caller", password="x")
staff = User.objects.create_superuser("staff", password="x")
make_model(owner=owner, tiny_dirs=(base, adapter))
credit_grant(user_id=caller.pk, amount_micro=5_000_000, granted_by=staff, key="grant")
"""

PRODUCE = """
import django, json, time; django.setup()
from accounts.models import User
from modelfactory import services
deadline = time.monotonic() + 120
while not services.inference_worker_alive():
    assert time.monotonic() < deadline, "the inference worker never reported in"
    time.sleep(0.5)
inference = services.inference_start(user=User.objects.get(username="caller"), slug="zorb-expert", source="api",
                                     prompt="Hello", max_new_tokens=5, temperature=0.0)
done = services.inference_wait(inference=inference)
print(json.dumps({"status": done.status, "output": done.output, "completion_tokens": done.completion_tokens,
                  "fee": done.fee_micro, "reserved": done.fee_reserved_micro}))
"""


def _python(code: str, env: dict) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_a_real_inference_worker_answers(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "DATABASE_URL", "CACHE_URL")}  # fmt: skip
    env.update({"MF_VAR_DIR": str(tmp_path / "var"), "MF_WORKER_HEARTBEAT_SECONDS": "1",
                "DJANGO_SETTINGS_MODULE": "config.settings", "PYTHONPATH": str(ROOT)})  # fmt: skip
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True, timeout=300)
    _python(SETUP.format(root=str(tmp_path / "models")), env)
    worker = subprocess.Popen(
        [CELERY, "-A", "config", "worker", "-P", "threads", "-c", "4", "-Q", "inference",
         "-n", f"inference-{uuid.uuid4().hex[:8]}@%h", "--without-gossip", "--without-mingle", "--loglevel=WARNING"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        answer = json.loads(_python(PRODUCE, env).strip().splitlines()[-1])
    finally:
        worker.terminate()
        try:
            output = worker.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            worker.kill()
            output = worker.communicate()[0]
    assert answer["status"] == "completed", output
    assert 1 <= answer["completion_tokens"] <= 5
    assert 0 < answer["fee"] <= answer["reserved"]
