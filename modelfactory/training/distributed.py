"""Data-parallel training over several devices: one process per device, LoRA gradients all-reduced every step.

How a run is split (the hyperparameters mean the same thing on any number of devices):
- Every rank builds the same examples and the same length-grouped batches (same seed), so every rank knows each
  optimizer step's whole window of `batch_size x grad_accum` rows. `shard_window` sorts that window's rows by
  length and deals them round-robin to the ranks; each rank runs its share in micro-batches of at most
  `batch_size` rows. So a step covers exactly the rows it covers on one device, with the same loss normalisation
  (the window's answer-token count), and per-device memory never exceeds the one-device batch.
- After the backward passes, one all-reduce (sum) per step carries the LoRA gradients, the window's summed loss
  and rank 0's stop/cancel command. The summed gradient equals the one-device gradient up to float rounding
  order; every rank then clips and steps identically, and the adapters stay identical (rank 0's initial LoRA
  weights are broadcast first). Dropout masks differ from a one-device run (each rank draws from seed + rank),
  so results match a one-device run exactly only up to rounding when dropout is 0.
- Only rank 0 sends progress events, writes checkpoints, evaluates and saves the adapter. A stop or cancel takes
  effect one step later than on one device (it travels with the step's all-reduce so all ranks agree).

Launching: `launch` starts the ranks as `python -m modelfactory.training.distributed` subprocesses (not
multiprocessing: a Celery prefork worker is a daemon process and may not have multiprocessing children), with a
torch.distributed process group (nccl on CUDA, gloo on CPU; rendezvous through a file in the run folder). The
ranks talk to the launching process over an authenticated local connection: rank 0 sends events and its result,
the launcher sends stop/cancel. If any rank fails, the others are terminated and the failure is raised in the
launcher: TrainingError and Cancelled with their own message, anything else as DistributedError. A rank whose
launcher dies exits within seconds (it watches its parent), so a killed worker leaves no orphan on a GPU; the job
is then resumed from rank 0's last checkpoint like any other. Which GPUs a worker sees is CUDA_VISIBLE_DEVICES:
to run one job per GPU instead, start one worker per GPU, each seeing one.

Tested on CPU with 2 gloo processes (tests/training/test_distributed.py); on a GPU, bench/gpu_check.py ran the nccl
branch with one process on one H100 (launch, rendezvous, broadcast, per-step all-reduce); 2+ GPUs have not run yet.
accelerate is not used for the launch: its launchers either block the caller (no progress relay, no stop/cancel)
or fork from the caller, which a Celery worker process cannot do.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import Client, Listener, wait
from pathlib import Path
from typing import Any

COMMANDS = {None: 0.0, "stop": 1.0, "cancel": 2.0}
COMMAND_NAMES = {0: None, 1: "stop", 2: "cancel"}
CONNECT_TIMEOUT_S = 600.0  # a rank imports torch, transformers and peft before it connects
GROUP_TIMEOUT = timedelta(hours=2)  # a rank waits this long in a collective (e.g. while rank 0 evaluates)
AUTHKEY_ENV = "MF_DIST_AUTHKEY"
EXIT_TIMEOUT_S = 60.0


class DistributedError(RuntimeError):
    """A training process failed for a reason that is not a TrainingError (the traceback is in the message)."""


@dataclass(frozen=True)
class Rank:
    rank: int
    world_size: int
    device_type: str  # "cpu" | "cuda"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self):
        import torch  # torch only where a rank trains: the launcher starts ranks without it

        return torch.device("cuda", self.rank) if self.device_type == "cuda" else torch.device("cpu")


# ---------------------------------------------------------------- inside the training loop


def shard_window(groups: list[list[Any]], rank: Rank, batch_size: int) -> list[list[Any]]:
    """This rank's micro-batches of an optimizer step's rows: the window's rows sorted by length (longest first,
    ties in window order) and dealt round-robin, then cut into chunks of at most `batch_size`."""
    rows = sorted((e for group in groups for e in group), key=lambda e: e.n_tokens, reverse=True)
    mine = rows[rank.rank :: rank.world_size]
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


def broadcast_parameters(params) -> None:
    """Every rank takes rank 0's values (the LoRA init is seeded alike, this makes it certain)."""
    import torch.distributed as dist  # as in Rank.device

    for p in params:
        dist.broadcast(p.data, src=0)


def reduce_step(params, *, loss_sum: float, command: str | None) -> tuple[float, str | None]:
    """One all-reduce (sum) of every trainable parameter's gradient plus [loss_sum, command code]. A rank with no
    rows this step contributes zeros. Returns the window's summed loss and rank 0's command, the same on all."""
    import torch  # as in Rank.device
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    device = grads[0].device if grads else torch.device("cpu")
    extras = torch.tensor([loss_sum, COMMANDS[command]], dtype=torch.float32, device=device)
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [extras])
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
        offset += n
    total, code = flat[offset:].tolist()
    return total, COMMAND_NAMES.get(int(round(code)))


# ---------------------------------------------------------------- launcher (the calling process)


def _project_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def launch(
    target: str,
    payload: Any,
    *,
    world_size: int,
    device_type: str,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    control: Callable[[], str | None] | None = None,
    poll_s: float = 0.2,
) -> Any:
    """Runs `target` ("package.module:function", called as function(rank=Rank, payload=..., on_event=..., control=...))
    in `world_size` processes with a process group, relays rank 0's events to `on_event` here, forwards
    `control()` to rank 0, and returns rank 0's return value. Raises what a rank raised (see the module doc)."""
    authkey = secrets.token_bytes(32)
    rundir = Path(tempfile.mkdtemp(prefix="mf-dist-"))
    listener = Listener(("127.0.0.1", 0), authkey=authkey)
    conns: dict[int, Any] = {}
    procs: list[subprocess.Popen] = []
    result: Any = None
    errors: list[tuple[str, str]] = []
    try:
        _accept_ranks(listener, conns, world_size=world_size)
        _start_ranks(
            procs,
            listener.address,
            authkey=authkey,
            world_size=world_size,
            device_type=device_type,
            rendezvous=rundir / "rendezvous",
        )
        _wait_connected(conns, procs, world_size=world_size)
        for rank in range(world_size):
            conns[rank].send((target, payload))
        result = _relay(conns, procs, errors, on_event=on_event, control=control, poll_s=poll_s)
        if not errors:
            for p in procs:  # every rank has closed its connection: let it leave the process group and exit
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=EXIT_TIMEOUT_S)
    finally:
        _stop_processes(procs)
        listener.close()
        for conn in conns.values():
            conn.close()
        shutil.rmtree(rundir, ignore_errors=True)
    if errors:
        raise _rank_failure(*errors[0])
    codes = [p.returncode for p in procs]
    if any(codes):
        raise DistributedError(f"A training process stopped unexpectedly (exit codes {codes}).")
    return result


def _accept_ranks(listener: Listener, conns: dict[int, Any], *, world_size: int) -> None:
    """In a thread: takes each rank's connection as it comes and files it under the rank it names."""

    def accept() -> None:
        try:
            while len(conns) < world_size:
                conn = listener.accept()
                rank = conn.recv()
                conns[int(rank)] = conn
        except BaseException:  # the listener was closed: we gave up waiting
            return

    threading.Thread(target=accept, name="mf-dist-accept", daemon=True).start()


def _start_ranks(
    procs: list[subprocess.Popen], address, *, authkey: bytes, world_size: int, device_type: str, rendezvous: Path
) -> None:
    """Starts one `python -m modelfactory.training.distributed` per rank, appending each to `procs` as it starts
    (so that the caller stops those already running if a later one fails to start)."""
    env = dict(os.environ)
    env[AUTHKEY_ENV] = authkey.hex()
    env["PYTHONPATH"] = os.pathsep.join([_project_root(), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    host, port = address
    for rank in range(world_size):
        command = [sys.executable, "-m", "modelfactory.training.distributed", host, str(port), str(rank),
                   str(world_size), device_type, str(rendezvous)]  # fmt: skip
        procs.append(subprocess.Popen(command, env=env))  # noqa: S603 (our own interpreter and module)


def _wait_connected(conns: dict[int, Any], procs: list[subprocess.Popen], *, world_size: int) -> None:
    """Until every rank has connected; DistributedError when one exits first or they take too long."""
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while len(conns) < world_size:
        failed = [p.returncode for p in procs if p.poll() is not None]
        if failed:
            raise DistributedError(f"A training process stopped while starting (exit code {failed[0]}).")
        if time.monotonic() > deadline:
            raise DistributedError(f"The training processes did not start within {CONNECT_TIMEOUT_S:.0f} s.")
        time.sleep(0.05)


def _relay(
    conns: dict[int, Any],
    procs: list[subprocess.Popen],
    errors: list[tuple[str, str]],
    *,
    on_event: Callable[[dict[str, Any]], None] | None,
    control: Callable[[], str | None] | None,
    poll_s: float,
) -> Any:
    """Until every rank has closed its connection: rank 0's events go to `on_event`, a rank's error is appended to
    `errors` (and ends the relay: the others may be waiting for it in a collective), a change of `control()` goes
    to rank 0. Returns rank 0's result (None if none came)."""
    result: Any = None
    open_conns = dict(conns)
    sent_command = None
    while open_conns:
        for conn in wait(list(open_conns.values()), timeout=poll_s):
            rank = next(r for r, c in open_conns.items() if c is conn)
            try:
                kind, *message = conn.recv()
            except (EOFError, OSError):
                del open_conns[rank]
                continue
            if kind == "event" and on_event is not None:
                on_event(message[0])
            elif kind == "result":
                result = message[0]
            elif kind == "error":
                errors.append((message[0], message[1]))
        if errors or any(p.poll() not in (None, 0) for p in procs):
            break  # one rank failed: the others may be waiting for it in a collective
        if control is not None and 0 in open_conns:
            command = control()
            if command != sent_command:
                sent_command = command
                with contextlib.suppress(OSError):
                    open_conns[0].send(("control", command))
    return result


def _rank_failure(kind: str, message: str) -> Exception:
    """The exception to raise in the launcher for a rank's reported error: its own kind where it has one."""
    from modelfactory.training.loop import Cancelled, TrainingError  # loop imports this module (and torch)

    if kind == "training":
        return TrainingError(message)
    if kind == "cancelled":
        return Cancelled(message)
    return DistributedError(message)


def _stop_processes(procs: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# ---------------------------------------------------------------- one rank (a subprocess)


def _exit_with_parent(poll_s: float = 2.0) -> None:
    """A rank whose launcher died (e.g. a killed Celery worker) must not keep a GPU busy as an orphan."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, name="mf-dist-parent-watch", daemon=True).start()


def _rank_main(argv: list[str]) -> int:
    host, port, rank, world, device_type, rendezvous = argv
    _exit_with_parent()
    rank_info = Rank(int(rank), int(world), device_type)
    conn = Client((host, int(port)), authkey=bytes.fromhex(os.environ[AUTHKEY_ENV]))
    conn.send(rank_info.rank)
    target, payload = conn.recv()

    # torch, and loop (which imports torch and this module): after the launcher has heard from this rank
    import torch
    import torch.distributed as dist

    from modelfactory.training.loop import Cancelled, TrainingError

    if device_type == "cuda":
        torch.cuda.set_device(rank_info.rank)
    dist.init_process_group(
        backend="nccl" if device_type == "cuda" else "gloo",
        init_method=f"file://{rendezvous}",
        rank=rank_info.rank,
        world_size=rank_info.world_size,
        timeout=GROUP_TIMEOUT,
    )
    command: list[str | None] = [None]

    def control() -> str | None:
        while conn.poll():
            kind, value = conn.recv()
            if kind == "control":
                command[0] = value
        return command[0]

    def emit(event: dict[str, Any]) -> None:
        conn.send(("event", event))

    module_name, function_name = target.split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    code = 0
    try:
        value = function(
            rank=rank_info,
            payload=payload,
            on_event=emit if rank_info.is_main else None,
            control=control if rank_info.is_main else None,
        )
        if rank_info.is_main:
            pickle.dumps(value)  # fail here, with a traceback, rather than in the launcher
            conn.send(("result", value))
    except TrainingError as exc:
        conn.send(("error", "training", str(exc)))
        code = 1
    except Cancelled as exc:
        conn.send(("error", "cancelled", str(exc)))
        code = 1
    except BaseException:
        conn.send(("error", "crash", f"Training process {rank_info.rank} failed:\n{traceback.format_exc()}"))
        code = 1
    finally:
        conn.close()
        if code == 0:
            dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(_rank_main(sys.argv[1:]))
