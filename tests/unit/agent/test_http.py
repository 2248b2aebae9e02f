"""agent/http.py against a real local HTTP server (tests/conftest.py's, with faults injected):
retries and backoff, size bounds, resume from a partial copy, and hostile URLs and servers."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from agent import http
from tests.conftest import Server

pytestmark = pytest.mark.unit


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_get_reads_the_body_bounded_by_the_limit(http_server: Server) -> None:
    (http_server.root / "f").write_bytes(b"x" * 5000)
    assert http.get(f"{http_server.url}/f", 10_000) == b"x" * 5000
    assert http.get(f"{http_server.url}/f", 100) == b"x" * 100  # never more than the limit read


def test_get_retries_with_backoff_then_says_how_often(http_server: Server) -> None:
    slept: list[float] = []
    with pytest.raises(http.Failed, match=r"/absent: no answer after 3 attempts: HTTP Error 404") as err:
        http.get(f"{http_server.url}/absent", 100, attempts=3, delay=1.5, sleep=slept.append)
    assert slept == [1.5, 3.0] and err.value.attempts == 3
    assert [p for p, _ in http_server.requests] == ["/absent"] * 3


def test_a_client_error_ends_at_once_when_the_caller_says_so(http_server: Server) -> None:
    slept: list[float] = []
    with pytest.raises(http.Failed, match="after 1 attempts: HTTP Error 404"):
        http.get(f"{http_server.url}/absent", 100, attempts=5, retry_client_errors=False, sleep=slept.append)
    assert slept == [] and len(http_server.requests) == 1


def test_nobody_listening_is_retried_and_reported() -> None:
    slept: list[float] = []
    with pytest.raises(http.Failed, match=r"no answer after 2 attempts: .*Connection refused"):
        http.get(f"http://127.0.0.1:{closed_port()}/x", 100, attempts=2, timeout=5, sleep=slept.append)
    assert slept == [2.0]


@pytest.mark.parametrize("url", ["file:///etc/shadow", "ftp://127.0.0.1/x", "/var/lib/basalt/x", "", "HTTPX://a",
                                 "data:text/plain,hi"])
def test_only_http_urls_are_fetched(url: str, tmp_path: Path) -> None:
    with pytest.raises(http.NotHTTP, match="not an http:// or https:// URL"):
        http.get(url, 100, sleep=pytest.fail)
    with pytest.raises(http.NotHTTP):
        http.download(url, str(tmp_path / "out"), 100, sleep=pytest.fail)
    assert list(tmp_path.iterdir()) == []


def test_a_download_cut_off_resumes_from_where_it_stopped(http_server: Server, tmp_path: Path) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    (http_server.root / "big").write_bytes(data)
    http_server.truncate["/big"] = 300_000  # the first answer stops there
    seen: list[tuple[int, int]] = []
    retries: list[float] = []
    out = http.download(f"{http_server.url}/big", str(tmp_path / "big"), 2 << 20, delay=0.5, chunk=65536,
                        progress=lambda got, total: seen.append((got, total)),
                        on_retry=lambda exc, wait: retries.append(wait), sleep=lambda s: None)
    assert Path(out).read_bytes() == data and not (tmp_path / "big.part").exists()
    assert http_server.requests == [("/big", None), ("/big", "bytes=300000-")]
    assert retries == [0.5] and seen[-1] == (len(data), len(data))


def test_a_partial_copy_from_an_earlier_try_is_resumed(http_server: Server, tmp_path: Path) -> None:
    data = b"abcdefghij" * 1000
    (http_server.root / "b").write_bytes(data)
    (tmp_path / "b.part").write_bytes(data[:4000])
    http.download(f"{http_server.url}/b", str(tmp_path / "b"), 1 << 20)
    assert (tmp_path / "b").read_bytes() == data and http_server.requests == [("/b", "bytes=4000-")]


@pytest.mark.parametrize(("limit", "why"), [(9999, "10000 bytes is more than the 9999 expected"),
                                            (0, "10000 bytes is more than the 0 expected")])
def test_more_than_expected_is_refused_and_nothing_is_left(http_server: Server, tmp_path: Path, limit: int,
                                                           why: str) -> None:
    (http_server.root / "b").write_bytes(b"z" * 10000)
    (tmp_path / "out").mkdir()
    with pytest.raises(http.Failed, match=f"after 1 attempts: {why}"):
        http.download(f"{http_server.url}/b", str(tmp_path / "out/b"), limit, sleep=pytest.fail)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_missing_file_is_not_downloaded_again_and_again(http_server: Server, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(http.Failed, match="after 1 attempts: HTTP Error 404"):
        http.download(f"{http_server.url}/absent", str(tmp_path / "out/a"), 100, sleep=pytest.fail)
    assert len(http_server.requests) == 1 and list((tmp_path / "out").iterdir()) == []
