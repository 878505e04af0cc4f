import threading

import pytest

from modelfactory.serving import (
    FINISH_CANCELLED,
    AdapterLoadError,
    Batcher,
    BatcherClosed,
    Engine,
    GenerationRequest,
    InvalidRequest,
)

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def request(adapter_dirs, name, max_new_tokens=6, **kwargs):
    return GenerationRequest(
        prompt=PROMPT, adapter=adapter_dirs[name] if name else None, max_new_tokens=max_new_tokens, **kwargs
    )


@pytest.fixture
def engine(warm, adapters):
    return Engine(warm, adapters)


def alone(engine, req):
    return engine.generate([req])[0]


def test_requests_queued_together_run_as_one_batch(engine, adapter_dirs):
    names = [None, "qv8", "qv4", "all8", "mlp2"]
    expected = [alone(engine, request(adapter_dirs, n, max_new_tokens=5)) for n in names]
    engine.forward_passes = 0
    batcher = Batcher(engine, window_ms=0, max_batch_size=8, autostart=False)
    tickets = [batcher.submit(request(adapter_dirs, n, max_new_tokens=5)) for n in names]
    batcher.start()
    results = [t.result(timeout=60) for t in tickets]
    batcher.close()
    assert [r.token_ids for r in results] == [r.token_ids for r in expected]
    assert batcher.batches == 1
    assert engine.forward_passes == 5  # one prefill + 4 decode steps for the 5 requests together


def test_concurrent_callers_within_the_window_share_a_batch(engine, adapter_dirs):
    batcher = Batcher(engine, window_ms=2000, max_batch_size=4)
    results = {}
    go = threading.Barrier(4)

    def call(name):
        go.wait()
        results[name] = batcher.generate(request(adapter_dirs, name, max_new_tokens=4), timeout=60)

    threads = [threading.Thread(target=call, args=(n,)) for n in ["qv8", "qv4", "all8", "mlp2"]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    batcher.close()
    assert sorted(results) == ["all8", "mlp2", "qv4", "qv8"]
    assert batcher.batches == 1  # the 4th request fills the batch: no need to wait out the window
    assert engine.prefills == 1


def test_max_batch_size_splits_the_queue(engine, adapter_dirs):
    batcher = Batcher(engine, window_ms=0, max_batch_size=2, continuous=False, autostart=False)
    tickets = [batcher.submit(request(adapter_dirs, n, max_new_tokens=3)) for n in ["qv8", "qv4", None, "all8", "mlp2"]]
    batcher.start()
    for ticket in tickets:
        ticket.result(timeout=60)
    batcher.close()
    assert batcher.batches == 3
    assert engine.forward_passes == 9


def test_a_request_joins_a_running_batch_between_steps(engine, adapter_dirs):
    expected_late = alone(engine, request(adapter_dirs, "all8", max_new_tokens=4))
    expected_long = alone(engine, request(adapter_dirs, "qv4", max_new_tokens=12))
    engine.forward_passes = 0
    batcher = Batcher(engine, window_ms=0, max_batch_size=4)
    late = {}

    def on_delta(delta):  # runs in the worker, so the late request is queued before the next decode step
        if not late:
            late["ticket"] = batcher.submit(request(adapter_dirs, "all8", max_new_tokens=4))

    long_ticket = batcher.submit(request(adapter_dirs, "qv4", max_new_tokens=12, on_delta=on_delta))
    assert long_ticket.result(timeout=60).token_ids == expected_long.token_ids
    assert late["ticket"].result(timeout=60).token_ids == expected_late.token_ids
    batcher.close()
    assert (batcher.batches, batcher.joins) == (2, 1)
    # 2 prefills + 11 decode steps of the long request; the late one's 3 steps ride along in them
    assert engine.forward_passes == 13


def test_streaming_and_cancelling_one_request_leaves_the_others_running(engine, adapter_dirs):
    expected = alone(engine, request(adapter_dirs, "all8", max_new_tokens=10))
    batcher = Batcher(engine, window_ms=0, max_batch_size=4, autostart=False)
    victim = batcher.submit(request(adapter_dirs, "qv4", max_new_tokens=10), stream=True)
    other = batcher.submit(request(adapter_dirs, "all8", max_new_tokens=10), stream=True)
    batcher.start()
    received = []
    for delta in victim.stream(timeout=60):
        received.append(delta)
        if len(received) == 2:
            break  # the client disconnects: closing the iterator cancels the request
    cancelled = victim.result(timeout=60)
    assert cancelled.finish_reason == FINISH_CANCELLED
    assert 2 <= cancelled.completion_tokens < 10
    assert cancelled.text.startswith("".join(received))
    assert "".join(other.stream(timeout=60)) == other.result().text
    assert other.result().token_ids == expected.token_ids
    batcher.close()


def test_a_request_cancelled_while_queued_is_freed_at_once(engine, adapter_dirs):
    batcher = Batcher(engine, window_ms=60_000, max_batch_size=8)
    ticket = batcher.submit(request(adapter_dirs, "qv8"))
    ticket.cancel()
    result = ticket.result(timeout=10)  # well before the 60 s window
    assert (result.finish_reason, result.completion_tokens, result.text) == (FINISH_CANCELLED, 0, "")
    batcher.close()
    assert engine.forward_passes == 0


def test_bad_input_is_rejected_at_submit(engine, adapter_dirs):
    batcher = Batcher(engine, autostart=False)
    with pytest.raises(InvalidRequest, match="temperature must be a number >= 0"):
        batcher.submit(GenerationRequest(prompt="hi", temperature=-1))
    assert batcher._pending == []
    batcher.close()


def test_an_adapter_that_fails_to_load_fails_only_its_request(engine, adapter_dirs, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(adapter_dirs["qv8"], broken)
    (broken / "adapter_model.safetensors").write_bytes(b"garbage")
    batcher = Batcher(engine, window_ms=0, autostart=False)
    bad = batcher.submit(GenerationRequest(prompt="hi", adapter=broken, max_new_tokens=3))
    good = batcher.submit(request(adapter_dirs, "qv8", max_new_tokens=3))
    batcher.start()
    with pytest.raises(AdapterLoadError, match="cannot be read"):
        bad.result(timeout=60)
    assert good.result(timeout=60).completion_tokens == 3
    batcher.close()


def test_a_failing_forward_pass_reaches_every_waiting_request_and_the_worker_survives(engine, adapter_dirs):
    batcher = Batcher(engine, window_ms=0, autostart=False)
    real_step = engine.step
    calls = {"n": 0}

    def flaky_step():
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_step()

    engine.step = flaky_step
    tickets = [batcher.submit(request(adapter_dirs, n, max_new_tokens=6)) for n in ["qv8", None]]
    batcher.start()
    for ticket in tickets:
        with pytest.raises(RuntimeError, match="simulated"):
            ticket.result(timeout=60)
    assert engine.active == 0
    assert all(entry.pins == 0 for entry in engine.adapters._entries.values())
    after = batcher.generate(request(adapter_dirs, "qv4", max_new_tokens=3), timeout=60)
    assert after.completion_tokens == 3
    batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.submit(request(adapter_dirs, None))
