"""Which config values are secrets, for everything that shows a config or a problem with it:
``basalt config show``, the validator's messages (on the console, in agent.log and status.json
at boot), ``inv validate`` and the fleet's reports. One list, so no path prints what another hides."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

SECRET_KEYS = frozenset({"password", "token", "passphrase", "auth", "datastore_endpoint"})
SECRET_WORDS = ("token", "password", "passphrase", "secret", "private_key")  # K3S_TOKEN, etcd-s3-secret-key
SECRET_ARGS = ("--token", "--agent-token", "--datastore-endpoint", "--etcd-s3-secret-key")  # k3s flags
SHOWN = "<redacted>"


def is_secret_key(name: str) -> bool:
    """A key whose value is a secret: join tokens (agent-token, K3S_TOKEN), passwords, Wi-Fi
    passphrases, the datastore endpoint (it carries its password), S3 secret keys, registry auth."""
    n = name.lower().replace("-", "_")
    return n in SECRET_KEYS or any(word in n for word in SECRET_WORDS)


def redacted(path: tuple[str | int, ...], value: Any) -> Any:
    """``value`` (at ``path``) as it may be shown: a secret's value never is."""
    if any(is_secret_key(part) for part in path if isinstance(part, str)) and value not in (None, ""):
        return SHOWN
    if isinstance(value, list):  # k3s args: "--token=x", or "--token" then "x"
        return [(SHOWN if i and value[i - 1] in SECRET_ARGS else redacted(path, item))
                for i, item in enumerate(value)]
    if isinstance(value, str) and value.startswith(SECRET_ARGS):
        flag, eq, _ = value.partition("=")
        return f"{flag}={SHOWN}" if eq else value
    if isinstance(value, dict):
        return {k: redacted((*path, k), v) for k, v in value.items()}
    return value


def values(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[str]:
    """Every secret string in a config (what ``redacted`` hides)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from values(v, (*path, k))
    elif isinstance(value, list):
        shown = redacted(path, value)
        for item, seen in zip(value, shown if isinstance(shown, list) else [shown] * len(value), strict=True):
            if isinstance(item, str) and seen != item:
                yield item.partition("=")[2] if item.startswith(SECRET_ARGS) and "=" in item else item
            else:
                yield from values(item, path)
    elif isinstance(value, str) and value and redacted(path, value) != value:
        yield value


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with each secret (as written, and as Python quotes it) replaced by <redacted>."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(repr(secret), repr(SHOWN))
        if len(secret) >= 4:  # a shorter one would hide ordinary words; quoted, it is gone above
            text = text.replace(secret, SHOWN)
    return text
