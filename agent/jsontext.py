"""JSON for PID 1 without the json package, which imports re, enum and functools: 1.3 MB of PID 1's
memory kept for good, and their import on the boot's path, for a few small files read and written
at boot (the status file, the stamped site index, the services' specs).

``dumps`` writes exactly what ``json.dumps(value, indent=N)`` writes (N: 1 unless given; the
``basalt status --json`` output is N=2). ``loads`` reads with the json package's own C scanner
(``_json``), so it takes and refuses exactly what ``json.loads`` does, with the same errors (an
error, rare, imports json to make its exception); bytes must be UTF-8."""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_SHORT = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _SHORT:
            out.append(_SHORT[ch])
        elif " " <= ch <= "~":
            out.append(ch)
        elif ord(ch) > 0xFFFF:  # a surrogate pair, as JSON spells it
            n = ord(ch) - 0x10000
            out.append(f"\\u{0xD800 | (n >> 10):04x}\\u{0xDC00 | (n & 0x3FF):04x}")
        else:
            out.append(f"\\u{ord(ch):04x}")
    return '"' + "".join(out) + '"'


def dumps(value: object, indent: int = 1, level: int = 0) -> str:
    """``json.dumps(value, indent=indent)``, character for character."""
    pad, inner = "\n" + " " * (indent * level), "\n" + " " * (indent * (level + 1))
    if value is None or value is True or value is False:
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if value != value:
            return "NaN"
        if value in (float("inf"), float("-inf")):
            return "Infinity" if value > 0 else "-Infinity"
        return float.__repr__(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        return "[" + ",".join(inner + dumps(v, indent, level + 1) for v in value) + pad + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{" + ",".join(inner + _string(k if isinstance(k, str) else dumps(k)) + ": "
                              + dumps(v, indent, level + 1) for k, v in value.items()) + pad + "}"
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_WHITESPACE = " \t\n\r"  # what JSON allows around a value (json.decoder.WHITESPACE)
_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _Decoder:
    """The attributes ``_json.make_scanner`` reads from a ``json.JSONDecoder()``, with its defaults."""
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


_scan = _json.make_scanner(_Decoder())  # type: ignore[arg-type]  # typeshed: a JSONDecoder; it reads the attributes only


def _error(message: str, text: str, at: int) -> ValueError:
    from json import JSONDecodeError
    return JSONDecodeError(message, text, at)


def loads(data: str | bytes) -> Any:
    """``json.loads(data)`` for a str, or for UTF-8 bytes (with or without a BOM, as json.loads
    takes them; json.loads also takes UTF-16 and UTF-32, which nothing here writes)."""
    if isinstance(data, bytes):
        text = data.decode("utf-8-sig" if data.startswith(b"\xef\xbb\xbf") else "utf-8", "surrogatepass")
    else:
        text = data
    if text.startswith("\ufeff"):
        raise _error("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration as exc:
        raise _error("Expecting value", text, exc.value) from None
    end += len(text) - end - len(text[end:].lstrip(_WHITESPACE))
    if end != len(text):
        raise _error("Extra data", text, end)
    return value
