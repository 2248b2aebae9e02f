"""Files: read one or fall back to a default, and replace one atomically — the one way Basalt
writes a file that something reads back (a config, a state record, a slot's kernel, a status).

The durability rule, for every atomic write: the new content goes to a temporary file beside the
target (created exclusively, never through a link), is fsynced, renamed over the target, and the
directory is fsynced, so that after a power cut a reader finds the old file or the new one, whole,
on flash as on tmpfs. A failed write removes its temporary file and leaves the target as it was.

Links: PID 1 writes as root into directories other accounts own (a user's home, ``~/.ssh``), where
that account could plant a symbolic link to ``/etc``. So a write never follows a link it did not
expect: every directory on the way is opened with ``O_NOFOLLOW`` from the one before, and a link
is followed only when root owns it and the directory holding it, and only root can write there
(``/bin -> usr/bin``, ``/var/run -> ../run``); the file is created exclusively beside its target,
given its owner through its own descriptor, and renamed in place (a link at the target is
replaced, never followed). ``open_dir`` is that walk; ``Replacing``, ``make_dir`` and ``touch`` use it.

On the bottom floor (it imports nothing of the agent) and on PID 1's boot path, so C modules only
at import; ``json`` is imported when a JSON file is read.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO


def sha256(data: bytes = b"") -> Any:
    """hashlib.sha256 without hashlib's OpenSSL: loading libcrypto is slow on the boot path, and
    in PID 1 it would stay resident for good (~3 MB)."""
    try:
        from _sha256 import sha256 as fast  # type: ignore[import-not-found]  # Python 3.11 (Debian 12)
        return fast(data)
    except ImportError:
        import hashlib
        return hashlib.sha256(data)


def read_text(path: str, default: str = "") -> str:
    """The file's text, or ``default`` when it cannot be read."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def read_json(path: str) -> dict[str, Any]:
    """The JSON object in the file; {} when it is missing, unreadable, not JSON or not an object."""
    from agent import jsontext  # not json: PID 1 reads these at boot
    try:
        with open(path, "rb") as f:
            data = jsontext.loads(f.read())
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


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_MAX_LINKS = 40  # as the kernel's own walk


class UnsafeLink(OSError):
    """A directory on the way to a write is a link someone other than root could have made."""


def open_dir(path: str, mode: int | None = None) -> int:
    """A descriptor of the directory ``path``, reached under the rule for links above; ``mode``:
    make the directories that are missing, with that mode (root's, as PID 1 is).
    Raises UnsafeLink for a link it may not follow, OSError for the rest. The caller closes it."""
    parts = [p for p in os.path.abspath(path).split("/") if p]
    shown = ""  # the path walked so far, for messages
    fd = os.open("/", _DIR)
    links = 0
    try:
        while parts:
            name = parts.pop(0)
            try:
                child = os.open(name, _DIR | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                if mode is None:
                    raise
                os.mkdir(name, mode, dir_fd=fd)  # mkdirat: never through a link at its last component
                child = os.open(name, _DIR | os.O_NOFOLLOW, dir_fd=fd)
                os.fchmod(child, mode)  # whatever the umask took away
            except OSError as exc:
                import errno
                import stat
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISLNK(st.st_mode):
                    raise
                holder = os.fstat(fd)
                links += 1
                if st.st_uid != 0 or holder.st_uid != 0 or holder.st_mode & 0o022 or links > _MAX_LINKS:
                    raise UnsafeLink(errno.ELOOP, f"{shown}/{name} is a link that root does not control alone; "
                                     "not followed for a write") from None
                target = os.readlink(name, dir_fd=fd)
                parts[:0] = [p for p in target.split("/") if p]
                if target.startswith("/"):
                    os.close(fd)
                    fd = os.open("/", _DIR)
                    shown = ""
                continue
            os.close(fd)
            fd, shown = child, f"{shown}/{name}"
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_dir(path: str, mode: int, owner: tuple[int, int] | None = None) -> None:
    """Make the directory ``path`` with ``mode``, given to ``owner`` (those missing before it:
    root's, 0755, as os.makedirs makes them); an existing one is given to ``owner`` (and
    ``mode``) too. Links: the rule above, for ``path`` itself as for the way to it."""
    parent = open_dir(os.path.dirname(path) or ".", 0o755)
    try:
        os.mkdir(os.path.basename(path), mode, dir_fd=parent)
    except FileExistsError:
        pass  # a link there is refused by the walk below
    finally:
        os.close(parent)
    fd = open_dir(path)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def touch(path: str, mode: int = 0o644) -> None:
    """Create ``path`` empty if it is missing (never through a link); leave it as it is if not."""
    fd = open_dir(os.path.dirname(path) or ".")
    try:
        os.close(os.open(os.path.basename(path), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                         dir_fd=fd))
    finally:
        os.close(fd)


class Replacing:
    """A context manager: ``with Replacing(path, mode) as f: f.write(...)`` replaces ``path`` by
    what was written when the block ends without an exception (the durability rule above), and
    removes the temporary file when it raises. ``owner`` is a (uid, gid) to give the file."""

    def __init__(self, path: str, mode: int = 0o644, owner: tuple[int, int] | None = None,
                 makedirs: bool = False) -> None:
        self.path, self.mode, self.owner, self.makedirs = path, mode, owner, makedirs
        self.name = os.path.basename(path)
        self.tmp = f"{self.name}.basalt-new"
        self.dir: int | None = None
        self.file: BinaryIO | None = None

    def __enter__(self) -> BinaryIO:
        self.dir = open_dir(os.path.dirname(self.path) or ".", 0o755 if self.makedirs else None)
        try:
            try:
                os.unlink(self.tmp, dir_fd=self.dir)  # left by a write a power cut interrupted (never follows)
            except FileNotFoundError:
                pass
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, self.mode,
                         dir_fd=self.dir)
        except BaseException:
            os.close(self.dir)
            raise
        self.file = os.fdopen(fd, "wb")
        return self.file

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        assert self.file is not None and self.dir is not None
        f, self.file = self.file, None
        written = False
        try:
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
                    os.replace(self.tmp, self.name, src_dir_fd=self.dir, dst_dir_fd=self.dir)
                except BaseException:
                    self.discard()
                    raise
                try:
                    os.fsync(self.dir)
                except OSError:
                    pass  # as fsync_dir
        finally:
            os.close(self.dir)
            self.dir = None

    def discard(self) -> None:
        try:
            os.unlink(self.tmp, dir_fd=self.dir)
        except OSError:
            pass


def write_atomic(path: str, data: bytes | str, mode: int = 0o644, owner: tuple[int, int] | None = None,
                 makedirs: bool = False) -> None:
    """Replace ``path`` by ``data`` (the durability rule above)."""
    with Replacing(path, mode, owner, makedirs) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def write_json(path: str, value: object, mode: int = 0o644, makedirs: bool = False, **dump: Any) -> None:
    """``value`` as JSON (``json.dumps``'s options: ``dump``); without any, as ``json.dumps(value,
    indent=1)`` writes it, without importing json (PID 1 writes these at boot)."""
    if dump:
        import json
        text = json.dumps(value, **dump)
    else:
        from agent import jsontext
        text = jsontext.dumps(value)
    write_atomic(path, text, mode, makedirs=makedirs)
