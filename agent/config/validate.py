"""Loading a site config.yaml: parse, forgive k3OS-style names, validate.

k3OS accepted camelCase and singular/plural spellings, a scalar where a list
belongs, "true"/"false" strings for booleans, and null for "not set"; so does
Basalt. Normalisation follows the schema, so it knows what each key should
be; every renamed value keeps its original name and line for errors.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from agent.config import schema as schema_mod
from agent.config.bootargs import SCHEMA_PATHS
from agent.config.yamlsource import TEMPLATE, Located, PathKey, format_path, load, loads
from agent.errors import Problem

TRUE = {"true", "yes", "on", "1"}
FALSE = {"false", "no", "off", "0"}
# Spellings k3OS took that rules cannot derive (wifi's "pass" for "passphrase").
EXTRA_ALIASES = {"pass": "passphrase", "password": "passphrase"}


def load_schema() -> dict[str, Any]:
    for path in SCHEMA_PATHS:
        if os.path.isfile(path):
            with open(path) as f:
                data: dict[str, Any] = json.load(f)
                return data
    raise FileNotFoundError("config.schema.json not found in " + ", ".join(SCHEMA_PATHS))


def snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).replace("-", "_").lower()


def canonical_key(key: str, known: dict[str, Any]) -> str | None:
    """The schema's name for ``key`` (sshAuthorizedKeys, datasource, sysctls...), or None."""
    candidates = [key, snake(key)]
    for c in list(candidates):
        candidates += [c + "s", c[:-1] if c.endswith("s") else c, c.replace("datasource", "data_source")]
        candidates += [c.replace("datasource", "data_source") + "s"]
    for c in candidates:
        if c in known:
            return c
    # k3OS also registers the all-lower-case JSON name: runcmd, k3sargs, sshauthorizedkeys...
    flat = {k.replace("_", ""): k for k in known}
    for c in candidates:
        if c.replace("_", "").lower() in flat:
            return flat[c.replace("_", "").lower()]
    alias = EXTRA_ALIASES.get(key)
    return alias if alias in known else None


@dataclass
class Normaliser:
    validator: schema_mod.Validator
    source: Located
    lines: dict[PathKey, int] = field(default_factory=dict)
    display: dict[PathKey, PathKey] = field(default_factory=dict)
    notes: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def walk(self, value: Any, node: dict[str, Any], new: PathKey, old: PathKey) -> Any:
        node = self.validator.resolve(node)
        line = self.source.line_of(old)
        if line is not None:
            self.lines[new] = line
        self.display[new] = old
        want = node.get("type")
        if want == "array" and isinstance(value, str) and node.get("x-comma-separated"):
            value = [v.strip() for v in value.split(",") if v.strip()]  # cloud-init's groups: "users, adm"
        if want == "array" and value is not None and not isinstance(value, list):
            value = [value]  # a scalar where a list is expected: a one-item list
        if want == "boolean" and isinstance(value, str) and value.strip().lower() in TRUE | FALSE:
            return value.strip().lower() in TRUE
        if isinstance(value, bool) and (self.source.raw.get(old) or "").lower() in node.get("enum", ()):
            return (self.source.raw.get(old) or "").lower()  # YAML 1.1 reads mode: off as false; the word was meant
        if want == "string" and isinstance(value, (bool, int, float)):
            if isinstance(value, bool):
                return "true" if value else "false"
            text = self.source.raw.get(old) or str(value)  # as written: 0644 stays "0644", 1.10 "1.10"
            if node.get("x-octal"):  # cloud-init's own docs write permissions: 0644 unquoted
                self.warnings.append(Problem(
                    f"unquoted {text} is read as the octal mode {text} (as cloud-init writes 0644), not the number "
                    f"{int(value)}", self.source.source, self.source.line_of(old), format_path(old),
                    f"quote it: '{text}'", warning=True))
            return text
        if isinstance(value, dict) and isinstance(value.get("content"), bytes):
            # YAML !!binary content: carried as base64 text, decoded when the file is written.
            import base64
            # The bytes are decoded already: what 'encoding' still asks for is gunzip (cloud-init's reading).
            encoding = value.get("encoding") or ""
            if isinstance(encoding, str):  # anything else: the schema says what it must be
                encoding = {"": "b64", "gz": "gz+b64", "gzip": "gz+b64"}.get(encoding, encoding)
            value = {**value, "content": base64.b64encode(value["content"]).decode(), "encoding": encoding}
        if isinstance(value, list) and isinstance(node.get("items"), dict):
            return [self.walk(item, node["items"], (*new, i), (*old, i)) for i, item in enumerate(value)]
        if isinstance(value, dict):
            return self.walk_object(value, node, new, old)
        return value

    def walk_object(self, value: dict[str, Any], node: dict[str, Any], new: PathKey, old: PathKey) -> dict[str, Any]:
        props: dict[str, Any] = node.get("properties", {})
        extra = node.get("additionalProperties", True)
        out: dict[str, Any] = {}
        for key, item in value.items():
            if item is None:  # k3OS (Go) reads null as "not set"
                continue
            name = canonical_key(key, props) if props else None
            if name is None:
                out[key] = self.walk(item, extra, (*new, key), (*old, key)) if isinstance(extra, dict) else item
                if not isinstance(extra, dict):
                    self._mark(item, (*new, key), (*old, key))
                continue
            if item == "" and self.validator.resolve(props[name]).get("x-empty-is-unset"):
                continue  # k3OS (Go) reads an empty password as "not set"
            if name in out:
                self.notes.append(self.source.problem((*old, key), f"'{key}' repeats '{name}', set already",
                                                      hint=f"keep one of them; '{key}' wins"))
            out[name] = self.walk(item, props[name], (*new, name), (*old, key))
        return out

    def _mark(self, value: Any, new: PathKey, old: PathKey) -> None:
        line = self.source.line_of(old)
        if line is not None:
            self.lines[new] = line
        self.display[new] = old


@dataclass(frozen=True)
class LoadedConfig:
    value: dict[str, Any]
    located: Located
    problems: tuple[Problem, ...]
    warnings: tuple[Problem, ...] = ()  # valid, but a node would break on it at run time

    @property
    def ok(self) -> bool:
        return not self.problems


def normalise(doc: Located, schema: dict[str, Any]) -> tuple[Located, list[Problem], list[Problem]]:
    """The document in canonical form; the problems and the warnings normalising found."""
    n = Normaliser(schema_mod.Validator(schema), doc)
    value = n.walk(doc.value, schema, (), ())
    return Located(value, doc.source, n.lines, n.display), n.notes, n.warnings


def relative_paths(doc: Located) -> list[Problem]:
    """Normalising, as k3OS does: a relative ``write_files`` path is relative to ``/`` (rewritten in
    place, before the schema, which wants absolute paths), with a warning."""
    from agent.config.checks import write_files_items
    out = []
    for i, item in write_files_items(doc.value):
        path = item.get("path")
        if isinstance(path, str) and path and not path.startswith("/") and not TEMPLATE.search(path):
            item["path"] = "/" + path
            where = ("write_files", i, "path")
            out.append(Problem(f"relative path '{path}' is written as '/{path}' (as k3OS does)", doc.source,
                               doc.line_of(where), format_path(doc.display.get(where, where)), f"write '/{path}'",
                               warning=True))
    return out


def check(doc: Located, schema: dict[str, Any] | None = None, k3s_version: str | None = None) -> LoadedConfig:
    """Normalise and validate one parsed document: every problem and every warning, ordered by
    line. ``k3s_version``: the release the config will run with (default: this node's)."""
    from agent.config import checks, secrets
    schema = schema or load_schema()
    if doc.value is None:
        return LoadedConfig({}, doc, tuple(doc.problems))
    if not isinstance(doc.value, dict):
        return LoadedConfig({}, doc, (doc.problem([], "config.yaml must be a mapping of keys",
                                                  hint="see docs/config.md for the keys"),))
    located, notes, noticed = normalise(doc, schema)
    problems = [*doc.problems, *notes]
    warnings = [*noticed, *relative_paths(located)]
    validator = schema_mod.Validator(schema)
    top, section = schema["properties"], validator.resolve(schema["properties"]["basalt"])
    errors = list(validator.errors(located.value))
    for path, message, hint in errors:
        shown = located.display.get(tuple(path), tuple(path))
        value = _value_at(located.value, path)
        if len(path) == 2 and path[0] in checks.COMMAND_KEYS and isinstance(value, list):
            import shlex
            message = "an exec-style command (a list of arguments): each item is one shell command line"
            hint = f"write it as one string: {shlex.join(str(v) for v in value)!r}"
        elif isinstance(value, str) and TEMPLATE.search(value) and not message.startswith("unknown key"):
            message, hint = checks.placeholder_message(value)
        hint = better_hint(path, message, hint, value, top, section["properties"], validator)
        problems.append(Problem(message, doc.source, located.line_of(path), format_path(shown), hint))
    for found in checks.run(located, {tuple(path) for path, _, _ in errors}, k3s_version):
        (warnings if found.warning else problems).append(found)
    problems.sort(key=lambda p: (p.line or 0, p.path or ""))
    warnings.sort(key=lambda p: (p.line or 0, p.path or ""))
    hidden = [v for v in (*secrets.values(doc.value), *secrets.values(located.value)) if not TEMPLATE.search(v)]
    if hidden:  # a bad passphrase is not printed to the console, agent.log, status.json or a CI log
        problems, warnings = ([Problem(secrets.scrub(p.message, hidden), p.file, p.line, p.path,
                                       secrets.scrub(p.hint, hidden) if p.hint else None, p.warning) for p in found]
                              for found in (problems, warnings))
    return LoadedConfig(located.value, located, tuple(problems), tuple(warnings))


def _value_at(value: Any, path: schema_mod.Path) -> Any:
    for part in path:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return None
    return value


# cloud-init keys Basalt does not take, and what to do instead (the hint for an unknown top-level key).
PACKAGES = "Basalt's root is read-only: packages come with the image (the image definition's 'packages:')"
CLOUD_INIT = {
    "ntp": "Basalt's equivalent is 'basalt.ntp_servers' (a list of NTP servers)",
    "resolv_conf": "Basalt's equivalent is 'basalt.dns_nameservers' (a list of addresses)",
    "manage_resolv_conf": "Basalt writes /etc/resolv.conf itself, from 'basalt.dns_nameservers'",
    "ssh_pwauth": "Basalt's equivalent is 'basalt.ssh.password_authentication'",
    "chpasswd": "set 'basalt.password' (the root password) or 'users[].password'",
    "fqdn": "Basalt's equivalent is 'hostname'",
    "ssh": "cloud-init's SSH settings are not Basalt's: 'basalt.ssh' configures the SSH server "
           "(enabled, port, password_authentication)",
    "datasource": "cloud-init's per-datasource settings are not Basalt's: 'basalt.data_sources' lists which "
                  "datasources to read",
    "packages": PACKAGES, "package_update": PACKAGES, "package_upgrade": PACKAGES,
    "package_reboot_if_required": PACKAGES, "apt": PACKAGES, "apt_pipelining": PACKAGES, "yum_repos": PACKAGES,
    "snap": PACKAGES,
    "chef": "Basalt runs no configuration-management agent: use write_files and run_cmd, or Kubernetes",
    "puppet": "Basalt runs no configuration-management agent: use write_files and run_cmd, or Kubernetes",
    "power_state": "run 'basalt poweroff' or 'basalt reboot' from run_cmd",
    "growpart": "Basalt grows its state partition to fill the disk by itself",
    "resize_rootfs": "Basalt's root is a read-only image; its state partition grows by itself",
    "ssh_keys": "Basalt makes the SSH host keys on first boot and keeps them on the state partition",
    "groups": "give each user its groups in 'users[].groups'",
}


def better_hint(path: schema_mod.Path, message: str, hint: str | None, value: Any,
                top: dict[str, Any], section: dict[str, Any], validator: schema_mod.Validator) -> str | None:
    """Hints that need to know the whole schema: wrong level, cloud-init's names for Basalt's keys."""
    if message.startswith("unknown key") and path:
        key = str(path[-1])
        if len(path) == 2 and path[0] in ("k3os", "basalt") and canonical_key(key, top):
            return f"'{key}' is a top-level key: move it out of '{path[0]}:'"
        if len(path) == 1 and key in CLOUD_INIT:
            return f"cloud-init's '{key}' is not supported by Basalt: {CLOUD_INIT[key]}"
        name = canonical_key(key, section) if len(path) == 1 else None
        if name and not list(validator.errors(value, section[name])):  # there it would mean the same
            return f"'{key}' belongs under 'basalt:' (or 'k3os:')"
        if name:
            return f"'basalt.{name}' is something else (see docs/config.md): not supported at the top level"
        if len(path) == 1:
            return f"not a Basalt key; valid top-level keys: {', '.join(sorted(top))}"
    return hint


def load_config(path: str, k3s_version: str | None = None) -> LoadedConfig:
    """Parse and check ``path``. YAML syntax errors raise BasaltError; the rest are in ``problems``
    (and ``warnings``)."""
    return check(load(path, strict=False), k3s_version=k3s_version)


def check_text(text: str, source: str = "<config>") -> LoadedConfig:
    return check(loads(text, source, strict=False))

