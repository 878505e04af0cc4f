"""memory.release_freed gives the heap's free pages back to the system, the ones below a live block too (Linux/glibc):
what a stage freed does not stay in the process for the next stage or the worker's next job. Under jemalloc too
(Debian's libjemalloc2, preloaded as bench_memory.py --preload does), whose freed pages malloc_trim does not see;
the training worker starts under it where it is installed (scripts/with-jemalloc.sh)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
JEMALLOC = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
SCRIPT = """
import sys
from modelfactory.training.memory import release_freed

def resident():
    return int(open("/proc/self/statm").read().split()[1]) * 4096

blocks = [bytearray(b"x" * 100_000) for _ in range(2000)]  # 200 MB in the heap: each block is under the mmap threshold
last = blocks.pop()  # still alive: the heap's top cannot shrink past it, so freeing the others gives nothing back
before = resident()
del blocks
freed = resident()
if sys.argv[1] == "trim":
    release_freed()
print(before, freed, resident())
"""


def _run(mode: str, preload: Path | None) -> tuple[int, int, int]:
    env = {**os.environ, "LD_PRELOAD": str(preload)} if preload else None
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=ROOT, capture_output=True, text=True, check=True,
                          env=env)  # fmt: skip
    before, freed, after = (int(x) for x in done.stdout.split())
    return before, freed, after


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads resident memory from /proc (Linux)")
def test_release_freed_gives_back_the_free_pages_below_a_live_block():
    mb = 2**20
    before, freed, after = _run("keep", None)
    assert freed > before - 20 * mb  # without the trim the 1,999 freed blocks stay resident
    before, freed, after = _run("trim", None)
    assert freed > before - 20 * mb
    assert after < before - 150 * mb  # 1,999 x 100 kB freed: at least 150 MB of it leaves the process


@pytest.mark.skipif(not JEMALLOC.exists(), reason="needs Debian's libjemalloc2")
def test_release_freed_purges_jemalloc_arenas_when_it_is_the_allocator():
    mb = 2**20
    before, freed, after = _run("keep", JEMALLOC)
    assert after > 50 * mb  # jemalloc keeps part of what was freed until its decay time (10 s)
    before, freed, after = _run("trim", JEMALLOC)
    assert after < before - 150 * mb and after < freed - 50 * mb


def _under_worker_script(jemalloc: str | None) -> str:
    """What a command started by scripts/with-jemalloc.sh (how the training worker starts) finds in its own
    memory map: "jemalloc" when the library is loaded, "glibc" otherwise."""
    env = {key: value for key, value in os.environ.items() if key not in ("LD_PRELOAD", "MF_JEMALLOC")}
    if jemalloc is not None:
        env["MF_JEMALLOC"] = jemalloc
    code = "print('jemalloc' if 'libjemalloc' in open('/proc/self/maps').read() else 'glibc')"
    done = subprocess.run([str(ROOT / "scripts" / "with-jemalloc.sh"), sys.executable, "-c", code], cwd=ROOT,
                          capture_output=True, text=True, check=True, env=env)  # fmt: skip
    return done.stdout.strip()


@pytest.mark.skipif(not JEMALLOC.exists(), reason="needs Debian's libjemalloc2")
def test_the_training_worker_runs_under_jemalloc_where_it_is_installed():
    assert _under_worker_script(None) == "jemalloc"
    assert _under_worker_script(str(JEMALLOC)) == "jemalloc"
    assert _under_worker_script("") == "glibc"  # MF_JEMALLOC= turns it off


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the memory map from /proc (Linux)")
def test_the_training_worker_still_starts_under_glibc_without_jemalloc():
    assert _under_worker_script("/nonexistent/libjemalloc.so.2") == "glibc"
