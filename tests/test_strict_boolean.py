"""core.api.StrictBooleanField: JSON's true/false only in a JSON body; a form's texts in a form body."""

import pytest
from django.http import QueryDict
from rest_framework import serializers

from core.api import StrictBooleanField


class _Body(serializers.Serializer):
    flag = StrictBooleanField()


@pytest.mark.parametrize("value", [True, False])
def test_json_booleans_are_taken(value):
    body = _Body(data={"flag": value})
    assert body.is_valid(), body.errors
    assert body.validated_data == {"flag": value}


@pytest.mark.parametrize("value", ["t", "true", "yes", 1, 0, "1", None, [], {}])
def test_anything_else_in_json_is_refused_naming_the_value(value):
    body = _Body(data={"flag": value})
    assert not body.is_valid()
    expected = (
        "This field may not be null." if value is None else f"Must be true or false (JSON booleans), not {value!r}."
    )
    assert body.errors == {"flag": [expected]}


@pytest.mark.parametrize(("text", "value"), [("true", True), ("false", False), ("on", True)])
def test_a_form_sends_text(text, value):
    body = _Body(data=QueryDict(f"flag={text}"))
    assert body.is_valid(), body.errors
    assert body.validated_data == {"flag": value}


def test_a_form_text_that_is_no_boolean_is_refused():
    body = _Body(data=QueryDict("flag=maybe"))
    assert not body.is_valid()
    assert body.errors == {"flag": ["Must be true or false (JSON booleans), not 'maybe'."]}
