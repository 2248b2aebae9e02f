"""ELF programs in an image's root tree, read without running them (an arm64 tree is read the same
way on an x86 host): the libraries a program needs (DT_NEEDED) and its loader (PT_INTERP), found in
the tree's library directories with its symbolic links followed inside the tree. Used for the apps
controller's image (builder/media/appsimage.py), the boot's read-ahead list
(builder/media/readahead.py) and the root's check that nothing lost a library it needs
(builder/stages/rootfs.py)."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

from builder.media.tree import resolve

LIB_DIRS = ("usr/lib", "usr/lib64", "lib", "lib64")
DT_NEEDED, PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 1, 2, 3
DT_STRTAB, DT_RPATH, DT_RUNPATH = 5, 15, 29
ET_EXEC, ET_DYN = 2, 3


def needs(data: bytes) -> tuple[list[str], str]:
    """A 64-bit little-endian ELF file's DT_NEEDED libraries and its program interpreter."""
    strings, interp = _dynamic(data)
    return strings.get(DT_NEEDED, []), interp


def _dynamic(data: bytes) -> tuple[dict[int, list[str]], str]:
    """The string entries of a 64-bit little-endian ELF file's dynamic section, by tag, and its
    program interpreter."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads, dynamic, interp = [], None, ""
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
        if p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
        elif p_type == PT_INTERP:
            interp = data[p_offset:p_offset + p_filesz].rstrip(b"\0").decode()
    if dynamic is None:
        return {}, interp
    entries = [struct.unpack_from("<qQ", data, dynamic[0] + n) for n in range(0, dynamic[1], 16)]
    strtab = next(v for t, v in entries if t == DT_STRTAB)
    base = next(off + strtab - vaddr for vaddr, off, size in loads if vaddr <= strtab < vaddr + size)
    strings: dict[int, list[str]] = {}
    for tag, value in entries:
        if tag in (DT_NEEDED, DT_RPATH, DT_RUNPATH):
            strings.setdefault(tag, []).append(data[base + value:data.index(b"\0", base + value)].decode())
    return strings, interp


def programs(root: Path, skip: tuple[str, ...] = ("usr/lib/modules", "usr/lib/firmware")) \
        -> Iterator[tuple[str, dict[int, list[str]]]]:
    """Each 64-bit ELF program and shared library in ``root`` (its path in the tree, its dynamic
    string entries by tag), in a stable order; links are not followed, ``skip`` trees not read."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir.startswith(skip):
            dirnames[:] = []
            continue
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                head = f.read(18)
            if head[:6] != b"\x7fELF\x02\x01" or head[16] not in (ET_EXEC, ET_DYN):
                continue  # not a 64-bit program or library (firmware for another CPU, a module)
            try:
                with open(path, "rb") as f:
                    strings, _ = _dynamic(f.read())
            except (ValueError, struct.error, StopIteration):
                continue  # no dynamic section the loader could read either: nothing it would load
            yield os.path.normpath(os.path.join(rel_dir, name)), strings


def _linker(root: Path, found: list[tuple[str, dict[int, list[str]]]]) -> Callable[[str, str], str | None]:
    """Where the tree's loader finds library ``lib`` for file ``rel`` (the library's resolved path
    in the tree, or None): the file's own run paths (``$ORIGIN``: glibc's charset converters; a
    private directory: systemd's, sudo's), a private directory some program's run path names when
    the file lives in it (ld.so loads libsystemd-core beside the libsystemd-shared its program
    loaded), then the library directories."""
    paths = {rel: [entry.replace("${ORIGIN}", "$ORIGIN").replace("$ORIGIN", "/" + os.path.dirname(rel))
                   for tag in (DT_RUNPATH, DT_RPATH) for value in strings.get(tag, []) for entry in value.split(":")]
             for rel, strings in found}
    private = {os.path.normpath(d).lstrip("/") for run_path in paths.values() for d in run_path}

    def locate(rel: str, lib: str) -> str | None:
        here = os.path.dirname(rel)
        for d in paths.get(rel, []) + (["/" + here] if here in private else []):
            if d.startswith("/"):
                target = resolve(root, f"{d}/{lib}")
                if (root / target).exists():
                    return target
        try:
            return resolve(root, find_library(root, lib))
        except FileNotFoundError:
            return None
    return locate


def missing(root: Path) -> list[tuple[str, str]]:
    """Each (program or library, library it needs) in ``root`` whose library the tree lacks: a
    library a prune pattern or an excluded package took away from something still there."""
    found = list(programs(root))
    locate = _linker(root, found)
    return sorted((rel, lib) for rel, strings in found for lib in strings.get(DT_NEEDED, [])
                  if locate(rel, lib) is None)


def loaded(root: Path, found: list[tuple[str, dict[int, list[str]]]] | None = None) -> set[str]:
    """Every file in ``root`` some program or library in it loads by name (DT_NEEDED), as the
    tree's loader finds it (``found``: ``programs(root)``, when the caller has it already)."""
    found = list(programs(root)) if found is None else found
    locate = _linker(root, found)
    return {target for rel, strings in found for lib in strings.get(DT_NEEDED, [])
            if (target := locate(rel, lib)) is not None}


def prune_unused(root: Path, patterns: list[str]) -> list[str]:
    """Remove each shared library matching ``patterns`` (globs relative to ``root``) that nothing
    left in the tree loads, with the links to it beside it, until none is left to remove (a
    library only another removed one loaded goes too); the removed files, in order. Only what is
    loaded by name (DT_NEEDED) counts: a library a program opens at run time must not match."""
    removed: list[str] = []
    while True:
        found = list(programs(root))
        needed = loaded(root, found)
        unused = sorted({str(p.relative_to(root)) for pattern in patterns for p in root.glob(pattern)
                         if p.is_file() and not p.is_symlink() and str(p.relative_to(root)) not in needed})
        elf_files = {rel for rel, _ in found}
        unused = [rel for rel in unused if rel in elf_files]  # ELF libraries only
        if not unused:
            return removed
        for rel in unused:
            directory = (root / rel).parent
            for link in directory.iterdir():
                if link.is_symlink() and resolve(root, str(link.relative_to(root))) == rel:
                    link.unlink()
            (root / rel).unlink()
            removed.append(rel)


def find_library(root: Path, name: str) -> str:
    for d in LIB_DIRS:
        for candidate in [root / d / name, *sorted((root / d).glob(f"*-linux-gnu*/{name}"))]:
            rel = str(candidate.relative_to(root))
            if (root / resolve(root, rel)).exists():  # a link followed in the tree, not on the host
                return rel
    raise FileNotFoundError(f"{name}: not in the image's library directories")


def libraries(root: Path, programs: list[str]) -> list[str]:
    """What ``programs`` (paths in ``root``) load, transitively: each library as the tree names it,
    and the loader; in the order they are first needed, the loader first."""
    out: list[str] = []
    todo = [resolve(root, p) for p in programs]
    seen: set[str] = set()
    while todo:
        program = todo.pop(0)
        if program in seen:
            continue
        seen.add(program)
        wanted, interp = needs((root / program).read_bytes())
        for item in [*([interp.lstrip("/")] if interp else []), *(find_library(root, n) for n in wanted)]:
            if item not in out:
                out.append(item)
            todo.append(resolve(root, item))
    return out
