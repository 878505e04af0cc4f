"""The ML code (training loop, attribution math, span index) is plain Python: it imports without Django or Celery,
as on a GPU machine that runs bench/gpu_check.py or the benchmarks with nothing but torch + transformers + peft."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = [
    "modelfactory.training.finetune",
    "modelfactory.training.distributed",
    "modelfactory.training.devices",
    "modelfactory.training.tiny",
    "attribution.engine.index",
    "attribution.engine.spans",
    "attribution.engine.combine",
    "attribution.engine.valuation",
    "attribution.engine.validation",
]


def test_ml_modules_import_with_django_and_celery_missing():
    # sys.modules[name] = None makes any `import name` raise ImportError, as if the package were not installed
    code = (
        "import importlib, sys\n"
        "for name in ('django', 'celery', 'kombu', 'rest_framework'):\n"
        "    sys.modules[name] = None\n"
        f"for module in {MODULES!r}:\n"
        "    importlib.import_module(module)\n"
        "print('imported')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "imported"
