"""Shared fixtures. Each test directory is a tier: its tests get that marker."""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIERS = ("unit", "rootfs", "image", "boot")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


class Local:
    """An HTTP server on 127.0.0.1 (only), in a thread, shut down on exit."""

    def serve(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


class Server(Local):
    """A local HTTP server (127.0.0.1 only) over a directory, with fault injection."""

    def __init__(self, root: Path):
        self.root = root
        self.truncate: dict[str, int] = {}  # path -> bytes to send before closing the connection
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):  # type: ignore[no-untyped-def]
                super().__init__(*a, directory=str(server.root), **kw)

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Range")))
                cut = server.truncate.pop(self.path, None)
                path = server.root / urllib.parse.unquote(self.path.split("?")[0]).lstrip("/")
                if cut is not None and path.is_file():
                    data = path.read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                rng = self.headers.get("Range")
                if rng and path.is_file():
                    start = int(rng.split("=")[1].split("-")[0])
                    data = path.read_bytes()[start:]
                    self.send_response(206)
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("Content-Range", f"bytes {start}-{start + len(data) - 1}/{path.stat().st_size}")
                    self.end_headers()
                    self.wfile.write(data)
                    return
                super().do_GET()

        self.serve(Handler)


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "www"
    root.mkdir()
    with Server(root) as server:
        yield server


@pytest.fixture(scope="session")
def built_iso() -> Path:
    """The default image, built for real once per session (stage cache makes reruns fast)."""
    from builder import pipeline, plan
    out = pipeline.build(plan.plan("x86_64-iso"))
    return out


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh SSH key pair for one module's guests (``key`` private, ``key.pub`` public)."""
    path = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "basalt-test", "-f", str(path)], check=True)
    return path


@pytest.fixture(scope="session")
def qemu_available() -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.fail("qemu-system-x86_64 is missing: run ./inv (it installs qemu-system-x86)")


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
