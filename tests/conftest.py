"""Shared fixtures. Each test directory is a tier: its tests get that marker."""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIERS = ("unit", "rootfs", "image", "boot")


DURATIONS = "basalt/durations"  # in pytest's cache: each test's last duration, for the run order


def tier_of(nodeid: str) -> str:
    """A test's tier: the directory its module is in (tests/<tier>/test_x.py::...)."""
    tier = Path(nodeid.split("::")[0]).parent.name
    return tier if tier in TIERS else "unit"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tier, and order the run longest first: the workers take tests
    in this order, so the long boots start at once and the short ones fill in around them
    (an hour-long module started last would leave the other worker idle). The order is by
    each test's duration in the last run here (pytest's cache), and without one (a fresh
    clone) by tier, boot first."""
    for item in items:
        item.add_marker(getattr(pytest.mark, tier_of(item.nodeid)))
    cache = getattr(config, "cache", None)  # absent under -p no:cacheprovider
    last: dict[str, float] = cache.get(DURATIONS, {}) if cache else {}
    rank = {t: i for i, t in enumerate(reversed(TIERS))}
    items.sort(key=lambda item: (-last.get(item.nodeid.split("@")[0], 0.0), rank[tier_of(item.nodeid)]))


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """A group that pytest-xdist did not apply would split a module's shared fixture over both
    workers (twice the cost, quietly): fail instead (pytest 9 broke it once; pyproject pins)."""
    workerinput = getattr(session.config, "workerinput", None)
    if workerinput is None or session.config.getvalue("dist") != "no" or not session.config.option.loadgroup:
        return
    lost = [i.nodeid for i in session.items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
    if lost:
        raise pytest.UsageError(f"pytest-xdist did not group {lost[0]} (and {len(lost) - 1} more): "
                                "check the pytest and pytest-xdist versions pyproject.toml allows")


class Timing:
    """Each tier's wall time and test time, and what the cache keeps for the next run's order."""

    def __init__(self) -> None:
        self.spans: dict[str, list[float]] = {}
        self.seconds: dict[str, float] = {}
        self.count: dict[str, int] = {}
        self.durations: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        tier = tier_of(report.nodeid)
        span = self.spans.setdefault(tier, [report.start, report.stop])
        span[0], span[1] = min(span[0], report.start), max(span[1], report.stop)
        self.seconds[tier] = self.seconds.get(tier, 0.0) + report.duration
        nodeid = report.nodeid.split("@")[0]  # without pytest-xdist's @group
        self.durations[nodeid] = self.durations.get(nodeid, 0.0) + report.duration
        if report.when == "call":
            self.count[tier] = self.count.get(tier, 0) + 1

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
        if not self.spans:
            return
        terminalreporter.section("time per tier")
        for tier in TIERS:
            if tier in self.spans:
                first, last = self.spans[tier]
                terminalreporter.write_line(
                    f"{tier:7} {self.count.get(tier, 0):4} tests  wall {last - first:7.1f} s  "
                    f"(from {time.strftime('%H:%M:%S', time.localtime(first))}; "
                    f"test time {self.seconds[tier]:7.1f} s)")
        cache = getattr(config, "cache", None)
        if cache:
            kept = cache.get(DURATIONS, {})
            cache.set(DURATIONS, {**kept, **{k: round(v, 2) for k, v in self.durations.items()}})


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


Build = Callable[..., Path]


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """``build(image, config_text=None, **plan_options)``: an image built for real and published
    in this worker's own output directory, once per worker for each distinct (image, config).
    The workers share the stage cache, whose per-stage lock makes a second worker wait for and
    reuse what the first one builds (builder/locks.py): each stage is built once per run."""
    from builder import pipeline, plan
    root = tmp_path_factory.mktemp("out")
    done: dict[tuple[str, str | None, tuple[tuple[str, Any], ...]], Path] = {}

    def build_once(image: str, config_text: str | None = None, **options: Any) -> Path:
        key = (image, config_text, tuple(sorted(options.items())))
        if key not in done:
            where = root / f"build-{len(done)}"
            where.mkdir()
            config = None
            if config_text is not None:
                config = where / "config.yaml"
                config.write_text(config_text)
            done[key] = pipeline.build(plan.plan(image, str(config) if config else None, **options),
                                       out=where / "out")
        return done[key]
    return build_once


@pytest.fixture(scope="session")
def built_iso(build: Build) -> Path:
    """The default image, built for real once per run."""
    return build("x86_64-iso")


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
    # One run builds several variants of one image (the upgrade tests' v2 and v3s): keep them all
    # in the stage cache for the whole run, so none is collected and built again by a later test.
    os.environ.setdefault("BASALT_CACHE_KEEP", "12")
    if not hasattr(config, "workerinput"):  # the controller (or a run without workers) reports
        config.pluginmanager.register(Timing(), "basalt-timing")
