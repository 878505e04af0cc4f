"""Validation harness for the attribution engine on a tiny Llama (modelfactory/training/tiny.py) with a LoRA trained
here with plain torch AdamW (deliberately independent of modelfactory/training, so the yardstick does not move with it).

- `planted_facts`: contributors each own distinctive made-up facts; asking about a fact must credit its owner.
- `linear_datamodeling_score`: LDS as in TRAK: retrain on random half-subsets, Spearman correlation between the
  predicted query loss change (minus the sum of the subset's scores) and the actual query loss, averaged over queries.

Both default to this tiny setting (rows as "Q: ...\nA: answer<eos>", the trainer here); a caller can pass another row
format (`encode`, e.g. the product's chat template) and another trainer (`fit`, e.g. the product's training loop at
a preset's settings), as bench/bench_attribution.py does to measure the LDS of the product's method on SmolLM2.
"""

from __future__ import annotations

import random
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from attribution.engine.index import SCORE_METHODS, AttributionIndex, build_index
from attribution.engine.lora import IGNORE_INDEX, row_loss

Row = tuple[int, list[int], list[int]]  # (row id, input ids, labels with IGNORE_INDEX on untrained tokens)
Encode = Callable[[str, str], tuple[list[int], list[int], str]]  # (question, answer) -> (ids, labels, text)
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class TrainConfig:
    rank: int = 8
    alpha: int = 16
    lr: float = 3e-3
    epochs: int = 30
    batch_size: int = 16
    seed: int = 0


@dataclass
class Datanet:
    rows: list[tuple[int, list[int], list[int]]]
    row_meta: dict[int, str]  # row_id -> contributor id
    queries: list[tuple[list[int], list[int], str]]  # (prompt_ids, answer_ids, owner contributor)
    texts: dict[int, str] = field(default_factory=dict)


def load_lora_model(base_dir: Path, config: TrainConfig):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(config.seed)
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=0.0, target_modules=TARGET_MODULES)
    return get_peft_model(base, lora)


def _pad(rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int):
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for n, (i, lab) in enumerate(rows):
        ids[n, : len(i)] = torch.as_tensor(i)
        labels[n, : len(lab)] = torch.as_tensor(lab)
        mask[n, : len(i)] = 1
    return ids, labels, mask


def train_lora(model, rows: Sequence[tuple[int, list[int], list[int]]], config: TrainConfig, pad_id: int) -> float:
    """Plain AdamW on the LoRA weights, loss = batch mean of each row's mean answer-token loss (the same per-row loss
    the index differentiates). Returns the mean seconds per epoch."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    order = list(range(len(rows)))
    shuffle = random.Random(config.seed)
    model.train()
    started = time.perf_counter()
    for _ in range(config.epochs):
        shuffle.shuffle(order)
        for start in range(0, len(order), config.batch_size):
            batch = [(rows[i][1], rows[i][2]) for i in order[start : start + config.batch_size]]
            ids, labels, mask = _pad(batch, pad_id)
            loss = row_loss(model(input_ids=ids, attention_mask=mask).logits, labels).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    return (time.perf_counter() - started) / max(1, config.epochs)


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def query_losses(model, queries: Sequence[tuple[Sequence[int], Sequence[int], str]], pad_id: int) -> np.ndarray:
    rows = [(list(p) + list(a), [IGNORE_INDEX] * len(p) + list(a)) for p, a, _ in queries]
    ids, labels, mask = (t.to(_device(model)) for t in _pad(rows, pad_id))
    model.eval()
    return row_loss(model(input_ids=ids, attention_mask=mask).logits, labels).float().cpu().numpy()


@torch.no_grad()
def recall(model, queries: Sequence[tuple[Sequence[int], Sequence[int], str]]) -> float:
    """Fraction of queries whose answer the model reproduces exactly by greedy decoding (what it really learned)."""
    model.eval()
    hits = 0
    for prompt, answer, _ in queries:
        ids = torch.as_tensor([list(prompt)], device=_device(model))
        for _ in range(len(answer)):
            next_id = model(input_ids=ids).logits[0, -1].argmax()
            ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
        hits += ids[0, len(prompt) :].tolist() == list(answer)
    return hits / max(1, len(queries))


def _name(rng: random.Random) -> str:
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    return "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(3)).capitalize()


def _code(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(4))


def raw_format(tokenizer) -> Encode:
    """Rows as plain text "Q: {question}\nA: {answer}<eos>", the answer and <eos> trained (the tiny model's format)."""
    end = tokenizer.eos_token

    def encode(question: str, answer: str) -> tuple[list[int], list[int], str]:
        prompt = f"Q: {question}\nA: "
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(answer + end, add_special_tokens=False)["input_ids"]
        return p_ids + a_ids, [IGNORE_INDEX] * len(p_ids) + a_ids, prompt + answer

    return encode


def split_query(ids: Sequence[int], labels: Sequence[int]) -> tuple[list[int], list[int]]:
    """(prompt, answer) of a row: the answer runs from the first to the last trained token (what the product traces
    for a held-out row, attribution/services/indexing.py)."""
    trained = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    if not trained:
        raise ValueError("A row without trained tokens cannot be a query.")
    return list(ids[: trained[0]]), list(ids[trained[0] : trained[-1] + 1])


def planted_facts(
    tokenizer,
    *,
    contributors: int = 5,
    facts_each: int = 5,
    filler_each: int = 12,
    copies: int = 2,
    seed: int = 0,
    encode: Encode | None = None,
) -> Datanet:
    """Each contributor owns `facts_each` made-up facts ("code of Bazoki?" -> "k7q2"), `copies` rows per fact in two
    phrasings, plus `filler_each` generic rows (copying a word) of the same shape that teach no fact. `encode` turns
    a question and its answer into a row (default `raw_format`); a fact's query is its first row split by
    `split_query`."""
    rng = random.Random(seed)
    encode = encode or raw_format(tokenizer)
    rows, meta, queries, texts = [], {}, [], {}

    def add(question: str, answer: str, owner: str) -> tuple[list[int], list[int]]:
        ids, labels, text = encode(question, answer)
        row_id = len(rows) + 1
        rows.append((row_id, list(ids), list(labels)))
        meta[row_id] = owner
        texts[row_id] = text
        return split_query(ids, labels)

    used: set[str] = set()
    for c in range(contributors):
        owner = f"contributor-{c}"
        for _ in range(facts_each):
            name = _name(rng)
            while name in used:
                name = _name(rng)
            used.add(name)
            code = _code(rng)
            phrasings = [f"code of {name}?", f"what is the code of {name}?"]
            first = None
            for copy in range(copies):
                ids = add(phrasings[copy % len(phrasings)], code, owner)
                first = first or ids
            queries.append((first[0], first[1], owner))
        for _ in range(filler_each):
            word = _name(rng).lower()
            add(f"repeat {word}", word, owner)
    return Datanet(rows=rows, row_meta=meta, queries=queries, texts=texts)


@dataclass
class TopOneReport:
    top1: dict[str, float]  # score method -> fraction of facts whose owner is the top contributor
    recall: float
    facts: int
    epoch_seconds: float
    build_seconds: float


def contributor_totals(index: AttributionIndex, scores: np.ndarray, row_meta: dict[int, str]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for row_id, score in zip(index.row_ids.tolist(), np.clip(scores, 0, None).tolist(), strict=True):
        totals[row_meta[row_id]] = totals.get(row_meta[row_id], 0.0) + score
    return totals


def evaluate_top1(model, index: AttributionIndex, datanet: Datanet) -> dict[str, float]:
    phis = np.stack([index.query_features(model, p, a) for p, a, _ in datanet.queries])
    result = {}
    for method in SCORE_METHODS:
        scores = index.scores(phis, method)
        hits = 0
        for row_scores, (_, _, owner) in zip(scores, datanet.queries, strict=True):
            totals = contributor_totals(index, row_scores, datanet.row_meta)
            hits += max(totals, key=totals.get) == owner
        result[method] = hits / len(datanet.queries)
    return result


def run_planted_facts(
    base_dir: Path, tokenizer, *, config: TrainConfig = TrainConfig(), k: int = 2048, projection: str = "lowrank", **kw
) -> tuple[TopOneReport, object, AttributionIndex, Datanet]:
    datanet = planted_facts(tokenizer, **kw)
    model = load_lora_model(base_dir, config)
    epoch = train_lora(model, datanet.rows, config, tokenizer.pad_token_id)
    index = build_index(
        model, datanet.rows, k=k, projection=projection, batch_size=config.batch_size, pad_id=tokenizer.pad_token_id
    )
    report = TopOneReport(
        top1=evaluate_top1(model, index, datanet),
        recall=recall(model, datanet.queries),
        facts=len(datanet.queries),
        epoch_seconds=epoch,
        build_seconds=index.build_seconds,
    )
    return report, model, index, datanet


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank), as scipy.stats.rankdata."""
    sorter = np.argsort(x, kind="mergesort")
    inverse = np.empty(len(x), dtype=np.intp)
    inverse[sorter] = np.arange(len(x))
    ordered = x[sorter]
    first = np.r_[True, ordered[1:] != ordered[:-1]]
    dense = first.cumsum()[inverse]
    bounds = np.r_[np.nonzero(first)[0], len(first)]
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = _ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64))
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


@dataclass
class LdsReport:
    lds: dict[str, float]  # score method (and "fisher@kappa") -> mean Spearman over queries
    subsets: int
    queries: int
    recall: float
    rows: int = 0
    fit_seconds: float = 0.0  # training the model on all rows (the one the index explains)
    index_seconds: float = 0.0
    retrain_seconds: list[float] = field(default_factory=list)  # wall seconds per half-subset (train + query losses)
    retrain_cpu_seconds: list[float] = field(default_factory=list)  # this process's CPU seconds for the same
    full_query_loss: float = 0.0  # mean query loss of the model trained on all rows
    subset_query_loss: list[float] = field(default_factory=list)  # the same per half-subset model


Fit = Callable[[Sequence[Row]], object]  # trains a fresh LoRA model on the rows and returns it (in eval mode)


def validation_fit(base_dir: Path, config: TrainConfig, pad_id: int) -> Fit:
    """This module's yardstick trainer: a fresh LoRA (load_lora_model) trained by train_lora."""

    def fit(rows: Sequence[Row]):
        model = load_lora_model(base_dir, config)
        train_lora(model, rows, config, pad_id)
        return model

    return fit


def linear_datamodeling_score(
    base_dir: Path,
    tokenizer,
    *,
    subsets: int = 16,
    config: TrainConfig = TrainConfig(),
    k: int = 2048,
    projection: str = "lowrank",
    kappas: Sequence[float] = (0.1,),
    seed: int = 0,
    on_subset: Callable[[int, int, LdsReport], None] | None = None,
    datanet: Datanet | None = None,
    fit: Fit | None = None,
    index_kw: dict | None = None,
    feature_dtypes: Sequence[str] = ("int8",),
    **datanet_kw,
) -> LdsReport:
    """LDS of the index's scores. Defaults: a `planted_facts(tokenizer, seed=seed, **datanet_kw)` datanet and the
    `validation_fit` trainer with `config`. `datanet`, `fit` (any trainer: rows -> trained LoRA model) and `index_kw`
    (more build_index arguments, e.g. the batch size, token budget and seed the product builds with) replace them.
    `feature_dtypes`: how the index stores its features (build_index's feature_dtype); the first gives the plain
    method keys, each other one the same keys after "<dtype>:" (e.g. "float16:fisher"), all scored against the
    same retrained subsets and the same model. `on_subset(done, total, report so far)` runs after each half-subset's
    retrain."""
    pad = tokenizer.pad_token_id
    datanet = datanet if datanet is not None else planted_facts(tokenizer, seed=seed, **datanet_kw)
    fit = fit or validation_fit(base_dir, config, pad)
    report = LdsReport(lds={}, subsets=subsets, queries=len(datanet.queries), recall=0.0, rows=len(datanet.rows))
    started = time.perf_counter()
    model = fit(datanet.rows)
    report.fit_seconds = time.perf_counter() - started
    predicted: dict[str, np.ndarray] = {}  # method -> (queries, N) scores
    for position, dtype in enumerate(feature_dtypes):
        index = build_index(
            model, datanet.rows, k=k, projection=projection, pad_id=pad, feature_dtype=dtype, **(index_kw or {})
        )
        if position == 0:
            report.index_seconds = index.build_seconds
        phis = np.stack([index.query_features(model, p, a) for p, a, _ in datanet.queries])
        prefix = "" if position == 0 else f"{dtype}:"
        for method in SCORE_METHODS:
            predicted[prefix + method] = index.scores(phis, method)
        for kappa in kappas:
            predicted[f"{prefix}fisher@{kappa:g}"] = index.with_damping(kappa).scores(phis, "fisher")
    report.full_query_loss = float(query_losses(model, datanet.queries, pad).mean())
    report.recall = recall(model, datanet.queries)
    del model, index
    rng = np.random.default_rng(seed + 1)
    masks, actual = [], []
    for s in range(subsets):
        mask = np.zeros(len(datanet.rows), dtype=bool)
        mask[rng.choice(len(datanet.rows), size=len(datanet.rows) // 2, replace=False)] = True
        wall, cpu = time.perf_counter(), time.process_time()
        sub_model = fit([r for r, keep in zip(datanet.rows, mask, strict=True) if keep])
        actual.append(query_losses(sub_model, datanet.queries, pad))
        del sub_model
        report.retrain_seconds.append(time.perf_counter() - wall)
        report.retrain_cpu_seconds.append(time.process_time() - cpu)
        report.subset_query_loss.append(float(actual[-1].mean()))
        masks.append(mask)
        if on_subset is not None:
            on_subset(s + 1, subsets, report)
    masks_arr, actual_arr = np.stack(masks).astype(np.float64), np.stack(actual)  # (S, N), (S, Q)
    for method, scores in predicted.items():
        # more positive influence kept -> lower loss: predicted loss = -sum of kept scores
        pred = -(masks_arr @ scores.T)  # (S, Q)
        report.lds[method] = float(
            np.mean([spearman(pred[:, q], actual_arr[:, q]) for q in range(actual_arr.shape[1])])
        )
    return report


def prepare_base(folder: Path, *, layers: int = 2, hidden: int = 64, epochs: int = 30, seed: int = 0) -> Path:
    """A tiny Llama (modelfactory/training/tiny.py) briefly pre-trained, all weights, on facts and filler of the same
    shape as the validation datanets but with other names and codes. A purely random base cannot be taught facts
    through LoRA at all (the loss stalls near uniform), while a real fine-tune starts from a pre-trained base."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from modelfactory.training.tiny import build_tiny_model_dir

    folder = Path(folder)
    build_tiny_model_dir(folder, layers=layers, hidden=hidden, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = LlamaForCausalLM.from_pretrained(folder)
    generic = planted_facts(tokenizer, contributors=8, facts_each=8, filler_each=16, seed=10_000 + seed)
    train = TrainConfig(lr=3e-3, epochs=epochs, batch_size=16, seed=seed)
    torch.manual_seed(seed)
    train_lora(model, generic.rows, train, tokenizer.pad_token_id)  # every weight trains: this is pre-training
    model.save_pretrained(folder)
    return folder
