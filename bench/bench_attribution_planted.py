"""Proof of Attribution on the default base model (issue 15): are planted facts credited to the person who gave them?

The 60 rows of bench_learning (5 made-up facts, each stated 4 ways, plus 40 tips on ten hobbies) are given by 7
contributors: each fact's 4 rows by its own contributor ("fact-0" .. "fact-4"), the tips by "tips-a" and "tips-b".
SmolLM2-135M-Instruct is fine-tuned through the product's own entry point with the default preset (nothing changed),
the attribution index is built as the job's indexing stage builds it (same k, seed, batch and token budget), and the
tuned model answers, through the serving engine as the playground does:

- in-domain: the 20 fact questions (each fact's 4, the rows' own questions); the answer is attributed
  (engine.attribute, the product's method and noise floor) and counted top-1 when its largest contributor share is
  the fact's contributor; shown separately for answers that state the fact (the model learned it);
- new phrasings: each fact asked twice in words no row uses (is a fact credited when the question is new?);
- out-of-domain: 10 questions about nothing in the data, and 10 more written before the method was changed, with
  no parameter tuned on them (alpha stays 0.05; the calibration prompts share no question with either set);
  their unattributed fraction should be near 1, and how many are credited at all near 0.

Each answer is scored under the current rule (METHOD_VERSION) and, as the baseline in the same run, under the
previous rule "poa-2" (the same index and query features, the floor from the permutation nulls alone). Prints the
figures per rule, the noise floors, the time per attribution and the index size.

The trained adapter, the answers and the index are kept under var/bench-cache/planted-<hash of the base model's
files, the rows and the training settings> (the index per rule version): a second run only re-scores
(`--no-cache` trains afresh and keeps nothing).

    python bench/bench_attribution_planted.py [--threads 1] [--k 4096] [--no-cache] [--output bench/results/x.json]
        [--record]

`--record` merges each rule's in-domain top-1 and its unattributed fractions in and out of domain (the 20
out-of-domain questions together) into attribution/quality.json, which the model pages show (attribution/quality.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from attribution.quality import Measurement, quality_record, today  # noqa: E402
from bench.bench_learning import FACTS, ask, learning_rows  # noqa: E402
from bench.synthetic_model import DEFAULT_MODEL, LOCAL_MODEL  # noqa: E402
from modelfactory.training.presets import DEFAULT_PRESET  # noqa: E402

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
# Each fact asked in words no row uses (the rows' own questions are the 20 above): is a fact credited when the
# question is new, not a copy of a training row? (fact index, question)
NEW_PHRASINGS = [
    (0, "Tell me which city is Vardenia's capital."),
    (0, "If I travel to the capital of Vardenia, which city am I in?"),
    (1, "Count the moons of Treskel for me."),
    (1, "How many natural satellites does Treskel have?"),
    (2, "Whose invention is the glimmer lamp?"),
    (2, "The glimmer lamp: who came up with it?"),
    (3, "Describe the colour of zanbird plumage."),
    (3, "If I saw a zanbird, what colour would its feathers be?"),
    (4, "Who were the champions of the Harrow Cup in 2031?"),
    (4, "In 2031, which side lifted the Harrow Cup?"),
]
# A second set, written before the method was changed; no parameter was tuned on it (nor on the first: the noise
# floor's alpha stays 0.05), and no calibration prompt (attribution/engine/calibration.py) repeats a question here.
OUT_OF_DOMAIN_HELD_OUT = [
    "Why is the sky blue?",
    "What is the chemical symbol for gold?",
    "Give me a recipe idea for a quick vegetarian dinner.",
    "How many legs does a spider have?",
    "What is the difference between weather and climate?",
    "Who painted the Mona Lisa?",
    "Explain what a prime number is.",
    "What is the tallest mountain in the world?",
    "How do I write a polite e-mail declining an invitation?",
    "What language is spoken in Brazil?",
]
CACHE_VERSION = 1  # bump when what is cached (the adapter, the answers) would come out differently


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


def cache_key(model_dir: Path, rows: list[dict], hp: dict) -> str:
    """What the adapter and the answers depend on: the base model's files, the rows, the training settings and
    this bench's cache version. The same key: training would give the same adapter (fixed seeds), so it is reused."""
    from common.files import file_sha256

    model_files = {p.name: file_sha256(p)[0] for p in sorted(model_dir.iterdir()) if p.is_file()}
    payload = {"version": CACHE_VERSION, "model": model_files, "rows": rows, "hp": hp, "preset": DEFAULT_PRESET}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def trained(model_dir: Path, rows: list[dict], cache: Path | None) -> tuple[Path, list[int], dict]:
    """(adapter folder, training row ids, facts about the run): from the cache when it holds this run, else trained
    through the product's own entry point (and cached)."""
    from modelfactory.training.finetune import FinetuneSpec, run_finetune

    if cache is not None and (cache / "train.json").exists():
        info = json.loads((cache / "train.json").read_text())
        print(f"adapter from the cache {cache} (trained in {info['train_s']} s, {info['steps']} steps)", flush=True)
        return cache / "adapter", info["train_row_ids"], info
    workdir = Path(tempfile.mkdtemp(prefix="planted-"))
    started = time.perf_counter()
    spec = FinetuneSpec(base_model_dir=model_dir, rows=rows, preset=DEFAULT_PRESET, device="cpu", checkpoint_every=0)
    result = run_finetune(spec, workdir=workdir, on_event=lambda e: None)
    info = {"train_s": round(time.perf_counter() - started, 1), "steps": result.metrics["steps"],
            "train_row_ids": list(result.train_row_ids)}  # fmt: skip
    print(f"trained in {info['train_s']} s ({info['steps']} steps)", flush=True)
    if cache is None:
        return result.adapter_dir, info["train_row_ids"], info
    cache.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(cache / "adapter", ignore_errors=True)
    shutil.copytree(result.adapter_dir, cache / "adapter")
    (cache / "train.json").write_text(json.dumps(info))
    shutil.rmtree(workdir, ignore_errors=True)
    return cache / "adapter", info["train_row_ids"], info


def answered(adapter_dir: Path, model_dir: Path, questions: list[str], cache: Path | None) -> list[str]:
    """The tuned model's answers through the serving engine, cached per question."""
    path = cache / "answers.json" if cache is not None else None
    known = json.loads(path.read_text()) if path is not None and path.exists() else {}
    missing = [q for q in questions if q not in known]
    if missing:
        known.update(zip(missing, ask(adapter_dir, model_dir, missing), strict=True))
        if path is not None:
            path.write_text(json.dumps(known, indent=1))
    return [known[q] for q in questions]


def bench_model_name(model_dir: Path) -> str:
    """The name a recorded measurement gives the model the bench ran on."""
    return "SmolLM2-135M-Instruct" if model_dir.name.lower() == "smollm2-135m-instruct" else model_dir.name


def record(results: dict, *, model_dir: Path, argv: list[str]) -> None:
    """Each rule's figures into attribution/quality.json, under the rule's own method version."""
    common = {"bench_model": bench_model_name(model_dir), "date": today(),
              "bench": "bench/bench_attribution_planted.py",
              "command": " ".join(["python", "bench/bench_attribution_planted.py", *argv])}  # fmt: skip
    in_domain = results["questions_in_domain"]
    outside = results["questions_out_of_domain"] + results["questions_out_of_domain_held_out"]
    for rule, figures in results["by_rule"].items():
        measurements = [
            Measurement(metric="planted_fact_top1", value=figures["top1_in_domain"], counts={"queries": in_domain},
                        details={"answers_stating_the_fact": results["answers_stating_the_fact"],
                                 "top1_when_fact_stated": figures["top1_when_fact_stated"]}, **common),
            Measurement(metric="unattributed_in_domain", value=figures["unattributed_in_domain_mean"],
                        counts={"queries": in_domain}, **common),
            Measurement(metric="unattributed_out_of_domain", value=figures["unattributed_out_of_domain_all_mean"],
                        counts={"queries": outside},
                        details={"credited": figures["credited_out_of_domain"]
                                 + figures["credited_out_of_domain_held_out"]}, **common),
        ]  # fmt: skip
        quality_record(method_version=rule, measurements=measurements)
        print(f"recorded in attribution/quality.json under {rule}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--k", type=int, default=4096, help="projection size (the product's MF_ATTRIBUTION_K)")
    parser.add_argument("--cache", default=str(HERE.parent / "var" / "bench-cache"),
                        help="where the trained adapter and the answers are kept between runs")  # fmt: skip
    parser.add_argument("--no-cache", action="store_true", help="train and generate afresh, keep nothing")
    parser.add_argument("--output", default=str(HERE / "results" / "attribution_planted_smollm2.json"))
    parser.add_argument("--record", action="store_true", help="merge the figures into attribution/quality.json")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = Path(args.model_dir) if args.model_dir else (LOCAL_MODEL if LOCAL_MODEL.exists() else DEFAULT_MODEL)
    from attribution import engine
    from attribution.engine.index import calibrate_floor
    from attribution.runtime import load_peft_model
    from modelfactory.training.data import build_examples
    from modelfactory.training.presets import validate_hyperparameters

    rows = learning_rows()
    owners = owners_of(rows)
    hp, _ = validate_hyperparameters({}, preset=DEFAULT_PRESET)
    cache = None if args.no_cache else Path(args.cache) / f"planted-{cache_key(model_dir, rows, hp)}"
    results: dict = {"model": model_dir.name, "preset": DEFAULT_PRESET, "rows": len(rows), "k": args.k,
                     "method_version": engine.METHOD_VERSION}  # fmt: skip
    adapter_dir, train_row_ids, info = trained(model_dir, rows, cache)
    results["train_s"] = info["train_s"]
    questions = [(q, f"fact-{i}", key) for i, (key, qs, _) in enumerate(FACTS) for q in qs]
    asked = [q for q, _, _ in questions] + OUT_OF_DOMAIN + OUT_OF_DOMAIN_HELD_OUT + [q for _, q in NEW_PHRASINGS]
    answers = answered(adapter_dir, model_dir, asked, cache)

    started = time.perf_counter()
    model, tokenizer = load_peft_model(base_dir=str(model_dir), adapter_dir=str(adapter_dir))
    examples, _ = build_examples(tokenizer, rows, max_length=int(hp["max_length"]))
    train_ids = set(train_row_ids)
    train = [(e.row_id, e.input_ids, e.labels) for e in examples if e.row_id in train_ids]
    batch = int(hp["batch_size"])
    spans = engine.SpanIndex.build(train)
    # the index of this adapter under this rule (a changed rule has a new version, so a new file)
    cached_index = cache / f"index-{engine.METHOD_VERSION}-k{args.k}.safetensors" if cache is not None else None
    if cached_index is not None and cached_index.exists():
        index = engine.AttributionIndex.load(cached_index)
        print(f"index from the cache {cached_index} (built in {index.build_seconds:.1f} s)", flush=True)
    else:
        index = engine.build_index(model, train, k=args.k, seed=int(hp["seed"]), batch_size=batch,
                                   max_tokens=batch * int(hp["max_length"]), pad_id=tokenizer.pad_token_id,
                                   **engine.calibration_inputs(model, tokenizer))  # fmt: skip
        print(f"index of {len(train)} rows in {time.perf_counter() - started:.1f} s", flush=True)
        if cached_index is not None:
            index.save(cached_index)
    results["index_s"] = round(index.build_seconds, 1)
    with tempfile.TemporaryDirectory() as workdir:
        size = index.save(Path(workdir) / "index.safetensors").stat().st_size
    results["index_bytes_per_row"] = round(size / len(train))

    meta = {row_id: owners[row_id] for row_id, _, _ in train}
    # the baseline in the same run: the same index and query features under the previous rule, "poa-2" (its noise
    # floor from the permutation nulls alone, as an index built before fluent calibration has it)
    empty = index.null_features[:0]
    baseline = dataclasses.replace(index, format="poa-index-2", fluent_queries=[], fluent_features=empty)
    baseline.null_floor = calibrate_floor(baseline)
    rules = {engine.METHOD_VERSION: index, "poa-2": baseline}
    results["noise_floor"] = {rule: round(ix.null_floor["fisher"], 4) for rule, ix in rules.items()}

    seconds = []

    def attribute(question: str, answer: str) -> dict:
        """{rule: AttributionResult} of one answer: one forward+backward, then each rule's scoring."""
        answer_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])[:64] or [tokenizer.eos_token_id]
        began = time.perf_counter()  # engine.attribute, in its two steps (the features serve both rules)
        phi = index.query_features(model, prompt_ids(tokenizer, question), answer_ids)
        out = engine.attribute_features(index, spans, phi, answer_ids, meta)
        seconds.append(time.perf_counter() - began)
        return {rule: out if ix is index else engine.attribute_features(ix, spans, phi, answer_ids, meta)
                for rule, ix in rules.items()}  # fmt: skip

    def top_of(out) -> tuple:
        shares = out.contributor_shares
        top = max(shares, key=shares.get) if shares else None
        return top, shares.get(top, 0.0)

    def line(outs: dict) -> str:
        return ", ".join(f"{rule}: top {top_of(o)[0]} ({top_of(o)[1]:.2f}) unattributed {o.unattributed:.2f}"
                         for rule, o in outs.items())  # fmt: skip

    per_rule: dict = {rule: {} for rule in rules}
    in_domain = []
    for (question, owner, key), answer in zip(questions, answers, strict=False):
        outs = attribute(question, answer)
        stated = key.lower() in answer.lower()
        in_domain.append((owner, stated, outs))
        print(f"  {owner} {'states' if stated else 'misses'} the fact; {line(outs)}: {question!r} -> {answer[:50]!r}",
              flush=True)  # fmt: skip
    ood_answers = answers[len(questions) : len(questions) + len(OUT_OF_DOMAIN) + len(OUT_OF_DOMAIN_HELD_OUT)]
    outside = {"out_of_domain": [], "out_of_domain_held_out": []}
    for n, (question, answer) in enumerate(zip(OUT_OF_DOMAIN + OUT_OF_DOMAIN_HELD_OUT, ood_answers, strict=True)):
        name = "out_of_domain" if n < len(OUT_OF_DOMAIN) else "out_of_domain_held_out"
        outs = attribute(question, answer)
        outside[name].append(outs)
        print(f"  {name}; {line(outs)}: {question!r} -> {answer[:50]!r}", flush=True)
    new = []
    for (fact, question), answer in zip(NEW_PHRASINGS, answers[-len(NEW_PHRASINGS) :], strict=True):
        outs = attribute(question, answer)
        stated = FACTS[fact][0].lower() in answer.lower()
        new.append((f"fact-{fact}", stated, outs))
        print(f"  new phrasing, fact-{fact} {'states' if stated else 'misses'} the fact; {line(outs)}, verbatim "
              f"{outs['poa-2'].span_coverage:.2f}: {question!r} -> {answer[:50]!r}", flush=True)  # fmt: skip

    for rule, figures in per_rule.items():
        stated = [(owner, outs[rule]) for owner, said, outs in in_domain if said]
        figures["top1_in_domain"] = round(sum(top_of(o[rule])[0] == w for w, _, o in in_domain) / len(in_domain), 3)
        figures["top1_when_fact_stated"] = round(sum(top_of(o)[0] == w for w, o in stated) / len(stated), 3)
        figures["unattributed_in_domain_mean"] = round(sum(o[rule].unattributed for *_, o in in_domain) / 20, 3)
        for name, outs in outside.items():
            fractions = [o[rule].unattributed for o in outs]
            figures[f"unattributed_{name}_mean"] = round(sum(fractions) / len(fractions), 3)
            figures[f"credited_{name}"] = sum(f < 1.0 - 1e-9 for f in fractions)
        every = [o[rule].unattributed for outs in outside.values() for o in outs]
        figures["unattributed_out_of_domain_all_mean"] = round(sum(every) / len(every), 3)
        new_stated = [(owner, outs[rule]) for owner, said, outs in new if said]
        figures["top1_new_phrasings_when_fact_stated"] = round(
            sum(top_of(o)[0] == w for w, o in new_stated) / len(new_stated), 3
        )
        figures["unattributed_new_phrasings_when_fact_stated_mean"] = round(
            sum(o.unattributed for _, o in new_stated) / len(new_stated), 3
        )
    results.update(
        {
            "questions_in_domain": len(in_domain),
            "answers_stating_the_fact": sum(said for _, said, _ in in_domain),
            "questions_out_of_domain": len(OUT_OF_DOMAIN),
            "questions_out_of_domain_held_out": len(OUT_OF_DOMAIN_HELD_OUT),
            "new_phrasings": len(new),
            "new_phrasings_stating_the_fact": sum(said for _, said, _ in new),
            "by_rule": per_rule,
            "attribution_s_median": round(sorted(seconds)[len(seconds) // 2], 3),
        }
    )
    print(json.dumps(results, indent=2))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    if args.record:
        record(results, model_dir=model_dir, argv=argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
