"""How much memory a training job may use, and what one pass of each stage costs, in plain numbers.

The budget: a fraction (MF_MEMORY_BUDGET_FRACTION) of the memory this process could still have when the stage
starts: what it holds plus what the machine (or its cgroup) has available; on a GPU, the device's free memory plus
what torch holds. A stage sizes its passes so that one pass fits in the budget, whatever the number of rows.

The per-token costs are formulas, shared with the wizard's estimate (estimate.py): activations of a forward and
backward pass per token and layer about 34 x hidden x bytes/2 (Korthikanti et al. 2022, with fused attention),
the output logits of answer tokens (logits, softmax and their gradient in fp32), what the LoRA adapter adds (each
adapted layer keeps its input for lora_A's gradient and the output it adds; with dropout, a dropped copy of the
input and its mask), and, for the attribution index, the gradient at every LoRA matrix's output, all held at once
for one pass (attribution/engine/lora.py). A training or index pass is then scaled by ALLOCATOR_SLACK, what the
measured peaks add to the formula (temporaries and freed blocks the allocator keeps). An
evaluation pass keeps no graph: only the layer it is computing is live (a few layers' worth of the same formula) plus
the answer tokens' logits; greedy answers add the key/value cache of every prompt and answer token.

No Django here: the limit a setting simulates (MF_MEMORY_LIMIT_MB) is passed in by the caller.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

DEFAULT_BUDGET_FRACTION = 0.25  # a worker shares the machine (web app, database, serving): 0.5 took 8 GB for one pass
NEAR_LIMIT_FRACTION = 0.85  # a process killed while holding this share of what it could have: out of memory
LOGIT_BYTES = 4 * 3  # fp32 logits, their softmax and its gradient, per answer token and vocabulary entry
JEMALLOC_ALL_ARENAS = 4096  # MALLCTL_ARENAS_ALL in jemalloc 5: "arena.4096.purge" purges every arena
FLOOR_TOKENS = 64  # a pass may always hold this many tokens (one short row), whatever the budget says
# Measured peak / formula of one training or index pass on SmolLM2-135M (CPU, fp32, rows of 61 to 581 tokens, each
# preset): 0.70 to 0.96 with this slack, the most on the smallest pass (fixed costs over few tokens). Before the
# LoRA term, a Thorough pass of long rows held 2.2x its formula and training took 17 GB under a 9.6 GB budget.
ALLOCATOR_SLACK = 1.25
FORWARD_LAYERS = 3  # layers' worth of activations one pass without a graph holds (94 KB/token measured on SmolLM2: 2.4)
SCORE_BYTES = 32  # per head, attended position and token of a masked (left-padded) prompt pass: ~7 fp32 copies of
# the attention scores measured on SmolLM2 (CPU sdpa falls back to its unfused kernel when a padding mask is given)


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _meminfo() -> dict[str, int]:
    found = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            parts = value.split()
            if parts and parts[0].isdigit():
                found[key] = int(parts[0]) * 1024
    except OSError:
        pass
    return found


def _status(field: str) -> int:
    """A size from /proc/self/status (VmRSS, VmHWM), in bytes; 0 where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def rss_bytes() -> int:
    """Resident memory of this process now."""
    return _status("VmRSS")


def peak_rss_bytes() -> int:
    """The most resident memory this process has held (since start, or since `reset_peak_rss`)."""
    return _status("VmHWM")


def reset_peak_rss() -> bool:
    """Starts the peak (VmHWM) over from the current resident size (Linux: /proc/self/clear_refs, value 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


STAGE_OF_PHASE = {"loading": "training", "training": "training", "evaluating": "evaluation", "indexing": "index"}


class StagePeaks:
    """The peak memory of each stage of one job, in the terms of its estimate (estimate.py), for the calibration of
    the next estimates: the process's resident memory (VmHWM, started over at each phase); on a GPU, the device
    memory torch allocated for training and the comparison (the index is built on the CPU). Phases are the job's
    (STAGE_OF_PHASE names the stage each belongs to; others, such as saving, count only in the job's peak).
    One job at a time in the process: the peaks are the process's."""

    def __init__(self, *, gpu: bool = False):
        self.gpu = gpu
        self.peaks: dict[str, int] = {}
        self._stage: str | None = None
        self.measured = reset_peak_rss()  # False where /proc cannot start the peak over: nothing is recorded

    def phase(self, name: str) -> None:
        """Phase `name` starts: the one before it ends (its peak is kept) and the peak starts over."""
        self._close()
        self._stage = STAGE_OF_PHASE.get(name, "other")
        reset_peak_rss()
        if self.gpu:
            import torch  # only a process that trains on a GPU asks

            torch.cuda.reset_peak_memory_stats()

    def _close(self) -> None:
        if self._stage is None:
            return
        if self.gpu and self._stage in ("training", "evaluation"):
            import torch

            value = int(torch.cuda.max_memory_allocated())
        else:
            value = peak_rss_bytes()
        self.peaks[self._stage] = max(self.peaks.get(self._stage, 0), value)

    def finish(self) -> dict[str, int]:
        """{stage: peak bytes, ..., "job": the largest}; {} when nothing could be measured."""
        self._close()
        self._stage = None
        if not self.measured or not self.peaks:
            return {}
        stages = {name: value for name, value in self.peaks.items() if name != "other"}
        return {**stages, "job": max(self.peaks.values())}


def available_bytes() -> int:
    """Memory the machine can still give: MemAvailable, or less when this process's cgroup has a lower limit."""
    info = _meminfo()
    available = info.get("MemAvailable", info.get("MemFree", 0))
    cgroup_max = _read_int("/sys/fs/cgroup/memory.max")
    cgroup_now = _read_int("/sys/fs/cgroup/memory.current")
    if cgroup_max and cgroup_now is not None:
        available = min(available, max(0, cgroup_max - cgroup_now))
    return available


def process_limit_bytes(*, simulated: int = 0) -> int:
    """The most this process could hold right now: what it holds plus what is still available (or `simulated`,
    a fixed limit in bytes set by MF_MEMORY_LIMIT_MB, for tests and for machines shared with other work)."""
    if simulated > 0:
        return int(simulated)
    return rss_bytes() + available_bytes()


def near_limit(rss: int, limit: int, *, fraction: float = NEAR_LIMIT_FRACTION) -> bool:
    return limit > 0 and rss >= fraction * limit


def free_bytes(*, device: Any = None, simulated: int = 0) -> int:
    """What this process can still add (the model it already holds is not counted again): the memory available
    to it, or what is left of `simulated` (MF_MEMORY_LIMIT_MB); on a CUDA device, the device's free memory."""
    if device is not None and getattr(device, "type", "cpu") == "cuda":
        import torch  # only a process that trains on a GPU asks

        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return max(0, (simulated - rss_bytes()) if simulated > 0 else available_bytes())


def budget_bytes(*, fraction: float = DEFAULT_BUDGET_FRACTION, device: Any = None, simulated: int = 0) -> int:
    """The memory one pass of a stage may add: `fraction` of what is still free for this process."""
    return int(fraction * free_bytes(device=device, simulated=simulated))


def activation_bytes_per_token(config: dict[str, Any], *, act_bytes: int = 4, answer_share: float = 1.0) -> float:
    """One forward+backward pass per token: activations of every layer plus the answer tokens' logits."""
    hidden = int(config.get("hidden_size", 0))
    layers = int(config.get("num_hidden_layers", 0))
    vocab = int(config.get("vocab_size", 0))
    return layers * hidden * 34 * act_bytes / 2 + answer_share * vocab * LOGIT_BYTES


def _attention_shape(config: dict[str, Any]) -> tuple[int, int, int]:
    """(query heads, key/value heads, head size) of a model config."""
    hidden = int(config.get("hidden_size", 0))
    heads = int(config.get("num_attention_heads", 1))
    kv = int(config.get("num_key_value_heads", heads))
    return heads, kv, int(config.get("head_dim") or hidden // max(1, heads))


def forward_bytes_per_token(config: dict[str, Any], *, act_bytes: int = 4, answer_share: float = 1.0) -> float:
    """One forward pass without a graph (evaluation) per token: FORWARD_LAYERS layers' worth of activations (no
    layer's are kept for a backward pass) plus the logits and their softmax of the answer tokens (`answer_share`
    of the tokens; 0 for a generation's prompt, whose logits are computed for its last token only)."""
    hidden = int(config.get("hidden_size", 0))
    vocab = int(config.get("vocab_size", 0))
    return FORWARD_LAYERS * hidden * 34 * act_bytes / 2 + answer_share * vocab * LOGIT_BYTES


def kv_cache_bytes_per_token(config: dict[str, Any], *, act_bytes: int = 4) -> float:
    """The key/value cache of one token (prompt or generated), all layers: keys and values of every key/value
    head, in the activations' precision."""
    _heads, kv, head_dim = _attention_shape(config)
    return 2 * int(config.get("num_hidden_layers", 0)) * kv * head_dim * act_bytes


def attention_scores_bytes_per_token(config: dict[str, Any], *, width: int) -> float:
    """A prompt pass with a padding mask, per token: one layer's attention scores over `width` positions (and
    their softmax and mask), when the attention kernel forms them (SCORE_BYTES)."""
    heads, _kv, _head_dim = _attention_shape(config)
    return heads * width * SCORE_BYTES


def lora_layer_shapes(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(in, out) of each layer LoRA can adapt in a Llama-style config, Phi-3's fused layers too."""
    hidden = int(config.get("hidden_size", 0))
    inter = int(config.get("intermediate_size", 4 * hidden))
    heads, kv, head_dim = _attention_shape(config)
    return {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv * head_dim),
        "v_proj": (hidden, kv * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
        "qkv_proj": (hidden, (heads + 2 * kv) * head_dim),  # Phi-3's fused layers
        "gate_up_proj": (hidden, 2 * inter),
    }


def _lora_widths(config: dict[str, Any], *, rank: int, targets: list[str], side: int) -> int:
    """Sum over LoRA matrices, all layers, of their input widths (side 0: lora_A the layer's input, lora_B rank) or
    output widths (side 1: lora_A rank, lora_B the layer's output)."""
    shapes = lora_layer_shapes(config)
    per_layer = sum(rank + shapes[t][side] for t in targets if t in shapes)
    return per_layer * int(config.get("num_hidden_layers", 0))


def lora_output_widths(config: dict[str, Any], *, rank: int, targets: list[str]) -> int:
    """Sum over LoRA matrices of their output widths (lora_A: rank, lora_B: the layer's output), all layers."""
    return _lora_widths(config, rank=rank, targets=targets, side=1)


def lora_input_widths(config: dict[str, Any], *, rank: int, targets: list[str]) -> int:
    """Sum over LoRA matrices of their input widths (lora_A: the layer's input; lora_B: rank), all layers."""
    return _lora_widths(config, rank=rank, targets=targets, side=0)


def training_bytes_per_token(
    config: dict[str, Any],
    *,
    rank: int,
    targets: list[str],
    dropout: float = 0.0,
    act_bytes: int = 4,
    answer_share: float = 1.0,
) -> float:
    """A training pass per token: the model's activations, what the LoRA adapter keeps for its own gradients (its
    matrices' inputs and outputs; with dropout, the dropped input and its one-byte mask), times ALLOCATOR_SLACK."""
    inputs = lora_input_widths(config, rank=rank, targets=targets)
    lora = act_bytes * (inputs + lora_output_widths(config, rank=rank, targets=targets))
    if dropout > 0:
        lora += (act_bytes + 1) * inputs
    base = activation_bytes_per_token(config, act_bytes=act_bytes, answer_share=answer_share)
    return ALLOCATOR_SLACK * (base + lora)


def index_bytes_per_token(config: dict[str, Any], *, rank: int, targets: list[str]) -> float:
    """An index pass per token (fp32, no dropout): a training pass, whose LoRA outputs' gradients are all held at
    once until the pass's features are formed (attribution/engine/index.pass_limits counts the same from the
    adapter's actual matrices)."""
    return training_bytes_per_token(config, rank=rank, targets=targets)


def rows_and_tokens(budget: int, *, per_token: float, per_row: float = 0.0) -> tuple[int, int]:
    """(rows, tokens) one pass may hold within `budget` bytes, never below one short row."""
    tokens = max(FLOOR_TOKENS, int(budget // max(1.0, per_token)))
    rows = max(1, int(budget // per_row)) if per_row > 0 else tokens
    return rows, tokens


def release_freed() -> None:
    """Hands memory freed by a stage back to the system. glibc keeps freed blocks of up to 32 MB (a layer's
    activations for a few thousand tokens) in the process's heap, so without this the next stage, or the worker's
    next job, would start from the last stage's peak. Under jemalloc (LD_PRELOAD) every arena's freed pages are
    purged now instead of after its decay time (10 s by default): glibc's malloc_trim does not see them."""
    import ctypes  # Linux/glibc only; elsewhere nothing to do
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError, AttributeError):
        mallctl = ctypes.CDLL(None).mallctl  # only where jemalloc was loaded
        mallctl(b"arena.%d.purge" % JEMALLOC_ALL_ARENAS, None, None, None, ctypes.c_size_t(0))


def split_by_tokens(group: list, max_tokens: int | None) -> list[list]:
    """A batch (items with `n_tokens`) cut into consecutive parts of at most `max_tokens` padded tokens each (parts x
    their longest item; at least one item per part). Summing the parts' gradients gives the batch's gradient."""
    if not max_tokens:
        return [group]
    parts: list[list] = [[]]
    for item in group:
        width = max([item.n_tokens] + [other.n_tokens for other in parts[-1]])
        if parts[-1] and (len(parts[-1]) + 1) * width > max_tokens:
            parts.append([])
        parts[-1].append(item)
    return parts


STAGE_WORDS = {
    "loading": "loading the base model",
    "training": "training",
    "evaluating": "comparing the base model and the fine-tuned one on held-out rows",
    "evaluating_again": "comparing the base model and the fine-tuned one on the test set",
    "saving": "saving the adapter",
    "indexing": "building the attribution index over the training rows",
}


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 / 10 else f"{n / 2**20:.0f} MB"


def row_too_large_message(*, phase: str, tokens: int, needed: float, free: int, answering: bool = False) -> str:
    """A row that cannot fit even alone in all the memory a stage could add: what, in which stage, what to lower.
    `answering`: it is the greedy answer to the row's prompt (`tokens`: prompt and answer) that does not fit."""
    stage = STAGE_WORDS.get(phase, "running the job")
    what = f"answering its longest prompt ({tokens} tokens with the answer)" if answering else (
        f"its longest row ({tokens} tokens)"
    )  # fmt: skip
    return (
        f"There is not enough memory for {stage}: {what} needs about {_size(needed)} on its own, and the worker has "
        f"{_size(free)} free, so nothing was evaluated. Lower the maximum length (rows longer than it are left out) "
        "or leave the longest rows out, then launch it again."
    )


def out_of_memory_message(
    *, phase: str, hp: dict[str, Any], held: int = 0, limit: int = 0, killed: bool = False, kept: bool = False
) -> str:
    """What ran out, in which stage, and what to lower, in plain words. `killed`: the system stopped the worker
    (the job fails with this, once); `kept`: a post-training stage ran out, the trained model is kept."""
    stage = STAGE_WORDS.get(phase, "running the job")
    gb = 2**30
    how_much = (
        f" (the worker held {held / gb:.1f} GB of the {limit / gb:.1f} GB it could use)" if held and limit else ""
    )
    batch = int(hp.get("batch_size", 1))
    if killed:
        ending = (", so the system stopped the training worker. The job was not started again, since it would run "
                  "out of memory the same way.")  # fmt: skip
    else:
        ending = ". The trained model is kept." if kept else "."
    parts = [
        f"The computer ran out of memory while {stage}{how_much}{ending}",
        (
            "Lower "
            + (f"the batch size (now {batch}; try {batch // 2}), " if batch > 1 else "")
            + f"the maximum length (now {hp.get('max_length', '?')} tokens) or the adapter size (rank, now "
            f"{hp.get('rank', '?')}), then launch it again."
        ),  # fmt: skip
    ]
    if phase in ("evaluating", "indexing"):
        parts.append(
            "An operator can also lower MF_MEMORY_BUDGET_FRACTION, the share of free memory each pass of this stage "
            "may use."
        )
    return " ".join(parts)
