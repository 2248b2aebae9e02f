"""PID 1's status file: written without importing json, and exactly what json.dumps writes."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.pid1 import status

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(values)
def test_dumps_is_json_dumps(value: object) -> None:
    assert status.dumps(value) == json.dumps(value, indent=1)


@pytest.mark.parametrize("value", [
    {"a": [1, 2.5, {"b": None, "c": True}], "é\n\"": "\U0001F600\x7f\x01\ud800", 3: [], "e": {}},
    [math.inf, -math.inf], {None: 1, True: 2, 1.5: 3}, (1, "two"),
])
def test_dumps_edges(value: object) -> None:
    assert status.dumps(value) == json.dumps(value, indent=1)


def test_what_json_cannot_write_is_refused_alike() -> None:
    with pytest.raises(TypeError):
        status.dumps({"x": object()})
