"""Finding host tools. Tools installed with the project (diskimage-builder's
scripts) live beside the interpreter in the virtualenv, which need not be on PATH."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def bin_dirs() -> list[str]:
    return [str(Path(sys.executable).parent)]


def search_path() -> str:
    return os.pathsep.join([*bin_dirs(), os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")])


def which(tool: str) -> str | None:
    return shutil.which(tool, path=search_path())
