"""fetch: resolve and download Debian packages into the verified blob store.

Output: ``packages.lock.json`` (every package with version, sha256 and role)
and ``key`` (its digest, which keys every later stage). When the archive
cannot be reached, the last lock for the same options is reused if all its
packages are still in the blob store, so a warm rebuild works offline.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from agent.errors import BasaltError, Problem
from builder import debian, host, progress
from builder.download import BlobStore
from builder.stages import StageContext

NAME = "fetch"
VERSION = 1
SOURCES = ("builder/debian.py", "builder/download.py")
VOLATILE = True
INPUTS: tuple[str, ...] = ()
PUBLISH = (("packages.lock.json", "packages.lock.json"),)
TOOLS = {"gpgv": "gpgv"}
SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["arch", "sources", "keyring", "packages", "exclude", "kernel", "boot_packages", "kernel_deb"],
    "properties": {
        "arch": {"type": "string"},
        "sources": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["uri", "suites", "components"],
            "properties": {"uri": {"type": "string"}, "suites": {"type": "array", "items": {"type": "string"}},
                           "components": {"type": "array", "items": {"type": "string"}}}}},
        "keyring": {"type": "string"},
        "packages": {"type": "array", "items": {"type": "string"}},
        "exclude": {"type": "array", "items": {"type": "string"}},
        "kernel": {"type": "string"},
        "boot_packages": {"type": "array", "items": {"type": "string"}},
        "kernel_deb": {"oneOf": [{"type": "null"}, {
            "type": "object", "additionalProperties": False, "required": ["path", "sha256"],
            "properties": {"path": {"type": "string"}, "sha256": {"type": "string"}}}]},
    },
}


def resolve(options: dict[str, Any], store: BlobStore) -> list[dict[str, Any]]:
    sources = [debian.Source(s["uri"], tuple(s["suites"]), tuple(s["components"])) for s in options["sources"]]
    index = debian.Index.load(store, sources, options["arch"], Path(options["keyring"]))
    rows: list[dict[str, Any]] = []
    local = options["kernel_deb"]
    roles = [("rootfs", index.resolve(options["packages"], options["exclude"])),
             ("kernel", [] if local else [index.kernel(options["kernel"])]),
             ("boot", index.exact(options["boot_packages"]))]
    for role, pkgs in roles:
        for p in pkgs:
            rows.append({"name": p.name, "version": p.version, "arch": p.arch, "sha256": p.sha256,
                         "size": p.size, "url": p.url, "role": role})
    if local:
        rows.append(local_kernel(Path(local["path"]), local["sha256"], options["arch"], store))
    return rows


def local_kernel(path: Path, sha256: str, arch: str, store: BlobStore) -> dict[str, Any]:
    """``kernel.deb``: a kernel package from a file (one Debian does not ship, e.g. for the
    Raspberry Pi 5), checked to be a kernel for this architecture, then kept in the blob store
    like any download (so the build reads it by its hash, as every package)."""
    said = host.run(["dpkg-deb", "-f", str(path), "Package", "Version", "Architecture"],
                    f"kernel.deb: {path} is not a Debian package: dpkg-deb -f", hint="give a linux-image-*.deb file")
    fields = dict(line.split(": ", 1) for line in said.stdout.decode(errors="replace").splitlines() if ": " in line)
    if not fields.get("Package"):
        raise BasaltError(Problem(f"kernel.deb: {path} is not a Debian package (it names no package)",
                                  hint="give a linux-image-*.deb file"))
    if fields.get("Architecture") != arch:
        raise BasaltError(Problem(f"kernel.deb: {path} is for {fields.get('Architecture')}, the image for {arch}",
                                  hint=f"use the {arch} build of the kernel package"))
    if not store.has(sha256):
        partial = store.root.parent / "partial" / f"{sha256}.local"
        partial.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, partial)
        store.put_file(partial, sha256)  # refuses a file changed since the plan hashed it
    return {"name": fields["Package"], "version": fields["Version"], "arch": arch, "sha256": sha256,
            "size": path.stat().st_size, "url": path.resolve().as_uri(), "role": "kernel"}


def run(ctx: StageContext, options: dict[str, Any]) -> None:
    options_key = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:24]
    last = ctx.store.root.parent.parent / "locks" / f"{options_key}.json"
    try:
        with progress.step("Resolving packages from the signed archive index"):
            rows = resolve(options, ctx.store)
    except BasaltError as exc:
        if "download failed" not in str(exc) or not last.is_file():
            raise
        rows = json.loads(last.read_text())["packages"]
        if not all(ctx.store.has(r["sha256"]) for r in rows):
            raise
        progress.warn(f"archive unreachable; reusing the last resolved package set ({last.name})")
    blobs = [debian.Package(r["name"], r["version"], r["arch"], r["url"].split("/", 3)[-1], r["sha256"],
                            r["size"], "", "") for r in rows]
    missing = [(b, r["url"]) for b, r in zip(blobs, rows, strict=True) if not ctx.store.has(b.sha256)]
    if missing:
        total = sum(b.size for b, _ in missing)
        progress.log(f"downloading {len(missing)} packages, {total / 1048576:.1f} MiB")
        bar = progress.Bar("packages", total)
        for b, url in missing:
            ctx.store.fetch(url, b.sha256, b.size, label=b.name, bar=bar)
        bar.close()
    lock = {"packages": rows}
    text = json.dumps(lock, indent=1, sort_keys=True)
    (ctx.out / "packages.lock.json").write_text(text)
    (ctx.out / "key").write_text(hashlib.sha256(text.encode()).hexdigest())
    last.parent.mkdir(parents=True, exist_ok=True)
    last.write_text(text)
    size = sum(r["size"] for r in rows)
    progress.log(f"{len(rows)} packages, {size / 1048576:.1f} MiB, all sha256-verified")


def manifest(options: dict[str, Any], tree: Path) -> dict[str, Any]:
    rows = json.loads((tree / "packages.lock.json").read_text())["packages"]
    return {"packages": [{k: p[k] for k in ("name", "version", "sha256", "role")} for p in rows]}
