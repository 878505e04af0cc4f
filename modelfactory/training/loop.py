"""Our LoRA training loop (not the Hugging Face Trainer), built for throughput on small models.

Why it is faster than a plain Trainer on the same data and settings:
- Length-grouped batches: examples are shuffled, cut into mega-batches, sorted by length inside each and chunked,
  then the batch order is shuffled. Each batch is right-padded only to its own longest row, so little compute goes
  to padding, and rows are never packed together, so there is no cross-example attention at all.
- Right padding needs no attention mask for a causal model (real tokens never attend to later positions), so
  attention keeps its fused causal fast path and no 4-D mask is built.
- The output layer and the loss run only on answer positions: prompt and padding positions never touch the
  vocabulary-sized projection, which is a large share of a small model's compute.
- The loss of an optimizer step is the token-weighted mean over all answer tokens of its accumulated batches.

Deterministic on CPU with a fixed seed: LoRA init, dropout and data order all derive from `seed`. Checkpoints hold
the adapter, optimizer, scheduler, RNG state and step; resuming replays the same data order from that step.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from modelfactory.training import distributed
from modelfactory.training.checkpoints import load_checkpoint, save_checkpoint
from modelfactory.training.data import IGNORE_INDEX, Example
from modelfactory.training.devices import CPU_ONLY, detect_capabilities, quantization_problem
from modelfactory.training.evaluate import eval_loss
from modelfactory.training.failures import diverged_message, is_out_of_memory, out_of_memory_message
from modelfactory.training.families import attention_implementation
from modelfactory.training.memory import release_freed, rows_and_tokens, split_by_tokens, training_bytes_per_token
from modelfactory.training.model_files import inspect_model_dir
from modelfactory.training.presets import resolve_target_modules
from modelfactory.training.schedule import lr_lambda, plan_passes, plan_steps  # noqa: F401 (plan_steps re-exported)

EventCallback = Callable[[dict[str, Any]], None]
ControlCallback = Callable[[], str | None]
MAX_GRAD_NORM = 1.0
MEGABATCH_FACTOR = 16


class TrainingError(Exception):
    """Training cannot go on; the message is meant for the user as it is."""


class Cancelled(Exception):  # noqa: N818 (it is a request, not an error)
    """The user cancelled the run: nothing is kept."""


@dataclass
class TrainResult:
    steps: int
    total_steps: int
    losses: list[float]
    train_loss: float
    tokens: int
    seconds: float
    stopped_early: bool
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    resumed_from: int = 0
    steps_per_epoch: int = 0
    passes: int = 0  # passes over the data planned (epochs, or more to reach min_steps)


# ---------------------------------------------------------------- devices, models


def pick_device(preference: str = "auto") -> torch.device:
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("A CUDA GPU was requested but none is available on this worker.")
    return torch.device(preference)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA GPUs that support it; full precision otherwise (CPU, older GPUs): the rule of
    devices.choose_precision (checked on fakes in CI, on an H100 by bench/gpu_check.py)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device):
    dtype = autocast_dtype(device)
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def memory_bytes(device: torch.device) -> int:
    """Peak CUDA memory allocated on a GPU, resident set size of this process on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource  # Unix only, and needed only where /proc is missing

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def linear_module_names(model) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def load_model_for_training(
    model_dir: Path, hp: dict[str, Any], *, device: torch.device, init_adapter: Path | None = None
):
    """Loads the base model (4-bit when asked and possible), wraps it with a fresh LoRA adapter, or with the trained
    adapter in `init_adapter` to continue training it (its rank and layers then apply). (model, tokenizer)"""
    # peft and transformers take seconds to import: only a process that loads a model pays for them
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = inspect_model_dir(Path(model_dir))
    kwargs: dict[str, Any] = {"attn_implementation": attention_implementation(info.architecture)}
    if hp.get("quantization") == "4bit":
        problem = quantization_problem(detect_capabilities() if device.type == "cuda" else CPU_ONLY, "4bit")
        if problem:
            raise TrainingError(problem)
        from transformers import BitsAndBytesConfig  # as above

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=autocast_dtype(device) or torch.float16,
            bnb_4bit_use_double_quant=True,
        )
        kwargs["device_map"] = {"": device.index or 0}
    else:
        kwargs["dtype"] = autocast_dtype(device) or torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    if hp.get("quantization") == "4bit":
        from peft import prepare_model_for_kbit_training  # as above

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model.to(device)
    model.config.use_cache = False
    targets = resolve_target_modules(hp["target_modules"], (model.config.architectures or [None])[0])
    available = linear_module_names(model)
    missing = [name for name in targets if name not in available]
    if missing:
        raise TrainingError(
            f"This model has no layers named {', '.join(missing)}; its adaptable layers are "
            f"{', '.join(sorted(available))}."
        )
    config = LoraConfig(
        r=int(hp["rank"]),
        lora_alpha=int(hp["alpha"]),
        lora_dropout=float(hp["dropout"]),
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(int(hp["seed"]))  # the LoRA init is drawn from the global generator
    if init_adapter is not None:
        from peft import PeftModel  # as above

        model = PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
        model.to(device)
        return model, tokenizer
    model = get_peft_model(model, config)
    return model, tokenizer


# ---------------------------------------------------------------- batching and loss


def make_batches(lengths: list[int], *, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Length-grouped batches of indices, a different but reproducible order for every epoch."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    size = batch_size * MEGABATCH_FACTOR
    batches: list[list[int]] = []
    for start in range(0, len(order), size):
        mega = sorted(order[start : start + size], key=lambda i: lengths[i], reverse=True)
        batches += [mega[i : i + batch_size] for i in range(0, len(mega), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: list[Example], *, pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and labels (-100 on padding)."""
    width = max(e.n_tokens for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        ids[row, : example.n_tokens] = torch.tensor(example.input_ids)
        labels[row, : example.n_tokens] = torch.tensor(example.labels)
    return ids.to(device), labels.to(device)


def causal_lm_parts(model):
    """(decoder body, output head, logit soft-cap or None) of a causal LM, with or without a peft wrapper."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return lm.get_decoder(), lm.get_output_embeddings(), getattr(lm.config, "final_logit_softcapping", None)


def answer_loss_sum(model, ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over answer tokens and their count. No attention mask: padding is on the right."""
    body, head, softcap = causal_lm_parts(model)
    hidden = body(input_ids=ids, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    count = int(keep.sum())
    logits = head(hidden[:, :-1][keep]).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return torch.nn.functional.cross_entropy(logits, targets[keep], reduction="sum"), count


def release_memory(device: torch.device) -> None:
    release_freed()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- the loop


def train(
    model,
    examples: list[Example],
    hp: dict[str, Any],
    *,
    device: torch.device,
    pad_id: int,
    eval_examples: list[Example] | None = None,
    on_event: EventCallback | None = None,
    control: ControlCallback | None = None,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    rank=None,
    memory_budget: int | None = None,
) -> TrainResult:
    """Trains the LoRA parameters of `model` in place on `examples` with the clean hyperparameters `hp`.

    `on_event` gets a dict after every optimizer step ({"type": "train", step, total_steps, epoch, loss, lr,
    tokens_per_s, eta_s, memory_bytes}) and after each evaluation ({"type": "eval", step, epoch, eval_loss}).
    `control()` is polled before every step: "stop" ends training keeping the adapter as it is, "cancel" raises
    Cancelled. With `checkpoint_dir`, a checkpoint is written every `checkpoint_every` steps, and `resume=True`
    continues from the one there. Raises TrainingError on a NaN/inf loss and on out-of-memory.

    `rank` (a distributed.Rank, in a process group of several) trains data-parallel: each step's rows are shared
    out among the ranks and the gradients all-reduced (see distributed.py); only rank 0 should get `on_event`,
    `control` and `eval_examples`, and only it writes checkpoints. Without `rank` nothing of that runs."""
    if rank is not None and rank.world_size == 1:
        rank = None
    if not examples:
        raise TrainingError("There is no training example to learn from.")
    per_epoch, total_steps = plan_steps(len(examples), hp)
    warmup = int(round(float(hp.get("warmup_ratio", 0.0)) * total_steps))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(hp["learning_rate"]), weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(hp["scheduler"], warmup, total_steps))
    run = _Run(
        model=model,
        examples=examples,
        hp=hp,
        device=device,
        pad_id=pad_id,
        params=params,
        optimizer=optimizer,
        scheduler=scheduler,
        per_epoch=per_epoch,
        total_steps=total_steps,
        rank=rank,
        on_event=on_event or (lambda event: None),
        control=control,
        eval_examples=eval_examples if rank is None or rank.is_main else None,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
    )
    if memory_budget is not None:  # a batch that does not fit goes through in parts (the same gradient)
        config = model.config.to_dict() if hasattr(model, "config") else {}
        targets = resolve_target_modules(hp["target_modules"], (config.get("architectures") or [None])[0])
        per_token = training_bytes_per_token(config, rank=int(hp["rank"]), targets=targets, dropout=float(hp.get(
            "dropout", 0.0)), act_bytes=2 if autocast_dtype(device) else 4)  # fmt: skip
        run.pass_tokens = rows_and_tokens(memory_budget, per_token=per_token)[1]
    done = _restored_or_seeded(run, checkpoint_dir=checkpoint_dir if resume else None)
    if rank is not None:
        distributed.broadcast_parameters(params)
    model.train()
    started = time.perf_counter()
    stopped = _run_epochs(run, done, started=started)
    _evaluate(run, done, epoch=round(done.step / per_epoch, 4))
    model.eval()
    return TrainResult(
        steps=done.step,
        total_steps=total_steps,
        losses=done.losses,
        train_loss=_last_epoch_loss(done.losses, done.step_tokens, per_epoch=per_epoch),
        tokens=done.tokens,
        seconds=time.perf_counter() - started,
        stopped_early=stopped,
        eval_losses=done.eval_losses,
        resumed_from=done.resumed_from,
        steps_per_epoch=per_epoch,
        passes=run.epochs,
    )


@dataclass
class _Run:
    """One run's setup: what every optimizer step, evaluation and checkpoint works with."""

    model: Any
    examples: list[Example]
    hp: dict[str, Any]
    device: torch.device
    pad_id: int
    params: list
    optimizer: Any
    scheduler: Any
    per_epoch: int
    total_steps: int
    rank: Any  # a distributed.Rank of several processes, or None
    on_event: EventCallback
    control: ControlCallback | None
    eval_examples: list[Example] | None
    checkpoint_dir: Path | None
    checkpoint_every: int
    pass_tokens: int | None = None  # the most padded tokens one forward+backward may hold (the memory budget)

    def __post_init__(self) -> None:
        self.seed = int(self.hp["seed"])
        self.batch_size, self.grad_accum = int(self.hp["batch_size"]), int(self.hp["grad_accum"])
        self.epochs = plan_passes(len(self.examples), self.hp)[1]
        self.lengths = [e.n_tokens for e in self.examples]


@dataclass
class _Done:
    """What the run has done so far: what a checkpoint holds, and what a resume starts from."""

    step: int = 0
    losses: list[float] = field(default_factory=list)
    step_tokens: list[int] = field(default_factory=list)
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    tokens: int = 0
    resumed_from: int = 0

    def record(self, *, loss: float, answer_tokens: int, tokens: int) -> None:
        self.step += 1
        self.tokens += tokens
        self.losses.append(loss)
        self.step_tokens.append(answer_tokens)

    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "losses": self.losses,
            "step_tokens": self.step_tokens,
            "eval_losses": self.eval_losses,
            "tokens": self.tokens,
        }


def _run_epochs(run: _Run, done: _Done, *, started: float) -> bool:
    """The optimizer steps from where `done` stands to the end, with the evaluations between epochs. True when a
    "stop" ended them early; a "cancel" raises Cancelled."""
    tokens_here, steps_here = 0, 0
    pending = None  # distributed: the command rank 0 saw, agreed by all ranks in the last step's all-reduce
    for epoch in range(run.epochs):
        batches = make_batches(run.lengths, batch_size=run.batch_size, seed=run.seed, epoch=epoch)
        windows = [batches[i : i + run.grad_accum] for i in range(0, len(batches), run.grad_accum)]
        ran = False
        for index, window in enumerate(windows):
            if epoch * run.per_epoch + index < done.step:
                continue  # done before the checkpoint we resumed from
            command = (run.control() if run.control else None) if run.rank is None else pending
            if command == "cancel":
                raise Cancelled("The run was cancelled.")
            if command == "stop":
                return True
            groups = [[run.examples[i] for i in batch] for batch in window]
            answer_tokens = sum(e.n_answer_tokens for group in groups for e in group)
            window_loss, pending = _optimizer_step(run, groups, answer_tokens=answer_tokens, step=done.step)
            window_tokens = sum(e.n_tokens for group in groups for e in group)
            done.record(loss=window_loss / answer_tokens, answer_tokens=answer_tokens, tokens=window_tokens)
            steps_here, tokens_here, ran = steps_here + 1, tokens_here + window_tokens, True
            elapsed = time.perf_counter() - started
            run.on_event(
                {
                    "type": "train",
                    "step": done.step,
                    "total_steps": run.total_steps,
                    "epoch": round(epoch + (index + 1) / len(windows), 4),
                    "loss": done.losses[-1],
                    "lr": run.scheduler.get_last_lr()[0],
                    "tokens_per_s": tokens_here / elapsed if elapsed > 0 else 0.0,
                    "eta_s": elapsed / steps_here * (run.total_steps - done.step),
                    "memory_bytes": memory_bytes(run.device),
                }
            )
            _checkpoint_if_due(run, done)
        if ran and epoch < run.epochs - 1:
            _evaluate(run, done, epoch=float(epoch + 1))
    return False


def _checkpoint_if_due(run: _Run, done: _Done) -> None:
    """Every `checkpoint_every` steps but the last, rank 0 (or the only process) writes a checkpoint."""
    due = run.checkpoint_every and done.step % run.checkpoint_every == 0 and done.step < run.total_steps
    if due and run.checkpoint_dir is not None and (run.rank is None or run.rank.is_main):
        save_checkpoint(
            run.checkpoint_dir, model=run.model, optimizer=run.optimizer, scheduler=run.scheduler, state=done.state()
        )


def _evaluate(run: _Run, done: _Done, *, epoch: float) -> None:
    if run.eval_examples:
        loss, _ = eval_loss(
            run.model, run.eval_examples, device=run.device, pad_id=run.pad_id, batch_size=run.batch_size,
            max_tokens=run.pass_tokens,  # a training pass's bound: an evaluation pass of as many tokens needs less
        )  # fmt: skip
        done.eval_losses.append((done.step, loss))
        run.on_event({"type": "eval", "step": done.step, "epoch": epoch, "eval_loss": loss})


def _restored_or_seeded(run: _Run, *, checkpoint_dir: Path | None) -> _Done:
    """The progress of the checkpoint in `checkpoint_dir` restored into the run's objects, or a fresh start with the
    global generator seeded (dropout draws from it; a checkpoint restores its own generator state)."""
    rank, seed = run.rank, run.seed
    state = None
    if checkpoint_dir is not None:
        state = load_checkpoint(checkpoint_dir, model=run.model, optimizer=run.optimizer, scheduler=run.scheduler)
    if state is None:
        torch.manual_seed(seed if rank is None else seed + rank.rank)
        return _Done()
    done = _Done(
        step=state["step"],
        losses=state["losses"],
        step_tokens=state["step_tokens"],
        eval_losses=[tuple(x) for x in state["eval_losses"]],
        tokens=state["tokens"],
        resumed_from=state["step"],
    )
    if rank is not None and not rank.is_main:
        torch.manual_seed(seed + rank.rank + 7919 * done.step)  # the checkpoint holds rank 0's generator only
    return done


def _optimizer_step(run: _Run, groups: list[list[Example]], *, answer_tokens: int, step: int):
    """Forward and backward over this rank's share of one optimizer step's rows, the all-reduce when distributed,
    then clip and step. Returns (the window's summed loss, the agreed command when distributed, else None).
    Raises TrainingError when the loss is not finite or the device runs out of memory."""
    rank, hp, device = run.rank, run.hp, run.device
    window_loss, width, rows, command = 0.0, 0, 0, None
    local = groups if rank is None else distributed.shard_window(groups, rank, run.batch_size)
    try:
        for group in (part for batch in local for part in split_by_tokens(batch, run.pass_tokens)):
            rows, width = len(group), max(e.n_tokens for e in group)
            ids, labels = collate(group, pad_id=run.pad_id, device=device)
            with autocast(device):
                loss_sum, _ = answer_loss_sum(run.model, ids, labels)
            if rank is None and not torch.isfinite(loss_sum):
                raise TrainingError(diverged_message(float(loss_sum.detach()), step + 1, hp))
            (loss_sum / answer_tokens).backward()
            window_loss += float(loss_sum.detach())
            del ids, labels, loss_sum
        if rank is not None:
            seen = (run.control() if run.control else None) if rank.is_main else None
            window_loss, command = distributed.reduce_step(run.params, loss_sum=window_loss, command=seen)
            if not math.isfinite(window_loss):  # every rank sees the same sum, so all stop together
                raise TrainingError(diverged_message(window_loss, step + 1, hp))
        torch.nn.utils.clip_grad_norm_(run.params, MAX_GRAD_NORM)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        run.optimizer.zero_grad(set_to_none=True)
        del exc
        release_memory(device)
        raise TrainingError(out_of_memory_message(hp, rows=rows, width=width, device=device)) from None
    return window_loss, command


def _last_epoch_loss(losses: list[float], step_tokens: list[int], *, per_epoch: int) -> float:
    """The train loss: the token-weighted mean over the steps of the last (possibly partial) epoch."""
    last = losses[-(((len(losses) - 1) % per_epoch) + 1) :] if losses else []
    weights = step_tokens[-len(last) :] if last else []
    return sum(x * w for x, w in zip(last, weights, strict=True)) / sum(weights) if last else float("nan")
