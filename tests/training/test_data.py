import pytest

from modelfactory.training.data import IGNORE_INDEX, build_example, build_examples, preview_rows, prompt_and_reference

SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n"


def trained_runs(tokenizer, example) -> list[str]:
    """Decoded runs of consecutive trained tokens."""
    runs, current = [], []
    for token, label in zip(example.input_ids, example.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def test_instruction_row_trains_on_the_output_and_its_end_token_only(tokenizer):
    row = {
        "id": 3,
        "kind": "instruction",
        "content": {"instruction": "Capital of France?", "input": "One word.", "output": "Paris"},
    }
    example = build_example(tokenizer, row)
    assert tokenizer.decode(example.input_ids) == (
        SYSTEM + "<|im_start|>user\nCapital of France?\n\nOne word.<|im_end|>\n<|im_start|>assistant\nParis<|im_end|>\n"
    )
    assert trained_runs(tokenizer, example) == ["Paris<|im_end|>"]
    assert example.row_id == 3
    assert example.n_tokens == len(example.input_ids) == len(example.labels)


def test_instruction_without_input_has_no_blank_line(tokenizer):
    row = {"id": 1, "kind": "instruction", "content": {"instruction": "Say hi", "input": "  ", "output": "hi"}}
    assert "<|im_start|>user\nSay hi<|im_end|>" in tokenizer.decode(build_example(tokenizer, row).input_ids)


def test_chat_row_trains_on_every_assistant_turn(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "Bye now"},
    ]
    example = build_example(tokenizer, {"id": 9, "kind": "chat", "content": {"messages": messages}})
    assert trained_runs(tokenizer, example) == ["Hello<|im_end|>", "Bye now<|im_end|>"]
    assert tokenizer.decode(example.input_ids).startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_text_row_is_plain_causal_lm_without_template(tokenizer):
    example = build_example(tokenizer, {"id": 4, "kind": "text", "content": {"text": "The capital of Italy is Rome."}})
    assert example.labels == example.input_ids
    assert tokenizer.decode(example.input_ids) == "The capital of Italy is Rome.<|im_end|>"


def test_build_examples_reports_too_long_empty_and_invalid_rows(tokenizer):
    rows = [
        {"id": 1, "kind": "instruction", "content": {"instruction": "Q?", "output": "A."}},
        {"id": 2, "kind": "instruction", "content": {"instruction": "Q?", "output": "long " * 80}},
        {"id": 3, "kind": "instruction", "content": {"instruction": "Q?", "output": ""}},
        {"id": 4, "kind": "chat", "content": {"messages": [{"role": "user", "content": "only a question"}]}},
        {"id": 5, "kind": "table", "content": {}},
        {"id": 6, "kind": "chat", "content": {"messages": [{"role": "robot", "content": "x"}]}},
    ]
    examples, report = build_examples(tokenizer, rows, max_length=64)
    assert [e.row_id for e in examples] == [1]
    assert report.too_long == [2]
    assert report.no_answer == [3, 4]
    assert report.invalid == {
        5: "kind must be one of instruction, chat, text",
        6: "message 1 needs a role among system, user, assistant",
    }
    assert (report.rows_total, report.rows_used, report.dropped) == (6, 1, 5)
    assert report.tokens == examples[0].n_tokens
    assert report.answer_tokens == examples[0].n_answer_tokens


def test_preview_splits_rendered_text_into_trained_segments(tokenizer):
    rows = [
        {"id": 1, "kind": "instruction", "content": {"instruction": "Capital of France?", "output": "Paris"}},
        {"id": 2, "kind": "instruction", "content": {"instruction": "Q?", "output": "long " * 80}},
        {"id": 3, "kind": "chat", "content": {"messages": "nope"}},
        {"id": 4, "kind": "text", "content": {"text": "unused"}},
    ]
    first, second, third = preview_rows(tokenizer, rows, max_length=64)
    assert [(s["text"], s["trained"]) for s in first["segments"]] == [
        (SYSTEM + "<|im_start|>user\nCapital of France?<|im_end|>\n", False),
        ("<|im_start|>assistant\n", False),
        ("Paris<|im_end|>", True),
        ("\n", False),
    ]
    example = build_example(tokenizer, rows[0])
    assert first["tokens"] == example.n_tokens == sum(s["tokens"] for s in first["segments"])
    assert first["trained_tokens"] == example.n_answer_tokens
    assert (first["too_long"], first["error"]) == (False, None)
    assert first["messages"] == [  # the chat preview's bubbles: the answer is what the model learns to write
        {"role": "user", "content": "Capital of France?", "trained": False},
        {"role": "assistant", "content": "Paris", "trained": True},
    ]
    assert second["too_long"] is True
    assert third["error"] == "a chat row needs a non-empty 'messages' list"


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            {"id": 1, "kind": "instruction", "content": {"instruction": "Capital?", "output": "Paris"}},
            ("Capital?", "Paris"),
        ),
        ({"id": 2, "kind": "chat", "content": {"messages": [{"role": "assistant", "content": "x"}]}}, None),
    ],
)
def test_prompt_and_reference(tokenizer, row, expected):
    found = prompt_and_reference(tokenizer, row)
    if expected is None:
        assert found is None
    else:
        shown, rendered, reference = found
        assert (shown, reference) == expected
        assert rendered.endswith("<|im_start|>assistant\n")
