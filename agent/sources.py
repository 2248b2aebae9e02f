"""Config sources and the merge order (design.md): later wins.

baked-in (boot medium) -> kernel command line (basalt.* / k3os.*) -> /var/lib/basalt/config.yaml
-> /var/lib/basalt/config.d/*.yaml. Mappings merge key by key, scalars override, lists are
replaced (as k3OS). Every leaf remembers which source set it, for ``basalt config show``.
A source that fails validation is left out whole, and its problems are reported.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from agent.bootargs import BAKED, CONTROL

if TYPE_CHECKING:
    from agent.config import LoadedConfig
    from agent.errors import Problem
    from agent.yamlsource import PathKey

STATE = "/var/lib/basalt/config.yaml"
STATE_DIR = "/var/lib/basalt/config.d"


def cmdline_config(text: str, top_level: set[str]) -> dict[str, Any]:
    """``basalt.a.b=v`` / ``k3os.a.b=v`` -> nested config. A repeated key makes a list, a bare
    key is true. A first part naming a top-level key (``basalt.hostname=x``) sets that key;
    anything else goes into the section of the prefix used."""
    out: dict[str, Any] = {}
    for arg in text.split():
        prefix, dot, rest = arg.partition(".")
        if prefix not in ("basalt", "k3os") or not dot or not rest:
            continue
        key, eq, value = rest.partition("=")
        parts = key.split(".")
        if parts[0] in CONTROL or not all(parts):
            continue
        path = parts if parts[0] in top_level else [prefix, *parts]
        node = out
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                break
            node = nxt
        else:
            leaf: Any = value if eq else "true"
            if path[-1] in node:
                prev = node[path[-1]]
                node[path[-1]] = [*(prev if isinstance(prev, list) else [prev]), leaf]
            else:
                node[path[-1]] = leaf
    return out


class Merged:
    """The merged config, each leaf's source, the sources used, and problems of those left out."""

    def __init__(self) -> None:
        self.value: dict[str, Any] = {}
        self.origin: dict[PathKey, str] = {}
        self.sources: list[str] = []
        self.problems: list[Problem] = []

    def add(self, name: str, value: dict[str, Any]) -> None:
        self.value = _merge(self.value, value, (), name, self.origin)
        self.sources.append(name)


def _merge(base: Any, over: Any, path: PathKey, name: str, origin: dict[PathKey, str]) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = _merge(base.get(key), value, (*path, key), name, origin)
        return out
    for stale in [p for p in origin if p[:len(path)] == path]:
        del origin[stale]  # a replaced subtree forgets where its old leaves came from
    _record(over, path, name, origin)
    return over


def _record(value: Any, path: PathKey, name: str, origin: dict[PathKey, str]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _record(item, (*path, key), name, origin)
    else:
        origin[path] = name


def gather(cmdline: str, baked: str = BAKED, state: str = STATE, state_dir: str = STATE_DIR) -> Merged:
    """Every source in order, each validated alone; an invalid one is skipped whole."""
    from agent.config import check, load_schema
    from agent.yamlsource import Located
    schema = load_schema()
    merged = Merged()
    files = [baked, state, *sorted(os.path.join(state_dir, f) for f in (os.listdir(state_dir)
                                   if os.path.isdir(state_dir) else []) if f.endswith(".yaml"))]
    layers: list[tuple[str, LoadedConfig | list[Problem]]] = [(path, _load(path, schema)) for path in files[:1]]
    cmd = cmdline_config(cmdline, set(schema["properties"]))
    if cmd:
        layers.append(("kernel command line", check(Located(cmd, "kernel command line"), schema)))
    layers += [(path, _load(path, schema)) for path in files[1:]]
    for name, loaded in layers:  # in merge order, so problems are reported in that order too
        if isinstance(loaded, list):
            merged.problems.extend(loaded)
        elif loaded.problems:
            merged.problems.extend(loaded.problems)
        else:
            merged.add(name, loaded.value)
    return merged


def _load(path: str, schema: dict[str, Any]) -> LoadedConfig | list[Problem]:
    """The checked source, or the problems that make it unusable ([] when it does not exist)."""
    from agent.config import check
    from agent.errors import BasaltError
    from agent.yamlsource import load
    if not os.path.isfile(path):
        return []
    try:
        return check(load(path), schema)
    except BasaltError as exc:  # a YAML syntax error: the whole source is unusable
        return list(exc.problems)


def show(merged: Merged) -> str:
    """The merged config, one leaf per line, with the source that set it."""
    lines = []
    for path in sorted(merged.origin, key=lambda p: [str(x) for x in p]):
        value: Any = merged.value
        for part in path:
            value = value[part]
        dotted = ".".join(str(p) for p in path)
        lines.append(f"{dotted} = {value!r}    # {merged.origin[path]}")
    return "\n".join(lines)
