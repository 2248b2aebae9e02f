"""Verified downloads into a content-addressed blob store.

A blob lives at ``<cache>/blobs/sha256/<hash>`` and is only ever put there
after its hash was checked, so anything found there is trusted. Downloads
retry with backoff, resume a partial ``.part`` file with an HTTP range
request, and show a progress bar.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import requests

from agent.errors import BasaltError, Problem
from builder import progress
from builder.locks import held

CHUNK = 1 << 20


def cache_root() -> Path:
    root = os.environ.get("BASALT_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "basalt"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class BlobStore:
    def __init__(self, root: Path | None = None):
        self.root = (root or cache_root()) / "blobs" / "sha256"

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put_file(self, src: Path, sha256: str | None = None) -> Path:
        """Move ``src`` into the store (after checking ``sha256`` if given)."""
        actual = sha256_file(src)
        if sha256 and actual != sha256:
            raise ChecksumMismatch(str(src), sha256, actual)
        dest = self.path(actual)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
        return dest

    def fetch(self, url: str, sha256: str, size: int | None = None, label: str | None = None,
              retries: int = 4, bar: progress.Bar | None = None) -> Path:
        """Return the blob for ``sha256``, downloading ``url`` if it is not cached."""
        dest = self.path(sha256)
        if dest.is_file():
            return dest
        part = self.root.parent / "partial" / f"{sha256}.part"
        label = label or url.rsplit("/", 1)[-1]
        with held(part.with_suffix(".lock"), what=label):  # one writer of the .part
            if dest.is_file():  # another build downloaded it while this one waited
                return dest
            download(url, part, label=label, retries=retries, expected_size=size, bar=bar)
            try:
                return self.put_file(part, sha256)
            except ChecksumMismatch:
                part.unlink(missing_ok=True)
                raise


class ChecksumMismatch(BasaltError):
    def __init__(self, what: str, expected: str, actual: str):
        super().__init__(Problem(f"{what}: sha256 mismatch: expected {expected}, got {actual}",
                                 hint="the download was corrupted or the source changed; "
                                      "run the build again, and check the pinned checksum if it persists"))


class DownloadError(BasaltError):
    pass


def download(url: str, dest: Path, label: str, retries: int = 4, expected_size: int | None = None,
             timeout: float = 30.0, backoff: float = 1.0, bar: progress.Bar | None = None) -> None:
    """Download ``url`` to ``dest``, resuming what ``dest`` already holds.

    ``bar``: an outer progress bar to advance instead of drawing one for this file."""
    if url.startswith("file://"):
        shutil.copyfile(url[len("file://"):], dest)
        return
    last: str = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        have = dest.stat().st_size if dest.exists() else 0
        if expected_size is not None and have == expected_size:
            return
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with requests.get(url, headers=headers, stream=True, timeout=timeout) as resp:
                if resp.status_code == 416 and have:
                    return  # already complete
                if resp.status_code == 404:
                    raise DownloadError(Problem(f"{url}: not found (HTTP 404)",
                                                hint="check the version or mirror in the image definition"))
                if resp.status_code not in (200, 206):
                    last = f"HTTP {resp.status_code}"
                    if 400 <= resp.status_code < 500 and resp.status_code not in (408, 429):
                        break
                    continue
                mode = "ab" if resp.status_code == 206 else "wb"
                if mode == "wb":
                    have = 0
                length = resp.headers.get("Content-Length")
                total = have + int(length) if length else expected_size
                shown = bar or progress.Bar(label, total)
                if bar is None:
                    shown.update(have)
                with dest.open(mode) as f:
                    # Small chunks: what arrived before a dropped connection is kept and resumed.
                    for chunk in resp.iter_content(64 * 1024):
                        f.write(chunk)
                        shown.update(len(chunk))
                if bar is None:
                    shown.close()
                got = dest.stat().st_size
                if total is not None and got < total:
                    last = f"connection closed after {got} of {total} bytes"
                    continue
                return
        except requests.RequestException as exc:
            last = type(exc).__name__ + (f": {exc.__cause__ or exc}" if str(exc) else "")
    raise DownloadError(Problem(f"{url}: download failed after {retries + 1} attempts ({last})",
                                hint="check the network and the mirror; a partial file is kept and resumed next time"))
