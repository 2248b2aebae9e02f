"""k3s: the pinned k3s release binary (and optionally its air-gap images), verified.

Three routes, tried in this order, all ending in the same verified blob store:

1. ``--k3s-binary PATH``: a local copy of the release binary;
2. ``--k3s-artifacts DIR``: a directory holding the release files under their release
   names (``k3s``, ``sha256sum-amd64.txt``, ``k3s-airgap-images-amd64.tar.zst``);
3. online: ``<url>/<version>/<file>`` (the k3s GitHub release by default, or a mirror).

The expected checksum is the image definition's pinned ``k3s.sha256.<arch>`` when there
is one, else the release's ``sha256sum-<arch>.txt`` (cached per version and URL, so a
warm rebuild needs no network). When both exist they must agree. Output: ``k3s.lock.json``
(what goes into the image, by hash) and ``key``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

from agent.errors import BasaltError, Problem
from builder import progress
from builder.download import BlobStore, ChecksumMismatch, DownloadError, download, sha256_file
from builder.stages import StageContext

NAME = "k3s"
VERSION = 1
SOURCES = ("builder/download.py",)
VOLATILE = True
INPUTS: tuple[str, ...] = ()
PUBLISH: tuple[tuple[str, str], ...] = ()
TOOLS: dict[str, str] = {}
DEFAULT_URL = "https://github.com/k3s-io/k3s/releases/download"
SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["enabled", "version", "asset", "arch", "sha256", "url", "binary", "artifacts", "airgap_images"],
    "properties": {
        "enabled": {"type": "boolean"},
        "version": {"type": ["string", "null"]},
        "asset": {"type": "string"},  # k3s, k3s-arm64
        "arch": {"type": "string"},  # amd64, arm64: sha256sum-<arch>.txt
        "sha256": {"type": ["string", "null"]},  # pinned in the image definition
        "url": {"type": "string"},
        "binary": {"type": ["string", "null"]},
        "artifacts": {"type": ["string", "null"]},
        "airgap_images": {"type": "boolean"},
    },
}


class K3sUnavailable(BasaltError):
    pass


def routes_hint(o: dict[str, Any]) -> str:
    return (f"get k3s {o['version']} one of three ways: (1) online: let the build reach {o['url']} "
            f"(k3s.url in the image definition may name a mirror); (2) --k3s-binary PATH: the release's "
            f"'{o['asset']}' file, checked against k3s.sha256 in the image definition or a "
            f"sha256sum-{o['arch']}.txt beside it; (3) --k3s-artifacts DIR: a directory with the release files "
            f"'{o['asset']}' and 'sha256sum-{o['arch']}.txt'"
            + (f" and 'k3s-airgap-images-{o['arch']}.tar.zst'" if o["airgap_images"] else ""))


def fail(o: dict[str, Any], message: str) -> K3sUnavailable:
    return K3sUnavailable(Problem(f"k3s {o['version']} ({o['arch']}): {message}", hint=routes_hint(o)))


def parse_sums(text: str) -> dict[str, str]:
    """``sha256sum`` output: ``<hash>  <name>`` (a ``*`` before the name marks binary mode)."""
    sums = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and len(parts[0]) == 64 and all(c in "0123456789abcdef" for c in parts[0].lower()):
            sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def release_url(o: dict[str, Any], name: str) -> str:
    return f"{o['url'].rstrip('/')}/{urllib.parse.quote(o['version'], safe='')}/{name}"


class Sums:
    """The release's checksum file, read lazily from wherever the route finds it."""

    def __init__(self, o: dict[str, Any], store: BlobStore, local_dirs: list[Path]):
        self.o, self.store, self.local_dirs = o, store, local_dirs
        self.name = f"sha256sum-{o['arch']}.txt"
        # Keyed by where it came from too: two servers may publish different files for one version.
        origin = hashlib.sha256(o["url"].rstrip("/").encode()).hexdigest()[:12]
        self.cached = store.root.parent.parent / "k3s" / o["version"] / origin / self.name
        self._sums: dict[str, str] | None = None

    def get(self, allow_download: bool) -> dict[str, str] | None:
        if self._sums is not None:
            return self._sums
        for d in self.local_dirs:
            if (d / self.name).is_file():
                self._sums = parse_sums((d / self.name).read_text())
                return self._sums
        if not self.cached.is_file() and allow_download:
            self.cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cached.with_suffix(".part")
            tmp.unlink(missing_ok=True)
            try:
                download(release_url(self.o, self.name), tmp, label=self.name, retries=3, backoff=0.5)
            except DownloadError as exc:
                tmp.unlink(missing_ok=True)
                raise fail(self.o, f"cannot download {self.name}: {exc.problems[0].message}") from None
            tmp.rename(self.cached)
        if self.cached.is_file():
            self._sums = parse_sums(self.cached.read_text())
        return self._sums

    def expected(self, name: str, pinned: str | None, allow_download: bool) -> str:
        """The sha256 ``name`` must have: pinned and release checksum file must agree."""
        try:
            sums = self.get(allow_download=allow_download or pinned is None)
        except K3sUnavailable:
            if pinned is None:
                raise
            sums = None  # a mirror without the checksum file: the pinned value alone decides
        listed = sums.get(name) if sums is not None else None
        if sums is not None and listed is None and pinned is None:
            raise fail(self.o, f"{self.name} does not list '{name}'")
        if pinned and listed and pinned != listed:
            raise fail(self.o, f"the pinned k3s.sha256 ({pinned[:12]}...) disagrees with the release's "
                               f"{self.name} ({listed[:12]}...) for '{name}'")
        value = pinned or listed
        if value is None:
            raise fail(self.o, f"no checksum to verify '{name}' against: pin k3s.sha256 in the image "
                               f"definition or provide the release's {self.name}")
        return value


def take_local(store: BlobStore, o: dict[str, Any], path: Path, expected: str) -> Path:
    """Copy a local file into the blob store once its hash matches (checked even when the
    store has it already: a wrong file is reported, not silently replaced by the cached one)."""
    actual = sha256_file(path)
    if actual != expected:
        raise fail(o, f"{path}: sha256 mismatch: expected {expected}, got {actual} "
                      "(not the pinned release file, or damaged)")
    if store.has(expected):
        return store.path(expected)
    tmp = store.root.parent / "partial" / f"{expected}.local"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with progress.step(f"Copying {path.name} into the cache"):
        shutil.copyfile(path, tmp)
    return store.put_file(tmp, expected)


def fetch_file(store: BlobStore, o: dict[str, Any], sums: Sums, name: str, pinned: str | None,
               local: Path | None) -> tuple[str, Path, str]:
    """(sha256, blob, route) for the release file ``name``."""
    if local is not None:
        if not local.is_file():
            raise fail(o, f"{local}: no such file")
        expected = sums.expected(name, pinned, allow_download=False)
        return expected, take_local(store, o, local, expected), "local"
    if pinned and store.has(pinned):
        sums.expected(name, pinned, allow_download=False)  # a cached checksum file must still agree
        return pinned, store.path(pinned), "cache"
    expected = sums.expected(name, pinned, allow_download=True)
    if store.has(expected):
        return expected, store.path(expected), "cache"
    try:
        return expected, store.fetch(release_url(o, name), expected, label=name), "download"
    except ChecksumMismatch as exc:
        raise fail(o, f"downloaded '{name}' failed verification: {exc.problems[0].message}") from None
    except DownloadError as exc:
        raise fail(o, exc.problems[0].message) from None


def run(ctx: StageContext, options: dict[str, Any]) -> None:
    o = options
    lock: dict[str, Any] = {"enabled": o["enabled"]}
    if o["enabled"]:
        binary = Path(o["binary"]) if o["binary"] else None
        artifacts = Path(o["artifacts"]) if o["artifacts"] else None
        if artifacts is not None and not artifacts.is_dir():
            raise fail(o, f"--k3s-artifacts {artifacts}: no such directory")
        local_dirs = [d for d in ((binary.parent if binary else None), artifacts) if d is not None]
        sums = Sums(o, ctx.store, local_dirs)
        local_bin = binary or (artifacts / o["asset"] if artifacts else None)
        sha, blob, route = fetch_file(ctx.store, o, sums, o["asset"], o["sha256"], local_bin)
        lock.update({"version": o["version"], "arch": o["arch"], "route": route,
                     "binary": {"file": o["asset"], "sha256": sha, "size": blob.stat().st_size}, "airgap": None})
        if o["airgap_images"]:
            name = f"k3s-airgap-images-{o['arch']}.tar.zst"
            local_dir = next((d for d in local_dirs if (d / name).is_file()), None) if local_dirs else None
            if local_dirs and local_dir is None:
                raise fail(o, f"k3s.airgap_images is set but '{name}' is not beside the binary or in the "
                              "artifacts directory")
            sha, blob, _ = fetch_file(ctx.store, o, sums, name, None, local_dir / name if local_dir else None)
            lock["airgap"] = {"file": name, "sha256": sha, "size": blob.stat().st_size}
        progress.log(f"k3s {o['version']} ({o['arch']}): {lock['binary']['size'] / 1048576:.1f} MiB, "
                     f"sha256-verified ({route})")
    text = json.dumps(lock, indent=1, sort_keys=True)
    (ctx.out / "k3s.lock.json").write_text(text)
    (ctx.out / "key").write_text(hashlib.sha256(json.dumps(content(lock), sort_keys=True).encode()).hexdigest())


def content(lock: dict[str, Any]) -> dict[str, Any]:
    """What the lock says goes into the image: how it was obtained (the route) does not."""
    return {k: v for k, v in lock.items() if k != "route"}


def manifest(options: dict[str, Any], tree: Path) -> dict[str, Any]:
    return {"k3s": content(json.loads((tree / "k3s.lock.json").read_text()))}


def locked(stage_dir: Path, store: BlobStore) -> dict[str, Any]:
    """The lock with blob paths filled in (``binary.path``, ``airgap.path``)."""
    lock: dict[str, Any] = json.loads((stage_dir / "k3s.lock.json").read_text())
    for key in ("binary", "airgap"):
        if lock.get(key):
            lock[key]["path"] = str(store.path(lock[key]["sha256"]))
    return lock
