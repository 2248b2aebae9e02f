"""The boot's read-ahead list (builder/media/readahead.py) on small trees made here; the list of the
real image is checked against what its own interpreter loads in tests/rootfs/test_rootfs.py."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from agent import layout
from agent.errors import BasaltError
from builder.media import elf, readahead
from builder.media.tree import resolve


@pytest.mark.parametrize(("source", "package", "expected"), [
    ("import a, b.c\nfrom d import e\n", "", ["a", "b.c", "d", "d.e"]),
    ("from . import x\nfrom .y import z\nfrom .. import w\n", "p.q", ["p.q", "p.q.x", "p.q.y", "p.q.y.z", "p", "p.w"]),
    # run at import: if/else, try/except/finally, with, class bodies
    ("if X:\n import a\nelse:\n import b\ntry:\n import c\nexcept ImportError:\n import d\nfinally:\n import e\n"
     "with f():\n import g\nclass K:\n import h\n", "", ["a", "b", "c", "d", "e", "g", "h"]),
    # not run at import: function bodies, TYPE_CHECKING blocks
    ("def f():\n import a\nasync def g():\n import b\nif TYPE_CHECKING:\n import c\n"
     "if typing.TYPE_CHECKING:\n import d\nelse:\n import e\n", "", ["e"]),
    ("from x import *\n", "", ["x"]),
])
def test_only_imports_that_run_when_the_module_loads(source: str, package: str, expected: list[str]) -> None:
    assert readahead.imported_at_load(ast.parse(source), package) == expected


def tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "root"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_modules_in_import_order_compiled_form_first(tmp_path: Path) -> None:
    root = tree(tmp_path, {
        "usr/lib/python3.11/encodings/__init__.py": "import codecs\nfrom . import aliases\n",
        "usr/lib/python3.11/encodings/aliases.py": "",
        "usr/lib/python3.11/encodings/utf_8.py": "",
        "usr/lib/python3.11/struct.py": "from _struct import *\n",
        "usr/lib/python3.11/__pycache__/struct.cpython-311.pyc": "",
        "usr/lib/python3.11/lib-dynload/termios.cpython-311-x86_64-linux-gnu.so": "",
        "usr/lib/python3.11/json/__init__.py": "",
        "usr/lib/basalt/agent/__init__.py": "",
        "usr/lib/basalt/agent/pid1/__init__.py": "",
        "usr/lib/basalt/agent/pid1/init.py": "import os, sys, struct\nfrom agent.pid1 import power\n"
                                             "from . import power as p\ndef later():\n    import json\n",
        "usr/lib/basalt/agent/pid1/power.py": "import termios\nfrom agent import nosuch\n",
    })
    assert readahead.modules(root, ("encodings", "agent.pid1.init")) == [
        "usr/lib/python3.11/encodings/__init__.py", "usr/lib/python3.11/encodings/aliases.py",
        "usr/lib/basalt/agent/__init__.py", "usr/lib/basalt/agent/pid1/__init__.py",
        "usr/lib/basalt/agent/pid1/init.py",
        "usr/lib/python3.11/__pycache__/struct.cpython-311.pyc",  # os is frozen, sys built in: no file
        "usr/lib/basalt/agent/pid1/power.py",
        "usr/lib/python3.11/lib-dynload/termios.cpython-311-x86_64-linux-gnu.so"]


def test_an_import_cycle_and_a_runaway_graph(tmp_path: Path) -> None:
    files = {"usr/lib/python3.11/a.py": "import b\n", "usr/lib/python3.11/b.py": "import a\n"}
    assert readahead.modules(tree(tmp_path / "cycle", files), ("a",)) == \
        ["usr/lib/python3.11/a.py", "usr/lib/python3.11/b.py"]
    many = {f"usr/lib/python3.11/m{i}.py": f"import m{i + 1}\n" for i in range(readahead.MAX_MODULES + 5)}
    with pytest.raises(BasaltError) as exc:
        readahead.modules(tree(tmp_path / "many", many), ("m0",))
    assert f"more than {readahead.MAX_MODULES} modules imported at boot" in exc.value.render()


@pytest.mark.parametrize("name", ["usr/lib/a b.pyc", "usr/lib/a*.pyc", "usr/lib/a$(reboot).pyc", "usr/lib/a`x`",
                                  "usr/lib/a'b", "usr/lib/a\\b", "usr/lib/a;b", "usr/lib/a\nb", "/etc/shadow",
                                  "usr/../../etc/shadow", ""])
def test_a_name_the_initramfs_shell_would_take_apart_is_refused(name: str) -> None:
    """The initramfs reads the list as words with globbing off: a name that is not one plain
    relative word never reaches it."""
    assert readahead.plain(["usr/bin/python3.11", "usr/lib/x86_64-linux-gnu/libc.so.6"]) == \
        ["usr/bin/python3.11", "usr/lib/x86_64-linux-gnu/libc.so.6"]
    with pytest.raises(BasaltError) as exc:
        readahead.plain(["usr/bin/python3.11", name])
    assert "not a plain path for the boot's read-ahead list" in exc.value.render()


def test_the_interpreters_loader_and_libraries_come_first_each_file_once(tmp_path: Path) -> None:
    """The host's own Python 3.11 stands in for the image's (an ELF program and its libraries, copied
    into a tree laid out as Debian's: /lib64 and the loader's second name are links)."""
    python = Path("/usr/bin/python3.11")
    if not python.is_file():
        pytest.skip("no host /usr/bin/python3.11 to stand in for the image's interpreter")
    host = Path("/")
    root = tree(tmp_path, {"usr/lib/python3.11/encodings/__init__.py": "", "usr/lib/basalt/agent/__init__.py": "",
                           "usr/lib/basalt/agent/pid1/__init__.py": "", "usr/lib/basalt/agent/pid1/init.py": ""})
    (root / "usr/bin").mkdir(parents=True)
    shutil.copyfile(python, root / "usr/bin/python3.11")
    (root / "usr/bin/python3").symlink_to("python3.11")

    triplet = root / "usr/lib/x86_64-linux-gnu"
    triplet.mkdir(parents=True)
    for lib in elf.libraries(host, ["usr/bin/python3.11"]):  # each under the name asked for
        shutil.copyfile(host / resolve(host, lib), triplet / Path(lib).name)
    (root / "usr/lib64").mkdir()
    (root / "usr/lib64/ld-linux-x86-64.so.2").symlink_to("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    (root / "lib64").symlink_to("usr/lib64")
    files = readahead.boot_files(root)
    libraries = [resolve(root, lib) for lib in elf.libraries(root, ["usr/bin/python3"])]
    assert files[:len(set(libraries)) + 1] == [*dict.fromkeys(libraries), "usr/bin/python3.11"]
    assert any("ld-linux" in f for f in files[:1]) and any("/libc.so" in f for f in files)
    assert len(files) == len(set(files))
    assert files[len(set(libraries)) + 1:] == [
        "usr/lib/python3.11/encodings/__init__.py", "usr/lib/basalt/agent/__init__.py",
        "usr/lib/basalt/agent/pid1/__init__.py", "usr/lib/basalt/agent/pid1/init.py"]


def test_the_list_replaces_a_link_an_overlay_left_at_its_place(tmp_path: Path) -> None:
    """An overlay's link at /usr/lib/basalt/readahead (to a file outside the tree) is replaced by the
    list; the file it pointed at is untouched."""
    root = tree(tmp_path, {"usr/lib/python3.11/encodings/__init__.py": "", "usr/lib/basalt/agent/__init__.py": "",
                           "usr/lib/basalt/agent/pid1/__init__.py": "", "usr/lib/basalt/agent/pid1/init.py": ""})
    outside = tmp_path / "outside"
    outside.write_text("host file\n")
    dest = root / layout.LIB_READAHEAD.lstrip("/")
    dest.symlink_to(outside)
    static = Path("/usr/bin/busybox")  # a static ELF stands in for the interpreter: no libraries to copy
    if not static.is_file():
        pytest.skip("no host busybox")
    (root / "usr/bin").mkdir(parents=True)
    shutil.copyfile(static, root / "usr/bin/python3")
    assert readahead.write(root) == dest
    assert not dest.is_symlink() and dest.read_text().splitlines()[0] == "usr/bin/python3"
    assert outside.read_text() == "host file\n"
