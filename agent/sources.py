"""Config sources and the merge order (design.md): later wins.

baked-in (boot medium) -> kernel command line (basalt.* / k3os.*) -> /var/lib/basalt/config.yaml
-> /var/lib/basalt/config.d/*.yaml -> datasources (NoCloud seed meta-data then user-data, then
the HTTP URL's). Mappings merge key by key, scalars override, lists are replaced (as k3OS).
Every leaf remembers which source set it, for ``basalt config show``.

A config that fails validation never bricks a node: when any source has a problem (or is the
exact set of sources an unconfirmed ``basalt config apply --try`` was reverted from), the
last known-good config is used whole, and the problems are reported. Without a known-good
config yet, the valid sources are merged and the invalid ones left out.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from agent.bootargs import BAKED, CONTROL, is_datasource_url

if TYPE_CHECKING:
    from agent.config import LoadedConfig
    from agent.errors import Problem
    from agent.yamlsource import PathKey

STATE = "/var/lib/basalt/config.yaml"
STATE_DIR = "/var/lib/basalt/config.d"
KNOWN_GOOD = "/var/lib/basalt/last-known-good.json"
REJECTED = "/var/lib/basalt/rejected.json"


def cmdline_config(text: str, top_level: set[str]) -> dict[str, Any]:
    """``basalt.a.b=v`` / ``k3os.a.b=v`` -> nested config. A repeated key makes a list, a bare
    key is true. A first part naming a top-level key (``basalt.hostname=x``) sets that key;
    anything else goes into the section of the prefix used."""
    out: dict[str, Any] = {}
    for arg in text.split():
        prefix, dot, rest = arg.partition(".")
        if prefix not in ("basalt", "k3os") or not dot or not rest or is_datasource_url(arg):
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
        self.scripts: list[str] = []  # user-data scripts, run in the runtime phase
        self.digest = ""  # of every source's bytes, used or not
        self.fallback: str | None = None  # why the last known-good config is used instead

    def add(self, name: str, value: dict[str, Any]) -> None:
        self.value = _merge(self.value, value, (), name, self.origin)
        self.sources.append(name)

    def known_good(self) -> dict[str, Any]:
        return {"config": self.value, "sources": self.sources, "digest": self.digest,
                "origin": [[list(path), name] for path, name in self.origin.items()]}


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


def gather(cmdline: str, baked: str = BAKED, state: str = STATE, state_dir: str = STATE_DIR,
           datasource_dirs: tuple[str, ...] | None = None, known_good: str = KNOWN_GOOD,
           rejected: str = REJECTED) -> Merged:
    """Every source in order, each validated alone; see the module docstring for what a
    problem in one of them does."""
    import hashlib

    from agent.config import check, load_schema
    from agent.datasources import DIRS, is_script
    from agent.yamlsource import Located
    schema = load_schema()
    merged = Merged()
    digest = hashlib.sha256()
    files = [baked, state, *sorted(os.path.join(state_dir, f) for f in (os.listdir(state_dir)
                                   if os.path.isdir(state_dir) else []) if f.endswith(".yaml"))]
    layers: list[tuple[str, LoadedConfig | list[Problem]]] = [(path, _load(path, schema)) for path in files[:1]]
    cmd = cmdline_config(cmdline, set(schema["properties"]))
    if cmd:
        layers.append(("kernel command line", check(Located(cmd, "kernel command line"), schema)))
        digest.update(repr(sorted(cmd.items())).encode())
    layers += [(path, _load(path, schema)) for path in files[1:]]
    for directory in DIRS if datasource_dirs is None else datasource_dirs:
        meta, user = os.path.join(directory, "meta-data"), os.path.join(directory, "user-data")
        if os.path.isfile(meta):
            layers.append((meta, _meta_data(meta, schema)))
        if is_script(user):
            merged.scripts.append(user)
            files.append(user)
        elif os.path.isfile(user):
            layers.append((user, _load(user, schema)))
    for path in files + [name for name, _ in layers if name not in files]:
        if os.path.isfile(path):
            with open(path, "rb") as f:
                digest.update(path.encode() + b"\0" + f.read() + b"\0")
    merged.digest = digest.hexdigest()
    for name, loaded in layers:  # in merge order, so problems are reported in that order too
        if isinstance(loaded, list):
            merged.problems.extend(loaded)
        elif loaded.problems:
            merged.problems.extend(loaded.problems)
        else:
            merged.add(name, loaded.value)
    why = "a source has problems" if merged.problems else None
    if _read_json(rejected).get("digest") == merged.digest:
        why = "this config was reverted: 'basalt config apply --try' was not confirmed"
        merged.problems.append(_problem(why, "fix the config, then 'basalt config apply --try' and 'confirm'"))
    good = _read_json(known_good) if why else {}
    if good.get("config") is not None:
        merged.value = good["config"]
        merged.origin = {tuple(path): name for path, name in good.get("origin", [])}
        merged.sources = [f"last known-good ({', '.join(good.get('sources', []))})"]
        merged.scripts = []
        merged.fallback = why
    return merged


def save_known_good(merged: Merged, path: str = KNOWN_GOOD) -> None:
    """Remember ``merged`` (which validated and applied) as the config to fall back to."""
    import json
    if _read_json(path).get("digest") == merged.digest:
        return  # unchanged: spare the flash a write every boot
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(merged.known_good(), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def reject(digest: str, path: str = REJECTED) -> None:
    import json
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump({"digest": digest}, f)
    os.replace(path + ".tmp", path)


def _read_json(path: str) -> dict[str, Any]:
    import json
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _problem(message: str, hint: str) -> Problem:
    from agent.errors import Problem
    return Problem(message, hint=hint)


def _meta_data(path: str, schema: dict[str, Any]) -> LoadedConfig | list[Problem]:
    """NoCloud meta-data: its ``local-hostname`` sets the host name."""
    from agent.config import check
    from agent.errors import BasaltError
    from agent.yamlsource import Located, load
    try:
        doc = load(path)
    except BasaltError as exc:
        return list(exc.problems)
    value = doc.value if isinstance(doc.value, dict) else {}
    name = value.get("local-hostname") or value.get("local_hostname")
    if name is None:
        return check(Located({}, path), schema)
    located = Located({"hostname": name}, path, {("hostname",): doc.line_of(("local-hostname",)) or 1},
                      {("hostname",): ("local-hostname",)})
    return check(located, schema)


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
