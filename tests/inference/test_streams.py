"""The worker -> web channel in the cache: order, the reader's acknowledgement, clean-up and timeouts."""

import threading
import time

import pytest
from django.core.cache import caches

from modelfactory import streams


def test_events_in_order_ack_and_clean_up():
    publisher = streams.Publisher("t1")
    for event in ({"type": "started"}, {"type": "delta", "text": "Hel"}, {"type": "delta", "text": "lo"}):
        publisher.publish(event)
    streams.acknowledge("t1", delivered=2, cancelled=False)
    assert publisher.ack() == {"delivered": 2, "cancelled": False}
    publisher.publish({"type": "done", "completion_tokens": 2})
    events = list(streams.read("t1", start_timeout=1, timeout=5))
    assert [e["type"] for e in events] == ["started", "delta", "delta", "done"]
    assert "".join(e.get("text", "") for e in events) == "Hello"
    assert caches["streams"].get("mf:stream:t1:0") is None and publisher.ack() is None  # deleted after the end


def test_no_worker_and_a_stalled_worker_time_out():
    with pytest.raises(streams.ChannelTimeout) as caught:
        list(streams.read("t2", start_timeout=0.1, timeout=5))
    assert caught.value.started is False
    streams.Publisher("t3").publish({"type": "started"})
    with pytest.raises(streams.ChannelTimeout) as caught:
        list(streams.read("t3", start_timeout=0.1, timeout=0.3))
    assert caught.value.started is True


@pytest.fixture(params=["file", "redis", "cache"])
def transport(request, settings, tmp_path):
    """Each way the events can travel (streams._transport): the same reader and writer semantics."""
    if request.param == "redis":
        import redis

        url = "redis://127.0.0.1:6379/4"
        try:
            redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        except redis.ConnectionError:
            pytest.skip("no Redis at 127.0.0.1:6379")
        settings.CACHE_URL = url
    elif request.param == "file":
        settings.CACHE_URL = f"file://{tmp_path}/cache"
        settings.CACHES = {**settings.CACHES, "streams": {  # as config/settings.py makes it for file:// (CI runs Redis)
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache", "LOCATION": str(tmp_path / "cache-streams"),
        }}  # fmt: skip
    else:
        settings.MF_STREAM_TRANSPORT = "cache"
    assert streams._transport() == request.param
    return request.param


def test_every_transport_keeps_order_waits_and_cleans_up(transport, tmp_path):
    channel = f"tr-{transport}-{tmp_path.name}"
    publisher = streams.Publisher(channel)
    got = []

    def write_later():
        time.sleep(0.2)  # the reader is already waiting
        for n in range(50):
            publisher.publish({"type": "delta", "text": f"{n},"})
        publisher.publish({"type": "done", "completion_tokens": 50})

    writer = threading.Thread(target=write_later)
    writer.start()
    publisher.publish({"type": "started"})
    for event in streams.read(channel, start_timeout=5, timeout=10):
        got.append(event)
    writer.join()
    assert [e["type"] for e in got] == ["started"] + ["delta"] * 50 + ["done"]
    assert "".join(e.get("text", "") for e in got) == "".join(f"{n}," for n in range(50))
    if transport == "file":
        assert not streams._file(channel).exists()
    elif transport == "redis":
        assert streams._redis().exists(streams._redis_key(channel)) == 0
    else:
        assert caches["streams"].get(f"mf:stream:{channel}:0") is None


def test_every_transport_times_out(transport, tmp_path):
    with pytest.raises(streams.ChannelTimeout) as caught:
        list(streams.read(f"none-{transport}-{tmp_path.name}", start_timeout=0.1, timeout=5))
    assert caught.value.started is False
    stalled = f"stalled-{transport}-{tmp_path.name}"
    streams.Publisher(stalled).publish({"type": "started"})
    with pytest.raises(streams.ChannelTimeout) as caught:
        list(streams.read(stalled, start_timeout=0.1, timeout=0.3))
    assert caught.value.started is True
