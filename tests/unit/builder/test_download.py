"""Verified downloads against a local HTTP server: good, bad checksum, resume, 404."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent.errors import BasaltError
from builder.download import BlobStore, download


def payload(n: int = 300_000) -> bytes:
    return bytes((i * 7) % 251 for i in range(n))


def test_fetch_verifies_and_stores(tmp_path: Path, http_server) -> None:  # type: ignore[no-untyped-def]
    data = payload()
    (http_server.root / "f.bin").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    store = BlobStore(tmp_path / "cache")
    path = store.fetch(f"{http_server.url}/f.bin", digest, len(data))
    assert path.read_bytes() == data and path.name == digest
    http_server.requests.clear()
    assert store.fetch(f"{http_server.url}/f.bin", digest) == path
    assert http_server.requests == []  # served from the cache


def test_checksum_mismatch_is_rejected_and_not_stored(tmp_path: Path, http_server) -> None:  # type: ignore[no-untyped-def]
    (http_server.root / "f.bin").write_bytes(b"tampered")
    store = BlobStore(tmp_path / "cache")
    with pytest.raises(BasaltError) as exc:
        store.fetch(f"{http_server.url}/f.bin", "a" * 64)
    assert "sha256 mismatch: expected " + "a" * 64 in exc.value.render()
    assert not store.has("a" * 64)
    assert not list((tmp_path / "cache" / "blobs").rglob("*.part"))


def test_truncated_download_resumes_with_range(tmp_path: Path, http_server) -> None:  # type: ignore[no-untyped-def]
    data = payload()
    (http_server.root / "f.bin").write_bytes(data)
    http_server.truncate["/f.bin"] = 100_000
    dest = tmp_path / "f.part"
    download(f"{http_server.url}/f.bin", dest, "f", retries=2, backoff=0)
    assert dest.read_bytes() == data
    (first, no_range), (second, resume) = http_server.requests
    assert (first, second, no_range) == ("/f.bin", "/f.bin", None)
    assert resume is not None and 0 < int(resume.removeprefix("bytes=").rstrip("-")) <= 100_000


def test_404_fails_at_once_with_hint(tmp_path: Path, http_server) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BasaltError) as exc:
        download(f"{http_server.url}/missing", tmp_path / "x", "x", retries=3, backoff=0)
    assert exc.value.render() == (f"{http_server.url}/missing: not found (HTTP 404)\n"
                                  "hint: check the version or mirror in the image definition")
    assert len(http_server.requests) == 1


def test_unreachable_server_retries_then_explains(tmp_path: Path) -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    with pytest.raises(BasaltError) as exc:
        download(f"http://127.0.0.1:{port}/x", tmp_path / "x", "x", retries=1, backoff=0, timeout=2)
    assert "download failed after 2 attempts (ConnectionError" in exc.value.render()


def test_fetch_reuses_the_last_lock_when_the_archive_is_unreachable(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline warm rebuilds: the archive index cannot be fetched, every locked blob is cached."""
    import json
    from types import SimpleNamespace

    from agent.errors import Problem
    from builder.stages import fetch

    store = BlobStore(tmp_path / "cache")
    blob = tmp_path / "pkg.deb"
    blob.write_bytes(b"deb contents")
    digest = hashlib.sha256(b"deb contents").hexdigest()
    rows = [{"name": "pkg", "version": "1", "arch": "amd64", "sha256": digest, "size": 12,
             "url": "http://mirror.invalid/debian/pool/p/pkg.deb", "role": "rootfs"}]
    options = {"arch": "amd64", "sources": [], "keyring": "/k", "packages": ["pkg"], "exclude": [],
               "kernel": "linux-image-amd64", "boot_packages": []}

    def offline(options: dict, store: BlobStore) -> list:  # type: ignore[type-arg]
        raise BasaltError(Problem("http://mirror.invalid/debian/dists/x/InRelease: download failed after 5 attempts"))
    monkeypatch.setattr(fetch, "resolve", offline)

    def run() -> Path:
        out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
        out.mkdir()
        fetch.run(SimpleNamespace(out=out, store=store), options)
        return out

    with pytest.raises(BasaltError):  # no earlier lock: the failure stands
        run()
    monkeypatch.setattr(fetch, "resolve", lambda options, store: rows)
    store.put_file(blob, digest)
    first = run()  # online: records the lock
    monkeypatch.setattr(fetch, "resolve", offline)
    second = run()  # offline: the same lock, from the record
    assert json.loads((second / "packages.lock.json").read_text()) == {"packages": rows}
    assert (second / "key").read_text() == (first / "key").read_text()
    store.path(digest).unlink()
    with pytest.raises(BasaltError):  # offline and a locked blob is gone: nothing to fall back on
        run()
