"""Config sources and the merge order (design.md): later wins.

baked-in (boot medium) -> the stamped site config (agent/config/site.py) -> kernel command line (basalt.* /
k3os.*) -> /var/lib/basalt/config.yaml
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

from agent import files, layout
from agent.config.bootargs import BAKED, config_args, has_config_args

TYPE_CHECKING = False  # typing costs a tenth of a second on the boot path under emulation
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from agent.config.validate import LoadedConfig
    from agent.config.yamlsource import PathKey
    from agent.errors import Problem

STATE = layout.STATE_CONFIG
STATE_DIR = layout.STATE_CONFIG_D
KNOWN_GOOD = layout.KNOWN_GOOD
REJECTED = layout.REJECTED
CACHE = layout.CONFIG_CACHE
CACHE_MAX = 4 << 20  # bytes: far above any node's sources, and never more read
SITE = layout.RUN_SITE_CONFIG  # chosen from the medium's stamped configs at boot (agent/config/site.py)
DROPPED = layout.RUN_MEDIUM + layout.MEDIUM_SITE_CONFIG  # put on the boot partition from a laptop


def cmdline_config(text: str, top_level: set[str]) -> dict[str, Any]:
    """``basalt.a.b=v`` / ``k3os.a.b=v`` -> nested config. A repeated key makes a list, a bare
    key is true. A first part naming a top-level key (``basalt.hostname=x``) sets that key;
    anything else goes into the section of the prefix used."""
    out: dict[str, Any] = {}
    for prefix, parts, value in config_args(text):
        path = parts if parts[0] in top_level else [prefix, *parts]
        node = out
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                break
            node = nxt
        else:
            leaf: Any = "true" if value is None else value
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
        self.warnings: list[Problem] = []  # valid, but a node would break on it at run time
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


class Cache:
    """The sources a node validated at an earlier boot, so that it need not parse and check them
    again: the state file, ``config.d``, a config dropped on the boot partition, user-data (a
    build's or a stamp's config has its own sidecar). Each is keyed like a sidecar, by its bytes'
    and the schema's hashes, and by the agent's code (``layout.LIB_AGENT_DIGEST``), so a changed
    source, schema or validator (an upgrade) is checked again. Only a source with no problem and
    no warning is kept. The file (0600: configs hold secrets) starts with the sha256 of the rest,
    checked before it is unmarshalled; anything else is ignored, as if there were no cache."""

    def __init__(self, path: str | None, code: bytes):
        self.path, self.code = path, code
        self.on = bool(path and code)  # no file, or no agent identity (a checkout): no cache
        self.entries: dict[str, Any] = self._read(path) if self.on and path else {}
        self.used: dict[str, Any] = {}

    @staticmethod
    def _read(path: str) -> dict[str, Any]:
        import marshal
        try:
            with open(path, "rb") as f:
                data = f.read(CACHE_MAX + 1)
        except OSError:
            return {}
        if len(data) > CACHE_MAX or files.sha256(data[32:]).digest() != data[:32]:
            return {}
        try:
            entries = marshal.loads(data[32:])
        except (ValueError, EOFError, TypeError):
            return {}
        return entries if isinstance(entries, dict) else {}

    def key(self, schema_raw: bytes, data: bytes) -> str:
        """The source's key ("" when there is no cache: nothing is found or kept under it)."""
        return cache_key(schema_raw + b"\0" + self.code, data) if self.on else ""

    def get(self, path: str, key: str) -> dict[str, Any] | None:
        entry = self.entries.get(path) if key else None
        if isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("value"), dict):
            self.used[path] = entry
            return entry["value"]  # type: ignore[no-any-return]
        return None

    def put(self, path: str, key: str, value: dict[str, Any]) -> None:
        if key:
            self.used[path] = {"key": key, "value": value}

    def save(self) -> None:
        """Keep what this gathering used or validated (a source gone is forgotten); written only
        when that changed."""
        if not self.on or not self.path or self.used == self.entries:
            return
        import marshal
        try:
            payload = marshal.dumps(self.used, 4)
        except ValueError:  # not plain data: nothing kept rather than a half
            return
        if len(payload) + 32 <= CACHE_MAX:
            try:
                files.write_atomic(self.path, files.sha256(payload).digest() + payload, 0o600, makedirs=True)
            except OSError:  # a read-only state partition, a user's `basalt config show`: only slower
                pass


def agent_digest() -> bytes:
    try:
        with open(layout.LIB_AGENT_DIGEST, "rb") as f:
            return f.read().strip()
    except OSError:
        return b""  # not an installed agent (a checkout): no cache


def gather(cmdline: str, baked: str = BAKED, state: str = STATE, state_dir: str = STATE_DIR,
           datasource_dirs: tuple[str, ...] | None = None, known_good: str = KNOWN_GOOD,
           rejected: str = REJECTED, dropped: str = DROPPED, site: str = SITE, cache: str | None = CACHE,
           code: bytes | None = None) -> Merged:
    """Every source in order, each validated alone; see the module docstring for what a
    problem in one of them does. ``cache``: where validated sources are remembered (``Cache``),
    ``code``: the agent's code identity it is keyed by (default: the installed agent's)."""
    from agent.config.datasources import DIRS, is_script
    schema_raw = schema_bytes()
    known = Cache(cache, agent_digest() if code is None else code)
    parsed: list[dict[str, Any]] = []

    def schema() -> dict[str, Any]:  # parsed on first use: precompiled sources never need it
        if not parsed:
            from agent import jsontext
            parsed.append(jsontext.loads(schema_raw))
        return parsed[0]
    merged = Merged()
    digest = files.sha256()
    paths = [baked, site, state, *sorted(os.path.join(state_dir, f) for f in (os.listdir(state_dir)
                                   if os.path.isdir(state_dir) else []) if f.endswith(".yaml")), dropped]
    layers: list[tuple[str, LoadedConfig | Valid | list[Problem]]] = \
        [(path, _load(path, schema, schema_raw, known)) for path in paths[:2]]
    cmd = cmdline_config(cmdline, set(schema()["properties"])) if has_config_args(cmdline) else {}
    if cmd:
        from agent.config.validate import check
        from agent.config.yamlsource import Located
        layers.append(("kernel command line", check(Located(cmd, "kernel command line"), schema())))
        digest.update(repr(sorted(cmd.items())).encode())
    layers += [(path, _load(path, schema, schema_raw, known)) for path in paths[2:]]
    for directory in DIRS if datasource_dirs is None else datasource_dirs:
        meta, user = os.path.join(directory, "meta-data"), os.path.join(directory, "user-data")
        if os.path.isfile(meta):
            layers.append((meta, _meta_data(meta, schema())))
        if is_script(user):
            merged.scripts.append(user)
            paths.append(user)
        elif os.path.isfile(user):
            layers.append((user, _load(user, schema, schema_raw, known)))
    for path in paths + [name for name, _ in layers if name not in paths]:
        if os.path.isfile(path):
            with open(path, "rb") as f:
                digest.update(path.encode() + b"\0" + f.read() + b"\0")
    merged.digest = digest.hexdigest()
    known.save()
    for name, loaded in layers:  # in merge order, so problems are reported in that order too
        if isinstance(loaded, list):
            merged.problems.extend(loaded)
        elif loaded.problems:
            merged.problems.extend(loaded.problems)
        else:
            merged.warnings.extend(loaded.warnings)
            merged.add(name, loaded.value)
    why = "a source has problems" if merged.problems else None
    if files.read_json(rejected).get("digest") == merged.digest:
        why = "this config was reverted: 'basalt config apply --try' was not confirmed"
        merged.problems.append(_problem(why, "fix the config, then 'basalt config apply --try' and 'confirm'"))
    good = files.read_json(known_good) if why else {}
    if good.get("config") is not None:
        merged.value = good["config"]
        merged.origin = {tuple(path): name for path, name in good.get("origin", [])}
        merged.sources = [f"last known-good ({', '.join(good.get('sources', []))})"]
        merged.scripts = []
        merged.fallback = why
    return merged


def save_known_good(merged: Merged, path: str = KNOWN_GOOD) -> None:
    """Remember ``merged`` (which validated and applied) as the config to fall back to."""
    try:
        with open(path + ".digest") as f:
            unchanged = f.read() == merged.digest
        if unchanged:
            try:
                os.chmod(path, 0o600)  # one an older version wrote world-readable
            except OSError:
                pass  # a read-only state partition: nothing else to do either
            return  # unchanged: spare the flash a write (and the boot a json import)
    except OSError:
        pass
    files.write_json(path, merged.known_good(), 0o600, makedirs=True)  # a config holds secrets
    files.write_atomic(path + ".digest", merged.digest)


def reject(digest: str, path: str = REJECTED) -> None:
    files.write_json(path, {"digest": digest}, makedirs=True)


def _problem(message: str, hint: str) -> Problem:
    from agent.errors import Problem
    return Problem(message, hint=hint)


def _meta_data(path: str, schema: dict[str, Any]) -> LoadedConfig | list[Problem]:
    """NoCloud meta-data: its ``local-hostname`` sets the host name."""
    from agent.config.validate import check
    from agent.config.yamlsource import Located, load
    from agent.errors import BasaltError
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


class Valid:
    """A source known valid without parsing it again (see ``precompiled``)."""

    __slots__ = ("problems", "value", "warnings")

    def __init__(self, value: dict[str, Any]):
        self.value, self.problems, self.warnings = value, (), ()  # warned about at build time


def schema_bytes() -> bytes:
    from agent.config.bootargs import SCHEMA_PATHS
    for path in SCHEMA_PATHS:
        if os.path.isfile(path):
            with open(path, "rb") as f:
                return f.read()
    raise FileNotFoundError("config.schema.json not found in " + ", ".join(SCHEMA_PATHS))


def cache_key(schema_raw: bytes, data: bytes) -> str:
    return str(files.sha256(files.sha256(schema_raw).digest() + data).hexdigest())


def precompile(data: bytes, value: dict[str, Any], schema_raw: bytes) -> bytes:
    """The sidecar (``config.bin`` beside ``config.yaml``) the builder bakes for a config it
    validated: the normalised value, keyed by the YAML's and the schema's hashes, in marshal
    format (built in, nothing to import). The node then skips the YAML parser and the
    validator on the boot path (over a second under TCG). A sidecar that does not match is
    ignored and the YAML parsed and checked as usual."""
    import marshal
    return marshal.dumps({"key": cache_key(schema_raw, data), "value": value}, 4)


def precompiled(path: str, data: bytes, schema_raw: bytes) -> dict[str, Any] | None:
    import marshal
    try:
        with open(os.path.splitext(path)[0] + ".bin", "rb") as f:
            sidecar = marshal.loads(f.read())
    except (OSError, ValueError, EOFError, TypeError):
        return None
    if not isinstance(sidecar, dict) or sidecar.get("key") != cache_key(schema_raw, data):
        return None
    value = sidecar.get("value")
    return value if isinstance(value, dict) else None


def _load(path: str, schema: Callable[[], dict[str, Any]], schema_raw: bytes,
          known: Cache) -> LoadedConfig | Valid | list[Problem]:
    """The checked source, or the problems that make it unusable ([] when it does not exist)."""
    if not os.path.isfile(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    cached = precompiled(path, data, schema_raw)
    if cached is not None:
        return Valid(cached)
    key = known.key(schema_raw, data)
    cached = known.get(path, key)
    if cached is not None:
        return Valid(cached)
    from agent.config.validate import check
    from agent.config.yamlsource import load
    from agent.errors import BasaltError
    try:
        checked = check(load(path, strict=False), schema())
        if not checked.problems and not checked.warnings:
            known.put(path, key, checked.value)
        return checked
    except BasaltError as exc:  # a YAML syntax error: the whole source is unusable
        return list(exc.problems)
    except Exception as exc:  # noqa: BLE001 - a fault in the validator costs this source, not the node's config
        return [_problem(f"{path}: the validator failed on this source ({type(exc).__name__}: {exc})",
                         "this is a Basalt bug: report it with the source; the node keeps its last known-good config")]


def show(merged: Merged) -> str:
    """The merged config, one leaf per line, with the source that set it (secrets as <redacted>)."""
    from agent.config import secrets
    lines = []
    for path in sorted(merged.origin, key=lambda p: [str(x) for x in p]):
        value: Any = merged.value
        for part in path:
            value = value[part]
        dotted = ".".join(str(p) for p in path)
        lines.append(f"{dotted} = {secrets.redacted(path, value)!r}    # {merged.origin[path]}")
    return "\n".join(lines)

