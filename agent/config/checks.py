"""Every named config rule the schema cannot state, in one list (RULES), run once after parsing,
normalising and the schema (agent/config/validate.py's ``check``): payloads that must decode,
template placeholders left unrendered, rules that span keys, and warnings for what a node would
break on at run time.

A rule is a function of the checked document (``Checked``) yielding problems at the user's own
lines; ``Problem.warning`` marks the ones that do not refuse the config. Every rule runs every
time, the schema's problems or not, so one run shows everything: a rule skips a value of the
wrong type (the schema says so), and says nothing at a path the schema already flagged. The same
list runs on the host (``inv validate``, ``inv build --config``) and on the node (``basalt config
validate``, and at boot for every source). A new rule is a function here and one line in RULES.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from agent import layout
from agent.config.yamlsource import TEMPLATE, Located, format_path
from agent.errors import Problem

COMMAND_KEYS = ("init_cmd", "boot_cmd", "run_cmd")
# Values that are not configuration but payload or shell: a `${VAR}` there is meant.
FREE_TEXT = {("write_files", "*", "content"), ("init_cmd", "*"), ("boot_cmd", "*"), ("run_cmd", "*"),
             ("k3s", "manifests", "*"), ("k3s", "manifests", "*", "*")}
# k3s flags the pinned release no longer has: (removed in, what to write instead).
REMOVED_K3S_FLAGS = {
    "--no-deploy": ((1, 26), "--disable=NAME (e.g. --disable=traefik)"),
    "--no-flannel": ((1, 26), "--flannel-backend=none"),
    "--cluster-secret": ((1, 26), "--token (or 'token:' in the config)"),
    "--docker": ((1, 24), "k3s runs containerd; --container-runtime-endpoint names another runtime"),
}
# k3s flags people write without their dashes (the k3OS docs' k3s_args examples have them).
K3S_FLAG_WORDS = {"cluster-init", "disable", "node-ip", "node-external-ip", "node-name", "node-label",
                  "node-taint", "tls-san", "write-kubeconfig-mode", "flannel-backend", "token", "data-dir",
                  "disable-network-policy", "cluster-cidr", "service-cidr", "kubelet-arg", "kube-apiserver-arg",
                  "secrets-encryption", "etcd-expose-metrics", "embedded-registry", "selinux"}
# Files k3OS (or a general-purpose distribution) reads that nothing on Basalt does.
UNREAD_FILES = (
    ("/etc/connman/", "Basalt has no connman (k3OS's network manager): set 'network:' (interfaces, DHCP or static "
                      "addresses) and 'basalt.dns_nameservers' instead"),
    ("/var/lib/connman/", "Basalt has no connman (k3OS's network manager): set 'network:' and "
                          "'basalt.wifi' instead"),
    ("/etc/ssh/sshd_config", "Basalt's SSH server is dropbear, which does not read sshd_config: set "
                             "'basalt.ssh' (port, password_authentication) instead"),
    ("/etc/conf.d/", "Basalt has no OpenRC (k3OS's init): nothing reads /etc/conf.d; services are the agent's"),
    ("/etc/init.d/", "Basalt has no OpenRC (k3OS's init): scripts in /etc/init.d never run; use 'run_cmd'"),
    ("/etc/systemd/", "Basalt has no systemd: units are never started; use 'run_cmd'"),
)


@dataclass
class Checked:
    """What a rule sees: the normalised document, the paths the schema already reported, and the
    k3s release the config will run with (looked up on first use: on a node, the one it carries)."""
    doc: Located
    reported: set[tuple[str | int, ...]] = field(default_factory=set)
    k3s_version: str | None = None
    _looked_up: bool = False

    @property
    def value(self) -> dict[str, Any]:
        return self.doc.value if isinstance(self.doc.value, dict) else {}

    def k3s(self) -> str | None:
        if self.k3s_version is None and not self._looked_up:
            self.k3s_version, self._looked_up = pinned_k3s_version(), True
        return self.k3s_version

    def problem(self, path: tuple[str | int, ...], message: str, hint: str, warning: bool = False) -> Problem:
        return Problem(message, self.doc.source, self.doc.line_of(path),
                       format_path(self.doc.display.get(path, path)), hint, warning=warning)

    def warn(self, path: tuple[str | int, ...], message: str, hint: str) -> Problem:
        return self.problem(path, message, hint, warning=True)


def _walk(value: Any, path: tuple[str | int, ...] = ()) -> Any:
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, (*path, i))


def write_files_items(value: Any) -> list[tuple[int, dict[str, Any]]]:
    """``(index, item)`` of each ``write_files`` item that is a mapping (the schema reports the rest)."""
    items = value.get("write_files") if isinstance(value, dict) else None
    return [(i, item) for i, item in enumerate(items) if isinstance(item, dict)] if isinstance(items, list) else []


def _free_text(path: tuple[str | int, ...]) -> bool:
    pattern = tuple("*" if isinstance(p, int) else p for p in path)
    return any(pattern[:len(f)] == f for f in FREE_TEXT)


def placeholders(c: Checked) -> Iterator[Problem]:
    """Unrendered template placeholders (``${…}``, ``{{ … }}``, ``<…>``) in any string value
    that is configuration, not payload; paths already reported by the schema are skipped."""
    for path, value in _walk(c.doc.value):
        if any(path[:len(r)] == r for r in c.reported):
            continue  # reported already (an unknown key's whole value, a value off its pattern)
        if isinstance(value, str) and not _free_text(path) and TEMPLATE.search(value):
            yield c.problem(path, *placeholder_message(value))


def placeholder_message(value: str) -> tuple[str, str]:
    return f"{value!r} looks like an unfilled template placeholder", "render the template first"


def payloads(c: Checked) -> Iterator[Problem]:
    """``write_files`` content that does not decode with its encoding fails on the node: say so now,
    at the item's content line."""
    import zlib

    from agent.config.content import decode
    for i, item in write_files_items(c.doc.value):
        if not isinstance(item.get("content", ""), str):
            continue
        encoding = item.get("encoding", "")
        try:
            decode(item.get("content", ""), encoding)
        except KeyError:
            continue  # an unknown encoding: the schema says so
        except (ValueError, OSError, EOFError, zlib.error) as exc:  # binascii.Error, gzip.BadGzipFile, truncated
            reason = str(exc) or type(exc).__name__
            yield c.problem(("write_files", i, "content"), f"content does not decode as {encoding}: {reason}",
                            "gz+b64 is base64 of gzip data, b64 is base64 (e.g. 'gzip -c FILE | base64 -w0'); "
                            "or drop 'encoding' for plain text")


def _version(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    parts = text.lstrip("v").split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def pinned_k3s_version() -> str | None:
    """The k3s release this node carries (an image without k3s has none)."""
    try:
        with open(layout.LIB_K3S_VERSION) as f:
            return f.read().strip() or None
    except OSError:
        return None


def _sections(c: Checked) -> Iterator[tuple[str, dict[str, Any]]]:
    for name in ("k3os", "basalt"):
        sec = c.value.get(name)
        if isinstance(sec, dict):
            yield name, sec


def join_token(c: Checked) -> Iterator[Problem]:
    """An agent joining a server needs the server's token from somewhere."""
    value = c.value
    for name, sec in _sections(c):
        if sec.get("server_url") and not (sec.get("token") or value.get("k3os", {}).get("token")
                                          or value.get("basalt", {}).get("token")
                                          or value.get("k3s", {}).get("config", {}).get("token")
                                          or sec.get("environment", {}).get("K3S_TOKEN")):
            yield c.problem((name, "server_url"), "an agent joining a server needs a token",
                            f"add {name}.token (the server's /var/lib/rancher/k3s/server/token)")


def apps(c: Checked) -> Iterator[Problem]:
    """``apps:``: what the schema cannot say (a range that runs backwards, a bad host, one name twice)."""
    from agent.apps import spec
    from agent.errors import BasaltError
    seen: dict[tuple[str, str], int] = {}
    for i, fields in enumerate(c.value.get("apps", [])):
        try:
            app = spec.from_fields(fields)
        except BasaltError as exc:
            p = exc.problems[0]
            yield c.problem(("apps", i, *((p.path,) if p.path in fields else ())), p.message, p.hint or "")
            continue
        key = (app.namespace, app.name)
        if key in seen:
            yield c.problem(("apps", i, "name"), f"app {app.name} is declared twice (also apps[{seen[key]}])",
                            "give each app one entry; revisions are made by basalt app stage")
        seen.setdefault(key, i)


def app_tls(c: Checked) -> Iterator[Problem]:
    """``app_tls:``: ACME needs its directory and contact; they are unused in another mode."""
    t = c.value.get("app_tls") or {}
    if not t:
        return  # the default mode, nothing to check (and the TLS module not imported on the boot path)
    from agent.apps import tls
    from agent.errors import BasaltError
    mode = t.get("mode", tls.DEFAULT_MODE)
    if mode == "acme":
        missing = [k for k in ("acme_directory", "acme_email") if not t.get(k)]
        for key in missing:
            yield c.problem(("app_tls",), f"app_tls.mode acme needs {key}",
                            "e.g. acme_directory: https://acme-v02.api.letsencrypt.org/directory, "
                            "acme_email: ops@example.com; or mode: site-ca, which needs no network")
        if not missing:
            try:
                tls.check_acme(t["acme_directory"], t["acme_email"])
            except BasaltError as exc:
                p = exc.problems[0]
                key = (p.path or "").rpartition(".")[2]
                yield c.problem(("app_tls", key), p.message, p.hint or "")
    else:
        for key in ("acme_directory", "acme_email"):
            if key in t:
                yield c.warn(("app_tls", key), f"{key} is used only with app_tls.mode acme (this is {mode})",
                             "set mode: acme, or remove it")


def helm_chart_source(c: Checked) -> Iterator[Problem]:
    for i, chart in enumerate(c.value.get("k3s", {}).get("helm_charts", [])):
        if "chart" in chart and "bundled" in chart:
            yield c.problem(("k3s", "helm_charts", i), "give 'chart' or 'bundled', not both",
                            "'bundled' names a chart in the image; 'chart' one in 'repo' or at a URL")


def k3s_args(c: Checked) -> Iterator[Problem]:
    """k3s arguments k3s would refuse or read otherwise than meant: removed flags (for the release
    the config runs with), one item holding two arguments, a misplaced subcommand, a flag without
    its dashes."""
    for name, sec in _sections(c):
        args = sec.get("k3s_args", [])
        for i, arg in enumerate(args if isinstance(args, list) else []):
            if not isinstance(arg, str):
                continue
            path = (name, "k3s_args", i)
            flag = arg.split("=", 1)[0]
            if flag in REMOVED_K3S_FLAGS:
                removed, instead = REMOVED_K3S_FLAGS[flag]
                version = c.k3s()
                pinned = _version(version)
                if pinned is None or pinned >= removed:
                    pins = f" (this image has {version})" if version else ""
                    yield c.warn(path, f"k3s removed {flag} in v{removed[0]}.{removed[1]}{pins}: k3s will not start",
                                 f"use {instead}")
            two = re.search(r"\s+(-{1,2}[A-Za-z][-A-Za-z0-9]*)", arg)
            if two and arg.lstrip().startswith("-"):
                first = arg[:two.start()].strip()
                yield c.warn(path, f"'{arg}' holds two flags in one argument: k3s reads '{first}' with the rest as "
                             "its value", f"write two items: '{first}' and '{arg[two.start():].strip()}'")
            elif " " in flag.strip():
                first, _, rest = arg.strip().partition(" ")
                yield c.warn(path, f"'{arg}' is one argument to k3s, space and all, not two",
                             f"write two items: '{first}' and '{rest}' (or '{first}={rest}')")
            elif i > 0 and arg in ("server", "agent"):
                yield c.warn(path, f"'{arg}' is a k3s subcommand only as the first item; here it is an argument",
                             f"move '{arg}' to the start of k3s_args, or drop it (the role follows server_url)")
            elif not arg.startswith("-") and (arg in K3S_FLAG_WORDS or flag in K3S_FLAG_WORDS):
                yield c.warn(path, f"'{arg}' is not a flag to k3s without its dashes", f"write '--{arg}'")


def agent_without_server(c: Checked) -> Iterator[Problem]:
    for name, sec in _sections(c):
        args = sec.get("k3s_args", [])
        role = args[0] if isinstance(args, list) and args and isinstance(args[0], str) else None
        env: dict[str, Any] = sec["environment"] if isinstance(sec.get("environment"), dict) else {}
        if role == "agent" and not (sec.get("server_url") or env.get("K3S_URL")):
            yield c.warn((name, "k3s_args", 0), "k3s runs as an agent, but there is no server_url to join",
                         f"set {name}.server_url and {name}.token (unless a datasource or another config source "
                         "sets them), or drop 'agent' to run a server")


def unread_files(c: Checked) -> Iterator[Problem]:
    """Files k3OS or a general-purpose distribution reads, written where nothing on Basalt does."""
    for i, item in write_files_items(c.value):
        target = item.get("path")
        if not isinstance(target, str):
            continue
        for prefix, why in UNREAD_FILES:
            if target.startswith(prefix) or target == prefix.rstrip("/"):
                yield c.warn(("write_files", i, "path"), f"nothing on Basalt reads {target}", why)
                break


def plain_http_keys(c: Checked) -> Iterator[Problem]:
    """SSH keys fetched over plain http: whoever is on the path can add a key that logs in."""
    lists: list[tuple[tuple[str | int, ...], Any]] = [(("ssh_authorized_keys",), c.value.get("ssh_authorized_keys"))]
    users = c.value.get("users")
    lists += [(("users", i, "ssh_authorized_keys"), u.get("ssh_authorized_keys"))
              for i, u in enumerate(users if isinstance(users, list) else []) if isinstance(u, dict)]
    for path, keys in lists:
        for i, entry in enumerate(keys if isinstance(keys, list) else []):
            if isinstance(entry, str) and entry.startswith("http://"):
                yield c.warn((*path, i), f"{entry} is fetched over plain http: anyone between the node and the "
                             "server can add a key that logs in", "use https://, or write the key itself")


@dataclass(frozen=True)
class Rule:
    name: str
    check: Callable[[Checked], Iterator[Problem]]


RULES = (
    Rule("payloads decode", payloads),
    Rule("no unfilled placeholders", placeholders),
    Rule("an agent has a token", join_token),
    Rule("apps", apps),
    Rule("apps' HTTPS", app_tls),
    Rule("a helm chart has one source", helm_chart_source),
    Rule("k3s arguments", k3s_args),
    Rule("an agent has a server", agent_without_server),
    Rule("files something reads", unread_files),
    Rule("keys over https", plain_http_keys),
)


def run(doc: Located, reported: set[tuple[str | int, ...]], k3s_version: str | None = None) -> list[Problem]:
    """Every rule's problems and warnings for ``doc``, but none at (or under) a path the schema
    flagged (``reported``): it said what is wrong there. A rule that trips over a value of the
    wrong type where the schema found problems gives what it found before; with none, that would
    be a bug in the rule, and it is raised."""
    c = Checked(doc, reported, k3s_version)
    flagged = {format_path(doc.display.get(path, path)) for path in reported}

    def under_flagged(problem: Problem) -> bool:
        where = problem.path or ""
        return any(where == f or where.startswith((f + ".", f + "[")) for f in flagged if f)
    out: list[Problem] = []
    for rule in RULES:
        found: list[Problem] = []
        try:
            for problem in rule.check(c):
                found.append(problem)
        except (TypeError, KeyError, AttributeError, ValueError, IndexError):
            if not reported:
                raise
        out += [p for p in found if not under_flagged(p)]
    return out
