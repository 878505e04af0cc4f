"""How an answer given with tools becomes OpenAI's message or stream deltas (pure: no model, no database)."""

import json
from types import SimpleNamespace

import pytest

from modelfactory.openai_tools import AnswerSplitter, answer_message

CALL = '{"name":"get_weather","arguments":{"location":"Paris","unit":"celsius"}}'


def _stream(text: str, reason: str, *, choice="required", size=3):
    splitter = AnswerSplitter(call_id="call_7", tool_choice=choice)
    deltas = [d for i in range(0, len(text), size) for d in splitter.push(text[i : i + size])]
    tail, finish = splitter.finish(reason)
    return deltas, tail, finish


@pytest.mark.parametrize("size", [1, 3, 200])
def test_a_complete_call_streams_header_then_arguments(size):
    deltas, tail, finish = _stream(CALL, "stop", size=size)
    header = deltas[0]["tool_calls"][0]
    assert header == {"index": 0, "id": "call_7", "type": "function",
                      "function": {"name": "get_weather", "arguments": ""}}  # fmt: skip
    arguments = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas[1:] + tail)
    assert arguments == '{"location":"Paris","unit":"celsius"}' and finish == "tool_calls"
    message, reason = answer_message(text=CALL, finish_reason="stop", call_id="call_7", tool_choice="required")
    assert message == {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
        {"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]}  # fmt: skip
    assert reason == "tool_calls"


def test_a_call_cut_in_its_arguments_keeps_them_unfinished():
    cut = CALL[:45]
    message, reason = answer_message(text=cut, finish_reason="length", call_id="c", tool_choice={"name": "get_weather"})
    assert reason == "length" and message["content"] is None
    assert message["tool_calls"][0]["function"]["arguments"] == cut.removeprefix('{"name":"get_weather","arguments":')


def test_a_call_cut_before_its_name_is_complete_is_text():
    message, reason = answer_message(text='{"name":"get_w', finish_reason="length", call_id="c", tool_choice="auto")
    assert message == {"role": "assistant", "content": '{"name":"get_w', "refusal": None} and reason == "length"


def test_auto_text_streams_as_content_at_once():
    deltas, tail, finish = _stream("Sunny, I think.", "stop", choice="auto")
    assert "".join(d["content"] for d in deltas) == "Sunny, I think." and tail == [] and finish == "stop"
    message, _ = answer_message(text="", finish_reason="length", call_id="c", tool_choice="auto")
    assert message == {"role": "assistant", "content": "", "refusal": None}


def test_a_name_with_escapes_is_read_as_json():
    text = '{"name":"a\\"b","arguments":{}}'
    message, reason = answer_message(text=text, finish_reason="stop", call_id="c", tool_choice="required")
    assert message["tool_calls"][0]["function"] == {"name": 'a"b', "arguments": "{}"} and reason == "tool_calls"


def test_a_call_ended_by_a_stop_string_is_not_a_finished_call():
    cut = CALL[:50]
    message, reason = answer_message(text=cut, finish_reason="stop", call_id="c", tool_choice="required")
    assert reason == "stop" and message["tool_calls"][0]["function"]["arguments"] == cut[34:]


class _FakeServices:
    """The inference services as the stream relay sees them: scripted worker events, recorded acknowledgements."""

    ERROR_STATUS = {}

    def __init__(self, events):
        self.events, self.acks = events, []

    def inference_channel(self, inference_id):
        return f"inference-{inference_id}"

    def inference_events(self, *, channel, inference_id):
        yield from self.events

    def inference_stream_ack(self, *, inference_id, delivered, cancelled):
        self.acks.append((delivered, cancelled))

    def citations_for(self, *, inference, user):
        return None


PIECES = ['{"name":"get_', 'weather","arg', 'uments":{"lo', 'cation":"Paris",', '"unit":"celsius"}}']
DONE = {"type": "done", "prompt_tokens": 9, "completion_tokens": 5, "finish_reason": "stop"}


def _streamed(monkeypatch, events):
    from modelfactory import openai_api

    fake = _FakeServices(events)
    monkeypatch.setattr(openai_api, "services", fake)
    inference = SimpleNamespace(pk=7, model=SimpleNamespace(slug="m"), caller=None,
                                parameters={"tools": "[]", "tool_choice": "required"})  # fmt: skip
    return fake, openai_api._stream_chunks(inference, include_usage=False)


def _data(chunk: str):
    return json.loads(chunk.removeprefix("data: ").strip())


def test_a_streamed_call_counts_held_text_as_delivered_once_written(monkeypatch):
    events = [{"type": "delta", "text": t} for t in PIECES] + [{"type": "end", "finish_reason": "stop"}, DONE]
    fake, chunks = _streamed(monkeypatch, events)
    sse = [part + "\n\n" for chunk in chunks for part in chunk.split("\n\n") if part]
    assert sse[-1] == "data: [DONE]\n\n"
    choices = [_data(c)["choices"][0] for c in sse[:-1]]
    assert choices[0]["delta"] == {"role": "assistant", "content": None}
    calls = [c["delta"]["tool_calls"][0] for c in choices if "tool_calls" in c["delta"]]
    assert calls[0] == {"index": 0, "id": "call_7", "type": "function",
                        "function": {"name": "get_weather", "arguments": ""}}  # fmt: skip
    assert "".join(c["function"]["arguments"] for c in calls) == '{"location":"Paris","unit":"celsius"}'
    assert choices[-1]["finish_reason"] == "tool_calls"
    assert fake.acks == [(5, False)]


def test_a_client_gone_while_the_call_s_name_was_held_pays_for_no_unread_piece(monkeypatch):
    events = [{"type": "delta", "text": t} for t in PIECES]
    fake, chunks = _streamed(monkeypatch, events)
    assert _data(next(chunks))["choices"][0]["delta"]["role"] == "assistant"
    header = next(chunks).split("\n\n")[0]  # written after the third piece: the first two were held back
    assert _data(header)["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "get_weather"
    next(chunks)  # the next write: the client has gone, so the chunk before it was never read
    chunks.close()
    assert fake.acks == [(0, True)]
