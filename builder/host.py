"""Host tools: finding them, and running them — the one way the builder runs a tool, so that a
failure is always the same kind of error: ``<what> failed (exit N): <the tool's last words>``
and a ``hint:`` (by default the command; for a missing tool, the Debian package that has it —
``./inv`` installs them all).
Tools installed with the project (diskimage-builder's scripts) live beside the interpreter in the
virtualenv, which need not be on PATH."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from agent.errors import BasaltError, Problem

# The Debian package of each tool the builder runs (the default hint when one fails or is missing).
PACKAGES = {
    "qemu-img": "qemu-utils", "mcopy": "mtools", "mmd": "mtools", "mformat": "mtools", "mdir": "mtools",
    "minisign": "minisign", "xz": "xz-utils", "lz4": "lz4", "zstd": "zstd", "bmaptool": "bmap-tools",
    "mksquashfs": "squashfs-tools",
    "grub-mkimage": "grub-common", "gpgv": "gpgv", "mkfs.ext4": "e2fsprogs", "mkfs.vfat": "dosfstools",
    "cp": "coreutils", "mmdebstrap": "mmdebstrap", "sfdisk": "fdisk", "dpkg-deb": "dpkg",
    "buildah": "buildah", "git": "git", "scp": "openssh-client", "ssh": "openssh-client",
}
TAIL_LINES = 8


def bin_dirs() -> list[str]:
    return [str(Path(sys.executable).parent)]


def search_path() -> str:
    return os.pathsep.join([*bin_dirs(), os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")])


def which(tool: str) -> str | None:
    return shutil.which(tool, path=search_path())


def install_hint(tool: str) -> str:
    package = PACKAGES.get(os.path.basename(tool))
    return f"apt-get install {package} (./inv installs every tool the build needs)" if package else \
        f"is {os.path.basename(tool)} installed and on PATH?"


def run(argv: list[str], what: str | None = None, hint: str | None = None, env: Mapping[str, str] | None = None,
        log: Path | None = None, stdout: IO[Any] | None = None, cwd: Path | None = None,
        input: bytes | None = None, timeout: float | None = None,
        stdin: IO[Any] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv``; a BasaltError when it cannot start or exits non-zero, saying ``what`` failed
    (default: the tool's name) with the last lines it wrote to stderr (or to ``log``, where its
    output goes when given) and ``hint`` (default: the command; for a tool that is missing, its
    Debian package). Its stdout is
    captured unless ``stdout`` or ``log`` takes it. ``timeout``: seconds, then it is killed and that
    is the error. ``stdin``: a file it reads (streamed, never held in memory)."""
    what = what or os.path.basename(argv[0])
    try:
        if log is not None:
            with log.open("wb") as out:
                proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, input=input,
                                      timeout=timeout)
            said = log.read_bytes()
        else:
            proc = subprocess.run(argv, stdout=stdout if stdout is not None else subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=env, cwd=cwd, input=input,
                                  stdin=None if input is not None else stdin if stdin is not None else
                                  subprocess.DEVNULL, timeout=timeout)
            said = proc.stderr or b""
    except FileNotFoundError:
        raise BasaltError(Problem(f"{what}: {argv[0]} not found", hint=install_hint(argv[0]))) from None
    except subprocess.TimeoutExpired:
        raise BasaltError(Problem(f"{what}: no answer in {timeout:g} s (stopped)",
                                  hint=hint or f"the command was: {shlex.join(argv)[:400]}")) from None
    if proc.returncode != 0:
        tail = said.decode(errors="replace").strip().splitlines()[-TAIL_LINES:]
        detail = (":\n  " + "\n  ".join(tail)) if len(tail) > 1 else f": {tail[0]}" if tail else ""
        raise BasaltError(Problem(f"{what} failed (exit {proc.returncode}){detail}",
                                  hint=hint or f"the command was: {shlex.join(argv)[:400]}"))
    return proc
