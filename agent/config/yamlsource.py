"""Load YAML while remembering the line of every value.

Validation errors must point at the user's own line, so documents are loaded
as a plain Python value plus a map from value path (a tuple of keys and list
indices) to its 1-based line number.

Bounded, as every parse of outside input: a document of at most MAX_BYTES, nested
at most MAX_DEPTH deep, expanding to at most MAX_VALUES values (each use of an
alias counts again: 339 bytes of nested aliases no longer make a billion values).
A key from a merge (``<<: *base``) may be set again below it: that is YAML, not
a duplicate.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.errors import BasaltError, Problem

PathKey = tuple[str | int, ...]
MAX_BYTES = 1 << 20  # a config, an inventory or an image definition: far less; a write_files payload fits
MAX_VALUES = 20_000  # the values a document expands to, aliases counted at each use
MAX_DEPTH = 100
# Marks of common template languages left unrendered in a config.
TEMPLATE = re.compile(r"\{\{|\{%|%\{|\$\{|##\w+##|%[A-Z_]+%|^\s*-?\s*\$[A-Za-z0-9_]+\s*$|<[a-z][\w -]*>")


@dataclass
class Located:
    """A loaded document: its value, its source name and its line map."""

    value: Any
    source: str
    lines: dict[PathKey, int] = field(default_factory=dict)
    # For a normalised document: each value's path as the user wrote it (for messages).
    display: dict[PathKey, PathKey] = field(default_factory=dict)
    # Problems found while loading that do not stop it (duplicate keys: the first value is kept).
    problems: list[Problem] = field(default_factory=list)
    # An unquoted number as it was written (0644, 1.10), for a key that wants text (k3OS reads it so).
    raw: dict[PathKey, str] = field(default_factory=dict)

    def line_of(self, path: Sequence[str | int]) -> int | None:
        """Line of ``path``, or of its nearest ancestor that has one."""
        key = tuple(path)
        while True:
            if key in self.lines:
                return self.lines[key]
            if not key:
                return None
            key = key[:-1]

    def problem(self, path: Sequence[str | int], message: str, hint: str | None = None) -> Problem:
        return Problem(message, self.source, self.line_of(path), format_path(path), hint)


def format_path(path: Sequence[str | int]) -> str:
    """``('outputs', 1, 'format')`` -> ``outputs[1].format``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class _Loader(yaml.SafeLoader):
    """SafeLoader whose documents record each value's line and every duplicate key (a silent
    override hides typos)."""

    values = 0  # constructed so far (MAX_VALUES)

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.raw: dict[PathKey, str] = {}


def flow_depth(text: str) -> int:
    """How deep ``[``/``{`` nest (outside quotes and comments): PyYAML's scanner slows down with
    every open level, so a deep document is refused before it is parsed."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return 0  # cannot nest deeper than it has brackets
    depth = deepest = 0
    quote = ""
    previous = "\n"
    comment = False
    for c in text:
        if comment:
            comment = c != "\n"
        elif quote:
            if c == quote:
                quote = ""
        elif c in "\"'" and previous in " \t\n[{,:":
            quote = c
        elif c == "#" and previous in " \t\n":
            comment = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth = max(0, depth - 1)
        previous = c
    return deepest


def _item_line(text: list[str], mark: yaml.Mark) -> int:
    """The line of a block sequence item's ``-``: its value may start lines below it (after a
    comment), but the item is where its dash is."""
    if mark.line >= len(text) or "-" in text[mark.line][:mark.column]:
        return mark.line + 1
    for n in range(mark.line - 1, -1, -1):
        stripped = text[n].strip()
        if stripped.startswith("-"):
            return n + 1
        if stripped and not stripped.startswith("#"):
            break
    return mark.line + 1


def _construct(loader: _Loader, node: yaml.Node, path: PathKey, lines: dict[PathKey, int], source: str,
               duplicates: list[Problem], text: list[str], line: int | None = None) -> Any:
    # A mapping's value is "at" its key's line: a block value starts a line or more below it.
    lines[path] = line if line is not None else node.start_mark.line + 1
    loader.values += 1
    if loader.values > MAX_VALUES or len(path) > MAX_DEPTH:
        raise BasaltError(Problem(f"the document expands to more than {MAX_VALUES} values or {MAX_DEPTH} levels "
                                  "(aliases used over and over?)", source, lines[path], format_path(path[:MAX_DEPTH]),
                                  hint="write the values out, or use each alias less"))
    if isinstance(node, yaml.MappingNode):
        own = sum(1 for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge")
        loader.flatten_mapping(node)
        merged = len(node.value) - own  # the pairs a merge key brought come first; the node's own follow
        from_merge: set[str] = set()
        result: dict[Any, Any] = {}
        for index, (key_node, value_node) in enumerate(node.value):
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise BasaltError(Problem("mapping keys must be plain scalars", source,
                                          key_node.start_mark.line + 1, format_path(path),
                                          hint="an unquoted {{ ... }} is YAML for a nested mapping: is this an "
                                               "unrendered template?"))
            key = str(key) if not isinstance(key, str) else key
            if index < merged:
                from_merge.add(key)  # a later merge or the mapping's own key may override it
            elif key in from_merge:
                from_merge.discard(key)
                del result[key]
            if key in result and key in from_merge:
                del result[key]
            elif key in result:
                duplicates.append(Problem(f"duplicate key '{key}'", source, key_node.start_mark.line + 1,
                                          format_path((*path, key)),
                                          hint=f"'{key}' is already set on line {lines[(*path, key)]}: keep one"))
                continue
            result[key] = _construct(loader, value_node, (*path, key), lines, source, duplicates, text,
                                     key_node.start_mark.line + 1)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_construct(loader, item, (*path, i), lines, source, duplicates, text,
                           item.start_mark.line + 1 if node.flow_style else _item_line(text, item.start_mark))
                for i, item in enumerate(node.value)]
    value = loader.construct_object(node, deep=True)
    if type(value) in (int, float, bool) and isinstance(node, yaml.ScalarNode) and not node.style:
        loader.raw[path] = node.value
    return value


def loads(text: str, source: str = "<string>", strict: bool = True) -> Located:
    """Parse one YAML document. Syntax errors become a located ``BasaltError``; so do duplicate
    keys, all of them, unless ``strict`` is false: then they are in ``Located.problems``, for a
    caller that reports them with every other problem."""
    if len(text) > MAX_BYTES:
        raise BasaltError(Problem(f"{len(text)} characters: larger than {MAX_BYTES >> 10} KiB, more than any config "
                                  "or definition", source, hint="is this the right file?"))
    if flow_depth(text) > MAX_DEPTH:
        raise BasaltError(Problem(f"nested more than {MAX_DEPTH} levels deep", source, hint="is this the right file?"))
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:  # raised while reading the stream, e.g. a control character
        at = text[:exc.position].count("\n") + 1
        raise BasaltError(Problem(f"not YAML text: character {exc.character!r} is not allowed", source, at,
                                  hint="remove control characters; is this a binary file?")) from None
    try:
        node = loader.get_single_node()
        lines: dict[PathKey, int] = {}
        duplicates: list[Problem] = []
        value = None if node is None else _construct(loader, node, (), lines, source, duplicates, text.splitlines())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        message = exc.problem or str(exc)
        hint = "check indentation and quoting on this line or the one before"
        bad_line = text.splitlines()[line - 1] if line and line <= len(text.splitlines()) else ""
        if TEMPLATE.search(bad_line):
            hint = "this line looks like an unrendered template ({{ }}, {% %}, %VAR%, ${...}); render it first"
        if exc.context_mark and exc.problem_mark and exc.context_mark.line != exc.problem_mark.line:
            hint = f"{exc.context or 'the construct'} started on line {exc.context_mark.line + 1}; is it closed?"
        raise BasaltError(Problem(f"YAML syntax error: {message}", source, line, hint=hint)) from None
    except yaml.YAMLError as exc:
        raise BasaltError(Problem(f"YAML error: {exc}", source)) from None
    except RecursionError:
        raise BasaltError(Problem(f"nested more than {MAX_DEPTH} levels deep", source,
                                  hint="is this the right file?")) from None
    finally:
        loader.dispose()
    if duplicates and strict:
        raise BasaltError(duplicates)
    return Located(value, source, lines, problems=duplicates, raw=loader.raw)


def load(path: Path | str, strict: bool = True) -> Located:
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES * 4 + 1)  # characters are at most 4 bytes: loads() says which is too long
        if len(data) > MAX_BYTES * 4:
            raise BasaltError(Problem(f"larger than {MAX_BYTES >> 10} KiB, more than any config or definition",
                                      str(path), hint="is this the right file?"))
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise BasaltError(Problem(f"no such file: {path}")) from None
    except UnicodeDecodeError as exc:
        raise BasaltError(Problem(f"not UTF-8 text ({exc.reason} at byte {exc.start})", str(path))) from None
    except OSError as exc:
        raise BasaltError(Problem(f"cannot read: {exc.strerror}", str(path))) from None
    return loads(text, str(path), strict)
