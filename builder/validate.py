"""JSON Schema validation that reports every problem at the user's own line."""

from __future__ import annotations

import difflib
import functools
import json
from pathlib import Path
from typing import Any

import jsonschema

from agent.errors import Problem
from agent.yamlsource import Located

SCHEMAS = Path(__file__).parent / "schemas"


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def _describe(error: jsonschema.ValidationError) -> tuple[list[str | int], str, str | None]:
    """(path, message, hint) for one schema error, in the user's terms."""
    path: list[str | int] = list(error.absolute_path)
    kind = error.validator
    if kind == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        key = extra[0] if extra else "?"
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"valid keys here: {', '.join(allowed)}"
        return [*path, key], f"unknown key '{key}'", hint
    if kind == "required":
        return path, error.message.replace("is a required property", "is required"), None
    if kind == "enum":
        return path, error.message, None
    if kind == "type":
        want = error.validator_value
        want_s = " or ".join(want) if isinstance(want, list) else want
        return path, f"expected {want_s}, got {_json_type(error.instance)}", None
    if kind == "pattern":
        return path, f"{error.instance!r} is not valid here", f"must match the pattern {error.validator_value}"
    if kind == "uniqueItems":
        return path, "has duplicate items", "list each item once"
    return path, error.message, None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


def validate(doc: Located, schema: dict[str, Any]) -> list[Problem]:
    """All problems in ``doc`` against ``schema``, ordered by line."""
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for error in validator.iter_errors(doc.value):
        path, message, hint = _describe(error)
        problems.append(doc.problem(path, message, hint))
    # One problem per line and path, the deepest first found.
    seen: set[tuple[int | None, str | None, str]] = set()
    unique = []
    for p in sorted(problems, key=lambda p: (p.line or 0, p.path or "")):
        if (p.line, p.path, p.message) not in seen:
            seen.add((p.line, p.path, p.message))
            unique.append(p)
    return unique
