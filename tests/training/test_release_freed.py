"""memory.release_freed gives the heap's free pages back to the system, the ones below a live block too (Linux/glibc):
what a stage freed does not stay in the process for the next stage or the worker's next job."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
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


def _run(mode: str) -> tuple[int, int, int]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=ROOT, capture_output=True, text=True, check=True)
    before, freed, after = (int(x) for x in done.stdout.split())
    return before, freed, after


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads resident memory from /proc (Linux)")
def test_release_freed_gives_back_the_free_pages_below_a_live_block():
    mb = 2**20
    before, freed, after = _run("keep")
    assert freed > before - 20 * mb  # without the trim the 1,999 freed blocks stay resident
    before, freed, after = _run("trim")
    assert freed > before - 20 * mb
    assert after < before - 150 * mb  # 1,999 x 100 kB freed: at least 150 MB of it leaves the process
