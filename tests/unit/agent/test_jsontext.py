"""JSON for PID 1 without the json package (agent/jsontext.py): ``dumps`` writes exactly what
``json.dumps(value, indent=N)`` writes, ``loads`` takes and refuses exactly what ``json.loads`` does."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import jsontext
from tests.conftest import ROOT

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(values, st.sampled_from([1, 2, 4]))
def test_dumps_is_json_dumps(value: object, indent: int) -> None:
    assert jsontext.dumps(value, indent) == json.dumps(value, indent=indent)
    assert jsontext.dumps(value) == json.dumps(value, indent=1)


@pytest.mark.parametrize("value", [
    {"a": [1, 2.5, {"b": None, "c": True}], "é\n\"": "\U0001F600\x7f\x01\ud800", 3: [], "e": {}},
    [math.inf, -math.inf], {None: 1, True: 2, 1.5: 3}, (1, "two"),
])
def test_dumps_edges(value: object) -> None:
    assert jsontext.dumps(value) == json.dumps(value, indent=1)


def test_what_json_cannot_write_is_refused_alike() -> None:
    with pytest.raises(TypeError):
        jsontext.dumps({"x": object()})


def outcome(load: object, text: str | bytes) -> tuple[str, str]:
    """What a loader made of ``text``: its value (repr: NaN equals NaN) or its error and message."""
    try:
        return "value", repr(load(text))  # type: ignore[operator]
    except (ValueError, RecursionError) as exc:
        return type(exc).__name__, str(exc)


@settings(max_examples=300, deadline=None)
@given(values, st.sampled_from([None, 1, 2]))
def test_loads_reads_what_json_writes(value: object, indent: int | None) -> None:
    text = json.dumps(value, indent=indent)
    assert outcome(jsontext.loads, text) == outcome(json.loads, text)
    assert outcome(jsontext.loads, text.encode()) == outcome(json.loads, text.encode())


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet='{}[]",:0123456789.eE+- \t\n\rtrufalsnNIiy\\u\ufeff\x00é', max_size=30) | st.text(max_size=20))
def test_loads_takes_and_refuses_what_json_loads_does(text: str) -> None:
    assert outcome(jsontext.loads, text) == outcome(json.loads, text)


@pytest.mark.parametrize("text", [
    "", " ", "\n\t\r ", "{", "}", "[1,]", "[1 2]", '{"a" 1}', '{"a": 1,}', "{'a': 1}", "1 2", "nul", "tru",
    '"\x01"', '"\\x"', '"\\ud800"', '"\\u12"', '"unterminated', "\ufeff{}", "{} \ufeff", "01", "-", "1.", ".5",
    "1e", "NaN", "-Infinity", "Infinity", "infinity", "1" * 5000, "[" * 100_000, '{"a":' * 50_000,
    "[1]" + " " * 10_000 + "x", '{"a": 1, "a": 2}', "\x00", "[\x00]", " \u00a0[]", "[]\u2028",
])
def test_hostile_and_odd_text_fares_as_under_json_loads(text: str) -> None:
    assert outcome(jsontext.loads, text) == outcome(json.loads, text)


@pytest.mark.parametrize("data", [b"\xff{}", b'"\xc3"', b'{"a": "\xed\xa0\x80"}', b"\xef\xbb\xbf{}", b"[1]\n"])
def test_utf8_bytes_fare_as_under_json_loads(data: bytes) -> None:
    assert outcome(jsontext.loads, data) == outcome(json.loads, data)


def test_neither_imports_json_nor_re() -> None:
    """What it is for: PID 1 keeps neither json nor what it imports (re, enum, functools)."""
    code = ("import sys; from agent import jsontext; "
            "jsontext.loads(b'{\"a\": [1, 2.5, null, \"x\"]}'); jsontext.dumps({'a': [1, None]}); "
            "print(sorted({'json', 're', 'enum', 'functools', 'typing'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
