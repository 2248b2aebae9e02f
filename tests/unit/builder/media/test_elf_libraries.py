"""The root's library check (builder.media.elf.missing, builder.stages.rootfs.check_libraries) on
trees made of this host's own Debian programs and libraries: what a prune took away from a program
still there is found, what is there (in the library directories, through a link inside the tree,
or beside a file that says $ORIGIN) is not, and the build's message names the pattern."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from agent.errors import BasaltError
from builder.media import elf
from builder.stages.rootfs import check_libraries

LIBDIR = "usr/lib/x86_64-linux-gnu"
HOST_LIBS = Path("/") / LIBDIR


def put(root: Path, rel: str, src: Path) -> None:
    dest = root / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)


def host_tree(root: Path) -> None:
    """/usr/bin/env, libc and the loader libc names, as an image's root holds them."""
    put(root, "usr/bin/env", Path("/usr/bin/env"))
    put(root, f"{LIBDIR}/libc.so.6", HOST_LIBS / "libc.so.6")
    put(root, f"{LIBDIR}/ld-linux-x86-64.so.2", HOST_LIBS / "ld-linux-x86-64.so.2")


def test_a_whole_tree_has_nothing_missing(tmp_path: Path) -> None:
    host_tree(tmp_path)
    assert elf.missing(tmp_path) == []


def test_a_library_pruned_from_under_a_program_is_found(tmp_path: Path) -> None:
    host_tree(tmp_path)
    put(tmp_path, "usr/bin/python3.11", Path("/usr/bin/python3.11"))  # libm, libz, libexpat, libc
    put(tmp_path, f"{LIBDIR}/libm.so.6", HOST_LIBS / "libm.so.6")
    assert elf.missing(tmp_path) == [("usr/bin/python3.11", "libexpat.so.1"), ("usr/bin/python3.11", "libz.so.1")]


def test_a_library_reached_through_a_link_inside_the_tree(tmp_path: Path) -> None:
    put(tmp_path, "usr/bin/env", Path("/usr/bin/env"))
    put(tmp_path, f"{LIBDIR}/ld-linux-x86-64.so.2", HOST_LIBS / "ld-linux-x86-64.so.2")
    put(tmp_path, f"{LIBDIR}/libc-real.so", HOST_LIBS / "libc.so.6")
    os.symlink("libc-real.so", tmp_path / LIBDIR / "libc.so.6")
    assert elf.missing(tmp_path) == []
    (tmp_path / LIBDIR / "libc-real.so").unlink()  # a dangling link is no library
    assert elf.missing(tmp_path) == [("usr/bin/env", "libc.so.6")]


def test_origin_run_path(tmp_path: Path) -> None:
    """glibc's charset converters find their helper libraries beside them ($ORIGIN)."""
    if not (HOST_LIBS / "gconv/EUC-KR.so").exists():
        pytest.skip("this host's libc6 has no gconv/EUC-KR.so")
    host_tree(tmp_path)
    put(tmp_path, f"{LIBDIR}/gconv/EUC-KR.so", HOST_LIBS / "gconv/EUC-KR.so")
    assert elf.missing(tmp_path) == [(f"{LIBDIR}/gconv/EUC-KR.so", "libKSC.so")]
    put(tmp_path, f"{LIBDIR}/gconv/libKSC.so", HOST_LIBS / "gconv/libKSC.so")
    assert elf.missing(tmp_path) == []
    # $ORIGIN is the file's own directory, not any directory: the converter moved one down loses it
    os.rename(tmp_path / LIBDIR / "gconv/EUC-KR.so", tmp_path / "EUC-KR.so")
    (tmp_path / LIBDIR / "gconv/sub").mkdir()
    os.rename(tmp_path / "EUC-KR.so", tmp_path / LIBDIR / "gconv/sub/EUC-KR.so")
    assert elf.missing(tmp_path) == [(f"{LIBDIR}/gconv/sub/EUC-KR.so", "libKSC.so")]


def test_a_private_run_path(tmp_path: Path) -> None:
    """systemd's programs find their shared library in a directory of its own (an absolute run
    path), read inside the tree, never on the host that has the same directory."""
    shared = HOST_LIBS / "systemd/libsystemd-shared-252.so"
    if not Path("/usr/bin/journalctl").exists() or not shared.exists():
        pytest.skip("this host has no systemd 252 journalctl")
    host_tree(tmp_path)
    put(tmp_path, "usr/bin/journalctl", Path("/usr/bin/journalctl"))
    assert ("usr/bin/journalctl", "libsystemd-shared-252.so") in elf.missing(tmp_path)
    put(tmp_path, f"{LIBDIR}/systemd/libsystemd-shared-252.so", shared)
    assert not [m for m in elf.missing(tmp_path) if m[0] == "usr/bin/journalctl"]
    # a library beside it in that directory, with no run path of its own, is loaded into such a
    # program and finds it there by name (libsystemd-core)
    core = HOST_LIBS / "systemd/libsystemd-core-252.so"
    if core.exists():
        put(tmp_path, f"{LIBDIR}/systemd/libsystemd-core-252.so", core)
        assert not [m for m in elf.missing(tmp_path) if m[1] == "libsystemd-shared-252.so"]
        (tmp_path / "usr/bin/journalctl").unlink()  # no run path names the directory any more
        assert (f"{LIBDIR}/systemd/libsystemd-core-252.so", "libsystemd-shared-252.so") in elf.missing(tmp_path)


@pytest.mark.parametrize("content", [
    b"",                                      # empty
    b"\x7fELF",                               # a magic and nothing else
    b"\x7fELF\x01\x01\x01" + b"\0" * 60,      # 32-bit (firmware for another CPU)
    b"\x7fELF\x02\x01\x01" + b"\0" * 9 + b"\x03\x00" + b"\0" * 46,  # a shared object cut short
    b"#!/bin/sh\necho hi\n",                  # a script
])
def test_what_is_no_readable_program_is_left_alone(tmp_path: Path, content: bytes) -> None:
    host_tree(tmp_path)
    (tmp_path / "usr/bin/odd").write_bytes(content)
    assert elf.missing(tmp_path) == []


def test_modules_and_firmware_are_not_read(tmp_path: Path) -> None:
    assert elf.missing(tmp_path) == []  # an empty tree
    put(tmp_path, "usr/lib/modules/6.1.0/extra/env", Path("/usr/bin/env"))
    put(tmp_path, "usr/lib/firmware/env", Path("/usr/bin/env"))
    assert elf.missing(tmp_path) == []


def test_the_build_fails_naming_the_prune_pattern(tmp_path: Path) -> None:
    host_tree(tmp_path)
    put(tmp_path, "usr/bin/python3.11", Path("/usr/bin/python3.11"))
    put(tmp_path, f"{LIBDIR}/libm.so.6", HOST_LIBS / "libm.so.6")
    put(tmp_path, f"{LIBDIR}/libexpat.so.1", HOST_LIBS / "libexpat.so.1")
    with pytest.raises(BasaltError) as exc:
        check_libraries(tmp_path, ["usr/share/doc", "usr/lib/*-linux-gnu/libz.so*"])
    (problem,) = exc.value.problems
    assert problem.message == ("/usr/bin/python3.11 needs libz.so.1, which the image does not have: "
                               "rootfs.prune 'usr/lib/*-linux-gnu/libz.so*' removes it")
    assert problem.hint and "rootfs.prune: {remove: [PATTERN]}" in problem.hint
    with pytest.raises(BasaltError) as exc:
        check_libraries(tmp_path, ["usr/share/doc"])
    assert exc.value.problems[0].message.endswith("no installed package has it")
    put(tmp_path, f"{LIBDIR}/libz.so.1", HOST_LIBS / "libz.so.1")
    check_libraries(tmp_path, ["usr/lib/*-linux-gnu/libz.so*"])  # nothing missing: no error


def library_with_links(root: Path, real: str, *links: str) -> None:
    """A host library under its real name, with the links a package ships beside it."""
    put(root, f"{LIBDIR}/{real}", HOST_LIBS / real)
    for link in links:
        os.symlink(real, root / LIBDIR / link)


UNUSED = [f"usr/lib/*-linux-gnu/{g}" for g in ("libexpat*.so*", "libformw.so*", "libncursesw.so*", "libtinfo.so*")]


def test_unused_libraries_go_with_their_links_and_what_only_they_loaded(tmp_path: Path) -> None:
    needed = ["libexpatw.so.1.8.10", "libformw.so.6.4", "libncursesw.so.6.4", "libtinfo.so.6.4"]
    if not all((HOST_LIBS / n).exists() for n in needed):
        pytest.skip("this host lacks expat's or ncurses' libraries")
    host_tree(tmp_path)
    put(tmp_path, "usr/bin/python3.11", Path("/usr/bin/python3.11"))  # loads libexpat.so.1, libm, libz
    for lib in ("libm.so.6", "libz.so.1", "libexpat.so.1"):
        put(tmp_path, f"{LIBDIR}/{lib}", HOST_LIBS / lib)
    library_with_links(tmp_path, "libexpatw.so.1.8.10", "libexpatw.so.1", "libexpatw.so")
    library_with_links(tmp_path, "libformw.so.6.4", "libformw.so.6")  # loads ncursesw and tinfo
    library_with_links(tmp_path, "libncursesw.so.6.4", "libncursesw.so.6")
    library_with_links(tmp_path, "libtinfo.so.6.4", "libtinfo.so.6")
    removed = elf.prune_unused(tmp_path, UNUSED)
    # formw and expatw first; ncursesw and tinfo once formw, which alone loaded them, is gone
    assert removed == [f"{LIBDIR}/libexpatw.so.1.8.10", f"{LIBDIR}/libformw.so.6.4",
                       f"{LIBDIR}/libncursesw.so.6.4", f"{LIBDIR}/libtinfo.so.6.4"]
    assert sorted(p.name for p in (tmp_path / LIBDIR).iterdir()) == [
        "ld-linux-x86-64.so.2", "libc.so.6", "libexpat.so.1", "libm.so.6", "libz.so.1"]  # python's, and no link left
    assert elf.missing(tmp_path) == []


def test_a_library_a_program_loads_is_kept(tmp_path: Path) -> None:
    if not (HOST_LIBS / "libtinfo.so.6.4").exists() or not Path("/usr/bin/less").exists():
        pytest.skip("this host lacks less or libtinfo")
    host_tree(tmp_path)
    library_with_links(tmp_path, "libtinfo.so.6.4", "libtinfo.so.6")
    put(tmp_path, "usr/bin/less", Path("/usr/bin/less"))  # a package added: it loads libtinfo.so.6
    assert elf.prune_unused(tmp_path, UNUSED) == []
    assert (tmp_path / LIBDIR / "libtinfo.so.6").is_symlink() and elf.missing(tmp_path) == []
    (tmp_path / "usr/bin/less").unlink()
    assert elf.prune_unused(tmp_path, UNUSED) == [f"{LIBDIR}/libtinfo.so.6.4"]
    assert not (tmp_path / LIBDIR / "libtinfo.so.6").is_symlink()
