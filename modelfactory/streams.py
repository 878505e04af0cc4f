"""The channel between an inference worker and the web process that waits for its answer.

One writer (the worker) appends events in order; one reader (the web process) reads them in order and, when it is
done or its client went away, writes an acknowledgement saying how many text deltas reached the client. Events:
{"type": "started"}, {"type": "delta", "text", "t"}, {"type": "done", ...usage}, {"type": "error", "code", "message"}.

Where the events travel depends on CACHE_URL (every process on the machine or cluster shares it):
- redis://: a Redis stream per answer; the reader blocks on XREAD and wakes when an event arrives (no polling).
- file:// (the embedded default of `make run`): an append-only file per answer next to the file cache; the reader
  keeps it open and reads what was appended, every POLL_SECONDS (one read of an open file, not a cache lookup that
  opens, unpickles and, for each write, lists the whole cache folder as the cache's culling does).
- anything else (locmem in tests): numbered keys in the Django cache, polled.
The acknowledgement and the Stop button's count are single keys in the Django cache in every case."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings
from django.core.cache import caches

TTL_SECONDS = 900  # a channel nobody reads to the end (a dead web process) expires; normally the reader deletes it
POLL_SECONDS = 0.02  # the cache transport's polling (an open file is read every FILE_POLL_SECONDS)
FILE_POLL_SECONDS = 0.005


def _cache():
    return caches["streams"]


def _key(channel: str, part: str | int) -> str:
    return f"mf:stream:{channel}:{part}"


def _transport() -> str:
    url = settings.CACHE_URL
    if settings.MF_STREAM_TRANSPORT == "cache":
        return "cache"
    if url.startswith(("redis://", "rediss://")):
        return "redis"
    return "file" if url.startswith("file://") else "cache"


_redis_lock = threading.Lock()
_redis_clients: dict[str, object] = {}


def _redis():
    """One client (a thread-safe connection pool) per process and URL."""
    import redis  # only where CACHE_URL is redis://

    url = settings.CACHE_URL
    with _redis_lock:
        client = _redis_clients.get(url)
        if client is None:
            client = _redis_clients[url] = redis.Redis.from_url(url)
        return client


def _redis_key(channel: str) -> str:
    return f"streams:mf:events:{channel}"


def _file(channel: str) -> Path:
    folder = Path(settings.CACHES["streams"]["LOCATION"]) / "events"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{channel}.jsonl"


_expired_at = [0.0]


def _expire_files() -> None:
    """Deletes event files untouched for TTL_SECONDS (their reader left before the end), at most once a minute per
    process; the reader deletes the others when it has read the last event."""
    now = time.time()
    if now - _expired_at[0] < 60:
        return
    _expired_at[0] = now
    for path in _file("x").parent.glob("*.jsonl"):
        try:
            if now - path.stat().st_mtime > TTL_SECONDS:
                path.unlink()
        except FileNotFoundError:
            pass


class Publisher:
    """The worker's end: appends events in order."""

    def __init__(self, channel: str):
        self.channel = channel
        self.seq = 0

    def publish(self, event: dict) -> None:
        transport = _transport()
        if transport == "redis":
            key = _redis_key(self.channel)
            pipe = _redis().pipeline(transaction=False)
            pipe.xadd(key, {"e": json.dumps(event)})
            pipe.expire(key, TTL_SECONDS)  # every time: a reader that left early deleted nothing
            pipe.execute()
        elif transport == "file":
            if self.seq == 0:
                _expire_files()
            with open(_file(self.channel), "a", encoding="utf-8") as log:  # one line, appended whole
                log.write(json.dumps(event) + "\n")
        else:
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
    """Yields events until `done` or `error` (included; the channel is deleted then). Raises ChannelTimeout if the
    worker does not start within `start_timeout` seconds or the whole answer takes longer than `timeout`."""
    reader = {"redis": _read_redis, "file": _read_file}.get(_transport(), _read_cache)
    began = time.monotonic()
    started = False

    def time_left() -> float:
        """Seconds left to wait for the next event; raises ChannelTimeout once there are none."""
        waited = time.monotonic() - began
        left = min(timeout - waited, timeout if started else start_timeout - waited)
        if left <= 0:
            raise ChannelTimeout(started)
        return left

    events = reader(channel, time_left)
    try:
        for event in events:
            started = True
            if event["type"] in ("done", "error"):  # the reader deleted the channel's events
                _cache().delete_many([_key(channel, "ack"), _key(channel, "shown")])
                yield event
                return
            yield event
    finally:
        events.close()


def _last(event: dict) -> bool:
    return event["type"] in ("done", "error")


def _read_cache(channel: str, time_left) -> Iterator[dict]:
    seq = 0
    while True:
        event = _cache().get(_key(channel, seq))
        if event is None:
            time.sleep(min(POLL_SECONDS, time_left()))
            continue
        seq += 1
        if _last(event):
            _cache().delete_many([_key(channel, n) for n in range(seq)])
        yield event


def _read_file(channel: str, time_left) -> Iterator[dict]:
    path = _file(channel)
    log = None
    pending = b""
    try:
        while True:
            if log is None:
                try:
                    log = open(path, "rb")  # noqa: SIM115 (read as it grows; closed below)
                except FileNotFoundError:
                    time.sleep(min(FILE_POLL_SECONDS, time_left()))
                    continue
            chunk = log.read()
            if not chunk:
                time.sleep(min(FILE_POLL_SECONDS, time_left()))
                continue
            *lines, pending = (pending + chunk).split(b"\n")  # a line still being written stays for the next read
            for line in lines:
                event = json.loads(line)
                if _last(event):
                    path.unlink(missing_ok=True)
                yield event
    finally:
        if log is not None:
            log.close()


def _read_redis(channel: str, time_left) -> Iterator[dict]:
    key = _redis_key(channel)
    last = "0-0"
    while True:
        block = max(1, int(min(time_left(), 1.0) * 1000))  # wake at least every second to check the time
        for _, entries in _redis().xread({key: last}, count=256, block=block) or []:
            for entry_id, fields in entries:
                last = entry_id
                event = json.loads(fields[b"e"])
                if _last(event):
                    _redis().delete(key)
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
