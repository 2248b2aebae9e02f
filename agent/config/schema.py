"""A small JSON Schema validator: the 2020-12 subset Basalt's schemas use.

The device has only the standard library and PyYAML, so the agent cannot use
the jsonschema package; the host uses this same code, so a config is judged
identically everywhere. Supported: type, enum, const, pattern, minLength,
maxLength, minimum, maximum, minItems, maxItems, uniqueItems, items,
properties, additionalProperties, propertyNames, required, anyOf, oneOf,
if/then/else, $ref to #/$defs. Problems come back in the user's terms: a
path and a message, with a hint where one helps.

A pattern's ``$`` means the end of the value, as in JSON Schema's (ECMA-262)
regular expressions, not Python's "the end, or before a final newline": a
value with a trailing newline never passes a pattern that ends in ``$``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

Path = tuple[str | int, ...]
Error = tuple[Path, str, str | None]  # (path, message, hint)

_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict,
    "null": type(None)}


_PATTERNS: dict[str, re.Pattern[str]] = {}


def ecma_pattern(pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled with ``$`` (unescaped, outside a class) meaning the end of the text."""
    if pattern not in _PATTERNS:
        out, i, in_class = [], 0, False
        while i < len(pattern):
            c = pattern[i]
            if c == "\\":
                out.append(pattern[i:i + 2])
                i += 2
                continue
            if c == "[" and not in_class:
                in_class = True
            elif c == "]" and in_class:
                in_class = False
            out.append(r"\Z" if c == "$" and not in_class else c)
            i += 1
        _PATTERNS[pattern] = re.compile("".join(out))
    return _PATTERNS[pattern]


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__)


def _is(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[name])


class Validator:
    def __init__(self, schema: dict[str, Any]):
        self.root = schema

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            ref = node["$ref"]
            if not ref.startswith("#/"):
                raise ValueError(f"unsupported $ref {ref}")
            target: Any = self.root
            for part in ref[2:].split("/"):
                target = target[part]
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return node

    def errors(self, value: Any, node: dict[str, Any] | None = None, path: Path = ()) -> Iterator[Error]:
        node = self.resolve(self.root if node is None else node)
        if "type" in node:
            types = node["type"] if isinstance(node["type"], list) else [node["type"]]
            if not any(_is(value, t) for t in types):
                yield path, f"expected {' or '.join(types)}, got {json_type(value)}", None
                return
        if "const" in node and value != node["const"]:
            yield path, f"must be {json.dumps(node['const'])}", None
        if "enum" in node and value not in node["enum"]:
            if isinstance(value, bool) and any(isinstance(e, str) for e in node["enum"]):
                # YAML 1.1 reads an unquoted yes/no/on/off as a boolean: say so, not "False is not one of"
                words = "yes, on or true" if value else "no, off or false"
                yield (path, f"{json.dumps(value)} (an unquoted {words}, which YAML reads as a boolean) is not one "
                             f"of {node['enum']!r}", 'quote the word to mean the text, e.g. "no"')
            else:
                yield path, f"{value!r} is not one of {node['enum']!r}", None
        for kw in ("anyOf", "oneOf"):
            if kw in node and not any(not list(self.errors(value, sub, path)) for sub in node[kw]):
                yield path, node.get("x-message", f"{value!r} does not match any allowed form"), node.get("x-hint")
        if "if" in node and not list(self.errors(value, node["if"], path)):
            yield from self.errors(value, node.get("then", {}), path)
        elif "if" in node and "else" in node:
            yield from self.errors(value, node["else"], path)
        if isinstance(value, str):
            yield from self._string(value, node, path)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if "minimum" in node and value < node["minimum"]:
                yield path, f"must be at least {node['minimum']}", None
            if "maximum" in node and value > node["maximum"]:
                yield path, f"must be at most {node['maximum']}", None
        elif isinstance(value, list):
            yield from self._array(value, node, path)
        elif isinstance(value, dict):
            yield from self._object(value, node, path)

    def _string(self, value: str, node: dict[str, Any], path: Path) -> Iterator[Error]:
        if "minLength" in node and len(value) < node["minLength"]:
            yield path, "must not be empty" if node["minLength"] == 1 else \
                f"must be at least {node['minLength']} characters", None
        if "maxLength" in node and len(value) > node["maxLength"]:
            yield path, f"must be at most {node['maxLength']} characters", None
        if "pattern" in node and not ecma_pattern(node["pattern"]).search(value):
            yield path, f"{value!r} is not valid here", node.get("x-hint", f"must match the pattern {node['pattern']}")

    def _array(self, value: list[Any], node: dict[str, Any], path: Path) -> Iterator[Error]:
        if "minItems" in node and len(value) < node["minItems"]:
            yield path, f"needs at least {node['minItems']} item{'s' if node['minItems'] > 1 else ''}", None
        if "maxItems" in node and len(value) > node["maxItems"]:
            yield path, f"takes at most {node['maxItems']} items", None
        if node.get("uniqueItems"):
            seen = [json.dumps(v, sort_keys=True, default=str) for v in value]
            if len(set(seen)) != len(seen):
                yield path, "has duplicate items", "list each item once"
        if isinstance(node.get("items"), dict):
            for i, item in enumerate(value):
                yield from self.errors(item, node["items"], (*path, i))

    def _object(self, value: dict[str, Any], node: dict[str, Any], path: Path) -> Iterator[Error]:
        props = node.get("properties", {})
        for key in node.get("required", []):
            if key not in value:
                yield path, f"'{key}' is required", None
        extra = node.get("additionalProperties", True)
        names = node.get("propertyNames")
        for key, item in value.items():
            if isinstance(names, dict):
                bad = [message for _, message, _ in self.errors(key, names, (*path, key))]
                if bad:
                    yield (*path, key), f"the key {key!r} is not valid here", names.get("x-hint")
                    continue
            if key in props:
                yield from self.errors(item, props[key], (*path, key))
            elif extra is False:
                import difflib  # only for a key that is not in the schema: not on a good config's path
                close = difflib.get_close_matches(key, list(props), n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"valid keys here: {', '.join(sorted(props))}"
                yield (*path, key), f"unknown key '{key}'", hint
            elif isinstance(extra, dict):
                yield from self.errors(item, extra, (*path, key))


def validate(value: Any, schema: dict[str, Any]) -> list[Error]:
    return list(Validator(schema).errors(value))
