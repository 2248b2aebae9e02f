"""A base image for app builds in the tests (builder/appbuild.py): Debian's static busybox, from
scratch, committed into a buildah storage of the test's own (no registry is reachable), and a git
repository whose Dockerfile builds FROM it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from builder import appbuild

BASE = "localhost/basalt-test-base:1"


def make_base(store: Path, busybox: Path) -> Path:
    root = store / "base-rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy(busybox, root / "bin/busybox")
    for name in ("sh", "cat", "echo", "false"):
        (root / "bin" / name).symlink_to("busybox")
    b = ["buildah", *appbuild.storage(store)]
    container = subprocess.run([*b, "from", "scratch"], capture_output=True, text=True, check=True,
                               timeout=120).stdout.strip()
    for step in (["copy", container, f"{root}/", "/"], ["config", "--cmd", '["/bin/sh"]', container],
                 ["commit", "-q", container, BASE], ["rm", container]):
        subprocess.run([*b, *step], check=True, capture_output=True, timeout=120)
    return store


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def dockerfile(run: str = "echo built-by-run > /srv/run.txt") -> str:
    return f"FROM {BASE}\nCOPY hello.txt /srv/hello.txt\nRUN {run}\nCMD [\"/bin/cat\", \"/srv/hello.txt\"]\n"


def repository(repo: Path, hello: str = "hello-v1\n") -> Path:
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, {"Dockerfile": dockerfile(), "hello.txt": hello}, "first")
    return repo
