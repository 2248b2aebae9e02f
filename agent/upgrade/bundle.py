"""Upgrade bundles: ``<image>-<version>.bundle``, written by the builder (builder/stages/bundle.py)
and checked by ``basalt upgrade`` (agent/upgrade/upgrade.py) before anything is written.

A bundle is a plain tar (its parts are compressed already), in this order:

- ``manifest.json``: format, image, version, arch, build time, and each part's size and sha256;
- ``manifest.json.minisig``: the manifest's signature (minisign, Ed25519);
- ``vmlinuz`` (as the boot partition holds it), ``initrd.img``, ``rootfs.squashfs``.

The signature covers the manifest, and the manifest the parts' hashes, so a bundle is trusted
part by part: every part is hashed before a slot is touched. The public key is in the image
(``/usr/lib/basalt/upgrade.pub``).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from typing import Any, BinaryIO

from agent import layout
from agent.errors import BasaltError, Problem

FORMAT = 1
MANIFEST = "manifest.json"
SIGNATURE = MANIFEST + ".minisig"
KERNEL, INITRD, ROOT = "vmlinuz", "initrd.img", "rootfs.squashfs"
PARTS = (KERNEL, INITRD, ROOT)
CHUNK = 1 << 20
HEAD_BYTES = 64 << 10  # a bundle's first bytes: its manifest and signature are inside them


def manifest(image: str, version: str, arch: str, built: str, parts: dict[str, tuple[int, str]]) -> dict[str, Any]:
    return {"format": FORMAT, "image": image, "version": version, "arch": arch, "built": built,
            "parts": {name: {"size": size, "sha256": digest} for name, (size, digest) in parts.items()}}


def sha256_stream(f: BinaryIO, size: int | None = None) -> tuple[int, str]:
    h, total = hashlib.sha256(), 0
    while True:
        data = f.read(CHUNK if size is None else min(CHUNK, size - total))
        if not data:
            break
        h.update(data)
        total += len(data)
    return total, h.hexdigest()


def _order(c: str) -> int:
    """dpkg's weight of one character of a version's non-digit part ('' is its end)."""
    if c == "~":
        return -1
    if not c:
        return 0
    return ord(c) if c.isalpha() else ord(c) + 256


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as version ``a`` is older than, the same as or newer than ``b``, in Debian's
    order (dpkg's, without epochs): non-digit runs by character (letters before other marks, and
    ``~`` before everything, even the end: 1.0~rc1 < 1.0 < 1.0.1 < 1.0a), digit runs as numbers."""
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            x = _order(a[i] if i < len(a) and not a[i].isdigit() else "")
            y = _order(b[j] if j < len(b) and not b[j].isdigit() else "")
            if x != y:
                return -1 if x < y else 1
            i, j = i + 1, j + 1
        m, n = i, j
        while i < len(a) and a[i].isdigit():
            i += 1
        while j < len(b) and b[j].isdigit():
            j += 1
        x, y = int(a[m:i] or 0), int(b[n:j] or 0)
        if x != y:
            return -1 if x < y else 1
    return 0


def refused(source: str, message: str, hint: str) -> BasaltError:
    return BasaltError(Problem(f"{source}: refused: {message}", hint=hint))


@dataclass
class Bundle:
    """An opened bundle whose manifest's signature is good (``open_bundle``)."""

    path: str
    manifest: dict[str, Any]
    members: dict[str, tarfile.TarInfo]
    tar: tarfile.TarFile

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    def size(self, part: str) -> int:
        return int(self.manifest["parts"][part]["size"])

    def reader(self, part: str) -> BinaryIO:
        f = self.tar.extractfile(self.members[part])
        assert f is not None
        return f  # type: ignore[return-value]

    def close(self) -> None:
        self.tar.close()


def verify_signature(data: bytes, signature: bytes, public_key: str, work: str, source: str) -> None:
    """minisign's verdict on a manifest: a bad signature or another key is refused."""
    from agent import minisign
    minisign.verify(data, signature, public_key, work, source, "bundle")


def parse_manifest(data: bytes, source: str) -> dict[str, Any]:
    """The manifest (its signature already checked) of a format this node reads."""
    try:
        man = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise refused(source, f"its manifest is not JSON ({exc})", "rebuild the bundle") from None
    if not isinstance(man, dict) or man.get("format") != FORMAT or not isinstance(man.get("parts"), dict):
        got = man.get("format") if isinstance(man, dict) else None
        raise refused(source, f"bundle format {got!r}, this node reads format {FORMAT}",
                      "upgrade with a bundle from a Basalt build of this generation")
    for part in PARTS:
        if part not in man["parts"]:
            raise refused(source, f"the bundle has no {part}", "rebuild the bundle")
    wrong = manifest_problem(man)
    if wrong:
        raise refused(source, f"its manifest is not one a build writes: {wrong}", "rebuild the bundle")
    return man


def manifest_problem(man: dict[str, Any]) -> str:
    """What is wrong with a manifest's fields ('' when nothing): each that a node reads, typed as
    ``manifest()`` writes it. A signed manifest is trusted for what it says, not for its shape."""
    for name in ("image", "version", "arch"):
        value = man.get(name)
        if not isinstance(value, str) or not value or len(value) > 128 or not value.isprintable():
            return f"{name} is {value!r}, not a name"
    for part in PARTS:
        entry = man["parts"][part]
        if not isinstance(entry, dict):
            return f"parts.{part} is {entry!r}, not {{size, sha256}}"
        size, digest = entry.get("size"), entry.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 1 << 42:
            return f"parts.{part}.size is {size!r}, not a size in bytes"
        if not isinstance(digest, str) or len(digest) != 64 or digest.strip("0123456789abcdef"):
            return f"parts.{part}.sha256 is {str(digest)[:80]!r}, not a sha256"
    return ""


def head_members(data: bytes) -> dict[str, bytes]:
    """The tar members wholly inside ``data`` (a bundle's first bytes), by name."""
    out: dict[str, bytes] = {}
    offset = 0
    while offset + 512 <= len(data):
        block = data[offset:offset + 512]
        if block == bytes(512):
            break
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.TarError:
            break
        start = offset + 512
        if start + info.size > len(data):
            break
        out[info.name] = data[start:start + info.size]
        offset = start + -(-info.size // 512) * 512
    return out


def open_head(data: bytes, public_key: str, work: str, source: str) -> dict[str, Any]:
    """The signed manifest from a bundle's first bytes: a bundle at a URL is refused before it is
    downloaded whole. (The whole bundle is checked again when it is written.)"""
    members = head_members(data)
    missing = [n for n in (MANIFEST, SIGNATURE) if n not in members]
    if missing:
        raise refused(source, f"not a bundle (no {', '.join(missing)} at its start)",
                      "give a .bundle file made by ./inv build")
    verify_signature(members[MANIFEST], members[SIGNATURE], public_key, work, source)
    return parse_manifest(members[MANIFEST], source)


def open_bundle(path: str, public_key: str, work: str, source: str | None = None) -> Bundle:
    """Open ``path`` and check its manifest's signature; the parts are not read yet."""
    source = source or path
    try:
        tar = tarfile.open(path, "r:")
    except (OSError, tarfile.TarError) as exc:
        raise refused(source, f"not a bundle ({exc})", "give a .bundle file made by ./inv build") from None
    try:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
    except (OSError, tarfile.TarError) as exc:  # cut short: the common partial download
        tar.close()
        raise refused(source, f"it is incomplete ({exc})", "the download was cut short: fetch it again") from None
    missing = [n for n in (MANIFEST, SIGNATURE) if n not in members]
    if missing:
        tar.close()
        raise refused(source, f"not a bundle (no {', '.join(missing)})", "give a .bundle file made by ./inv build")

    def content(name: str) -> bytes:
        f = tar.extractfile(members[name])
        assert f is not None
        try:
            return f.read(1 << 20)
        except (OSError, tarfile.TarError) as exc:
            raise refused(source, f"it is incomplete ({exc})", "the download was cut short: fetch it again") from None

    try:
        data = content(MANIFEST)
        verify_signature(data, content(SIGNATURE), public_key, work, source)
        man = parse_manifest(data, source)
        for part in PARTS:
            if part not in members:
                raise refused(source, f"the bundle has no {part} (cut short, or not made by a build)",
                              "fetch it again; if it is still short, rebuild the bundle")
    except BaseException:
        tar.close()
        raise
    return Bundle(path, man, members, tar)


def check_parts(bundle: Bundle, source: str) -> None:
    """Every part's size and sha256 against the signed manifest: read, never written anywhere."""
    for part in PARTS:
        want = bundle.manifest["parts"][part]
        info = bundle.members[part]
        if info.size != int(want["size"]):
            raise refused(source, f"{part} is {info.size} bytes, the manifest says {want['size']}",
                          "the bundle is damaged: fetch it again")
        try:
            _, digest = sha256_stream(bundle.reader(part))
        except (OSError, tarfile.TarError) as exc:
            raise refused(source, f"{part} is incomplete ({exc})", "the download was cut short: fetch it again") \
                from None
        if digest != want["sha256"]:
            raise refused(source, f"bad hash: {part} has sha256 {digest[:16]}…, the manifest says "
                          f"{str(want['sha256'])[:16]}…", "the bundle is damaged: fetch it again")


def public_key_path() -> str:
    return layout.LIB_UPGRADE_KEY
