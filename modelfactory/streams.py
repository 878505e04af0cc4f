"""The channel between an inference worker and the web process that waits for its answer.

It lives in the Django cache (a folder of files by default, Redis in CI/production; both are shared by every process
on the machine or cluster). One writer (the worker) appends numbered events; one reader (the web process) reads them
in order and, when it is done or its client went away, writes an acknowledgement saying how many text deltas reached
the client. Events: {"type": "started"}, {"type": "delta", "text"}, {"type": "done", ...usage},
{"type": "error", "code", "message"}."""

from __future__ import annotations

import time
from collections.abc import Iterator

from django.core.cache import caches

TTL_SECONDS = 900  # a channel nobody reads to the end (a dead web process) expires; normally the reader deletes it
POLL_SECONDS = 0.02


def _cache():
    return caches["streams"]


def _key(channel: str, part: str | int) -> str:
    return f"mf:stream:{channel}:{part}"


class Publisher:
    """The worker's end: appends events in order."""

    def __init__(self, channel: str):
        self.channel = channel
        self.seq = 0

    def publish(self, event: dict) -> None:
        _cache().set(_key(self.channel, self.seq), event, TTL_SECONDS)
        self.seq += 1

    def ack(self) -> dict | None:
        """The reader's acknowledgement, if any: {"delivered": deltas sent to the client, "cancelled": bool}."""
        return _cache().get(_key(self.channel, "ack"))

    def wait_ack(self, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while True:
            ack = self.ack()
            if ack is not None or time.monotonic() >= deadline:
                return ack
            time.sleep(POLL_SECONDS)


class ChannelTimeout(Exception):
    """No event arrived in time (`started` says whether the worker had begun)."""

    def __init__(self, started: bool):
        super().__init__("no answer from the model server in time")
        self.started = started


def read(channel: str, *, start_timeout: float, timeout: float) -> Iterator[dict]:
    """Yields events until `done` or `error` (included; the channel's keys are deleted then). Raises ChannelTimeout
    if the worker does not start within `start_timeout` seconds or the whole answer takes longer than `timeout`."""
    seq = 0
    began = time.monotonic()
    started = False
    while True:
        event = _cache().get(_key(channel, seq))
        if event is None:
            waited = time.monotonic() - began
            if waited > timeout or (not started and waited > start_timeout):
                raise ChannelTimeout(started)
            time.sleep(POLL_SECONDS)
            continue
        seq += 1
        started = True
        if event["type"] in ("done", "error"):
            ends = [_key(channel, "ack"), _key(channel, "shown")]
            _cache().delete_many([_key(channel, n) for n in range(seq)] + ends)
            yield event
            return
        yield event


def acknowledge(channel: str, *, delivered: int, cancelled: bool) -> None:
    """The reader's end: tells the worker how many deltas reached the client (and whether it went away). After a
    `stop`, no acknowledgement counts more deltas than the client said it showed."""
    shown = _cache().get(_key(channel, "shown"))
    if shown is not None:
        delivered, cancelled = min(delivered, shown), True
    _cache().set(_key(channel, "ack"), {"delivered": delivered, "cancelled": cancelled}, TTL_SECONDS)


def stop(channel: str, *, shown: int) -> None:
    """The client asked to stop after showing `shown` deltas: the worker cancels the answer, and what is recorded
    and billed is at most those deltas, whatever the reader later acknowledges (it may have relayed a few more that
    the page received but no longer showed)."""
    _cache().set(_key(channel, "shown"), shown, TTL_SECONDS)
    acknowledge(channel, delivered=shown, cancelled=True)
