"""The boot's read-ahead list: the files the interpreter and the agent read from the root between
switch_root and the agent's first phase, in the order they are needed. The initramfs reads them
in the background as soon as the root is mounted (builder/initramfs/init), so a second CPU
decompresses their squashfs blocks while the init finishes and the interpreter starts, instead
of each page fault waiting for its block (the interpreter's start is the largest single cost of
a boot: docs/architecture.md, "Boot time").

Found without running anything from the tree: the interpreter, its loader and libraries (ELF,
builder/media/elf.py); the codecs Python loads before any import statement; then the compiled
modules ``basalt init`` imports when it starts, statically, from the import statements a module
runs when it is imported (top level, class bodies, ``if``/``try``/``with`` blocks; not function
bodies, which run later, nor ``if TYPE_CHECKING:``). A module compiled into the interpreter or
frozen in it is read from no file and is left out."""

from __future__ import annotations

import ast
from pathlib import Path

from agent import layout
from agent.errors import BasaltError, Problem
from builder.media import elf, pytree, tree

PYTHON = "usr/bin/python3"
# Loaded by the interpreter before the agent's first line (Python 3.11's start without site)
STARTUP = ("encodings", "encodings.aliases", "encodings.utf_8")
ENTRY = "agent.pid1.init"  # what /usr/sbin/basalt imports for "basalt init"
SEARCH = (layout.LIB.lstrip("/"), "usr/lib/python3/dist-packages")  # the agent's sys.path, before the stdlib
# Frozen into Python 3.11 (Python/frozen.c): imported from the interpreter itself, never from a file
FROZEN = frozenset({"abc", "codecs", "io", "_collections_abc", "_sitebuiltins", "genericpath", "ntpath",
                    "posixpath", "os", "os.path", "site", "stat", "importlib._bootstrap",
                    "importlib._bootstrap_external", "importlib.util", "importlib.machinery", "runpy",
                    "zipimport"})
MAX_MODULES = 400  # an import graph larger than this is not a boot's


def imported_at_load(tree: ast.Module, package: str) -> list[str]:
    """The modules a module's import statements name, for those that run when it is imported
    (``package``: the module's package, for relative imports). ``from X import Y`` names X and X.Y
    (Y may be a submodule: the caller keeps only what exists)."""
    out: list[str] = []

    def walk(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                out.extend(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[:len(parts) - node.level + 1]
                    base = ".".join([*parts, *([node.module] if node.module else [])])
                if base:
                    out.append(base)
                out.extend(f"{base}.{a.name}" if base else a.name for a in node.names if a.name != "*")
            elif isinstance(node, ast.If):
                test = node.test
                checking = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
                    (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
                if not checking:
                    walk(node.body)
                walk(node.orelse)
            elif isinstance(node, ast.Try):
                walk(node.body)
                for handler in node.handlers:
                    walk(handler.body)
                walk(node.orelse)
                walk(node.finalbody)
            elif isinstance(node, (ast.With, ast.ClassDef)):
                walk(node.body)
    walk(tree.body)
    return out


def _find(root: Path, dirs: list[str], name: str) -> tuple[Path, bool] | None:
    """Where module ``name`` is in the tree (its source, or an extension), and whether it is a
    package. ``dirs``: the search path, relative to ``root``; links are followed in the tree (a
    link to a host file is never read as the image's)."""
    rel = name.replace(".", "/")
    for d in dirs:
        for candidate, package in ((f"{d}/{rel}/__init__.py", True), (f"{d}/{rel}.py", False)):
            if tree.is_file(root, candidate):
                return tree.path(root, candidate), package
        base = tree.path(root, d)
        found = sorted(base.glob(f"{rel}.cpython-*.so")) or sorted((base / "lib-dynload").glob(f"{rel}.cpython-*.so"))
        for so in found:
            real = tree.path(root, str(so.relative_to(root)))
            if real.is_file():
                return real, False
    return None


def modules(root: Path, seeds: tuple[str, ...]) -> list[str]:
    """The files (paths in ``root``) of the modules importing ``seeds`` loads, in the order they
    are first imported: a module's compiled form where it has one, else its source; an extension
    module as itself."""
    stdlib = pytree.stdlib(root)
    if stdlib is None:
        raise BasaltError(Problem(f"{root}: no usr/lib/python3.N in the image", hint="the agent needs python3-minimal"))
    dirs = [*SEARCH, str(stdlib.relative_to(root))]
    out: list[str] = []
    seen: set[str] = set()

    def load(name: str) -> None:
        if name in seen or name in FROZEN:
            return
        seen.add(name)
        if len(seen) > MAX_MODULES:
            raise BasaltError(Problem(f"more than {MAX_MODULES} modules imported at boot from {', '.join(seeds)}",
                                      hint="the agent's start imports too much: import in the function that needs it"))
        if "." in name:
            load(name.rpartition(".")[0])  # a package before its modules
        found = _find(root, dirs, name)
        if found is None:  # built in, frozen, or a name that is no module (from X import function)
            return
        path, package = found
        if path.suffix == ".so":
            out.append(str(path.relative_to(root)))
            return
        cached = str(pytree.cached(path, stdlib).relative_to(root))
        out.append(cached if tree.is_file(root, cached) else str(path.relative_to(root)))
        package_name = name if package else name.rpartition(".")[0]
        for wanted in imported_at_load(ast.parse(path.read_bytes(), str(path)), package_name):
            load(wanted)

    for seed in seeds:
        load(seed)
    return out


def boot_imports(root: Path) -> tuple[str, ...]:
    """``BOOT_IMPORTS`` of the tree's own ``agent/pid1/init.py``: what the boot imports inside
    functions before ready (a literal tuple of names; none when the file has no such tuple)."""
    found = _find(root, list(SEARCH), ENTRY)
    if found is None:
        return ()
    for node in ast.parse(found[0].read_bytes()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "BOOT_IMPORTS"
                                                for t in node.targets):
            names = ast.literal_eval(node.value)
            if not isinstance(names, tuple) or not all(isinstance(n, str) and n.replace(".", "").replace(
                    "_", "").isalnum() for n in names):
                raise BasaltError(Problem(f"{found[0]}: BOOT_IMPORTS is not a tuple of module names",
                                          hint="BOOT_IMPORTS = (\"agent.config.site\", ...)"))
            return names
    return ()


def boot_files(root: Path) -> list[str]:
    """The list, in the order the boot reads the files: paths relative to ``root``."""
    # the loader and the libraries first (the loader maps them before the interpreter's code runs)
    interpreter = [*elf.libraries(root, [PYTHON]), PYTHON]
    python = modules(root, (*STARTUP, ENTRY, *boot_imports(root)))
    extensions = [f for f in python if f.endswith(".so")]
    files: list[str] = []
    read: set[str] = set()
    for item in [*interpreter, *python, *elf.libraries(root, extensions)]:
        real = tree.resolve(root, item)  # one file under two names (a loader's link) is read once
        if real not in read:
            read.add(real)
            files.append(real)
    return files


def write(root: Path) -> Path:
    """``layout.LIB_READAHEAD`` in ``root``, one path (relative to the root) per line."""
    files = plain(boot_files(root))
    # a link an overlay left there is replaced, never written through
    return tree.write(root, layout.LIB_READAHEAD, "".join(f"{f}\n" for f in files))


def plain(files: list[str]) -> list[str]:
    """``files``, each a relative path the initramfs's shell reads as one word (globbing off): nothing
    it could take apart or expand, nothing outside the root."""
    for f in files:
        if not f or f.startswith("/") or ".." in f.split("/") or any(c in f for c in " \t\n*?[$`\"'\\;&|<>(){}"):
            raise BasaltError(Problem(f"{f!r}: not a plain path for the boot's read-ahead list",
                                      hint="the initramfs reads the list as shell words; rename the file in the image"))
    return files
