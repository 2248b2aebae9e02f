"""Files: read one or fall back to a default, and replace one atomically — the one way Basalt
writes a file that something reads back (a config, a state record, a slot's kernel, a status).

The durability rule, for every atomic write: the new content goes to a temporary file beside the
target (created exclusively, never through a link), is fsynced, renamed over the target, and the
directory is fsynced, so that after a power cut a reader finds the old file or the new one, whole,
on flash as on tmpfs. A failed write removes its temporary file and leaves the target as it was.

On the bottom floor (it imports nothing of the agent) and on PID 1's boot path, so C modules only
at import; ``json`` is imported when a JSON file is read.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO


def read_text(path: str, default: str = "") -> str:
    """The file's text, or ``default`` when it cannot be read."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def read_json(path: str) -> dict[str, Any]:
    """The JSON object in the file; {} when it is missing, unreadable, not JSON or not an object."""
    if not os.path.exists(path):
        return {}  # without importing json
    import json
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def fsync_dir(directory: str) -> None:
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError:
        pass  # a file system that cannot sync a directory (vfat on some kernels) has renamed already
    finally:
        os.close(fd)


class Replacing:
    """A context manager: ``with Replacing(path, mode) as f: f.write(...)`` replaces ``path`` by
    what was written when the block ends without an exception (the durability rule above), and
    removes the temporary file when it raises. ``owner`` is a (uid, gid) to give the file."""

    def __init__(self, path: str, mode: int = 0o644, owner: tuple[int, int] | None = None,
                 makedirs: bool = False) -> None:
        self.path, self.mode, self.owner, self.makedirs = path, mode, owner, makedirs
        self.tmp = f"{path}.basalt-new"
        self.file: BinaryIO | None = None

    def __enter__(self) -> BinaryIO:
        directory = os.path.dirname(self.path)
        if self.makedirs:
            os.makedirs(directory or ".", exist_ok=True)
        try:
            os.unlink(self.tmp)  # left by a write a power cut interrupted (unlink never follows a link)
        except FileNotFoundError:
            pass
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, self.mode)
        self.file = os.fdopen(fd, "wb")
        return self.file

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        assert self.file is not None
        f, self.file = self.file, None
        written = False
        try:
            if kind is None:
                f.flush()
                if self.owner is not None:
                    os.fchown(f.fileno(), *self.owner)
                os.fchmod(f.fileno(), self.mode)  # whatever the umask took away
                os.fsync(f.fileno())
                written = True
        finally:
            f.close()
            if not written:
                self.discard()
        if written:
            try:
                os.replace(self.tmp, self.path)
            except BaseException:
                self.discard()
                raise
            fsync_dir(os.path.dirname(self.path))

    def discard(self) -> None:
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


def write_atomic(path: str, data: bytes | str, mode: int = 0o644, owner: tuple[int, int] | None = None,
                 makedirs: bool = False) -> None:
    """Replace ``path`` by ``data`` (the durability rule above)."""
    with Replacing(path, mode, owner, makedirs) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def write_json(path: str, value: object, mode: int = 0o644, makedirs: bool = False, **dump: Any) -> None:
    import json
    write_atomic(path, json.dumps(value, **dump), mode, makedirs=makedirs)
