"""The apps controller's container image, made from the image's own root tree (no container
engine, no registry): the tree's Python, the standard-library modules the controller imports
(found statically with ``modulefinder``, never by running the target's code), the extension
modules and shared libraries they need (read from the ELF files' DT_NEEDED entries), and
``agent.apps``. One uncompressed layer (the squashfs compresses it), byte for byte reproducible;
k3s imports it from the air-gap images directory, so an offline site runs it."""

from __future__ import annotations

import modulefinder
import os
import tarfile
from pathlib import Path
from typing import Any

from agent.apps import deploy
from builder import host
from builder.imagedef import ROOT
from builder.media import elf, oci, pytree, tree

PYTHON = "usr/bin/python3"
OPENSSL = "usr/bin/openssl"
APP_DIR = "app"  # /app/agent/apps/*.py
# Modules Python needs before any import statement runs, and codecs looked up by name.
SEEDS = ("encodings", "encodings.aliases", "encodings.utf_8", "encodings.latin_1", "encodings.ascii",
         "encodings.idna", "agent.apps.controller", "agent.apps.mdns")
DIST = "usr/lib/python3/dist-packages"  # Debian's python3-zeroconf (and its imports), for agent.apps.mdns
# Found by modulefinder in code paths the controller never takes (a debugger's line editing).
SKIP_EXTENSIONS = {"readline", "termios", "_curses", "_tkinter"}
def closure(root: Path) -> list[str]:
    """Every file the layer holds from ``root``, as paths relative to it (links kept as links)."""
    root = root.resolve()
    stdlib = pytree.stdlib(root)
    assert stdlib is not None, f"{root}: no usr/lib/python3.N"
    dist = root / DIST
    finder = modulefinder.ModuleFinder(path=[str(ROOT), str(stdlib), str(dist)], excludes=["yaml"])
    for seed in SEEDS:
        finder.import_hook(seed)
    files: set[str] = set()
    for module in finder.modules.values():
        found = getattr(module, "__file__", None)
        path = Path(found) if found else None
        if path is None or not (path.is_relative_to(stdlib) or path.is_relative_to(dist)):
            continue
        files.add(str(path.relative_to(root)))
        cached = pytree.cached(path, stdlib)
        if cached.exists():
            files.add(str(cached.relative_to(root)))
    for name in sorted(finder.badmodules):
        short = name.split(".")[-1]
        if short in SKIP_EXTENSIONS:
            continue
        files.update(str(p.relative_to(root)) for p in sorted((stdlib / "lib-dynload").glob(f"{short}.cpython-*.so")))
    programs = [PYTHON, *(f for f in sorted(files) if f.endswith(".so"))]
    files.add(PYTHON)
    if (root / OPENSSL).exists():  # the site CA's certificates (agent/apps/tls.py) are made with it
        files.add(OPENSSL)
        programs.append(OPENSSL)
    files.update(elf.libraries(root, programs))
    return sorted(files)


def entries(root: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """The layer: each file of the closure with its parent directories and the links on its way."""
    root = root.resolve()
    out: list[tuple[tarfile.TarInfo, bytes | None]] = []
    dirs: set[str] = set()
    done: set[str] = set()

    def add_dirs(rel: str) -> None:
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d in dirs:
                continue
            dirs.add(d)
            here = root / d
            if here.is_symlink():  # merged /usr: lib64 → usr/lib64
                out.append(oci.entry(d, tarfile.SYMTYPE, 0o777, link=str(here.readlink())))
                add_path(tree.resolve(root, d), directory=True)
            else:
                out.append(oci.entry(d, tarfile.DIRTYPE))

    def add_path(rel: str, directory: bool = False) -> None:
        if rel in done:
            return
        done.add(rel)
        add_dirs(rel + ("/x" if directory else ""))
        if directory:
            return
        head, _, tail = rel.rpartition("/")
        real = f"{tree.resolve(root, head)}/{tail}" if head else tail
        if real != rel:  # through a linked directory (lib64/…): the entry goes where the link points
            add_path(real)
            return
        here = root / rel
        if here.is_symlink():
            target = str(here.readlink())
            out.append(oci.entry(rel, tarfile.SYMTYPE, 0o777, link=target))
            # the target as the link names it, so the links on that way (/lib → usr/lib) come too
            add_path(target.lstrip("/") if target.startswith("/") else os.path.normpath(f"{head}/{target}"))
        else:
            out.append(oci.entry(rel, mode=here.stat().st_mode & 0o755, data=here.read_bytes()))

    for name in closure(root):
        add_path(name)
    for src in sorted(p for p in (ROOT / "agent").rglob("*.py") if "__pycache__" not in p.parts):
        source = src.relative_to(ROOT)
        if source.parts[1] != "apps" and str(source) not in ("agent/__init__.py", "agent/errors.py"):
            continue  # the controller's own package and what it imports, not the node's agent
        add_path_from(out, dirs, f"{APP_DIR}/{source}", src.read_bytes())
    out.append(oci.entry("tmp", tarfile.DIRTYPE, 0o1777))
    return out


def add_path_from(out: list[tuple[tarfile.TarInfo, bytes | None]], dirs: set[str], rel: str, data: bytes) -> None:
    parts = rel.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        d = "/".join(parts[:i])
        if d not in dirs:
            dirs.add(d)
            out.append(oci.entry(d, tarfile.DIRTYPE))
    out.append(oci.entry(rel, mode=0o644, data=data))


def build(root: Path, out: Path, version: str, arch: str) -> str:
    """Write the image archive ``out``; returns its manifest digest."""
    return oci.archive(out, entries(root), deploy.image(version), arch,
                       ("/usr/bin/python3", "-S", "-m", "agent.apps.controller"), compress=False,
                       env=("PATH=/usr/bin", f"PYTHONPATH=/{APP_DIR}", "PYTHONDONTWRITEBYTECODE=1"))



def unpack(archive: Path, dest: Path) -> dict[str, Any]:
    """The image's one layer unpacked into ``dest`` (e.g. to chroot into); returns its index and
    config documents."""
    import json
    with tarfile.open(archive) as tar:
        blobs = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    index = json.loads(blobs["index.json"])
    manifest = json.loads(blobs["blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]])
    config = json.loads(blobs["blobs/sha256/" + manifest["config"]["digest"].split(":")[1]])
    dest.mkdir(parents=True)
    host.run(["tar", "-xf", "-", "-C", str(dest)], "unpacking the apps image's layer",
             input=blobs["blobs/sha256/" + manifest["layers"][0]["digest"].split(":")[1]])
    return {"index": index, "config": config}


def chroot_argv(layer: Path) -> list[str]:
    """The image's command, run in its unpacked layer (its Python and libraries, none of the host's)."""
    return ["/usr/sbin/chroot", str(layer), "/usr/bin/python3", "-S", "-m", "agent.apps.controller"]


CHROOT_ENV = {"PATH": "/usr/bin", "PYTHONPATH": f"/{APP_DIR}", "PYTHONDONTWRITEBYTECODE": "1"}
