"""ELF programs in an image's root tree, read without running them (an arm64 tree is read the same
way on an x86 host): the libraries a program needs (DT_NEEDED) and its loader (PT_INTERP), found in
the tree's library directories with its symbolic links followed inside the tree. Used for the apps
controller's image (builder/media/appsimage.py) and the boot's read-ahead list
(builder/media/readahead.py)."""

from __future__ import annotations

import struct
from pathlib import Path

from builder.media.tree import resolve

LIB_DIRS = ("usr/lib", "usr/lib64", "lib", "lib64")
DT_NEEDED, PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 1, 2, 3
DT_STRTAB = 5


def needs(data: bytes) -> tuple[list[str], str]:
    """A 64-bit little-endian ELF file's DT_NEEDED libraries and its program interpreter."""
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
        return [], interp
    entries = [struct.unpack_from("<qQ", data, dynamic[0] + n) for n in range(0, dynamic[1], 16)]
    strtab = next(v for t, v in entries if t == DT_STRTAB)
    base = next(off + strtab - vaddr for vaddr, off, size in loads if vaddr <= strtab < vaddr + size)
    return [data[base + v:data.index(b"\0", base + v)].decode() for t, v in entries if t == DT_NEEDED], interp


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
