"""The worker -> web channel in the cache: order, the reader's acknowledgement, clean-up and timeouts."""

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
