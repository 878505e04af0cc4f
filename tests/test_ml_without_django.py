"""The pure cores (ingest, training loop, serving engine, attribution math, ledger arithmetic, shared helpers) are plain
Python: every one of their modules imports without Django or Celery, as on a GPU machine that runs
bench/gpu_check.py or the benchmarks with nothing but torch + transformers + peft. `make lint` (import-linter,
.importlinter) checks the same arrows statically; this runs them."""

import pkgutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PURE_CORES = [
    "datanets.ingest",
    "modelfactory.training",
    "modelfactory.serving",
    "modelfactory.export",
    "attribution.engine",
    "attribution.quality",  # the benches write it, the pages read it
    "ledger.calc",
    "common",
]


def _modules(package: str) -> list[str]:
    folder = ROOT.joinpath(*package.split("."))
    return [package] + [f"{package}.{info.name}" for info in pkgutil.iter_modules([str(folder)])]


def test_every_module_of_every_pure_core_is_listed():
    modules = [name for core in PURE_CORES for name in _modules(core)]
    assert "modelfactory.training.loop" in modules and "datanets.ingest.readers" in modules
    assert len(modules) >= 30


def test_pure_cores_import_with_django_and_celery_missing():
    modules = [name for core in PURE_CORES for name in _modules(core)]
    # sys.modules[name] = None makes any `import name` raise ImportError, as if the package were not installed
    code = (
        "import importlib, sys\n"
        "for name in ('django', 'celery', 'kombu', 'rest_framework'):\n"
        "    sys.modules[name] = None\n"
        f"for module in {modules!r}:\n"
        "    importlib.import_module(module)\n"
        "print('imported', len(sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("imported")
