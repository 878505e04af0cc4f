"""A thread-safe front door to one Engine: concurrent callers submit requests, a worker thread groups what arrives
within a short window (up to `max_batch_size`) into one batch, and — with `continuous=True` — lets requests that
arrive later join the running batch between decode steps. Errors reach the requests they concern; an error in a
forward pass fails the requests in that batch and the worker carries on with the next ones."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator

from .engine import Engine
from .types import FINISH_CANCELLED, GenerationRequest, GenerationResult, ServingError

logger = logging.getLogger(__name__)

_END = object()


class BatcherClosed(ServingError):
    code = "batcher_closed"


class Ticket:
    """A submitted request. `result()` waits for the outcome (raising the error if it failed); `stream()` yields the
    text deltas as they are generated; `cancel()` stops it (the others in its batch carry on)."""

    def __init__(self, request: GenerationRequest, *, streaming: bool, batcher: Batcher | None = None):
        self.request = request
        self._batcher = batcher
        self._done = threading.Event()
        self._result: GenerationResult | None = None
        self._error: BaseException | None = None
        self._deltas: queue.Queue | None = queue.Queue() if streaming else None
        self._user_on_delta = None
        self._prepared = None

    def cancel(self) -> None:
        self.request.cancel()
        if self._batcher is not None:
            self._batcher._wake()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> GenerationResult:
        if not self._done.wait(timeout):
            raise TimeoutError(f"No result within {timeout} s.")
        if self._error is not None:
            raise self._error
        return self._result

    def stream(self, timeout: float | None = None) -> Iterator[str]:
        """Text deltas until the request ends; then raises its error, if any. Stopping the iteration early (closing
        the generator) cancels the request."""
        if self._deltas is None:
            raise ValueError("Submit with stream=True to iterate over deltas.")
        try:
            while True:
                item = self._deltas.get(timeout=timeout)
                if item is _END:
                    break
                yield item
        except GeneratorExit:
            self.cancel()
            raise
        if self._error is not None:
            raise self._error

    def _on_delta(self, delta: str) -> None:
        if self._user_on_delta is not None:
            self._user_on_delta(delta)
        self._deltas.put(delta)

    def _resolve(self, result: GenerationResult | None = None, error: BaseException | None = None) -> None:
        if self._done.is_set():
            return
        self._result, self._error = result, error
        self._done.set()
        if self._deltas is not None:
            self._deltas.put(_END)


class Batcher:
    def __init__(
        self,
        engine: Engine,
        *,
        window_ms: float = 10.0,
        max_batch_size: int = 16,
        continuous: bool = True,
        autostart: bool = True,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1 (got {max_batch_size}).")
        if window_ms < 0:
            raise ValueError(f"window_ms must be >= 0 (got {window_ms}).")
        self.engine = engine
        self.window = window_ms / 1000
        self.max_batch_size = max_batch_size
        self.continuous = continuous
        self.batches = 0  # groups of requests admitted together (one prefill each)
        self.joins = 0  # of which joined a running batch
        self._pending: list[Ticket] = []
        self._first_arrival = 0.0
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        if autostart:
            self.start()

    # --- callers -----------------------------------------------------------------------------------------------

    def submit(self, request: GenerationRequest, *, stream: bool = False) -> Ticket:
        """Validates now (raising InvalidRequest / AdapterLoadError at once) and queues the request."""
        prepared = self.engine.prepare(request)
        ticket = Ticket(request, streaming=stream, batcher=self)
        if stream:
            ticket._user_on_delta = request.on_delta
            request.on_delta = ticket._on_delta
        prepared.tag = ticket
        ticket._prepared = prepared
        with self._cond:
            if self._closed:
                raise BatcherClosed("The batcher is closed.")
            if not self._pending:
                self._first_arrival = time.monotonic()
            self._pending.append(ticket)
            self._cond.notify_all()
        return ticket

    def generate(self, request: GenerationRequest, *, timeout: float | None = None) -> GenerationResult:
        return self.submit(request).result(timeout)

    def start(self) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="serving-batcher", daemon=True)
                self._thread.start()

    def close(self, timeout: float | None = 10.0) -> None:
        """Stops taking requests, fails those still queued, lets the running batch finish, stops the worker."""
        with self._cond:
            self._closed = True
            pending, self._pending = self._pending, []
            self._cond.notify_all()
        for ticket in pending:
            ticket._resolve(error=BatcherClosed("The batcher closed before this request started."))
        if self._thread is not None:
            self._thread.join(timeout)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # --- worker ------------------------------------------------------------------------------------------------

    def _take(self) -> list[Ticket] | None:
        """Waits for work; returns the tickets to admit now ([] to just step), or None to stop."""
        engine = self.engine
        with self._cond:
            while True:
                self._drop_cancelled()
                if self._closed and not engine.active:
                    return None
                if engine.active:
                    if not (self.continuous and engine.can_join) or not self._pending:
                        return []
                    room = self.max_batch_size - engine.active
                    return self._pop(room) if room > 0 else []
                if not self._pending:
                    self._cond.wait()
                    continue
                remaining = self._first_arrival + self.window - time.monotonic()
                if remaining > 0 and len(self._pending) < self.max_batch_size:
                    self._cond.wait(remaining)
                    continue
                return self._pop(self.max_batch_size)

    def _drop_cancelled(self) -> None:
        """Requests cancelled while queued end at once, without waiting for a slot."""
        if any(ticket.request.cancelled.is_set() for ticket in self._pending):
            for ticket in self._pending:
                if ticket.request.cancelled.is_set():
                    ticket._resolve(result=Engine.cancelled_result(ticket._prepared))
            self._pending = [ticket for ticket in self._pending if not ticket.done()]

    def _pop(self, count: int) -> list[Ticket]:
        taken, self._pending = self._pending[:count], self._pending[count:]
        if self._pending:
            self._first_arrival = time.monotonic()
        return taken

    def _run(self) -> None:
        engine = self.engine
        while True:
            tickets = self._take()
            if tickets is None:
                return
            if tickets:
                joining = engine.active > 0
                try:
                    finished, failed = engine.admit([ticket._prepared for ticket in tickets])
                except Exception as exc:
                    logger.exception("prefill failed")
                    for ticket in tickets:
                        ticket._resolve(error=exc)
                    self._fail_running(exc)
                    continue
                self.batches += 1
                self.joins += int(joining)
                self._deliver(finished)
                for item, exc in failed:
                    item.tag._resolve(error=exc)
            if engine.active:
                try:
                    self._deliver(engine.step())
                except Exception as exc:
                    logger.exception("decode step failed")
                    self._fail_running(exc)

    def _fail_running(self, exc: Exception) -> None:
        for item in self.engine.abort():
            item.tag._resolve(error=exc)

    @staticmethod
    def _deliver(finished) -> None:
        for item, result in finished:
            item.tag._resolve(result=result)
            if result.finish_reason == FINISH_CANCELLED:
                logger.info("request cancelled after %d tokens", result.completion_tokens)
