"""How an answer given with tools becomes OpenAI's message or stream deltas (pure: no model, no database)."""

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
