"""Schema validation on the host, reporting every problem at the user's own line.

The checking itself is ``agent.schema`` (the same code the device runs); the
jsonschema package only checks that our schemas are themselves valid."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema

from agent.config import schema as agent_schema
from agent.config.yamlsource import Located
from agent.errors import Problem

SCHEMAS = Path(__file__).parent / "schemas"


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def validate(doc: Located, schema: dict[str, Any]) -> list[Problem]:
    """All problems in ``doc`` against ``schema``, ordered by line, each once."""
    problems = [doc.problem(path, message, hint) for path, message, hint in agent_schema.validate(doc.value, schema)]
    seen: set[tuple[int | None, str | None, str]] = set()
    unique = []
    for p in sorted(problems, key=lambda p: (p.line or 0, p.path or "")):
        if (p.line, p.path, p.message) not in seen:
            seen.add((p.line, p.path, p.message))
            unique.append(p)
    return unique
