"""A/B of the one-device training loop: this checkout against another checkout (e.g. `git archive main`), run
alternately (A B B A ...) in fresh processes so that machine-load drift hits both alike.

Answers "did a change slow the one-device path down, or change its results?": it prints both median tokens/s,
whether both gave exactly the same per-step losses (they must, for a change that leaves that path alone), and the
ratio (this checkout / the other) last. The default model is the tiny test model (hidden size 64), where the
loop's own Python overhead per step weighs most; `--model-dir` runs a real one.

    git archive main | tar -x -C /tmp/mf-main
    python bench/bench_loop_ab.py --baseline /tmp/mf-main --reps 4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(int(sys.argv[4]))
from modelfactory.training.data import build_examples
from modelfactory.training.loop import load_model_for_training, train
from modelfactory.training.presets import validate_hyperparameters
hp, errors = validate_hyperparameters({"min_steps": 0, "batch_size": 4, "grad_accum": 1, "epochs": 1, "max_length": 512,
    "learning_rate": 1e-3, "dropout": 0.05, "seed": 5})
assert not errors, errors
rows = [{"id": i, "kind": "instruction", "content": {"instruction": f"Item {i}: colour?",
         "output": ("red " if i % 2 else "blue ") * (1 + i % 7)}} for i in range(int(sys.argv[3]))]
device = torch.device("cpu")
model, tokenizer = load_model_for_training(sys.argv[2], hp, device=device)
examples, _ = build_examples(tokenizer, rows, max_length=512)
result = train(model, examples, hp, device=device, pad_id=tokenizer.pad_token_id)
print(json.dumps({"tokens_per_s": result.tokens / result.seconds, "losses": result.losses}))
"""


def run_once(tree: Path, model: Path, examples: int, threads: int) -> dict:
    out = subprocess.run(  # noqa: S603 (our own interpreter)
        [sys.executable, "-c", CHILD, str(tree), str(model), str(examples), str(threads)],
        capture_output=True,
        text=True,
        check=True,
        cwd=tree,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="another checkout of this project")
    parser.add_argument("--model-dir", default=None, help="default: the tiny test model, built here")
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    trees = {"this": ROOT, "baseline": Path(args.baseline).resolve()}
    rates: dict[str, list[float]] = {name: [] for name in trees}
    losses: dict[str, set[str]] = {name: set() for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model_dir) if args.model_dir else None
        if model is None:
            sys.path.insert(0, str(ROOT))
            from modelfactory.training.tiny import build_tiny_model_dir

            model = build_tiny_model_dir(Path(tmp) / "tiny")
        for rep in range(args.reps):
            order = ["this", "baseline"] if rep % 2 == 0 else ["baseline", "this"]
            for name in order:
                result = run_once(trees[name], model, args.examples, args.threads)
                rates[name].append(result["tokens_per_s"])
                losses[name].add(hashlib.sha256(json.dumps(result["losses"]).encode()).hexdigest()[:16])
                print(f"rep {rep + 1} {name:8s} {result['tokens_per_s']:10.1f} tokens/s", flush=True)
    this, base = statistics.median(rates["this"]), statistics.median(rates["baseline"])
    same = len(losses["this"]) == 1 and losses["this"] == losses["baseline"]
    print(f"median tokens/s: this {this:.1f}, baseline {base:.1f}; identical per-step losses: {same}")
    print(f"ratio (this / baseline, one-device loop): {this / base:.3f}x")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
