"""The one place the config modules touch the system: what carries out each kind of action a
plan (``agent.modules.plans``) makes (``ACTIONS``), and ``apply``, which attempts every action
of a plan and returns the errors."""

from __future__ import annotations

import os

from agent import files, http, layout
from agent.modules.plans import colon_rows, colon_text

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from agent.modules.plans import Action, Services


def owner_ids(owner: str, root: str = "/") -> tuple[int, int]:
    user, _, group = owner.partition(":")
    return _lookup(user, os.path.join(root, "etc/passwd")), _lookup(group or user, os.path.join(root, "etc/group"))


def _lookup(name: str, table: str) -> int:
    if name.isdigit():
        return int(name)
    try:
        with open(table) as f:
            for line in f:
                fields = line.split(":")
                if fields[0] == name:
                    return int(fields[2])
    except OSError:
        pass
    raise LookupError(f"no such {'user' if table.endswith('passwd') else 'group'} '{name}'")


class NoSupervisor:
    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        raise OSError(f"no supervisor to start {name}")

    def stop(self, name: str) -> None:
        pass


def hash_password(secret: str) -> str:
    """A crypt(3) SHA-512 hash; a value that already is a hash (``$...``) is kept."""
    if secret.startswith("$"):
        return secret
    import _crypt  # crypt's C core: the crypt module itself warns of its removal in 3.13
    alphabet = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    salt = "".join(alphabet[b % 64] for b in os.urandom(16))
    hashed: str | None = _crypt.crypt(secret, f"$6${salt}")
    if not hashed or not hashed.startswith("$6$"):
        raise ValueError("the C library cannot make SHA-512 crypt hashes")
    return hashed


def shadow_text(current: str, passwords: dict[str, str | None], days: int) -> bytes:
    """``current`` with each named account's password set (None: locked ``!``); accounts
    missing from it are added."""
    rows = colon_rows(current)
    for name, secret in passwords.items():
        value = hash_password(secret) if secret else "!"
        row = next((r for r in rows if r[0] == name), None)
        if row is None:
            rows.append([name, value, str(days), "0", "99999", "7", "", "", ""])
        elif secret or not row[1].startswith("$"):
            row[1] = value
    return colon_text(rows)


def fetch_keys(url: str, attempts: int = 4, delay: float = 2.0, timeout: float = 10.0) -> list[str]:
    """The public key lines published at ``url``, retried with backoff."""
    try:
        text = http.get(url, 1 << 20, attempts, delay, timeout).decode()
    except http.Failed as exc:
        raise OSError(f"cannot fetch keys from {url} after {exc.attempts} attempts: {exc.last}") from None
    except ValueError as exc:
        raise OSError(f"{url}: not text: {exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


class Context:
    """What an action is carried out with: the root it writes under, a command runner, services."""

    __slots__ = ("root", "run", "services")

    def __init__(self, root: str, run: Callable[[list[str]], int], services: Services):
        self.root, self.run, self.services = root, run, services

    def at(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def check(self, argv: list[str], what: str) -> None:
        code = self.run(argv)
        if code != 0:
            raise OSError(f"{what} exited {code}")


def _write(ctx: Context, path: str, data: bytes, mode: int, owner: str) -> None:
    files.write_atomic(ctx.at(path), data, mode, owner_ids(owner, ctx.root), makedirs=True)


def _sysctl(ctx: Context, name: str, value: str) -> None:
    with open(ctx.at("proc/sys/" + name.replace(".", "/")), "w") as f:
        f.write(value)


def _modprobe(ctx: Context, name: str, params: str) -> None:
    ctx.check([layout.BUSYBOX, "modprobe", name, *params.split()], f"modprobe {name}")


def _run(ctx: Context, command: str) -> None:
    code = ctx.run(["/bin/sh", "-c", command])
    if code != 0:
        raise OSError(f"exited {code}")


def _ip(ctx: Context, args: list[str]) -> None:
    ctx.check(["/usr/bin/ip", *args], f"'ip {' '.join(args)}'")


def _shadow(ctx: Context, passwords: dict[str, str | None]) -> None:
    import time
    current = ""
    if os.path.exists(ctx.at("etc/shadow")):
        with open(ctx.at("etc/shadow")) as f:
            current = f.read()
    files.write_atomic(ctx.at("etc/shadow"), shadow_text(current, passwords, int(time.time() // 86400)), 0o600,
                       (0, 0), makedirs=True)


def _mkdir(ctx: Context, path: str, mode: int, owner: str) -> None:
    if not os.path.isdir(ctx.at(path)):
        files.make_dir(ctx.at(path), mode, owner_ids(owner, ctx.root))


def _keys(ctx: Context, path: str, lines: list[str], urls: list[str], owner: str) -> None:
    keys = list(lines)
    for url in urls:
        keys += fetch_keys(url)
    uid, gid = owner_ids(owner, ctx.root)
    files.make_dir(os.path.dirname(ctx.at(path)), 0o700, (uid, gid))  # ~/.ssh: the user's, never a link
    files.write_atomic(ctx.at(path), "".join(k + "\n" for k in keys), 0o600, (uid, gid))


def _hostkey(ctx: Context, path: str) -> None:
    if not os.path.exists(ctx.at(path)):
        ctx.check(["/usr/bin/dropbearkey", "-t", "ed25519", "-f", path], "dropbearkey")


def _symlink(ctx: Context, target: str, path: str) -> None:
    if not os.path.exists(ctx.at(target)):
        raise OSError(f"{target} does not exist in this image")
    fd = files.open_dir(os.path.dirname(ctx.at(path)))
    name = os.path.basename(path)
    try:
        try:
            os.unlink(name + ".basalt-tmp", dir_fd=fd)
        except FileNotFoundError:
            pass
        os.symlink(target, name + ".basalt-tmp", dir_fd=fd)
        os.replace(name + ".basalt-tmp", name, src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)


def _touch(ctx: Context, path: str) -> None:
    files.touch(ctx.at(path))


def _service(ctx: Context, name: str, argv: list[str], *env: dict[str, str]) -> None:
    ctx.services.start(name, argv, *env)


def _copy(ctx: Context, src: str, dest: str, mode: int) -> None:
    with open(src, "rb") as source:
        files.write_atomic(ctx.at(dest), source.read(), mode, (0, 0), makedirs=True)


def _prune(ctx: Context, directory: str, prefix: str, keep: list[str]) -> None:
    """Remove what we wrote earlier and no longer write."""
    if os.path.isdir(ctx.at(directory)):
        for name in os.listdir(ctx.at(directory)):
            if name.startswith(prefix) and name not in keep:
                os.unlink(os.path.join(ctx.at(directory), name))


def _apps_tls(ctx: Context, mode: str, ca_dir: str, path: str, node: str) -> None:
    """The apps' HTTPS settings for k3s to apply, with the site CA (made the first time)."""
    from agent.apps import tls
    files.write_atomic(ctx.at(path), tls.node_manifest(mode, ctx.at(ca_dir), node), 0o600, (0, 0), makedirs=True)


def _stop(ctx: Context, name: str) -> None:
    ctx.services.stop(name)


def _error(ctx: Context, _what: str, message: str) -> None:
    raise ValueError(message)


# Each action kind, and what carries it out: the action's fields after the kind are its arguments.
ACTIONS: dict[str, Callable[..., None]] = {
    "write": _write, "sysctl": _sysctl, "modprobe": _modprobe, "run": _run, "ip": _ip, "shadow": _shadow,
    "mkdir": _mkdir, "keys": _keys, "hostkey": _hostkey, "symlink": _symlink, "touch": _touch,
    "service": _service, "copy": _copy, "prune": _prune, "stop": _stop, "error": _error, "apps-tls": _apps_tls,
}


def apply(actions: list[Action], run: Callable[[list[str]], int], root: str = "/",
          services: Services | None = None) -> list[str]:
    """Carry out ``actions``; returns the errors (each action is attempted regardless)."""
    errors = []
    ctx = Context(root, run, services or NoSupervisor())
    for action in actions:
        try:
            ACTIONS[action[0]](ctx, *action[1:])
        except (OSError, LookupError, ValueError) as exc:
            label = action[1] if isinstance(action[1], str) else ""
            errors.append(f"{action[0]} {label}: {exc}" if label else f"{action[0]}: {exc}")
    return errors
