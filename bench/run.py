"""Runs every bench/bench_*.py in its own process; each prints its figures and writes bench/results/<name>.json.

Benchmarks measure speed against a baseline taken in the same run (these machines are shared and noisy); tests,
not benchmarks, check behaviour."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def main(argv: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if argv:
        scripts = [s for s in scripts if any(name in s.stem for name in argv)]
    if not scripts:
        print("no benchmarks yet")
        return 0
    RESULTS.mkdir(exist_ok=True)
    failed = []
    for script in scripts:
        print(f"== {script.stem}", flush=True)
        if subprocess.run([sys.executable, str(script)], cwd=HERE.parent).returncode != 0:
            failed.append(script.stem)
    rows = []
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        rows.extend(f"| {path.stem} | {key} | {value} |" for key, value in data.items())
    table = "\n".join(["| benchmark | figure | value |", "|---|---|---|", *rows])
    (RESULTS / "summary.md").write_text(table + "\n")
    print(table)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
