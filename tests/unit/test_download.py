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
