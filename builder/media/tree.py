"""Paths in an image's root tree as the image itself will see them, and the one way the build
writes into a tree.

A symbolic link in the tree is followed inside the tree: an absolute target from the tree's root,
``..`` never above it; never to the build host's file of that name. Debian's packages carry
absolute links (``usr/bin/awk -> /etc/alternatives/awk``) and an overlay can plant any link, so a
plain ``open(root / "usr/bin/awk", "w")`` would write the host's ``/etc/alternatives/awk``.
``write``, ``copy``, ``symlink`` and ``mkdir`` resolve the directory this way and replace what is
at the last component (a link there is removed, never written through), creating the file
exclusively and without following a link.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import BinaryIO

from agent.errors import BasaltError, Problem

MAX_LINKS = 40  # as the kernel's own walk


def resolve(root: Path, rel: str) -> str:
    """``rel`` inside ``root`` with its symbolic links followed inside the tree: a path relative to
    ``root`` whose components that exist are none of them links."""
    parts: list[str] = []
    todo = [p for p in rel.strip("/").split("/") if p and p != "."]
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            parts = parts[:-1]
            continue
        here = root.joinpath(*parts, part)
        if here.is_symlink():
            hops += 1
            if hops > MAX_LINKS:
                raise BasaltError(Problem(
                    f"{root}/{rel}: too many symbolic links (a loop?) on the way",
                    hint="fix the link in the overlay or package that made it"))
            target = os.readlink(here)
            todo = [p for p in target.split("/") if p and p != "."] + todo
            parts = [] if target.startswith("/") else parts
            continue
        parts.append(part)
    return "/".join(parts)


def path(root: Path, rel: str) -> Path:
    """The host path of ``rel`` in ``root``, every link on the way followed inside the tree."""
    return root / resolve(root, rel)


def is_file(root: Path, rel: str) -> bool:
    return path(root, rel).is_file()


def mkdir(root: Path, rel: str, mode: int | None = None) -> Path:
    """The directory ``rel`` in ``root`` (and those missing on the way), made where the tree's
    links lead; ``mode`` is given to it."""
    d = path(root, rel)
    d.mkdir(parents=True, exist_ok=True)
    if mode is not None:
        d.chmod(mode)
    return d


def _replaceable(root: Path, rel: str) -> tuple[Path, str]:
    """The directory (links followed in the tree, made if missing) and the name of ``rel``, with
    whatever was at the name removed unless it is a directory."""
    head, _, name = rel.strip("/").rpartition("/")
    if not name or name in (".", ".."):
        raise ValueError(f"{rel!r}: not a file's path")
    d = mkdir(root, head) if head else root
    target = d / name
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        target.unlink()
    return d, name


def _create(root: Path, rel: str, mode: int) -> tuple[Path, BinaryIO]:
    """A new file at ``rel`` in ``root`` (a link at its place is replaced), open for writing,
    created exclusively and without following a link, with ``mode`` whatever the umask."""
    d, name = _replaceable(root, rel)
    fd = os.open(d / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    os.fchmod(fd, mode)
    return d / name, os.fdopen(fd, "wb")


def write(root: Path, rel: str, data: bytes | str, mode: int = 0o644) -> Path:
    """Write ``data`` to ``rel`` in ``root``: a new file (a link at its place is replaced)."""
    written, f = _create(root, rel, mode)
    with f:
        f.write(data.encode() if isinstance(data, str) else data)
    return written


def copy(root: Path, rel: str, src: Path, mode: int = 0o644) -> Path:
    """Copy the host file ``src`` to ``rel`` in ``root`` (as ``write``)."""
    written, f = _create(root, rel, mode)
    with f, open(src, "rb") as s:
        shutil.copyfileobj(s, f, 1 << 20)
    return written


def symlink(root: Path, rel: str, target: str) -> Path:
    """Make ``rel`` in ``root`` a symbolic link to ``target`` (what was there is replaced)."""
    d, name = _replaceable(root, rel)
    (d / name).symlink_to(target)
    return d / name
