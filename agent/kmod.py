"""Kernel modules without udev or kmod: load by name, and coldplug devices.

``load()`` resolves dependencies from modules.dep; ``coldplug()`` matches each
device's modalias against modules.alias (what udev would do at boot).
"""

from __future__ import annotations

import ctypes
import fnmatch
import os
from pathlib import Path

SYSCALL_FINIT_MODULE = {"x86_64": 313, "aarch64": 273}
EEXIST = 17


class ModuleIndex:
    def __init__(self, base: Path | None = None):
        release = os.uname().release
        self.base = base or Path("/usr/lib/modules") / release
        self.deps: dict[str, list[str]] = {}
        self.by_name: dict[str, str] = {}
        dep_file = self.base / "modules.dep"
        if dep_file.is_file():
            for line in dep_file.read_text().splitlines():
                path, _, rest = line.partition(":")
                self.deps[path] = rest.split()
                self.by_name[normalise(Path(path).name.split(".ko")[0])] = path
        builtin = self.base / "modules.builtin"
        self.builtin = {normalise(Path(p).name.split(".ko")[0]) for p in builtin.read_text().split()} \
            if builtin.is_file() else set()
        self._aliases: tuple[dict[str, list[tuple[str, str]]], list[tuple[str, str]]] | None = None

    def order(self, name: str) -> list[str]:
        """Module files to load for ``name``, dependencies first ([] if built in)."""
        key = normalise(name)
        if key not in self.by_name:
            if key in self.builtin:
                return []
            raise KeyError(name)
        out: list[str] = []

        def visit(path: str) -> None:
            if path not in out:
                for dep in self.deps.get(path, []):
                    visit(dep)
                out.append(path)
        visit(self.by_name[key])
        return out

    def aliases(self) -> tuple[dict[str, list[tuple[str, str]]], list[tuple[str, str]]]:
        """Alias patterns bucketed by their first 12 literal characters (most are
        literal that far), so matching a device tries a handful, not thousands."""
        if self._aliases is None:
            buckets: dict[str, list[tuple[str, str]]] = {}
            loose: list[tuple[str, str]] = []
            path = self.base / "modules.alias"
            text = path.read_text() if path.is_file() else ""
            for line in text.splitlines():
                if not line.startswith("alias "):
                    continue
                _, pattern, module = line.split(None, 2)
                literal = pattern.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0]
                if len(literal) >= 12:
                    buckets.setdefault(literal[:12], []).append((pattern, module))
                else:
                    loose.append((pattern, module))
            self._aliases = (buckets, loose)
        return self._aliases

    def match(self, modalias: str) -> list[str]:
        buckets, loose = self.aliases()
        hits = [m for p, m in buckets.get(modalias[:12], []) + loose if fnmatch.fnmatchcase(modalias, p)]
        return sorted(set(hits))


def normalise(name: str) -> str:
    return name.replace("-", "_")


def _finit_module(path: Path, params: str) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    nr = SYSCALL_FINIT_MODULE[os.uname().machine]
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.syscall(nr, fd, params.encode(), 0) == 0:
            return 0
        return ctypes.get_errno()
    finally:
        os.close(fd)


def loaded() -> set[str]:
    try:
        return {line.split()[0] for line in Path("/proc/modules").read_text().splitlines()}
    except OSError:
        return set()


def load(index: ModuleIndex, name: str, params: str = "") -> list[str]:
    """Load ``name`` and its dependencies; return the modules newly loaded.

    Raises KeyError for an unknown module and OSError when the kernel refuses."""
    done = []
    have = loaded()
    files = index.order(name)
    for i, rel in enumerate(files):
        mod = normalise(Path(rel).name.split(".ko")[0])
        if mod in have:
            continue
        err = _finit_module(index.base / rel, params if i == len(files) - 1 else "")
        if err and err != EEXIST:
            raise OSError(err, f"{mod}: {os.strerror(err)}")
        done.append(mod)
        have.add(mod)
    return done


def device_aliases(sys_root: Path = Path("/sys")) -> list[str]:
    """The modalias of every device present now."""
    out = set()
    for bus in sorted((sys_root / "bus").glob("*/devices/*")):
        try:
            value = (bus / "modalias").read_text().strip()
        except OSError:
            continue
        if value:
            out.add(value)
    return sorted(out)


def coldplug(index: ModuleIndex, blocked: frozenset[str] = frozenset()) -> tuple[list[str], list[str]]:
    """Load drivers for every present device. Returns (loaded, errors)."""
    loaded_now: list[str] = []
    errors: list[str] = []
    for alias in device_aliases():
        for mod in index.match(alias):
            if mod in blocked or normalise(mod) in loaded():
                continue
            try:
                loaded_now += load(index, mod)
            except (KeyError, OSError) as exc:
                errors.append(f"{mod}: {exc}")
    return loaded_now, errors
