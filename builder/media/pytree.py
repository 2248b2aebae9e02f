"""An image's Python, as its root tree lays it out: the standard library's directory and where a
module's compiled form is (what ``compileall`` wrote at build time: builder/stages/rootfs.py)."""

from __future__ import annotations

from pathlib import Path


def stdlib(root: Path) -> Path | None:
    """``usr/lib/python3.N`` of the tree (the newest, if there are several), or None."""
    found = [d for d in (root / "usr/lib").glob("python3.*") if d.name.split(".", 1)[1].isdigit()]
    return max(found, key=lambda d: int(d.name.split(".", 1)[1]), default=None)


def cached(source: Path, lib: Path) -> Path:
    """Where the interpreter of ``lib`` (its stdlib directory) keeps the compiled form of ``source``."""
    tag = lib.name.replace("python", "cpython-").replace(".", "")  # python3.11 → cpython-311
    return source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc"
