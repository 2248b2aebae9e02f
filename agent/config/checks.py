"""Checks on a normalised config that the schema cannot state: payloads that must decode,
template placeholders left unrendered, and warnings for what a node would break on at run time.

Each check is a named function over a ``Located`` document returning problems at the user's own
lines. The same code runs on the host (``inv validate``, ``inv build --config``) and on the node
(``basalt config validate``, and at boot for every source).
"""

from __future__ import annotations

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


def _walk(value: Any, path: tuple[str | int, ...] = ()) -> Any:
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, (*path, i))


def _write_files(value: Any) -> list[tuple[int, dict[str, Any]]]:
    """``(index, item)`` of each ``write_files`` item that is a mapping (the schema reports the rest)."""
    items = value.get("write_files") if isinstance(value, dict) else None
    return [(i, item) for i, item in enumerate(items) if isinstance(item, dict)] if isinstance(items, list) else []


def _free_text(path: tuple[str | int, ...]) -> bool:
    pattern = tuple("*" if isinstance(p, int) else p for p in path)
    return any(pattern[:len(f)] == f for f in FREE_TEXT)


def placeholders(doc: Located, reported: set[tuple[str | int, ...]]) -> list[Problem]:
    """Unrendered template placeholders (``${…}``, ``{{ … }}``, ``<…>``) in any string value
    that is configuration, not payload; paths already reported by the schema are skipped."""
    out = []
    for path, value in _walk(doc.value):
        if any(path[:len(r)] == r for r in reported):
            continue  # reported already (an unknown key's whole value, a value off its pattern)
        if isinstance(value, str) and not _free_text(path) and TEMPLATE.search(value):
            message, hint = placeholder_message(value)
            out.append(Problem(message, doc.source, doc.line_of(path), format_path(doc.display.get(path, path)), hint))
    return out


def placeholder_message(value: str) -> tuple[str, str]:
    return f"{value!r} looks like an unfilled template placeholder", "render the template first"


def payloads(doc: Located) -> list[Problem]:
    """``write_files`` content that does not decode with its encoding fails on the node: say so now,
    at the item's content line."""
    import zlib

    from agent.config.content import decode
    out = []
    for i, item in _write_files(doc.value):
        if not isinstance(item.get("content", ""), str):
            continue
        encoding = item.get("encoding", "")
        try:
            decode(item.get("content", ""), encoding)
        except KeyError:
            continue  # an unknown encoding: the schema says so
        except (ValueError, OSError, EOFError, zlib.error) as exc:  # binascii.Error, gzip.BadGzipFile, truncated
            path = ("write_files", i, "content")
            reason = str(exc) or type(exc).__name__
            out.append(Problem(f"content does not decode as {encoding}: {reason}", doc.source, doc.line_of(path),
                               format_path(doc.display.get(path, path)),
                               "gz+b64 is base64 of gzip data, b64 is base64 (e.g. 'gzip -c FILE | base64 -w0'); "
                               "or drop 'encoding' for plain text"))
    return out


def relative_paths(doc: Located) -> list[Problem]:
    """k3OS writes a relative ``write_files`` path relative to ``/``: so does Basalt, with a warning.
    Rewrites the normalised value in place."""
    out = []
    for i, item in _write_files(doc.value):
        path = item.get("path")
        if isinstance(path, str) and path and not path.startswith("/") and not TEMPLATE.search(path):
            item["path"] = "/" + path
            where = ("write_files", i, "path")
            out.append(Problem(f"relative path '{path}' is written as '/{path}' (as k3OS does)", doc.source,
                               doc.line_of(where), format_path(doc.display.get(where, where)), f"write '/{path}'",
                               warning=True))
    return out


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


def warnings(doc: Located, k3s_version: str | None = None) -> list[Problem]:
    """What a node would break on at run time, though the config is valid. ``k3s_version``: the
    release the config runs with (on a node, the one it carries)."""
    value = doc.value if isinstance(doc.value, dict) else {}
    out: list[Problem] = []

    def warn(path: tuple[str | int, ...], message: str, hint: str) -> None:
        out.append(Problem(message, doc.source, doc.line_of(path), format_path(doc.display.get(path, path)), hint,
                           warning=True))

    pinned = _version(k3s_version)
    for name in ("k3os", "basalt"):
        sec = value.get(name)
        if not isinstance(sec, dict):
            continue
        args = sec.get("k3s_args", [])
        args = args if isinstance(args, list) else []
        for i, arg in enumerate(args):
            if not isinstance(arg, str):
                continue
            path = (name, "k3s_args", i)
            flag = arg.split("=", 1)[0]
            if flag in REMOVED_K3S_FLAGS:
                removed, instead = REMOVED_K3S_FLAGS[flag]
                if k3s_version is None:
                    k3s_version = pinned_k3s_version()
                    pinned = _version(k3s_version)
                if pinned is None or pinned >= removed:
                    pins = f" (this image has {k3s_version})" if k3s_version else ""
                    warn(path, f"k3s removed {flag} in v{removed[0]}.{removed[1]}{pins}: k3s will not start",
                         f"use {instead}")
            if " " in flag.strip():
                first, _, rest = arg.strip().partition(" ")
                warn(path, f"'{arg}' is one argument to k3s, space and all, not two",
                     f"write two items: '{first}' and '{rest}' (or '{first}={rest}')")
            elif i > 0 and arg in ("server", "agent"):
                warn(path, f"'{arg}' is a k3s subcommand only as the first item; here it is an argument",
                     f"move '{arg}' to the start of k3s_args, or drop it (the role follows server_url)")
            elif not arg.startswith("-") and (arg in K3S_FLAG_WORDS or flag in K3S_FLAG_WORDS):
                warn(path, f"'{arg}' is not a flag to k3s without its dashes", f"write '--{arg}'")
        role = args[0] if args and isinstance(args[0], str) else None
        env: dict[str, Any] = sec["environment"] if isinstance(sec.get("environment"), dict) else {}
        if role == "agent" and not (sec.get("server_url") or env.get("K3S_URL")):
            warn((name, "k3s_args", 0), "k3s runs as an agent, but there is no server_url to join",
                 f"set {name}.server_url and {name}.token (unless a datasource or another config source "
                 "sets them), or drop 'agent' to run a server")
    for i, item in _write_files(value):
        target = item.get("path")
        if not isinstance(target, str):
            continue
        for prefix, why in UNREAD_FILES:
            if target.startswith(prefix) or target == prefix.rstrip("/"):
                warn(("write_files", i, "path"), f"nothing on Basalt reads {target}", why)
                break
    return out
