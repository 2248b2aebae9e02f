"""Signing keys for upgrade bundles (minisign, Ed25519): the image definition's
``upgrade.signing_key``, or a development key made on first use in the cache, with a warning.
``inv keygen`` makes a real one. A key is a pair of files: ``NAME.key`` (secret, mode 0600) and
``NAME.pub`` beside it; the public half is baked into the image as ``/usr/lib/basalt/upgrade.pub``."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from agent.errors import BasaltError, Problem
from builder import host
from builder.download import cache_root

TOOLS = {"minisign": "minisign"}
DEV_KEY = "dev-signing"


@dataclass(frozen=True)
class SigningKey:
    secret: Path
    public: Path

    def public_text(self) -> str:
        return self.public.read_text()

    def key_id(self) -> str:
        """The key id minisign prints (the public key's comment line names it)."""
        return self.public_text().splitlines()[0].rsplit(" ", 1)[-1]


def pair(secret: Path) -> SigningKey:
    return SigningKey(secret, secret.with_suffix(".pub"))


def generate(secret: Path, comment: str) -> SigningKey:
    """A new unencrypted key pair (the build signs unattended); refuses to overwrite one."""
    key = pair(secret)
    for path in (key.secret, key.public):
        if path.exists():
            raise BasaltError(Problem(f"{path} exists: not overwriting a signing key",
                                      hint="choose another path, or remove it if it is really unused"))
    secret.parent.mkdir(parents=True, exist_ok=True)
    host.run(["minisign", "-G", "-W", "-p", str(key.public), "-s", str(key.secret), "-c", comment], "minisign -G")
    os.chmod(key.secret, 0o600)
    return key


def resolve(configured: Path | None, source: str = "") -> SigningKey:
    """The key an image's bundles are signed with."""
    if configured is not None:
        key = pair(configured)
        for path, what in ((key.secret, "secret key"), (key.public, "public key")):
            if not path.is_file():
                raise BasaltError(Problem(f"{what} {path} does not exist", source,
                                          path="upgrade.signing_key",
                                          hint="make a key pair with ./inv keygen --out PATH (PATH.key and PATH.pub)"))
        return key
    secret = cache_root() / "keys" / f"{DEV_KEY}.key"
    if not secret.is_file():
        generate(secret, "basalt development key (made by the build; not for production)")
    print(f"warning: signing upgrade bundles with the development key {secret}: nodes built with it accept "
          "bundles from anyone who has this cache; make a real key with ./inv keygen and name it in the image "
          "definition's upgrade.signing_key", file=sys.stderr)
    return pair(secret)


def sign(key: SigningKey, path: Path, trusted_comment: str) -> Path:
    sig = path.with_name(path.name + ".minisig")
    host.run(["minisign", "-S", "-s", str(key.secret), "-m", str(path), "-x", str(sig), "-t", trusted_comment],
             "minisign -S", hint=f"is {key.secret} a minisign secret key without a password?")
    return sig
