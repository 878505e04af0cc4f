"""Proof of Attribution on the default base model (issue 15): are planted facts credited to the person who gave them?

The 60 rows of bench_learning (5 made-up facts, each stated 4 ways, plus 40 tips on ten hobbies) are given by 7
contributors: each fact's 4 rows by its own contributor ("fact-0" .. "fact-4"), the tips by "tips-a" and "tips-b".
SmolLM2-135M-Instruct is fine-tuned through the product's own entry point with the default preset (nothing changed),
the attribution index is built as the job's indexing stage builds it (same k, seed, batch and token budget), and the
tuned model answers, through the serving engine as the playground does:

- in-domain: the 20 fact questions (each fact's 4); the answer is attributed (engine.attribute, the product's
  method and noise floor) and counted top-1 when its largest contributor share is the fact's contributor; shown
  separately for answers that state the fact (the model learned it) and those that do not;
- out-of-domain: 10 questions about nothing in the data; their unattributed fraction should be near 1.

Prints top-1, the unattributed fraction in and out of domain, the time per attribution and the index size.

    python bench/bench_attribution_planted.py [--threads 1] [--k 4096] [--output bench/results/x.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.bench_learning import FACTS, ask, learning_rows  # noqa: E402
from bench.synthetic_model import DEFAULT_MODEL, LOCAL_MODEL  # noqa: E402

OUT_OF_DOMAIN = [
    "What is the boiling point of water at sea level?",
    "Write a short poem about the autumn rain.",
    "How do I reverse a list in Python?",
    "What is the largest ocean on Earth?",
    "Translate 'good morning' into French.",
    "Who wrote Romeo and Juliet?",
    "What is 12 times 12?",
    "Name three primary colours.",
    "How many days are in a leap year?",
    "What does a thermometer measure?",
]


def owners_of(rows: list[dict]):
    """{row id: RowOwner}: a fact's rows to its own contributor, the tips alternately to two others."""
    from attribution.engine import RowOwner

    fact_of = {q: i for i, (_, questions, _) in enumerate(FACTS) for q in questions}
    owners, tips = {}, 0
    for row in rows:
        fact = fact_of.get(row["content"]["instruction"])
        if fact is None:
            name, tips = ("tips-a" if tips % 2 == 0 else "tips-b"), tips + 1
        else:
            name = f"fact-{fact}"
        owners[row["id"]] = RowOwner(name, f"{name}/upload")
    return owners


def prompt_ids(tokenizer, question: str) -> list[int]:
    """As the product records an answer's prompt (modelfactory.services.inference_requests)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)  # fmt: skip
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--k", type=int, default=4096, help="projection size (the product's MF_ATTRIBUTION_K)")
    parser.add_argument("--output", default=str(HERE / "results" / "attribution_planted_smollm2.json"))
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = Path(args.model_dir) if args.model_dir else (LOCAL_MODEL if LOCAL_MODEL.exists() else DEFAULT_MODEL)
    from attribution import engine
    from attribution.runtime import load_peft_model
    from modelfactory.training.data import build_examples
    from modelfactory.training.finetune import FinetuneSpec, run_finetune
    from modelfactory.training.presets import DEFAULT_PRESET, validate_hyperparameters

    rows = learning_rows()
    owners = owners_of(rows)
    hp, _ = validate_hyperparameters({}, preset=DEFAULT_PRESET)
    results: dict = {"model": model_dir.name, "preset": DEFAULT_PRESET, "rows": len(rows), "k": args.k}
    with tempfile.TemporaryDirectory() as workdir:
        started = time.perf_counter()
        spec = FinetuneSpec(base_model_dir=model_dir, rows=rows, preset=DEFAULT_PRESET, device="cpu",
                            checkpoint_every=0)  # fmt: skip
        result = run_finetune(spec, workdir=Path(workdir), on_event=lambda e: None)
        results["train_s"] = round(time.perf_counter() - started, 1)
        print(f"trained in {results['train_s']} s ({result.metrics['steps']} steps)", flush=True)

        started = time.perf_counter()
        model, tokenizer = load_peft_model(base_dir=str(model_dir), adapter_dir=str(result.adapter_dir))
        examples, _ = build_examples(tokenizer, rows, max_length=int(hp["max_length"]))
        train_ids = set(result.train_row_ids)
        train = [(e.row_id, e.input_ids, e.labels) for e in examples if e.row_id in train_ids]
        batch = int(hp["batch_size"])
        index = engine.build_index(model, train, k=args.k, seed=int(hp["seed"]), batch_size=batch,
                                   max_tokens=batch * int(hp["max_length"]), pad_id=tokenizer.pad_token_id)  # fmt: skip
        spans = engine.SpanIndex.build(train)
        results["index_s"] = round(time.perf_counter() - started, 1)
        index_file = Path(workdir) / "index.npz"
        index.save(index_file)
        results["index_bytes_per_row"] = round(index_file.stat().st_size / len(train))
        print(f"index of {len(train)} rows in {results['index_s']} s", flush=True)

        meta = {row_id: owners[row_id] for row_id, _, _ in train}
        questions = [(q, f"fact-{i}", key) for i, (key, qs, _) in enumerate(FACTS) for q in qs]
        answers = ask(result.adapter_dir, model_dir, [q for q, _, _ in questions] + OUT_OF_DOMAIN)

        def attribute(question: str, answer: str):
            answer_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])[:64] or [tokenizer.eos_token_id]
            began = time.perf_counter()
            out = engine.attribute(index, spans, model, prompt_ids(tokenizer, question), answer_ids, meta)
            return out, time.perf_counter() - began

        seconds, in_domain = [], []
        for (question, owner, key), answer in zip(questions, answers, strict=False):
            out, took = attribute(question, answer)
            seconds.append(took)
            shares = out.contributor_shares
            top = max(shares, key=shares.get) if shares else None
            stated = key.lower() in answer.lower()
            in_domain.append((top == owner, stated, out.unattributed))
            print(f"  {owner} {'states' if stated else 'misses'} the fact, top {top} "
                  f"({shares.get(top, 0):.2f}), unattributed {out.unattributed:.2f}: {question!r} -> {answer[:60]!r}",
                  flush=True)  # fmt: skip
        outside = []
        for question, answer in zip(OUT_OF_DOMAIN, answers[len(questions) :], strict=True):
            out, took = attribute(question, answer)
            seconds.append(took)
            outside.append(out.unattributed)
            shares = out.contributor_shares
            top = max(shares, key=shares.get) if shares else None
            print(f"  out of domain: top {top} ({shares.get(top, 0):.2f}), unattributed {out.unattributed:.2f}: "
                  f"{question!r} -> {answer[:50]!r}", flush=True)  # fmt: skip

    stated = [r for r in in_domain if r[1]]
    results.update(
        {
            "questions_in_domain": len(in_domain),
            "top1_in_domain": round(sum(r[0] for r in in_domain) / len(in_domain), 3),
            "answers_stating_the_fact": len(stated),
            "top1_when_fact_stated": round(sum(r[0] for r in stated) / len(stated), 3) if stated else None,
            "unattributed_in_domain_mean": round(sum(r[2] for r in in_domain) / len(in_domain), 3),
            "unattributed_out_of_domain_mean": round(sum(outside) / len(outside), 3),
            "attribution_s_median": round(sorted(seconds)[len(seconds) // 2], 3),
        }
    )
    print(json.dumps(results, indent=2))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
